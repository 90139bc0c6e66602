"""Values no caller means, one of each kind a mistaken argument takes, for the argument fuzz
tests (`test_argument_fuzz.py`, `test_conditioner_argument_fuzz.py`)."""

from __future__ import annotations

import math

import numpy as np
import torch

HOSTILE = {
    "object": object(),
    "string": "abc",
    "minus_one": -1,
    "zero": 0,
    "fraction": 1.5,
    "nan": math.nan,
    "inf": math.inf,
    "empty_list": [],
    "int_list": [1, 2],
    "tensor": torch.zeros(1),
    "array": np.zeros(1),
    "true": True,
    "dict": {},
    "tuple": (1, 2),
}
