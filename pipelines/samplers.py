"""A1111's sampler names -> the diffusers scheduler diffusers' documentation maps each to.

diffusers' scheduler overview (``docs/source/en/api/schedulers/overview.md``) gives a table from
A1111 / k-diffusion sampler names to its schedulers and their init arguments; `SAMPLERS` holds
that table, and three names A1111 lists beside it whose algorithm diffusers implements under the
same name: DDIM, PLMS (`PNDMScheduler` with `skip_prk_steps`, as Stable Diffusion 1.x ships it)
and UniPC. A name ending in " Karras" is its base sampler with Karras sigmas
(`use_karras_sigmas=True`), for the samplers the table gives such a row.

These are diffusers' samplers: the images are diffusers' under that mapping, not A1111's
(k-diffusion spaces the timesteps its own way, and diffusers notes that some rows are only "very
similar"). Names the table maps to no diffusers scheduler (DPM++ 2S a, DPM adaptive, DPM fast)
are refused.
"""

from __future__ import annotations

import inspect
from typing import Any

# A1111 name -> (diffusers scheduler class, init arguments), Karras variants apart
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
# the samplers the table also names with " Karras"
KARRAS_SAMPLERS = ("DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM2", "DPM2 a", "LMS")
KARRAS = " Karras"
# every name `scheduler_for_sampler` takes
SAMPLER_NAMES = tuple(SAMPLERS) + tuple(name + KARRAS for name in KARRAS_SAMPLERS)
# sigma spacings a scheduler may have been saved with, which the sampler's name replaces
_OTHER_SIGMAS = ("use_exponential_sigmas", "use_beta_sigmas")


def sampler_name(value: str) -> str:
    """`value` as the A1111 sampler name of `SAMPLER_NAMES` it spells, case and runs of spaces
    aside (``"euler  a"`` -> ``"Euler a"``).

    Raises:
        TypeError: `value` is not a string.
        ValueError: it names no sampler of `SAMPLER_NAMES`, listing them.
    """
    if not isinstance(value, str):
        raise TypeError(f"a sampler name must be a string, got {type(value).__name__}")
    spelled = " ".join(value.split()).casefold()
    for name in SAMPLER_NAMES:
        if name.casefold() == spelled:
            return name
    raise ValueError(
        f"no sampler is named {value!r:.80}: A1111's names that diffusers has a scheduler for are "
        f"{', '.join(SAMPLER_NAMES)}"
    )


def scheduler_for_sampler(sampler: str, scheduler: Any) -> Any:
    """The diffusers scheduler for A1111's sampler `sampler`, made from `scheduler`'s config
    (the model's: its betas, prediction type, timestep spacing) as diffusers documents
    switching schedulers (``NewScheduler.from_config(pipe.scheduler.config, ...)``), with the
    init arguments the mapping gives. The Karras flag follows the name (a name without
    " Karras" turns off Karras sigmas a saved config may hold), and exponential or beta sigmas
    are turned off.

    Args:
        sampler: a name of `SAMPLER_NAMES` (`sampler_name` spelling).
        scheduler: the pipeline's scheduler, whose config is kept.

    Raises:
        TypeError, ValueError: `sampler` names no sampler (`sampler_name`), or `scheduler` has
            no config.
    """
    import diffusers

    name = sampler_name(sampler)
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"`scheduler` must be a diffusers scheduler with a config, got {type(scheduler).__name__}")
    karras = name.endswith(KARRAS)
    class_name, settings = SAMPLERS[name.removesuffix(KARRAS)]
    kind = getattr(diffusers, class_name)
    accepted = inspect.signature(kind.__init__).parameters
    settings = dict(settings)
    if "use_karras_sigmas" in accepted:
        settings["use_karras_sigmas"] = karras
    settings.update({other: False for other in _OTHER_SIGMAS if other in accepted})
    return kind.from_config(config, **settings)
