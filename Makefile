# Both targets work on a fresh machine: they create .venv and install the project first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.scenegrep-installed

.PHONY: test demo bench clean chromium postgres

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch 2.14.1 / torchvision 0.29.1 are the builds available offline here; install them first so the
	# project's open ranges resolve to them instead of downloading another build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP) chromium postgres
	$(PY) -m pytest -q -p no:cacheprovider

# tests/test_page_browser.py drives Debian's chromium through Playwright (Playwright's own browser download
# cannot work here): install it when missing (as root, quietly); without root the test skips and says why.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the page test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing and this is not root: tests/test_page_browser.py will be skipped"; \
	  fi; }

# the storage tests run against PostgreSQL too (tests/pgserver.py starts a throwaway server): install Debian's
# postgresql when missing (as root, quietly); without it those cases skip and say why.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's postgresql for the catalog tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "postgresql is missing and this is not root: the PostgreSQL catalog tests will be skipped"; \
	  fi; }

demo: $(STAMP)
	$(VENV)/bin/scenegrep --home scenegrep-home demo --out demo-out

bench: $(STAMP)
	$(PY) benchmarks/bench_index.py --preset scannet --json benchmarks/results/bench_index.json

clean:
	rm -rf scenegrep-home demo-out .pytest_cache
