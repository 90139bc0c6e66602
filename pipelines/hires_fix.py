"""A1111's "Hires. fix" for ``clipcond generate``: ``--hires-scale``, ``--hires-steps``,
``--hires-upscaler`` and ``--hires-strength``.

A1111's text to image with hires fix draws at the given size, upscales each image and draws
again at the larger size as image to image. As A1111's code does it (`processing.py`,
`sd_samplers_common.setup_img2img_steps`):

- the hires size is ``int(width x scale)`` by ``int(height x scale)``; the latent upscalers
  interpolate the latents to that size divided by the VAE's factor (rounded down), so the
  pixel upscalers here resize to the same size (a multiple of the factor) and both paths
  draw images of one size;
- the latent upscalers (``Latent``, ``Latent (antialiased)``, ``Latent (bicubic)``, ``Latent
  (bicubic antialiased)``, ``Latent (nearest)``, ``Latent (nearest-exact)``) are
  `torch.nn.functional.interpolate` of the first pass's latents in A1111's modes; the pixel
  upscalers (``Lanczos``, ``Nearest``, ``None``) decode the first pass (to 8 bits, truncated as
  A1111 does), resize each image with PIL as A1111's `resize_image` does with them
  (`upscale_image`), and encode it again. A1111's model upscalers (ESRGAN, SwinIR, ...) are not
  here;
- the second pass runs ``--hires-steps`` steps (default: ``--steps``), the last ones of a
  schedule of ``int(steps / min(strength, 0.999))`` steps (`second_pass_schedule`), with noise
  drawn again from each image's seed, and reads the same prompt (prompt editing counts the
  steps it runs).

The second pass is `CLIPConditionedImg2ImgPipeline` on the same components, which equals
diffusers' img2img pipelines image for image; the samplers are diffusers', so the images are not
A1111's. The PNG keeps A1111's fields: ``Size`` is the first pass's, then ``Denoising
strength``, ``Hires upscale``, ``Hires steps`` (when given) and ``Hires upscaler``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clipcond.errors import UsageError, user_errors
from clipcond.pipelines.option_names import named_by, spelled_name

# A1111's latent upscalers -> (torch's interpolation mode, antialias)
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# A1111's upscalers that resize decoded images with PIL: the name of the filter of their own
# first resize (None: "None", which resizes with Lanczos alone)
PIXEL_UPSCALERS: dict[str, str | None] = {"Lanczos": "LANCZOS", "Nearest": "NEAREST", "None": None}
UPSCALERS = (*LATENT_UPSCALERS, *PIXEL_UPSCALERS)
DEFAULT_UPSCALER = "Latent"  # A1111's default
DEFAULT_STRENGTH = 0.7  # the "Denoising strength" A1111's txt2img page starts with
_MOST_STRENGTH = 0.999  # A1111 divides by the strength, at most this
_MOST_PIXELS = 2**31 - 1  # a PNG's most pixels a side
_OPTIONS = ("--hires-steps", "--hires-upscaler", "--hires-strength")


@dataclass(frozen=True)
class HiresFix:
    """What the ``--hires-*`` options asked for.

    Attributes:
        scale: the hires size over the first pass's, >= 1.
        steps: the steps the second pass runs; None: as many as the first pass.
        upscaler: a name of `UPSCALERS`.
        strength: A1111's "Denoising strength", in (0, 1].
    """

    scale: float
    steps: int | None
    upscaler: str
    strength: float

    @property
    def in_latents(self) -> bool:
        """Whether the upscaler works on latents (no decoding between the passes)."""
        return self.upscaler in LATENT_UPSCALERS


def upscaler_name(value: str) -> str:
    """`value` as the upscaler of `UPSCALERS` it spells, case and runs of spaces aside.

    Raises:
        TypeError: `value` is not a string.
        ValueError: it names none of them (A1111's model upscalers among them), listing them.
    """
    return spelled_name(value, UPSCALERS, "hires upscaler", "A1111's upscalers clipcond has")


def add_hires_arguments(parser: argparse.ArgumentParser) -> None:
    """`generate`'s ``--hires-scale``, ``--hires-steps``, ``--hires-upscaler`` and ``--hires-strength``."""
    parser.add_argument(
        "--hires-scale",
        type=float,
        metavar="SCALE",
        help="A1111's hires fix: draw, upscale by SCALE (>= 1), then draw again at that size as image to image "
        "(clipcond.pipelines.hires_fix); the size is int(width x SCALE) by int(height x SCALE), rounded down to the "
        "model's multiple (8)",
    )
    parser.add_argument(
        "--hires-steps",
        type=int,
        metavar="N",
        help="with --hires-scale: the steps the second pass runs (default: --steps), the last N of int(N / strength)",
    )
    parser.add_argument(
        "--hires-upscaler",
        type=named_by(upscaler_name),
        metavar="NAME",
        help=f"with --hires-scale: A1111's upscaler, {', '.join(UPSCALERS)} (default: {DEFAULT_UPSCALER})",
    )
    parser.add_argument(
        "--hires-strength",
        type=float,
        metavar="STRENGTH",
        help="with --hires-scale: A1111's denoising strength of the second pass, in (0, 1] "
        f"(default: {DEFAULT_STRENGTH})",
    )


def read_hires_fix(args: argparse.Namespace) -> HiresFix | None:
    """The hires fix a ``generate`` call asks for (None without ``--hires-scale``), checked
    before the model loads.

    Raises:
        UsageError: another ``--hires-*`` option without ``--hires-scale``; ``--hires-scale``
            with ``--image`` (A1111's hires fix is text to image); a scale below 1 or not
            finite, steps below 1, a strength outside (0, 1].
    """
    if args.hires_scale is None:
        given = [option for option in _OPTIONS if getattr(args, option[2:].replace("-", "_")) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} set the hires fix's second pass: give --hires-scale too")
        return None
    if args.image is not None:
        raise UsageError(
            "--hires-scale does not go with --image: the hires fix upscales an image drawn from the prompt "
            "(give --image a larger source instead)"
        )
    if not (math.isfinite(args.hires_scale) and args.hires_scale >= 1):
        raise UsageError(f"--hires-scale must be a finite number >= 1, got {args.hires_scale}")
    if args.hires_steps is not None and args.hires_steps < 1:
        raise UsageError(f"--hires-steps must be >= 1, got {args.hires_steps}")
    strength = DEFAULT_STRENGTH if args.hires_strength is None else args.hires_strength
    if not (math.isfinite(strength) and 0 < strength <= 1):
        raise UsageError(f"--hires-strength must be in (0, 1], got {strength}")
    return HiresFix(args.hires_scale, args.hires_steps, args.hires_upscaler or DEFAULT_UPSCALER, strength)


def hires_size(width: int, height: int, scale: float, factor: int) -> tuple[int, int]:
    """The (width, height) in pixels of the second pass for a first pass of `width` x `height`:
    ``int(width x scale)`` and ``int(height x scale)`` as A1111 computes them, each rounded down
    to a multiple of the VAE's `factor`, as its latent upscalers round them."""
    return int(width * scale) // factor * factor, int(height * scale) // factor * factor


def second_pass_schedule(steps: int, strength: float) -> tuple[int, float]:
    """(num_inference_steps, strength) for diffusers' image to image to run the last `steps`
    steps of the schedule A1111's hires pass samples: ``int(steps / min(strength, 0.999))``
    steps long. The strength returned is the one whose ``int(num_inference_steps x strength)``,
    diffusers' count of the steps to run, is `steps`.

    Raises:
        ValueError: `steps` below 1 or `strength` outside (0, 1].
    """
    if steps < 1 or not (0 < strength <= 1):
        raise ValueError(f"the second pass needs steps >= 1 and a strength in (0, 1], got {steps} and {strength}")
    total = int(steps / min(strength, _MOST_STRENGTH))
    ratio = steps / total
    while int(total * ratio) < steps:  # the division may land a hair below
        ratio = math.nextafter(ratio, 2.0)
    return total, ratio


def upscale_latents(latents: Any, size: tuple[int, int], upscaler: str, factor: int) -> Any:
    """`latents` (batch, channels, height / factor, width / factor) interpolated to the latents
    of `size` (width, height) pixels in the mode of the latent `upscaler`, as A1111 does."""
    import torch

    mode, antialias = LATENT_UPSCALERS[upscaler]
    shape = (size[1] // factor, size[0] // factor)
    return torch.nn.functional.interpolate(latents, size=shape, mode=mode, antialias=antialias)


def upscale_image(image: Any, size: tuple[int, int], upscaler: str) -> Any:
    """The PIL `image` resized to `size` (width, height) as A1111's `resize_image` does with
    the pixel `upscaler`: ``None`` resizes with Lanczos; ``Lanczos`` and ``Nearest``, when the
    size grows, first resize by the scale (the larger of the two sides' ratios) with their own
    filter, then to the scaled size rounded down to a multiple of 8 and to `size`, each with
    Lanczos where the size still differs."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    width, height = size
    own = PIXEL_UPSCALERS[upscaler]
    if own is None:
        return image.resize(size, resample=lanczos)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        eighths = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
        image = image.resize(
            (int(image.width * scale), int(image.height * scale)), resample=getattr(Image.Resampling, own)
        )
        if image.size != eighths:
            image = image.resize(eighths, resample=lanczos)
    if image.size != size:
        image = image.resize(size, resample=lanczos)
    return image


def check_hires_against(pipe: Any, hires: HiresFix, steps: int, first_size: tuple[int, int]) -> tuple[int, int]:
    """The checks that need the loaded pipeline, for a first pass of `steps` steps and
    `first_size` (width, height) pixels: it has a VAE (the second pass is image to image on
    latents), the hires size fits a PNG, and the second pass's schedule
    (`second_pass_schedule`) is one its scheduler can set. Returns the hires (width, height).

    Raises:
        UsageError: saying which and what to change.
    """
    from clipcond.pipelines.argument_values import check_steps_fit_scheduler

    if pipe.vae is None:
        raise UsageError(
            "--hires-scale needs a model with a VAE (the second pass is image to image on latents); this model works "
            "in pixel space, as the bundled shapes model does"
        )
    if max(first_size) * hires.scale > _MOST_PIXELS:
        raise UsageError(
            f"--hires-scale {hires.scale} gives more than {_MOST_PIXELS} pixels a side (a PNG's most) from "
            f"{first_size[0]} x {first_size[1]}: lower it"
        )
    size = hires_size(*first_size, hires.scale, pipe.vae_scale_factor)  # at least the first size: scale >= 1
    total, _ = second_pass_schedule(hires.steps or steps, hires.strength)
    context = f"the hires fix's {hires.steps or steps} steps at --hires-strength {hires.strength} sample {total}: "
    with user_errors(ValueError, context=context):
        check_steps_fit_scheduler(pipe.scheduler, total, None, None)
    return size


def draw_with_hires_fix(
    pipe: Any,
    hires: HiresFix,
    arguments: Mapping[str, Any],
    steps: int,
    seeds: Sequence[int],
    step_end: Callable[[int], Any],
) -> tuple[list[Any], tuple[int, int]]:
    """Both passes of the hires fix on `pipe` (a `CLIPConditionedPipeline`): the first at the
    `arguments`' size with `steps` steps, the second on `CLIPConditionedImg2ImgPipeline` made
    from it, each image's noise from a generator seeded with its seed of `seeds` in each pass.
    `arguments` are the call arguments both passes share (prompt, negative, guidance, images
    per prompt, clip skip, cross-attention kwargs; the first pass's `height` / `width`);
    `step_end(n)` gives the step-end callback of a pass of n steps.
    Returns the PIL images and the first pass's (width, height) in pixels."""
    import torch
    from PIL import Image

    from clipcond.pipelines import CLIPConditionedImg2ImgPipeline

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    first = pipe(
        **arguments,
        num_inference_steps=steps,
        generator=generators(),
        output_type="latent" if hires.in_latents else "np",
        callback_on_step_end=step_end(steps),
    ).images
    factor = pipe.vae_scale_factor
    if hires.in_latents:
        first_size = (first.shape[-1] * factor, first.shape[-2] * factor)
        upscaled = upscale_latents(first, hires_size(*first_size, hires.scale, factor), hires.upscaler, factor)
    else:
        first_size = (first.shape[-2], first.shape[-3])  # (batch, height, width, 3) in [0, 1]
        size = hires_size(*first_size, hires.scale, factor)
        upscaled = [
            upscale_image(Image.fromarray((255 * pixels).astype("uint8")), size, hires.upscaler) for pixels in first
        ]
    second_steps = hires.steps or steps
    total, strength = second_pass_schedule(second_steps, hires.strength)
    shared = {name: value for name, value in arguments.items() if name not in ("height", "width")}
    images = CLIPConditionedImg2ImgPipeline.from_pipe(pipe)(
        **shared,
        image=upscaled,
        strength=strength,
        num_inference_steps=total,
        generator=generators(),
        callback_on_step_end=step_end(second_steps),
    ).images
    return images, first_size


def hires_parameters(hires: HiresFix | None) -> dict[str, object]:
    """The PNG fields of the hires fix, as A1111 writes them (none without it)."""
    if hires is None:
        return {}
    scale = int(hires.scale) if float(hires.scale).is_integer() else hires.scale
    return {
        "Denoising strength": hires.strength,
        "Hires upscale": scale,
        "Hires steps": hires.steps,
        "Hires upscaler": hires.upscaler,
    }
