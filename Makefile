# Both targets work on a fresh machine: they create .venv and install the project first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.scenegrep-installed

.PHONY: test demo bench clean debian-packages

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch 2.14.1 / torchvision 0.29.1 are the builds available offline here; install them first so the
	# project's open ranges resolve to them instead of downloading another build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP) debian-packages
	$(PY) -m pytest -q -p no:cacheprovider

# Debian packages some tests need, installed when missing (as root, quietly, with one apt-get update for
# both); without root the tests that need them skip and say why. chromium: tests/test_page_browser.py drives
# it through Playwright (Playwright's own browser download cannot work here). postgresql: the storage tests
# also run against a throwaway PostgreSQL server (tests/pgserver.py).
debian-packages:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's$$missing for the tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "missing Debian packages:$$missing (not root): the tests that need them will be skipped"; \
	fi

demo: $(STAMP)
	$(VENV)/bin/scenegrep --home scenegrep-home demo --out demo-out

bench: $(STAMP)
	$(PY) benchmarks/bench_index.py --preset scannet --json benchmarks/results/bench_index.json

clean:
	rm -rf scenegrep-home demo-out .pytest_cache
