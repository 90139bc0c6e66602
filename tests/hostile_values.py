"""Values no caller means, one of each kind a mistaken argument takes, and `Outcomes`, which records
what calls under them did, for the argument fuzz tests (`test_argument_fuzz.py`,
`test_conditioner_argument_fuzz.py`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

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


class Outcomes:
    """What calls under hostile values did: `ran` holds the (argument, label) pairs that ran,
    `late` the failures after a watched module ran (or errors other than a ValueError or
    TypeError, or any failure of a `follow_up`), `unnamed` the refusals that do not name the
    argument."""

    def __init__(self) -> None:
        self.ran: set[tuple[str, str]] = set()
        self.late: list[str] = []
        self.unnamed: list[str] = []
        self.worked: list[str] = []

    def watch(self, *modules: Any) -> None:
        """Count a forward of any of `modules` (None skipped) as work done."""
        for module in modules:
            if module is not None:
                module.register_forward_pre_hook(lambda module, args: self.worked.append(type(module).__name__))

    def call(self, function: Callable[..., Any], argument: str, label: str, **kwargs: Any) -> bool:
        """Run `function(**kwargs)` with `argument` holding the value `label` names; True when it ran."""
        self.worked.clear()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                function(**kwargs)
        except (ValueError, TypeError) as error:
            if self.worked:
                self.late.append(
                    f"{argument}={label}: {type(error).__name__} after {sorted(set(self.worked))}: {error}"
                )
            elif argument not in str(error):
                self.unnamed.append(f"{argument}={label}: {error}")
            return False
        except Exception as error:  # noqa: BLE001 - anything else is a failure the checks missed
            self.late.append(f"{argument}={label}: {type(error).__name__}: {error}")
            return False
        self.ran.add((argument, label))
        return True

    def follow_up(self, function: Callable[..., Any], argument: str, label: str, **kwargs: Any) -> None:
        """Run `function(**kwargs)` after `argument`'s value was taken: any failure is late."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                function(**kwargs)
        except Exception as error:  # noqa: BLE001 - taken, then failing
            self.late.append(f"{argument}={label} taken, then: {type(error).__name__}: {error}")

    def check(self, may_run: dict[str, tuple[str, ...]]) -> None:
        """No late failure, no unnamed refusal, and only the values `may_run` lists ran."""
        assert self.late == [] and self.unnamed == []
        allowed = {(argument, label) for argument, labels in may_run.items() for label in labels}
        assert self.ran <= allowed, sorted(self.ran - allowed)
