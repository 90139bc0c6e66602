"""Numbers as users pass them: Python's, numpy's (`np.int64` from `np.arange` or an array's shape,
`np.float32` from a sweep) and 0-d tensors, which diffusers and transformers take wherever they
take a number.

`as_int` and `as_float` turn such a value into the Python number it stands for and leave every
other value as it is, so that an argument is normalised first and then checked with the plain
`isinstance(value, int)` / `(int, float)` checks, whose messages name the argument; what reaches
the rest of the code (a config saved as JSON, a dict key, a range) is then a Python number.
Booleans are not numbers here (``True`` for a step count is a mistake), nor are integral floats
integers (``2.0`` images is refused, as a float count is by the checks).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def as_int(value: Any) -> Any:
    """`value` as a Python int when it is an integer (numpy's, or a 0-d integer tensor), else
    `value` unchanged (a bool, a float and anything else are left for the caller's check)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 and not value.dtype.is_floating_point and value.dtype != torch.bool:
            return int(value.item())
        return value
    # numpy's bool_ is no numbers.Integral, unlike Python's bool
    return int(value) if isinstance(value, numbers.Integral) else value


def as_float(value: Any) -> Any:
    """`value` as a Python float when it is a real number (numpy's, or a 0-d tensor), a Python
    int or float unchanged, anything else (a bool included) unchanged."""
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 and value.dtype != torch.bool and not value.dtype.is_complex:
            return float(value.item())
        return value
    return float(value) if isinstance(value, numbers.Real) else value


def finite_number_tree(value: Any, argument: str, expected: str) -> Any:
    """`value`, a number or dicts and lists of them nested (a scale per block, per adapter...),
    with every number read by `as_float`.

    Raises:
        TypeError: a leaf that is no real number (a bool, a string, a tuple, a tensor of more
            than one number), naming `argument` and what it takes (`expected`).
        ValueError: a NaN or infinite number anywhere in it.
    """
    if isinstance(value, dict):
        return {key: finite_number_tree(item, argument, expected) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_number_tree(item, argument, expected) for item in value]
    number = as_float(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise TypeError(f"`{argument}` must be {expected}, got {value!r:.80}")
    if not math.isfinite(number):
        raise ValueError(f"`{argument}` must be finite, got {number!r}")
    return float(number)


__all__ = ["as_float", "as_int", "finite_number_tree"]
