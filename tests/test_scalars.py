"""`clipcond.scalars`: numpy numbers and 0-d tensors become the Python numbers they stand for;
booleans, integral floats (for ints) and everything else are left for the caller's check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipcond.scalars import as_float, as_int


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
    "value", [True, np.bool_(True), torch.tensor(True), 2.0, np.float32(2.0), torch.tensor(2.0), "2", None, [2]]
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


@pytest.mark.parametrize("value", [True, np.bool_(False), torch.tensor([1.0]), "0.5", None, 3, 0.5])
def test_what_is_not_a_numpy_or_tensor_real_is_left_as_it_is(value) -> None:
    assert as_float(value) is value
