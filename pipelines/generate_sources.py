"""The source-image options of ``clipcond generate``: ``--image`` (image to image), ``--mask``
(inpainting) and ``--strength``.

The files are read and checked before any model loads (`read_sources`); what depends on the
model, the image's size against the VAE's factor and the steps that ``--strength`` leaves,
after it loads (`check_sources_against`). The run then goes through
`CLIPConditionedImg2ImgPipeline` or `CLIPConditionedInpaintPipeline` made from the loaded
pipeline's components (`source_pipeline`), which equal diffusers' SD and SDXL img2img and
inpaint pipelines image for image.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcond.errors import UsageError, one_line


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--image``, ``--mask`` and ``--strength``."""
    parser.add_argument(
        "--image",
        help="source image (PNG, JPEG, ...): transform it as the prompt says (image to image); the output takes its "
        "size, rounded down to the model's multiple (8)",
    )
    parser.add_argument(
        "--mask",
        help="with --image: an inpainting mask of the image's size; white is repainted, black kept (as in diffusers)",
    )
    parser.add_argument(
        "--strength",
        type=float,
        help="with --image: how much of the source is noised, in (0, 1]; the last int(steps x strength) steps run. "
        "Default: diffusers' (image to image 0.8, SDXL 0.3; inpainting 1.0, SDXL 0.9999)",
    )


@dataclass(frozen=True)
class SourceImages:
    """What ``--image``, ``--mask`` and ``--strength`` asked for.

    Attributes:
        image: the source, RGB.
        mask: the inpainting mask, one channel ("L"), the image's size; None: image to image.
        strength: as given; None: the pipeline's default.
    """

    image: Any
    mask: Any | None
    strength: float | None


def read_sources(args: argparse.Namespace) -> SourceImages | None:
    """The source images of a ``generate`` call (None without ``--image``), read and checked.

    Raises:
        UsageError: ``--mask`` or ``--strength`` without ``--image``; ``--height`` or
            ``--width`` with it (the output takes the image's size); a strength outside
            (0, 1]; a file that does not exist or that PIL cannot read; a mask of another size.
    """
    if args.image is None:
        if args.mask is not None or args.strength is not None:
            raise UsageError("--mask and --strength need --image (the source image they apply to)")
        return None
    if args.height is not None or args.width is not None:
        raise UsageError("--height and --width do not go with --image: the output takes the size of the source image")
    if args.strength is not None and not (math.isfinite(args.strength) and 0 < args.strength <= 1):
        raise UsageError(f"--strength must be in (0, 1], got {args.strength}")
    image = _read_image(args.image, "--image", "RGB")
    mask = None if args.mask is None else _read_image(args.mask, "--mask", "L")
    if mask is not None and mask.size != image.size:
        raise UsageError(
            f"--mask is {mask.size[0]} x {mask.size[1]} pixels and --image {image.size[0]} x {image.size[1]}: "
            "the mask must have the image's size"
        )
    return SourceImages(image, mask, args.strength)


def _read_image(value: str, option: str, mode: str) -> Any:
    """The image file `value`, turned upright by its EXIF orientation and converted to `mode`,
    fully decoded (diffusers' `load_image`, which its examples read sources with).

    Raises:
        UsageError: no such file, or PIL cannot read it (not an image, truncated, too large).
    """
    from PIL import Image, ImageOps

    from clipcond.image_modes import converted

    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(f"{option} {path}: no such file")
    try:
        with Image.open(path) as opened:
            return converted(ImageOps.exif_transpose(opened), mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UsageError(f"{option} {path}: not an image that can be read: {one_line(error)}") from error


def source_pipeline(pipe: Any, sources: SourceImages) -> Any:
    """The img2img (no mask) or inpainting pipeline on `pipe`'s components and settings."""
    from clipcond.pipelines import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline

    task = CLIPConditionedImg2ImgPipeline if sources.mask is None else CLIPConditionedInpaintPipeline
    return task.from_pipe(pipe)


def check_sources_against(pipe: Any, sources: SourceImages, steps: int) -> None:
    """The checks that need the task pipeline: it has a VAE to encode the source, the image
    holds at least one latent pixel, and ``--strength`` (or the pipeline's default) leaves at
    least one of `steps` to run.

    Raises:
        UsageError: saying which and what to change.
    """
    from clipcond.pipelines.image_inputs import steps_after_strength

    if pipe.vae is None:
        raise UsageError(
            "--image needs a model with a VAE (it encodes the source into latents); this model works in pixel space, "
            "as the bundled shapes model does"
        )
    factor = pipe.vae_scale_factor
    if min(sources.image.size) < factor:
        raise UsageError(
            f"--image is {sources.image.size[0]} x {sources.image.size[1]} pixels: this model needs at least {factor} x {factor}"
        )
    strength = pipe.default_strength() if sources.strength is None else sources.strength
    try:
        steps_after_strength(steps, strength)
    except ValueError:
        given = "--strength" if sources.strength is not None else "the default strength of this model"
        raise UsageError(
            f"{given} {strength} runs int({steps} x {strength}) = 0 of the --steps {steps}: raise --strength or --steps"
        ) from None


def source_call_arguments(sources: SourceImages, vae_scale_factor: int) -> dict[str, Any]:
    """The task pipeline's arguments for the source images.

    The output takes the source's size rounded down to a multiple of `vae_scale_factor`:
    img2img does so by itself (as diffusers'), while inpainting, as diffusers', would take the
    UNet's default size, so it is given that size as `height` / `width`.
    """
    arguments = {"image": sources.image, "strength": sources.strength}
    if sources.mask is not None:
        width, height = sources.image.size
        arguments["mask_image"] = sources.mask
        arguments["height"] = height // vae_scale_factor * vae_scale_factor
        arguments["width"] = width // vae_scale_factor * vae_scale_factor
    return arguments
