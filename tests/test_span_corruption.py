"""T5's span corruption (clipcond.training.t5.span_corruption) in its parts: the noise and span
counts at their bounds, computed by hand; every valid mask equally likely; a batch's noise keyed
by each caption's key and the stream; the refusals, whole."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from clipcond.training.t5.span_corruption import (
    EVAL_STREAM,
    SpanCorruption,
    corrupt_spans,
    max_spans,
    noise_mask,
    pad_rows,
    span_counts,
)

SENTINELS = tuple(range(1000, 1032))
EOS = 1


@pytest.mark.parametrize(
    "length, density, mean_span, expected",
    [
        (20, 0.15, 3.0, (3, 1)),  # round(3 / 3) = 1 span
        (40, 0.15, 3.0, (6, 2)),
        (20, 0.01, 3.0, (1, 1)),  # round(0.2) = 0 noise: at least one token
        (5, 1.0, 1.0, (4, 2)),  # all noise: one token kept, so two spans at most (one each side)
        (10, 0.9, 1.0, (9, 2)),  # nine one-token spans asked, one kept token: two fit
        (10, 0.5, 1.0, (5, 5)),  # five spans, five kept tokens between and around them
        (2, 0.99, 1.0, (1, 1)),  # two tokens: one is kept
        (1, 0.15, 3.0, (1, 1)),  # one token: it is the noise
        (10, 0.3, 0.5, (3, 3)),  # a mean span below one token: six asked, three tokens make three at most
    ],
)
def test_span_counts_at_their_bounds(length, density, mean_span, expected):
    assert span_counts(length, density, mean_span) == expected


def test_a_negative_length_is_refused():
    with pytest.raises(ValueError, match=r"^length must be >= 0, got -1$"):
        span_counts(-1, 0.15, 3.0)


def _runs(mask) -> int:
    return int(mask[:1].sum()) + int((mask[1:] & ~mask[:-1]).sum())


@pytest.mark.parametrize("length, density, mean_span", [(7, 0.5, 1.5), (6, 0.5, 1.0), (5, 0.4, 1.0)])
def test_every_valid_mask_is_equally_likely(length, density, mean_span):
    """The masks with the counts `span_counts` gives (that many noise tokens, in that many
    runs), listed by brute force, each drawn about equally often over 4000 keys."""
    noise, spans = span_counts(length, density, mean_span)
    valid = [
        mask
        for mask in itertools.product([False, True], repeat=length)
        if sum(mask) == noise and _runs(np.array(mask)) == spans
    ]
    draws = 4000
    seen = Counter(tuple(noise_mask(length, density, mean_span, np.random.default_rng(key))) for key in range(draws))
    assert set(seen) == set(valid)
    expected = draws / len(valid)
    assert len(valid) >= 4
    assert all(abs(count - expected) < 0.25 * expected for count in seen.values()), (expected, seen)


def test_a_batch_corrupts_each_caption_by_its_own_key_and_the_stream():
    corruption = SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=3)
    rows = [list(range(3, 43)), list(range(3, 43)), list(range(3, 43))]
    keys = [5, 9, 12]
    batch = corruption.batch(rows, keys, stream=EVAL_STREAM)
    for index, (row, key) in enumerate(zip(rows, keys)):
        inputs, targets = corruption.corrupt(row, key, stream=EVAL_STREAM)
        assert batch["input_ids"][index, : len(inputs)].tolist() == inputs
        assert batch["labels"][index, : len(targets)].tolist() == targets
    assert len({tuple(batch["labels"][index].tolist()) for index in range(3)}) == 3  # three keys, three noises
    assert not (batch["labels"] == corruption.batch(rows, keys)["labels"]).all()  # the training stream's differ


def test_corrupt_uses_the_key():
    corruption = SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=0)
    ids = list(range(3, 43))
    assert len({tuple(corruption.corrupt(ids, key)[1]) for key in range(20)}) > 10


def test_a_batch_needs_a_key_per_row():
    corruption = SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=0)
    with pytest.raises(ValueError, match=r"^2 rows but 1 keys$"):
        corruption.batch([[3, 4], [5, 6]], [0])


def test_a_mask_of_another_length_is_refused():
    with pytest.raises(ValueError, match=r"^mask has 2 entries for 3 tokens$"):
        corrupt_spans([3, 4, 5], np.array([True, False]), SENTINELS, EOS)


def test_more_spans_than_sentinels_are_refused_counting_the_spans():
    mask = np.array([True, False, True, False, True])
    with pytest.raises(ValueError, match=r"^3 noise spans need more than the 2 sentinel tokens$"):
        corrupt_spans([3, 4, 5, 6, 7], mask, (100, 101), EOS)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.01])
def test_max_spans_refuses_a_density_outside_0_to_1(density):
    with pytest.raises(ValueError, match=r"noise_density in \(0, 1\] .* got " + str(density)):
        max_spans(64, density, 3.0)


def test_no_rows_pad_to_an_empty_batch():
    assert tuple(pad_rows([], 0).shape) == (0, 0)
