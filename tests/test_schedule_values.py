"""`check_schedule_values`: custom `timesteps` / `sigmas` hold what the schedulers read with
`np.array(schedule)`, checked before any work. The accepted forms are those diffusers'
schedulers run on (each is set on a real scheduler here); the refused ones failed inside the
scheduler with numpy's message, or (a NaN) at the first step under another name."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from clipcond.pipelines.argument_values import check_schedule_values

EULER = EulerDiscreteScheduler(num_train_timesteps=1000)


@pytest.mark.parametrize(
    "schedule",
    [
        [999, 500, 40],
        [999.5, 500.25],
        np.array([999, 500]),
        torch.tensor([999.0, 500.0]),
        [torch.tensor(999), torch.tensor(500)],
        [np.int64(999), 500],
        [True, False],  # diffusers reads them as 1 and 0
    ],
    ids=["ints", "floats", "numpy", "tensor", "0d_tensors", "numpy_ints", "bools"],
)
def test_what_a_scheduler_runs_on_is_taken(schedule) -> None:
    copy.deepcopy(EULER).set_timesteps(timesteps=schedule)  # the reference: the scheduler takes it
    check_schedule_values("timesteps", schedule)


@pytest.mark.parametrize(
    "schedule, message",
    [
        (["a", "b"], "must be a flat list of real numbers, got ['a', 'b']"),
        ([[999, 10]], "must be a flat list of real numbers, got [[999, 10]]"),
        ([[999, 10], [5]], "must be a flat list of real numbers, got [[999, 10], [5]]"),
        ([999, None], "must be a flat list of real numbers, got [999, None]"),
        ([1 + 2j], "must be a flat list of real numbers, got [(1+2j)]"),
        (torch.tensor([[999, 10]]), "must be a flat list of real numbers, got tensor([[999,  10]])"),
        ([math.nan, 10], "must hold finite numbers, got [nan, 10]"),
        (torch.tensor([math.inf, 1.0]), "must hold finite numbers, got tensor([inf, 1.])"),
        ([], "must be a non-empty list of numbers, got []"),
        ("999", "must be a non-empty list of numbers, got '999'"),
        (999, "must be a non-empty list of numbers, got 999"),
    ],
    ids=["strings", "nested", "ragged", "none", "complex", "2d_tensor", "nan", "inf", "empty", "str", "int"],
)
@pytest.mark.parametrize("name", ["timesteps", "sigmas"])
def test_what_no_schedule_can_hold_is_refused_by_name(name, schedule, message) -> None:
    with pytest.raises(ValueError) as refusal:
        check_schedule_values(name, schedule)
    assert str(refusal.value) == f"`{name}` {message}"
