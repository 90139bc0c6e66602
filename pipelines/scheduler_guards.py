"""Guards around a diffusers scheduler's sampling numbers, checked before the first UNet call.

An ancestral Euler step splits the move from `sigma_from` to `sigma_to` into a deterministic
part (`sigma_down`) and fresh noise (`sigma_up`), with

    sigma_up = sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2)
    sigma_down = sqrt(sigma_to^2 - sigma_up^2)

`sigma_down`'s radicand is sigma_to^4 / sigma_from^2 in exact arithmetic, never negative. With
the cosine schedule (`squaredcos_cap_v2`) the first sigma is ~2e4, so at a few step counts the
radicand falls below float32's resolution and rounds to a small negative number: the square root
is NaN and so is every image (diffusers issue #14213; `EulerAncestralDiscreteScheduler` as of
diffusers 0.42). The bundled shapes model samples with exactly that scheduler, and 3 steps hit
it. Where float32 would go negative, the sigmas are kept in float64 for that call (the images
stay float32; the step's arithmetic on the sigmas is then exact enough); everywhere else nothing
changes, so images stay bit-identical to diffusers' own pipelines.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler, SchedulerMixin

logger = logging.getLogger(__name__)


def ancestral_split_is_negative(sigmas: torch.Tensor) -> bool:
    """Whether `sigma_down`'s radicand, computed in `sigmas`' own dtype as the ancestral Euler
    step computes it, is negative (or NaN) for any step.

    Args:
        sigmas: (steps + 1,) the scheduler's noise levels, last one 0.
    """
    sigma_from, sigma_to = sigmas[:-1], sigmas[1:]
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    radicand = sigma_to**2 - sigma_up**2
    return bool(((radicand < 0) | torch.isnan(radicand)).any())


def guard_timesteps(scheduler: SchedulerMixin, num_inference_steps: int) -> None:
    """Call after `scheduler.set_timesteps`: fix or refuse sampling numbers that would be NaN.

    Raises:
        ValueError: the scheduler's timesteps or sigmas contain NaN at this step count (an
            upstream numerical bug; another step count or scheduler avoids it).
    """
    name = type(scheduler).__name__
    for attribute in ("timesteps", "sigmas"):
        values = getattr(scheduler, attribute, None)
        if isinstance(values, torch.Tensor) and values.is_floating_point() and torch.isnan(values).any():
            raise ValueError(
                f"{name} ({scheduler.config.get('beta_schedule')}) has NaN {attribute} at num_inference_steps="
                f"{num_inference_steps}; choose another step count or scheduler"
            )
    if isinstance(scheduler, EulerAncestralDiscreteScheduler) and scheduler.sigmas.dtype != torch.float64:
        if ancestral_split_is_negative(scheduler.sigmas):
            logger.warning(
                "%s at num_inference_steps=%d: float32 rounding makes sigma_down NaN (diffusers issue #14213); "
                "using float64 sigmas for this call",
                name,
                num_inference_steps,
            )
            scheduler.sigmas = scheduler.sigmas.to(torch.float64)


NON_FINITE_POLICIES = ("raise", "warn")


class NonFiniteLatents(FloatingPointError):
    """Sampling ended with NaN or infinite latents: the images would be black."""


def check_non_finite_policy(non_finite: object) -> str:
    """`non_finite` if it is "raise" or "warn"; a ValueError naming the argument otherwise."""
    if not isinstance(non_finite, str) or non_finite not in NON_FINITE_POLICIES:
        raise ValueError(f"`non_finite` must be one of {NON_FINITE_POLICIES}, got {non_finite!r}")
    return non_finite


def check_finite_inputs(tensors: dict[str, Any], non_finite: str) -> None:
    """With `non_finite="raise"`, refuse given input tensors that hold NaN or infinity, before
    any work: one NaN in a prompt's embeddings reaches every image through cross-attention's
    softmax, and one in the starting latents every pixel, so sampling would end in
    `NonFiniteLatents` (diffusers' pipelines returned black images).

    Args:
        tensors: argument name -> what the call was given: None, a tensor or numpy array, or a
            list of them (`ip_adapter_image_embeds`, a list of images); anything else (a PIL
            image) is not looked at.
        non_finite: the call's policy; "warn" lets them through.

    Raises:
        ValueError: naming the first argument holding NaN or infinite values.
    """
    if non_finite != "raise":
        return
    for name, value in tensors.items():
        for tensor in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(tensor, np.ndarray) and tensor.dtype.kind == "f":
                tensor = torch.from_numpy(tensor)
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())
            ):
                raise ValueError(
                    f"`{name}` holds NaN or infinite values: every image would come out NaN (black); pass "
                    "non_finite='warn' to sample anyway"
                )


def check_finite_latents(latents: torch.Tensor, non_finite: str) -> None:
    """Raise `NonFiniteLatents` (or, with `non_finite="warn"`, log a warning) when the final
    latents (batch, channels, height, width) hold NaN or infinity: decoded, they would be
    saved as black images."""
    if bool(torch.isfinite(latents).all()):
        return
    message = (
        f"the sampled latents contain NaN or infinite values ({latents.dtype}), so the images would be black; "
        "in float16 try bfloat16 or float32, or another scheduler or step count"
    )
    if non_finite == "raise":
        raise NonFiniteLatents(message + "; pass non_finite='warn' to get the images anyway")
    logger.warning(message)


__all__ = [
    "NON_FINITE_POLICIES",
    "NonFiniteLatents",
    "ancestral_split_is_negative",
    "check_finite_inputs",
    "check_finite_latents",
    "check_non_finite_policy",
    "guard_timesteps",
]
