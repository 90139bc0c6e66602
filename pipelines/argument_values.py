"""What single call arguments may hold beyond their annotated type, checked before any work:
a `generator`, the names a step callback reads, the numbers of a custom schedule, a
`num_inference_steps` the scheduler can set, an `eta` the scheduler can step with, and
`encode_prompt`'s `device` and `do_classifier_free_guidance`. Numbers in general are read as Python's by
`clipcond.scalars` at the top of each call, `clip_skip` by
`clipcond.conditioner_setup.clip_skip_as_int`.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import numpy as np
import torch

from clipcond.scalars import as_int


def check_generator(generator: Any) -> None:
    """`generator` as diffusers' `randn_tensor` reads it: None, a `torch.Generator`, or a list
    of them (one per image); anything else fails there, after the text encoders ran.

    Raises:
        TypeError: naming `generator` (for an int seed: how to make a generator of it).
    """
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list) and all(isinstance(item, torch.Generator) for item in generator):
        return
    if isinstance(as_int(generator), int) and not isinstance(generator, bool):
        hint = f"; for a seed pass torch.Generator().manual_seed({int(generator)})"
    elif isinstance(generator, tuple):
        hint = "; give a list, one torch.Generator per image"
    else:
        hint = ""
    raise TypeError(
        f"`generator` must be None, a torch.Generator or a list of them, got {type(generator).__name__}{hint}"
    )


def callback_tensor_names(names: Any) -> list[str]:
    """`callback_on_step_end_tensor_inputs` as a list of names (None: ["latents"]). A string
    would be read as its characters; diffusers lists them as unknown names.

    Raises:
        TypeError: not a list (or tuple) of strings.
    """
    if names is None:
        return ["latents"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise TypeError(
            f"`callback_on_step_end_tensor_inputs` must be a list of tensor names such as ['latents'], got {names!r}"
        )
    return list(names)


_REAL_KINDS = ("b", "i", "u", "f")  # numpy's dtype kinds of booleans, signed and unsigned ints, floats


def check_schedule_values(name: str, schedule: Any) -> None:
    """Custom `timesteps` or `sigmas` as the schedulers read them (`np.array(schedule)`): a
    non-empty 1-D sequence of real numbers (Python or numpy numbers, 0-d tensors, or a 1-D
    CPU tensor or array), all finite. Strings and nested lists fail inside the scheduler with
    numpy's message, which names neither; a NaN there fails at the first step, or not at all.
    A tensor on an accelerator, or one that requires grad, fails there too (numpy reads
    neither); its refusal says what to pass. Booleans are read as 0 and 1, as diffusers reads
    them.

    Raises:
        ValueError: naming `name` and what it holds.
    """
    no_sequence = not hasattr(schedule, "__len__") or getattr(schedule, "ndim", 1) == 0  # a 0-d tensor
    if isinstance(schedule, (str, bytes)) or no_sequence or len(schedule) == 0:
        raise ValueError(f"`{name}` must be a non-empty list of numbers, got {schedule!r}")
    if isinstance(schedule, torch.Tensor) and (schedule.device.type != "cpu" or schedule.requires_grad):
        off_cpu = schedule.device.type != "cpu"
        where, fix = ("on the CPU", f"{name}.cpu()") if off_cpu else ("outside autograd", f"{name}.detach()")
        raise ValueError(
            f"`{name}` is a tensor on {schedule.device} (requires_grad={schedule.requires_grad}); the scheduler reads "
            f"it with numpy, which reads tensors {where} only: pass `{fix}` or a list"
        )
    try:
        values = np.asarray(schedule)
    except (TypeError, ValueError, RuntimeError):  # ragged lists; tensors numpy cannot read, as the schedulers cannot
        values = None
    if values is None or values.ndim != 1 or values.dtype.kind not in _REAL_KINDS:
        raise ValueError(f"`{name}` must be a flat list of real numbers, got {schedule!r}")
    if not np.isfinite(values).all():
        raise ValueError(f"`{name}` must hold finite numbers, got {schedule!r}")


def custom_schedule_name(timesteps: Any, sigmas: Any) -> str | None:
    """The custom schedule argument a call gives: "timesteps", "sigmas", or None (the step
    count sets the schedule). At most one is given (`check_sampling_inputs`)."""
    return "timesteps" if timesteps is not None else "sigmas" if sigmas is not None else None


def check_steps_fit_scheduler(scheduler: Any, num_inference_steps: int, timesteps: Any, sigmas: Any) -> None:
    """Set the call's schedule on a copy of `scheduler`, as the call will, so that one it
    refuses, or one that leaves no step to run, fails before any work: DDIM, DDPM and LCM take
    at most their `num_train_timesteps` steps, DDPM and LCM custom `timesteps` in descending
    order only (diffusers raises those ValueErrors after the prompt is encoded), and Euler's
    schedulers read the last custom sigma as where the last step ends, so one sigma is no step
    (diffusers then runs none and returns the starting noise). The custom values themselves
    are checked first (`check_schedule_values`).

    Raises:
        ValueError: naming `num_inference_steps`, `timesteps` or `sigmas`, with the scheduler's
            reason.
    """
    probe = copy.deepcopy(scheduler)
    name = custom_schedule_name(timesteps, sigmas)
    if name is not None:
        values = timesteps if timesteps is not None else sigmas
        try:
            probe.set_timesteps(device="cpu", **{name: values})
        except ValueError as error:
            reason = " ".join(str(error).split())
            raise ValueError(f"`{name}` {values!r} cannot be set on {type(scheduler).__name__}: {reason}") from error
        if len(probe.timesteps) == 0:
            ends = " (it reads the last sigma as where the last step ends)" if name == "sigmas" else ""
            raise ValueError(
                f"`{name}` {values!r} leaves {type(scheduler).__name__} no step to run{ends}; give more values"
            )
        return
    try:
        probe.set_timesteps(num_inference_steps, device="cpu")
    except ValueError as error:
        limit = getattr(scheduler.config, "num_train_timesteps", None)
        most = "" if limit is None else f" (at most its num_train_timesteps, {limit})"
        raise ValueError(
            f"`num_inference_steps` {num_inference_steps} is more than {type(scheduler).__name__} can set{most}: "
            f"{' '.join(str(error).split())}"
        ) from error


def check_eta(eta: Any, scheduler: Any) -> None:
    """`eta` (already read by `clipcond.scalars.as_float`): a finite real number; where
    `scheduler.step` reads it (DDIM, TCD), in [0, 1], the noise weight's documented range.
    diffusers does not check it: a non-number fails inside the first scheduler step, after the
    prompt is encoded; TCD asserts 0 <= eta <= 1 there; DDIM's latents turn NaN above 1
    (measured at 1.01 over 2 to 10 steps: the variance of the step's direction goes negative);
    with a negative eta DDIM shrinks each step's direction by eta squared but adds no noise
    (its step adds noise only for eta > 0), a sampler of neither kind. A scheduler that does
    not read it (Euler, DPM-Solver...) ignores any number, as in diffusers.

    Raises:
        ValueError: naming `eta`, what it holds and the range.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
        raise ValueError(f"`eta` must be a finite number (DDIM's noise weight, 0 to 1), got {eta!r}")
    reads_eta = "eta" in inspect.signature(scheduler.step).parameters
    if reads_eta and not 0 <= eta <= 1:
        raise ValueError(
            f"`eta` must be in [0, 1] for {type(scheduler).__name__} (0: deterministic, 1: the most noise), got {eta!r}"
        )


def check_cross_attention_kwargs(cross_attention_kwargs: Any) -> None:
    """None, or a dict of keyword arguments for the attention processors (its "scale": a
    LoRA's, checked where it is read). Keys that are no strings cannot be keyword arguments:
    Python's "keywords must be strings" named nothing.

    Raises:
        TypeError: naming `cross_attention_kwargs` and what it holds.
    """
    if cross_attention_kwargs is None:
        return
    if not isinstance(cross_attention_kwargs, dict):
        raise TypeError(f"`cross_attention_kwargs` must be a dict or None, got {type(cross_attention_kwargs).__name__}")
    keys = [key for key in cross_attention_kwargs if not isinstance(key, str)]
    if keys:
        raise TypeError(
            "`cross_attention_kwargs` must have strings as keys (the attention processors' argument names, such as "
            f"'scale'), got {keys[0]!r}"
        )


def check_device(device: Any) -> None:
    """`device` as torch reads it: a `torch.device`, a device string ("cuda:0", "cpu") or
    an accelerator index (0 is the first), or None. Anything else failed at the first
    `.to(device)`, after the prompt was encoded. An index is not looked up here (a torch
    build without an accelerator refuses to make a device of one; the call then fails where
    the device is used, as in diffusers).

    Raises:
        TypeError: naming `device` and what it holds.
    """
    if device is None or isinstance(device, torch.device):
        return
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return
    if isinstance(device, str):
        try:
            torch.device(device)
            return
        except RuntimeError:
            pass
    raise TypeError(
        f"`device` must be a torch.device, a device string such as 'cuda:0' or 'cpu', or a device index, got {device!r}"
    )


def check_flag(name: str, value: Any) -> None:
    """`value` as a yes or no: a bool (numpy's too). diffusers reads any object's truth, so
    a string or a number passed by mistake silently picks one; a tensor of several values
    fails with torch's "ambiguous" error, naming nothing.

    Raises:
        TypeError: naming `name` and the type found.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}: {value!r}")


__all__ = [
    "callback_tensor_names",
    "check_cross_attention_kwargs",
    "check_device",
    "check_eta",
    "check_flag",
    "check_generator",
    "check_schedule_values",
    "check_steps_fit_scheduler",
    "custom_schedule_name",
]
