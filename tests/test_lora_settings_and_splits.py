"""Two small parts on their own: the rank and scale checks every LoRA section of a training
config shares, and which colour-shape pairs the shapes world holds out of training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipcond.shapes.splits import HELDOUT_PAIRS, colour_shape_classes, heldout_pairs, train_pairs
from clipcond.training.lora_settings import check_lora_rank_and_alpha


@pytest.mark.parametrize("r, alpha", [(1, 1), (8, 16), (4, 0.5), (1, 1e-9), (64, 1e300)])
def test_a_positive_rank_and_a_finite_positive_alpha_are_taken(r, alpha) -> None:
    assert check_lora_rank_and_alpha(r, alpha) is None


@pytest.mark.parametrize("r", [0, -1, True, 2.0, "4", None, np.float64(4.0)])
def test_a_rank_that_is_no_positive_integer_is_refused_first(r) -> None:
    for alpha in (8, 0):  # the rank is named before a bad alpha
        with pytest.raises(ValueError) as raised:
            check_lora_rank_and_alpha(r, alpha)
        assert str(raised.value) == f"`lora.r` must be an integer >= 1, got {r!r}"


@pytest.mark.parametrize("alpha", [0, 0.0, -1, math.inf, -math.inf, math.nan, True, "8", None])
def test_an_alpha_that_is_no_finite_positive_number_is_refused(alpha) -> None:
    with pytest.raises(ValueError) as raised:
        check_lora_rank_and_alpha(4, alpha)
    assert str(raised.value) == f"`lora.alpha` must be a number > 0 (the update is scaled by alpha / r), got {alpha!r}"


def test_the_eighteen_pairs_in_colour_then_shape_order() -> None:
    pairs = colour_shape_classes()
    assert len(pairs) == 18 and pairs[:4] == [
        ("red", "circle"),
        ("red", "square"),
        ("red", "triangle"),
        ("yellow", "circle"),
    ]
    assert pairs[-1] == ("purple", "triangle") and len(set(pairs)) == 18


def test_three_pairs_are_held_out_one_per_shape_and_colour() -> None:
    assert heldout_pairs() == [("cyan", "triangle"), ("green", "circle"), ("purple", "square")]
    assert set(heldout_pairs()) == HELDOUT_PAIRS
    train = train_pairs()
    assert train == sorted(train) and len(train) == 15 and not set(train) & HELDOUT_PAIRS
    assert set(train) | HELDOUT_PAIRS == set(colour_shape_classes())
    for shape in ("circle", "square", "triangle"):  # every shape still trained in five colours
        assert sum(1 for _, trained in train if trained == shape) == 5
