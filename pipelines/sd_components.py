"""What `StableDiffusionPipeline`'s constructor does to its components, for pipelines that
stand in for it: the scheduler config rewrite and the safety-checker rules.

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
from typing import Any

from diffusers.configuration_utils import FrozenDict


def normalise_scheduler_config(scheduler: Any) -> None:
    """Rewrite `scheduler`'s config in place as `StableDiffusionPipeline.__init__` does: a
    `steps_offset` other than 1 becomes 1 and a `clip_sample` of True becomes False, each with
    a FutureWarning naming the key. Schedulers without these keys are left alone.

    The scheduler is changed in place, as SD changes it: a pipeline sharing it sees the same
    config.

    Args:
        scheduler: a diffusers scheduler, or None (nothing to do).
    """
    if scheduler is None:
        return
    if scheduler.config.get("steps_offset", 1) != 1:
        _rewrite(scheduler, "steps_offset", 1, "timesteps then fall where Stable Diffusion's were sampled")
    if scheduler.config.get("clip_sample", False) is True:
        _rewrite(scheduler, "clip_sample", False, "clipping the predicted sample to [-1, 1] would clip latents")


def _rewrite(scheduler: Any, key: str, value: Any, why: str) -> None:
    warnings.warn(
        f"{type(scheduler).__name__}'s config has `{key}: {scheduler.config[key]!r}`; using {value!r} as "
        f"StableDiffusionPipeline does ({why}). Update its scheduler_config.json to silence this.",
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


__all__ = ["check_safety_checker", "normalise_scheduler_config"]
