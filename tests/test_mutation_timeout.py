"""How long the forked mutation runner (tests/mutation_fork.py) lets a mutant run (a fixed
`--timeout` when given, else ten times the control seconds of the tests that reach it, at least
30 s), and the verdict it gives a child that ended."""

from __future__ import annotations

import mutation_fork
import pytest


def test_without_a_fixed_limit_a_mutant_gets_ten_times_its_tests_control_seconds():
    assert mutation_fork.mutant_timeout([2.0, 1.5, 0.5]) == pytest.approx(40.0)
    assert mutation_fork.mutant_timeout([12.0]) == pytest.approx(120.0)


def test_fast_tests_still_get_the_floor():
    assert mutation_fork.mutant_timeout([0.01, 0.2]) == 30.0
    assert mutation_fork.mutant_timeout([2.9]) == 30.0
    assert mutation_fork.mutant_timeout([]) == 30.0


def test_a_fixed_limit_wins_whatever_the_control_took():
    assert mutation_fork.mutant_timeout([100.0], fixed=5.0) == 5.0
    assert mutation_fork.mutant_timeout([0.1], fixed=120.0) == 120.0


@pytest.mark.parametrize("fixed", [0, -1.0])
def test_a_fixed_limit_of_no_time_is_refused(fixed):
    with pytest.raises(ValueError, match=rf"`fixed` must be a number of seconds > 0, got {fixed!r}"):
        mutation_fork.mutant_timeout([1.0], fixed=fixed)


def test_a_childs_verdict_from_its_exit_code_and_first_failure():
    assert mutation_fork.child_verdict(0, "") == "survived"
    assert mutation_fork.child_verdict(1, "tests/t.py::test_x [call] E   AssertionError") == "killed"
    assert mutation_fork.child_verdict(1, "runner: ValueError: the mutant raised") == "killed"
    # torch's broken thread pool in the forked child: no verdict on the mutant
    pool = 'E   RuntimeError: pool INTERNAL ASSERT FAILED at "ParallelOpenMP.cpp":64 ... Invalid thread pool!'
    assert mutation_fork.child_verdict(1, f"tests/t.py::test_x [call] {pool}") == "broken child"
