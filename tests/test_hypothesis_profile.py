"""The property tests' examples are the same on every run unless `--hypothesis-profile fuzz` is
given (tests/conftest.py): a rare find by chance must not fail a CI run of an unrelated change."""

from __future__ import annotations

import pytest
from hypothesis import settings


def test_the_default_run_draws_repeatable_examples_and_keeps_no_database(request) -> None:
    if request.config.getoption("hypothesis_profile", None):
        pytest.skip("a profile was named on the command line")
    assert settings.get_current_profile_name() == "repeatable"
    assert settings.default.derandomize is True
    assert settings.default.database is None
