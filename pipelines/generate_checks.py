"""The checks of ``clipcond generate`` that need the loaded pipeline: what its UNet reads, the
image size, `--steps` against its scheduler, `--clip-skip`, `--n` images no memory holds, and a
`--lora` that fits no layer or adds no adapter. Each raises a `UsageError` (one ``error:`` line,
exit 2) before sampling."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipcond.errors import UsageError, user_errors
from clipcond.pipelines.generate_sources import SourceImages


def check_against_model(args: argparse.Namespace, pipe: Any) -> None:
    """The checks that need the loaded pipeline: an inpainting UNet has a mask to read, the
    image size, `--steps` (a number the scheduler can set) and `--clip-skip`."""
    from clipcond.pipelines.argument_values import check_steps_fit_scheduler
    from clipcond.pipelines.input_checks import image_size_fits, image_size_rule

    if pipe.unet_reads_a_mask and args.mask is None:
        raise UsageError(
            f"--model {args.model}: its UNet is an inpainting UNet (it reads a mask and the masked image beside the "
            "latents): give --image and --mask"
        )

    for option, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and not image_size_fits(value, pipe.vae_scale_factor):
            raise UsageError(f"{option} must be {image_size_rule(pipe.vae_scale_factor)} for this model, got {value}")
    with user_errors(ValueError, context=f"--steps {args.steps}: "):
        check_steps_fit_scheduler(pipe.scheduler, args.steps, None, None)
    if args.clip_skip is not None:
        with user_errors(ValueError, TypeError, context=f"--clip-skip {args.clip_skip}: "):
            pipe.conditioner_for(args.clip_skip)


def memory_bytes() -> int:
    """The most memory this process may hold: the machine's RAM (the CLI samples on the CPU),
    or the address-space limit (``ulimit -v``) when lower; torch's largest storage, 2**63
    bytes, where neither can be read."""
    import resource

    limits = [2**63]
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits)


def text_to_image_size(args: argparse.Namespace, pipe: Any) -> tuple[int, int]:
    """The (width, height) in pixels of a text-to-image run: ``--width`` / ``--height``, else
    the UNet's sample size times the VAE's factor (as the pipeline's default)."""
    sample = pipe.unet.config.sample_size
    sample_height, sample_width = (sample, sample) if isinstance(sample, int) else sample
    return args.width or sample_width * pipe.vae_scale_factor, args.height or sample_height * pipe.vae_scale_factor


def check_memory(
    args: argparse.Namespace, pipe: Any, sources: SourceImages | None, hires_size: tuple[int, int] | None = None
) -> None:
    """Refuse, before anything is allocated, `--n` images whose decoded pixels alone (n x 3 x
    height x width float32, 12 bytes a pixel) need more memory than `memory_bytes`: such a
    run fails in torch's allocator (or overflows its size arithmetic) after the text encoders ran.
    `hires_size`: the (width, height) of the hires fix's second pass, the run's largest images.

    Raises:
        UsageError: naming --n and the size, the bytes needed and the bytes there are.
    """
    if sources is not None:
        width, height = sources.image.size
        size, lower = f"{height} x {width} pixels (--image's height x width)", "--n or the --image size"
    elif hires_size is not None:
        width, height = hires_size
        size, lower = f"{height} x {width} pixels (the hires fix's)", "--n, --hires-scale, --height or --width"
    else:
        width, height = text_to_image_size(args, pipe)
        size, lower = f"{height} x {width} pixels", "--n, --height or --width"
    needed, there = args.n * 3 * height * width * 4, memory_bytes()
    if needed > there:
        raise UsageError(
            f"--n {args.n} image(s) of {size} need at least {needed / 2**30:.3g} GiB for their decoded pixels alone, "
            f"more than the {there / 2**30:.3g} GiB of memory this process may use; lower {lower}"
        )


def what_the_lora_holds(lora: str | Path) -> str:
    """For a ``.safetensors`` file: ``" (it holds no tensors)"``, or the first part of its
    tensor names, e.g. ``" (its tensor names start with 'transformer.': a LoRA for a
    transformer model such as Flux or SD3?)"``; "" for a folder or hub id."""
    from safetensors import safe_open

    path = Path(lora)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return ""
    with safe_open(path, framework="pt") as weights:
        keys = list(weights.keys())
    if not keys:
        return " (it holds no tensors)"
    prefixes = sorted({key.split(".", 1)[0] + "." for key in keys})
    named = ", ".join(repr(prefix) for prefix in prefixes[:3])
    guess = ": a LoRA for a transformer model such as Flux or SD3?" if "transformer." in prefixes else ""
    return f" (its tensor names start with {named}{guess})"


@contextlib.contextmanager
def lora_of_another_architecture(lora: str | Path) -> Iterator[None]:
    """peft's `RuntimeError` for LoRA tensors whose shapes do not fit the model's layers (torch's
    "Error(s) in loading state_dict ... size mismatch", one line per tensor) as a `UsageError`
    naming `--lora`, the first mismatch and the likely cause; any other RuntimeError stays a bug."""
    try:
        yield
    except RuntimeError as error:
        text = str(error)
        if "Error(s) in loading state_dict" not in text:
            raise
        mismatches = [line.strip() for line in text.splitlines() if "size mismatch" in line]
        first = f": {mismatches[0]}" if mismatches else ""
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise UsageError(
            f"--lora {lora}: cannot load LoRA weights: their tensors do not fit this model's layers{first}{more}; "
            "the LoRA was probably made for another model architecture (an SDXL LoRA on a Stable Diffusion 1.x "
            "or 2.x model, or the reverse): use one trained for this --model"
        ) from error
