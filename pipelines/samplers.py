"""A1111's sampler names -> the diffusers scheduler diffusers' documentation maps each to.

diffusers' scheduler overview (``docs/source/en/api/schedulers/overview.md``) gives a table from
A1111 / k-diffusion sampler names to its schedulers and their init arguments; `SAMPLERS` holds
that table, and three names A1111 lists beside it whose algorithm diffusers implements under the
same name: DDIM, PLMS (`PNDMScheduler` with `skip_prk_steps`, as Stable Diffusion 1.x ships it)
and UniPC. A name ending in " Karras" is its base sampler with Karras sigmas
(`use_karras_sigmas=True`), for the samplers the table gives such a row.

A1111 also names the sigma schedule apart, in its "Schedule type" setting; `SCHEDULE_TYPES` holds
those the same overview maps (its "Noise schedules and schedule types" table): Karras,
Exponential, Beta, SGM Uniform and Simple, and Automatic, the sampler's own.

These are diffusers' samplers: the images are diffusers' under that mapping, not A1111's
(k-diffusion spaces the timesteps its own way). Names the table maps to no diffusers scheduler
(DPM++ 2S a, DPM adaptive, DPM fast) are refused.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

from clipcond.json_reading import json_object_in
from clipcond.pipelines.option_names import named_by, spelled_name

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
# A1111's schedule types -> the init arguments the overview's table gives them; Automatic: the
# sampler's own (the name decides the Karras sigmas)
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "Beta": {"timestep_spacing": "linspace", "use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
}
# the kinds of sigmas a scheduler may be set to, one at a time
_SIGMA_KINDS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def sampler_name(value: str) -> str:
    """`value` as the A1111 sampler name of `SAMPLER_NAMES` it spells, case and runs of spaces
    aside (``"euler  a"`` -> ``"Euler a"``).

    Raises:
        TypeError: `value` is not a string.
        ValueError: it names no sampler of `SAMPLER_NAMES`, listing them.
    """
    return spelled_name(value, SAMPLER_NAMES, "sampler", "A1111's names that diffusers has a scheduler for")


def schedule_type_name(value: str) -> str:
    """`value` as the A1111 schedule type of `SCHEDULE_TYPES` it spells, case and runs of spaces
    aside (``"sgm uniform"`` -> ``"SGM Uniform"``).

    Raises:
        TypeError: `value` is not a string.
        ValueError: it names no schedule type of `SCHEDULE_TYPES`, listing them.
    """
    return spelled_name(
        value, tuple(SCHEDULE_TYPES), "schedule type", "A1111's schedule types that diffusers documents"
    )


def scheduler_for_sampler(sampler: str | None, scheduler: Any, schedule_type: str | None = None) -> Any:
    """The diffusers scheduler for A1111's sampler `sampler` and schedule type `schedule_type`,
    made from `scheduler`'s config (the model's: its betas, prediction type, timestep spacing)
    as diffusers documents switching schedulers (``NewScheduler.from_config(pipe.scheduler.config,
    ...)``), with the init arguments the mapping gives (`sampler_settings`).

    Args:
        sampler: a name of `SAMPLER_NAMES` (`sampler_name` spelling); None: `scheduler`'s own
            class, for a schedule type alone.
        scheduler: the pipeline's scheduler, whose config is kept.
        schedule_type: a name of `SCHEDULE_TYPES` (`schedule_type_name` spelling); None or
            "Automatic": the sampler's own.

    Raises:
        TypeError, ValueError: `scheduler` without a config, or what `sampler_settings` raises.
    """
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"`scheduler` must be a diffusers scheduler with a config, got {type(scheduler).__name__}")
    kind, settings = sampler_settings(sampler, schedule_type, type(scheduler))
    return kind.from_config(config, **settings)


def sampler_settings(
    sampler: str | None, schedule_type: str | None, model_scheduler: type
) -> tuple[type, dict[str, Any]]:
    """The diffusers scheduler class for A1111's sampler `sampler` and schedule type
    `schedule_type` and the init arguments to make it with from the model's scheduler config.
    The sigmas are one kind: Karras where the sampler's name ends in " Karras" or the schedule
    type is Karras, exponential or beta where the schedule type says so, else the scheduler's
    plain ones (a kind a saved config holds is turned off). Needs no model: `generate` checks
    its options with it before loading one.

    Args:
        sampler: a name of `SAMPLER_NAMES` (`sampler_name` spelling); None: `model_scheduler`,
            for a schedule type alone.
        schedule_type: a name of `SCHEDULE_TYPES` (`schedule_type_name` spelling); None or
            "Automatic": the sampler's own.
        model_scheduler: the class of the model's scheduler.

    Raises:
        TypeError, ValueError: a name that names nothing (`sampler_name`, `schedule_type_name`),
            neither name given, a sampler named with " Karras" beside another schedule type,
            or a schedule type the scheduler has no setting for (Euler a, DDIM, PLMS: no sigma
            kinds; DPM++ SDE: no timestep spacing).
    """
    import diffusers

    if sampler is None and schedule_type is None:
        raise ValueError("give a sampler, a schedule type or both")
    schedule = "Automatic" if schedule_type is None else schedule_type_name(schedule_type)
    if sampler is None:
        kind, settings, karras, named = model_scheduler, {}, False, f"the model's {model_scheduler.__name__}"
    else:
        name = sampler_name(sampler)
        karras = name.endswith(KARRAS)
        if karras and schedule not in ("Automatic", "Karras"):
            raise ValueError(
                f"sampler {name!r} names Karras sigmas and schedule type {schedule!r} others: name the sampler "
                f"{name.removesuffix(KARRAS)!r} with that schedule type"
            )
        class_name, settings = SAMPLERS[name.removesuffix(KARRAS)]
        kind, named = getattr(diffusers, class_name), f"sampler {name!r} ({class_name})"
    settings = dict(settings)
    accepted = inspect.signature(kind.__init__).parameters
    wanted = dict(SCHEDULE_TYPES[schedule])
    if karras:
        wanted["use_karras_sigmas"] = True
    missing = [argument for argument in wanted if argument not in accepted]
    if missing:
        raise ValueError(f"schedule type {schedule!r} needs {', '.join(missing)}, which {named} does not take")
    if sampler is not None or schedule != "Automatic":  # the sigma kind is decided here
        settings.update({other: False for other in _SIGMA_KINDS if other in accepted})
    settings.update(wanted)
    return kind, settings


def saved_scheduler_class(model: str | Path) -> type | None:
    """The diffusers scheduler class a pipeline folder `model` saved (its
    ``scheduler/scheduler_config.json`` names it); None for a hub id, a folder without that
    file, a file that cannot be read (the load names it) or a name that is no diffusers
    scheduler."""
    if isinstance(model, str):
        return None
    return scheduler_class_named(json_object_in(Path(model) / "scheduler" / "scheduler_config.json").get("_class_name"))


def scheduler_class_named(name: object) -> type | None:
    """The diffusers scheduler class `name` names (``"DDIMScheduler"``); None for anything else
    (not a string, no such name in diffusers, a class that is no scheduler)."""
    import diffusers

    found = getattr(diffusers, name, None) if isinstance(name, str) and name else None
    return found if isinstance(found, type) and issubclass(found, diffusers.SchedulerMixin) else None


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """`generate`'s ``--sampler`` and ``--schedule-type``, each name read by `sampler_name` and
    `schedule_type_name` (a name that names nothing is argparse's error, listing the names)."""
    parser.add_argument(
        "--sampler",
        type=named_by(sampler_name),
        metavar="NAME",
        help="A1111's sampler name, run as the diffusers scheduler diffusers' documentation maps it to, made from the "
        f"model's scheduler config (clipcond.pipelines.samplers): {', '.join(SAMPLER_NAMES)}; "
        "default: the model's own scheduler",
    )
    parser.add_argument(
        "--schedule-type",
        type=named_by(schedule_type_name),
        metavar="NAME",
        help=f"A1111's schedule type, as diffusers' documentation maps it: {', '.join(SCHEDULE_TYPES)} "
        "(default: Automatic, the sampler's own; with no --sampler, it applies to the model's scheduler)",
    )
