"""Hypothesis profiles for the property-based tests (tests/unit/test_fuzz_*.py).

`ci` (the default): derandomized (the same examples on every run, no example database written), no
per-example deadline (the machines are shared), and example counts that keep the fuzz tests under a minute.
`long`: ten times the examples, random, with the example database in .hypothesis/, for local runs:

    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/unit -k fuzz
    .venv/bin/pytest tests/unit -k fuzz --hypothesis-profile=long --hypothesis-seed=1   # the same, pinned
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
