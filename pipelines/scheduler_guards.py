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


def warn_if_not_finite(images: torch.Tensor) -> None:
    """Say so when sampled images contain NaN or infinity (they would be saved as black)."""
    if not bool(torch.isfinite(images).all()):
        logger.warning(
            "the sampled images contain NaN or infinite values; in float16 try bfloat16 or float32, "
            "or another scheduler or step count"
        )


__all__ = ["ancestral_split_is_negative", "guard_timesteps", "warn_if_not_finite"]
