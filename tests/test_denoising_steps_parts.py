"""How diffusers' loops number their steps, each function on its own, on diffusers' own
schedulers set for 10 steps. Expected values are worked out here from the schedules printed in
the comments (1000 training timesteps, diffusers' default spacing)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler

from clipcond import denoising_steps as steps


def set_for(scheduler, steps: int = 10):
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize(
    "scheduler, order",
    [
        (SimpleNamespace(order=2), 2),
        (SimpleNamespace(order=1), 1),
        (SimpleNamespace(order=0), 1),
        (SimpleNamespace(order=-2), 1),
        (SimpleNamespace(order=2.0), 2),
        (SimpleNamespace(), 1),
        (HeunDiscreteScheduler(), 2),
        (EulerDiscreteScheduler(), 1),
    ],
)
def test_the_order_is_the_schedulers_and_at_least_one(scheduler, order) -> None:
    assert steps.scheduler_order(scheduler) == order and type(steps.scheduler_order(scheduler)) is int


def test_warm_up_iterations_of_diffusers_schedulers() -> None:
    # PNDM as SD 1.5 ships it: 900, 800, 800, 700, ..., 0 (11 iterations for 10 steps)
    assert steps.warmup_iterations(set_for(PNDMScheduler(skip_prk_steps=True))) == 1
    # Heun: 999, 888, 888, ..., 0, 0 (19 iterations, order 2: 19 - 20 is below 0)
    assert steps.warmup_iterations(set_for(HeunDiscreteScheduler())) == 0
    assert steps.warmup_iterations(set_for(EulerDiscreteScheduler())) == 0
    assert steps.warmup_iterations(set_for(DDIMScheduler())) == 0


def test_no_warm_up_before_the_schedule_is_set_or_without_a_step_count() -> None:
    assert steps.warmup_iterations(PNDMScheduler(skip_prk_steps=True)) == 0  # timesteps None before set_timesteps
    assert steps.warmup_iterations(SimpleNamespace(timesteps=list(range(12)), num_inference_steps=10)) == 2
    assert steps.warmup_iterations(SimpleNamespace(timesteps=list(range(12)), num_inference_steps=None)) == 0
    assert steps.warmup_iterations(SimpleNamespace(timesteps=list(range(12)), num_inference_steps=True)) == 0
    assert steps.warmup_iterations(SimpleNamespace(timesteps=list(range(12)), num_inference_steps=10.0)) == 0
    assert steps.warmup_iterations(SimpleNamespace(timesteps=list(range(12)))) == 0
    assert steps.warmup_iterations(SimpleNamespace(num_inference_steps=10)) == 0
    assert steps.warmup_iterations(SimpleNamespace(timesteps=list(range(12)), num_inference_steps=5, order=2)) == 2


@pytest.mark.parametrize(
    "order, warmup, expected",
    [
        (1, 0, [0, 1, 2, 3, 4]),
        (2, 0, [0, 0, 1, 1, 2, 2]),
        (1, 1, [0, 0, 1, 2, 3]),  # PNDM: its warm-up iteration is step 0 too
        (2, 1, [0, 0, 0, 1, 1, 2]),
        (1, 3, [0, 0, 0, 0, 1]),
    ],
)
def test_the_step_of_each_iteration(order, warmup, expected) -> None:
    assert [steps.step_of_iteration(iteration, order, warmup) for iteration in range(len(expected))] == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.8, 0.8),
        (0.001, 0.001),
        (0.999, 0.999),
        (1.0, None),
        (0.0, None),
        (1, None),
        (0, None),
        ("0.5", None),
        (None, None),
        (-0.5, None),
        (1.5, None),
    ],
)
def test_a_hand_off_is_a_float_strictly_between_0_and_1(value, expected) -> None:
    pipe = SimpleNamespace(denoising_end=value, denoising_start=0.3)
    assert steps.hand_off(pipe, "denoising_end") == expected
    assert steps.hand_off(pipe, "denoising_start") == 0.3
    assert steps.hand_off(SimpleNamespace(), "denoising_end") is None


@pytest.mark.parametrize(
    "scheduler, start, skipped",
    [
        # 999, 888, ..., 111, 0: from 0.5 the timesteps below 500 run (444 ... 0), 5 skipped
        (EulerDiscreteScheduler(), 0.5, 5),
        (EulerDiscreteScheduler(), 0.8, 8),  # below 200: 111 and 0
        # 999, 888, 888, ..., 0, 0: the 10 below 500 are 5 whole steps, and a second-order
        # scheduler keeps one iteration more (diffusers' rule for an even count): 8 skipped
        (HeunDiscreteScheduler(), 0.5, 8),
        # 900, 800, 800, 700, ..., 0: the 5 below 500 run, 6 skipped
        (PNDMScheduler(skip_prk_steps=True), 0.5, 6),
    ],
)
def test_the_iterations_skipped_before_a_denoising_start(scheduler, start, skipped) -> None:
    set_for(scheduler)
    timesteps = scheduler.timesteps.clone()
    assert steps.skipped_before_start(scheduler, start) == skipped
    assert torch.equal(scheduler.timesteps, timesteps)
    assert getattr(scheduler, "begin_index", None) is None  # diffusers' call set it on a copy


def test_the_loop_starts_at_the_begin_index_or_where_its_timestep_first_comes() -> None:
    euler = set_for(EulerDiscreteScheduler())
    euler.set_begin_index(3)
    assert steps.loop_start(euler, euler.timesteps[7]) == 3
    ddim = set_for(DDIMScheduler())  # 900, 800, ..., 0; no begin index
    assert steps.loop_start(ddim, 700) == 2
    assert steps.loop_start(ddim, torch.tensor(0)) == 9
    assert steps.loop_start(ddim, 650) == 0  # nowhere
    heun = set_for(HeunDiscreteScheduler())  # begin index None: 888 first comes at 1
    assert steps.loop_start(heun, heun.timesteps[2]) == 1
    assert steps.loop_start(SimpleNamespace(timesteps=[5, 4, 3], begin_index=None), 3) == 2
    assert steps.loop_start(SimpleNamespace(timesteps=[5, 4, 3], begin_index=0), 3) == 0
