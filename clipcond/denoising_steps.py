"""How diffusers' denoising loops number their steps, for callbacks that must act at a step.

A loop runs `order` iterations per step (2 for Heun and KDPM2), PNDM as Stable Diffusion 1.5
ships it adds a warm-up iteration within step 0, img2img's `strength` runs a tail of the set
schedule, and SDXL's base + refiner hand-off cuts the schedule at `denoising_end` on one side
and starts it at `denoising_start` on the other. These functions read each from the scheduler
(or the pipeline) as diffusers' loops set them, so that `clipcond.scheduled_embeds.StepSwap`
counts the steps the schedule it indexes counts.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch


def scheduler_order(scheduler: Any) -> int:
    """Loop iterations per denoising step of `scheduler` (`order`: 2 for Heun and KDPM2, else 1)."""
    return max(1, int(getattr(scheduler, "order", 1)))


def warmup_iterations(scheduler: Any) -> int:
    """The extra loop iterations a scheduler set for N steps runs within step 0: diffusers'
    ``num_warmup_steps``, ``len(timesteps) - N * order`` (never below 0), read from the
    scheduler's whole set schedule, of which img2img runs a tail that starts with the same
    warm-up (diffusers counts it there the same way). PNDM as Stable Diffusion 1.5 ships it (PLMS,
    `skip_prk_steps`) runs N steps in N + 1 iterations, its first timestep twice; Heun's
    2N - 1 iterations and every first-order scheduler's N give 0. 0 before `set_timesteps`."""
    timesteps, steps = getattr(scheduler, "timesteps", None), getattr(scheduler, "num_inference_steps", None)
    if timesteps is None or isinstance(steps, bool) or not isinstance(steps, int):
        return 0
    return max(len(timesteps) - steps * scheduler_order(scheduler), 0)


def step_of_iteration(iteration: int, order: int, warmup: int) -> int:
    """The denoising step (from 0) of loop iteration `iteration` (from 0), as diffusers' progress
    bar counts them: the first ``warmup + order`` iterations are step 0 (PNDM's warm-up call,
    which A1111's PLMS also counts within its first step), then `order` per step."""
    return max(iteration - warmup, 0) // order


def hand_off(pipe: Any, name: str) -> float | None:
    """diffusers' SDXL `denoising_start` or `denoising_end` of the call in progress (properties
    its pipelines set before the loop), where it cuts the schedule: a float in (0, 1), as
    diffusers' `denoising_value_valid` reads it; None otherwise."""
    value = getattr(pipe, name, None)
    return value if isinstance(value, float) and 0 < value < 1 else None


def skipped_before_start(scheduler: Any, denoising_start: float) -> int:
    """The iterations of `scheduler`'s set schedule before the first one a call with
    `denoising_start` runs, as diffusers' SDXL `get_timesteps` cuts them (called on a copy, which
    it may give a begin index): a second-order scheduler keeps whole steps."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    on = SimpleNamespace(scheduler=copy.deepcopy(scheduler))  # `get_timesteps` reads only its scheduler
    _, kept = StableDiffusionXLImg2ImgPipeline.get_timesteps(on, None, 1.0, None, denoising_start)
    return len(scheduler.timesteps) - kept


def loop_start(scheduler: Any, timestep: Any) -> int:
    """The index in `scheduler`'s set schedule of the call's first iteration (at that
    iteration, whose timestep is `timestep`): the begin index diffusers gives a scheduler that
    takes one (img2img's `strength` moves it), else where `timestep` first comes (0 if nowhere)."""
    begin = getattr(scheduler, "begin_index", None)
    if isinstance(begin, int):
        return begin
    found = torch.nonzero(torch.as_tensor(scheduler.timesteps).cpu() == torch.as_tensor(timestep).cpu())
    return int(found[0, 0]) if len(found) else 0
