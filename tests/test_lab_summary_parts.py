"""`clipcond.lab.summary` part by part: the Wilson interval's edges and refusal, the bootstrap
interval against a resampling written out here, what `pool` calls a rate and a mean, and how
`summarise` groups result lines (an "(all)" category per suite, cells in first-seen order)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipcond.lab.summary import ALL_CATEGORIES, Z_95, Cell, bootstrap_interval, pool, summarise, wilson_interval

# ---------------------------------------------------------------------------- Wilson


def test_the_95_percent_quantile_is_the_normal_ones() -> None:
    assert ALL_CATEGORIES == "(all)"
    assert abs(Z_95 - 1.959963984540054) < 1e-15


@pytest.mark.parametrize("total", [0, -3])
def test_no_trials_give_the_whole_unit_interval(total) -> None:
    assert wilson_interval(0, total) == (0.0, 1.0)


@pytest.mark.parametrize("successes", [-1, 11])
def test_successes_outside_zero_to_total_are_refused_whole(successes) -> None:
    with pytest.raises(ValueError) as refused:
        wilson_interval(successes, 10)
    assert str(refused.value) == f"successes must be in [0, 10], got {successes}"


def test_the_edges_zero_and_total_are_allowed() -> None:
    low, high = wilson_interval(0, 4)
    assert low == 0.0 and 0.0 < high < 1.0
    low, high = wilson_interval(4, 4)
    assert high == 1.0 and 0.0 < low < 1.0


def test_the_interval_is_the_textbook_one_for_a_given_z() -> None:
    """z = 1: p = 3/4 of n = 4 gives (p + 1/8 -+ sqrt(3/64 + 1/64)) / (5/4) = (0.875 -+ 0.25) / 1.25."""
    low, high = wilson_interval(3, 4, z=1.0)
    assert abs(low - 0.5) < 1e-12 and abs(high - 0.9) < 1e-12


def test_the_default_z_gives_the_published_interval_of_eight_in_ten() -> None:
    low, high = wilson_interval(8, 10)
    assert round(low, 4) == 0.4902 and round(high, 4) == 0.9433


def test_the_interval_holds_the_rate_when_rounding_would_leave_it_outside() -> None:
    # a huge z puts the centre near 1/2 and the half-width covers both ends: clipped to [0, 1]
    assert wilson_interval(1, 2, z=1e9) == (0.0, 1.0)
    for n in range(1, 40):
        for k in (0, n):
            low, high = wilson_interval(k, n)
            assert low <= k / n <= high
    # the formula's ends at 16 of 16 and 0 of 21 are 1 + 2**-52 and -1.4e-17 in floats
    assert wilson_interval(16, 16)[1] == 1.0 and wilson_interval(0, 21)[0] == 0.0


def test_one_trial_has_an_interval_of_its_own() -> None:
    """n = 1, k = 1, z = 1: (1 + 1/2 -+ 1/2) / 2 = (1/2, 1)."""
    assert wilson_interval(1, 1, z=1.0) == (0.5, 1.0)
    assert wilson_interval(0, 1, z=1.0) == (0.0, 0.5)


# ---------------------------------------------------------------------------- bootstrap


def _bootstrap_by_hand(values, resamples=2000, seed=0):
    ordered = sorted(float(v) for v in values)
    draws = np.random.default_rng(seed).integers(0, len(ordered), size=(resamples, len(ordered)))
    means = np.array([sum(ordered[i] for i in row) / len(ordered) for row in draws])
    return tuple(float(q) for q in np.quantile(means, [0.025, 0.975]))


def test_the_bootstrap_is_2000_seeded_resamples_of_the_sorted_values() -> None:
    # twenty distinct values: the quantiles of their resampled means move with the seed (a few
    # round values give a handful of possible means, the same quantiles under most seeds)
    values = [
        0.9,
        0.1,
        0.5,
        0.35,
        0.7,
        0.2,
        0.13,
        0.77,
        0.41,
        0.05,
        0.66,
        0.29,
        0.93,
        0.58,
        0.31,
        0.84,
        0.07,
        0.46,
        0.62,
        0.19,
    ]
    got = bootstrap_interval(values)
    expected = _bootstrap_by_hand(values)
    assert got == pytest.approx(expected, abs=1e-12)


def test_the_resample_count_and_the_seed_are_taken() -> None:
    values = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0]
    assert bootstrap_interval(values, resamples=50, seed=7) == pytest.approx(
        _bootstrap_by_hand(values, resamples=50, seed=7), abs=1e-12
    )
    assert bootstrap_interval(values, seed=7) != bootstrap_interval(values, seed=8)


def test_one_value_is_a_point_and_no_value_is_refused() -> None:
    assert bootstrap_interval([0.25]) == (0.25, 0.25)
    assert all(type(end) is float for end in bootstrap_interval(np.array([0.25], dtype=np.float32)))
    with pytest.raises(ValueError) as refused:
        bootstrap_interval([])
    assert str(refused.value) == "bootstrap_interval needs at least one value"


def test_float32_values_are_resampled_in_float64() -> None:
    values = np.random.default_rng(3).normal(0.3, 0.1, size=30).astype(np.float32)
    assert bootstrap_interval(values) == pytest.approx(_bootstrap_by_hand(values), abs=1e-12)


def test_the_interval_ends_are_python_floats_inside_the_values_range() -> None:
    values = [1, 2, 3, 4, 5, 6, 7, 8]
    low, high = bootstrap_interval(values)
    assert type(low) is float and type(high) is float
    assert 1.0 < low < 4.5 < high < 8.0


# ---------------------------------------------------------------------------- pool


def test_booleans_pool_to_a_rate_with_the_wilson_interval() -> None:
    mean, low, high, kind = pool([True, False, True, True])
    assert (mean, kind) == (0.75, "rate")
    assert (low, high) == wilson_interval(3, 4)


def test_numbers_pool_to_a_mean_with_the_bootstrap_interval() -> None:
    values = [0.25, 0.5, 1.0, 0.75]
    mean, low, high, kind = pool(values)
    assert (mean, kind) == (0.625, "mean")
    assert (low, high) == bootstrap_interval(values)


def test_integers_and_a_mix_with_booleans_are_means() -> None:
    assert pool([1, 0, 1])[3] == "mean"
    mean, _, _, kind = pool([True, 0.5])
    assert (mean, kind) == (0.75, "mean")


def test_equal_values_give_an_interval_that_holds_the_mean() -> None:
    values = [0.1] * 7  # their resampled means can differ from the mean in the last bit
    mean, low, high, _ = pool(values)
    assert low <= mean <= high
    assert mean == float(np.mean(values))
    assert low == min(bootstrap_interval(values)[0], mean) and high == max(bootstrap_interval(values)[1], mean)


def test_a_mean_whose_bootstrap_misses_it_is_widened_to_it() -> None:
    values = [0.1, 0.2, 0.3]
    mean, low, high, _ = pool(values)
    boot_low, boot_high = bootstrap_interval(values)
    assert low == min(boot_low, mean) and high == max(boot_high, mean)


# ---------------------------------------------------------------------------- summarise


def _line(setup, suite, category, **metrics):
    return {"setup": setup, "suite": suite, "category": category, "metrics": metrics}


def test_each_category_and_its_suite_total_become_cells_in_first_seen_order() -> None:
    lines = [
        _line("a", "s", "colour", exact=True, clip_score=0.5),
        _line("a", "s", "count", exact=False),
        _line("b", "s", "colour", exact=False, clip_score=0.25),
        _line("a", "s", "colour", exact=True, clip_score=0.75),
    ]
    cells = summarise(lines)
    keys = [(c.setup, c.suite, c.category, c.metric, c.count) for c in cells]
    assert keys == [
        ("a", "s", "colour", "exact", 2),
        ("a", "s", "colour", "clip_score", 2),
        ("a", "s", "(all)", "exact", 3),
        ("a", "s", "(all)", "clip_score", 2),
        ("a", "s", "count", "exact", 1),
        ("b", "s", "colour", "exact", 1),
        ("b", "s", "colour", "clip_score", 1),
        ("b", "s", "(all)", "exact", 1),
        ("b", "s", "(all)", "clip_score", 1),
    ]
    by_key = {(c.setup, c.category, c.metric): c for c in cells}
    all_exact = by_key[("a", "(all)", "exact")]
    assert (all_exact.mean, all_exact.kind) == (2 / 3, "rate")
    assert (all_exact.low, all_exact.high) == wilson_interval(2, 3)
    score = by_key[("a", "colour", "clip_score")]
    assert (score.mean, score.kind) == (0.625, "mean")
    assert (score.low, score.high) == bootstrap_interval([0.5, 0.75])
    single = by_key[("b", "colour", "clip_score")]
    assert (single.mean, single.low, single.high) == (0.25, 0.25, 0.25)


def test_suites_and_setups_are_kept_apart() -> None:
    cells = summarise([_line("a", "s1", "c", exact=True), _line("a", "s2", "c", exact=False)])
    assert [(c.suite, c.category, c.mean) for c in cells] == [
        ("s1", "c", 1.0),
        ("s1", "(all)", 1.0),
        ("s2", "c", 0.0),
        ("s2", "(all)", 0.0),
    ]
    assert all(isinstance(c, Cell) for c in cells)


def test_no_lines_give_no_cells() -> None:
    assert summarise([]) == []
    assert summarise(iter([])) == []


def test_a_generator_of_lines_is_read_once() -> None:
    cells = summarise(_line("a", "s", "c", exact=v) for v in (True, True, False))
    assert [c.count for c in cells] == [3, 3]
    assert math.isclose(cells[0].mean, 2 / 3)
