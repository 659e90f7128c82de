"""Hypothesis settings for the reader fuzz tests (tests/test_fuzz_readers.py).

Two profiles, picked with the environment variable ``SCENEGREP_FUZZ``:

* unset (CI, ``make test``): ``scenegrep-ci``, 40 examples per test, derandomized (the same examples every
  run, so CI never fails on a newly drawn input), no example database, 2 s deadline per example.
* ``SCENEGREP_FUZZ=long``: ``scenegrep-long``, 3000 randomized examples per test, no deadline, with the
  example database (``.hypothesis/``) so failures found are replayed first next time. For local runs::

      SCENEGREP_FUZZ=long .venv/bin/python -m pytest -q tests/test_fuzz_readers.py

The profiles are applied per test with ``@FUZZ`` (never loaded globally), so other hypothesis tests in the
suite keep their own settings.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

settings.register_profile(
    "scenegrep-ci",
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "scenegrep-long",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

PROFILE = "scenegrep-long" if os.environ.get("SCENEGREP_FUZZ", "").strip().lower() == "long" else "scenegrep-ci"

#: Decorator applying the selected profile to one test.
FUZZ = settings(settings.get_profile(PROFILE))
