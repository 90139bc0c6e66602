"""What Stable Diffusion's pipeline constructors do to their components, for pipelines that
stand in for them: the scheduler config rewrites (text-to-image and img2img's, inpainting's)
and the safety-checker rules.

Stable Diffusion checkpoints of 2022 ship scheduler configs with `steps_offset: 0` and
`clip_sample: true`, and so do fresh diffusers schedulers (`DDIMScheduler()`). SD's
constructor rewrites both in the scheduler's own config, with a FutureWarning, because they
are wrong for SD: an offset of 0 puts every "leading" timestep one below the one SD was
sampled with ([500, 0] instead of [501, 1] at 2 steps), and clipping the predicted sample to
[-1, 1] clips latents, which are not in that range. A pipeline that gives SD's images on SD's
components must make the same rewrite.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from diffusers.configuration_utils import FrozenDict

# What each Stable Diffusion constructor rewrites, by key: (wrong value test, value, why).
# StableDiffusionPipeline and its img2img sibling rewrite `steps_offset` and `clip_sample`;
# StableDiffusionInpaintPipeline rewrites `steps_offset` and `skip_prk_steps` (a PNDM scheduler
# without it runs its Runge-Kutta warm-up) and keeps `clip_sample` as configured.
_REWRITES: dict[str, tuple[Callable[[Any], bool], Any, str]] = {
    "steps_offset": (
        lambda config: config.get("steps_offset", 1) != 1,
        1,
        "timesteps then fall where Stable Diffusion's were sampled",
    ),
    "clip_sample": (
        lambda config: config.get("clip_sample", False) is True,
        False,
        "clipping the predicted sample to [-1, 1] would clip latents",
    ),
    "skip_prk_steps": (
        lambda config: config.get("skip_prk_steps", True) is False,
        True,
        "as Stable Diffusion's inpainting pipeline runs PNDM",
    ),
}
TEXT_TO_IMAGE_REWRITES = ("steps_offset", "clip_sample")
INPAINT_REWRITES = ("steps_offset", "skip_prk_steps")


def normalise_scheduler_config(scheduler: Any, rewrites: tuple[str, ...] = TEXT_TO_IMAGE_REWRITES) -> None:
    """Rewrite `scheduler`'s config in place as a Stable Diffusion constructor does, each
    rewrite with a FutureWarning naming the key: `steps_offset` other than 1 becomes 1,
    `clip_sample` of True becomes False (`StableDiffusionPipeline`, its img2img sibling),
    `skip_prk_steps` of False becomes True (`StableDiffusionInpaintPipeline`, with the offset).
    Schedulers without these keys are left alone.

    The scheduler is changed in place, as SD changes it: a pipeline sharing it sees the same
    config.

    Args:
        scheduler: a diffusers scheduler, or None (nothing to do).
        rewrites: the keys to rewrite, `TEXT_TO_IMAGE_REWRITES` or `INPAINT_REWRITES`.
    """
    if scheduler is None:
        return
    for key in rewrites:
        is_wrong, value, why = _REWRITES[key]
        if is_wrong(scheduler.config):
            _rewrite(scheduler, key, value, why)


def _rewrite(scheduler: Any, key: str, value: Any, why: str) -> None:
    warnings.warn(
        f"{type(scheduler).__name__}'s config has `{key}: {scheduler.config[key]!r}`; using {value!r} as "
        f"Stable Diffusion's pipelines do ({why}). Update its scheduler_config.json to silence this.",
        FutureWarning,
        stacklevel=4,
    )
    scheduler._internal_dict = FrozenDict({**scheduler.config, key: value})


def check_safety_checker(safety_checker: Any, feature_extractor: Any, requires_safety_checker: bool) -> bool:
    """Stable Diffusion's rules for the safety checker; returns whether to warn that it is off.

    Raises:
        TypeError: `requires_safety_checker` is not a bool.
        ValueError: a safety checker without the feature extractor that prepares its input.
    """
    if not isinstance(requires_safety_checker, bool):
        raise TypeError(f"`requires_safety_checker` must be a bool, got {requires_safety_checker!r}")
    if safety_checker is not None and feature_extractor is None:
        raise ValueError(
            "a `safety_checker` needs a `feature_extractor` (a CLIPImageProcessor) to prepare its input; "
            "pass one, or pass safety_checker=None"
        )
    return safety_checker is None and requires_safety_checker


__all__ = ["INPAINT_REWRITES", "TEXT_TO_IMAGE_REWRITES", "check_safety_checker", "normalise_scheduler_config"]
