"""`clipcond.scalars`: numpy numbers and 0-d tensors become the Python numbers they stand for;
booleans, integral floats (for ints) and everything else are left for the caller's check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipcond.scalars import as_float, as_int, finite_number_tree


@pytest.mark.parametrize(
    "value, expected",
    [
        (3, 3),
        (np.int64(3), 3),
        (np.int32(-2), -2),
        (np.uint8(7), 7),
        (torch.tensor(5), 5),
        (torch.tensor(5, dtype=torch.int32), 5),
    ],
)
def test_integers_become_python_ints(value, expected) -> None:
    got = as_int(value)
    assert type(got) is int and got == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        np.bool_(True),
        torch.tensor(True),
        2.0,
        np.float32(2.0),
        torch.tensor(2.0),
        torch.tensor([5]),
        torch.tensor([[5]]),
        "2",
        None,
        [2],
    ],
)
def test_what_is_not_an_integer_is_left_as_it_is(value) -> None:
    assert as_int(value) is value


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.float32(0.5), 0.5),
        (np.float64(7.5), 7.5),
        (np.int64(6), 6.0),
        (torch.tensor(6.0), 6.0),
        (torch.tensor(2), 2.0),
        (torch.tensor(0.25, dtype=torch.bfloat16), 0.25),
    ],
)
def test_reals_become_python_floats(value, expected) -> None:
    got = as_float(value)
    assert type(got) is float and got == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        np.bool_(False),
        torch.tensor([1.0]),
        torch.tensor(True),
        torch.tensor(1 + 2j),
        np.complex64(1 + 2j),
        "0.5",
        None,
        3,
        0.5,
    ],
)
def test_what_is_not_a_numpy_or_tensor_real_is_left_as_it_is(value) -> None:
    assert as_float(value) is value


def test_a_number_tree_keeps_its_shape_with_every_leaf_a_python_float() -> None:
    tree = {"down": [np.float32(0.5), 2], "mid": torch.tensor(3), "up": {"block_0": [1.5, np.int64(4)]}}
    got = finite_number_tree(tree, "scale", "a number")
    assert got == {"down": [0.5, 2.0], "mid": 3.0, "up": {"block_0": [1.5, 4.0]}}
    leaves = [got["down"][0], got["down"][1], got["mid"], got["up"]["block_0"][0], got["up"]["block_0"][1]]
    assert all(type(leaf) is float for leaf in leaves)
    assert finite_number_tree(7, "scale", "a number") == 7.0 and type(finite_number_tree(7, "s", "n")) is float


@pytest.mark.parametrize(
    "leaf, shown",
    [
        (True, "True"),
        ("0.5", "'0.5'"),
        ((0.5,), "(0.5,)"),
        (None, "None"),
        (torch.tensor(True), "tensor(True)"),
        (torch.tensor([0.5, 1.0]), "tensor([0.5000, 1.0000])"),
    ],
)
def test_a_leaf_that_is_no_real_number_is_a_type_error_naming_the_argument(leaf, shown) -> None:
    with pytest.raises(TypeError) as refused:
        finite_number_tree({"down": [1.0, leaf]}, "lora_scale", "a number or dicts and lists of numbers")
    assert str(refused.value) == f"`lora_scale` must be a number or dicts and lists of numbers, got {shown}"


def test_a_long_leaf_is_shown_cut_to_80_characters() -> None:
    with pytest.raises(TypeError) as refused:
        finite_number_tree("x" * 200, "scale", "a number")
    assert str(refused.value) == "`scale` must be a number, got '" + "x" * 79


@pytest.mark.parametrize(
    "leaf, shown",
    [(float("nan"), "nan"), (np.float32("inf"), "inf"), (torch.tensor(float("-inf")), "-inf"), (-math.inf, "-inf")],
)
def test_a_number_that_is_not_finite_is_a_value_error_naming_the_argument(leaf, shown) -> None:
    with pytest.raises(ValueError) as refused:
        finite_number_tree([1.0, {"mid": leaf}], "scale", "a number")
    assert str(refused.value) == f"`scale` must be finite, got {shown}"
