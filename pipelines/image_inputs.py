"""The image arguments of img2img and inpainting, checked before any work.

diffusers' `StableDiffusionImg2ImgPipeline` and `StableDiffusionInpaintPipeline` take `image`
and `mask_image` as a PIL image, a numpy array, a torch tensor, or a list of one of these
(`PipelineImageInput`), and `strength` in [0, 1]. They find a wrong type, a strength that
leaves no step, or a batch that does not divide deep inside the call, after the text encoder
has run. These functions find them first, with a message that names the argument.

Layouts, as `VaeImageProcessor.preprocess` reads them:
    image: PIL (mode RGB); tensor (batch, 3, H, W) or (3, H, W); array (batch, H, W, 3) or
        (H, W, 3); the pixels of a tensor or array floats in [0, 1] or [-1, 1] (diffusers
        rescales neither: a uint8 array gave another image without a word). A tensor with
        `latent_channels` channels is latents (batch, latent_channels, H / vae factor,
        W / vae factor), not encoded again. diffusers would take an RGBA or CMYK image for
        latents too (4 channels) and fail on a grey one, deep inside; here each is refused first.
    mask: PIL; tensor (batch, 1, H, W), (batch, H, W), (1, H, W) or (H, W); array (batch, H,
        W, 1), (batch, H, W), (H, W, 1) or (H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from clipcond.scalars import as_float

RGB_CHANNELS = 3  # what the VAE encodes
IMAGE_TYPES = "a PIL image, a numpy array, a torch tensor, or a non-empty list of one of these"


@dataclass(frozen=True)
class ImageBatch:
    """What an image argument holds: `count` images of `height` x `width` pixels."""

    count: int
    height: int
    width: int


def check_image(value: Any, name: str, vae_scale_factor: int = 1, latent_channels: int = 4) -> ImageBatch:
    """The count and pixel size of an `image` argument.

    Args:
        value: the argument, in one of the layouts of the module docstring.
        name: the argument's name, for messages.
        vae_scale_factor: pixels per latent cell (for images given as latents).
        latent_channels: a tensor with this many channels is latents.

    Raises:
        TypeError: not one of the accepted types, or a list that mixes them.
        ValueError: an empty list, a layout of the wrong rank, channels that are neither RGB
            nor latents, a PIL image not in mode RGB, images of different sizes, or a list
            whose arrays or tensors differ in rank or mix pixels and latents (diffusers stacks
            the entries and fails on these inside its image processor, some after encoding the
            prompt).
    """
    return _batch(
        value,
        name,
        lambda item: _image_size(item, name, vae_scale_factor, latent_channels),
        lambda item: f"{item.ndim}-d {'latents' if _channels(item) == latent_channels else 'pixels'}",
    )


def check_mask(value: Any, name: str = "mask_image") -> ImageBatch:
    """The count and pixel size of a `mask_image` argument (one channel).

    Raises:
        TypeError, ValueError: as `check_image`.
    """
    return _batch(value, name, lambda item: _mask_size(item, name), lambda item: f"{item.ndim}-d")


def check_mask_fits(image: ImageBatch, mask: ImageBatch) -> None:
    """The mask must cover the image pixel for pixel (diffusers resizes both to the output size
    on its own, so a mask drawn for another image would be stretched over this one silently).

    Raises:
        ValueError: the sizes differ.
    """
    if (mask.height, mask.width) != (image.height, image.width):
        raise ValueError(
            f"`mask_image` is {mask.height}x{mask.width} pixels but `image` is {image.height}x{image.width}; "
            "give a mask of the image's size (white: repaint, black: keep)"
        )


def check_strength(strength: Any) -> float:
    """`strength` as a float in [0, 1].

    Raises:
        ValueError: not a finite number in [0, 1].
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}")
    return float(strength)


def check_denoising_start(denoising_start: Any, strength: Any, denoising_end: Any, reads_time_ids: bool) -> None:
    """SDXL's `denoising_start`: the fraction of the schedule already run by another model (the
    base of a base + refiner run, which stopped at its `denoising_end`); the source image is
    then that model's latents and gets no noise added.

    Args:
        denoising_start: the argument (None: not given).
        strength: the call's `strength` as given (None: not given); diffusers ignores it when
            `denoising_start` is given.
        denoising_end: the call's `denoising_end` (None: not given).
        reads_time_ids: the UNet is SDXL-class.

    Raises:
        ValueError: `denoising_start` for a UNet that is not SDXL-class, outside (0, 1), with a
            `strength`, or not below `denoising_end` (diffusers' condition).
    """
    if denoising_start is None:
        return
    if not reads_time_ids:
        raise ValueError(
            "`denoising_start` is SDXL's (the refiner's part of a base + refiner run), but this pipeline's UNet "
            "reads no time ids (its addition_embed_type is not 'text_time'); use `strength`"
        )
    if (
        isinstance(denoising_start, bool)
        or not isinstance(denoising_start, (int, float))
        or not 0 < denoising_start < 1
    ):
        raise ValueError(f"`denoising_start` must be a fraction of the schedule in (0, 1), got {denoising_start!r}")
    if strength is not None:
        raise ValueError(
            f"give `strength` or `denoising_start`, not both (got {strength!r} and {denoising_start!r}): "
            "`denoising_start` sets where the schedule starts, and diffusers ignores `strength` then"
        )
    if denoising_end is not None and denoising_start >= denoising_end:
        raise ValueError(
            f"`denoising_start` {denoising_start} must be below `denoising_end` {denoising_end}: the call runs the "
            "part of the schedule between them"
        )


def holds_latents(value: Any, latent_channels: int) -> bool:
    """Whether a checked `image` argument is latents (tensors of `latent_channels` channels)."""
    first = value[0] if isinstance(value, list) else value
    return isinstance(first, torch.Tensor) and first.ndim in (3, 4) and first.shape[-3] == latent_channels


def steps_after_strength(num_inference_steps: int, strength: Any, custom_schedule: str | None = None) -> int:
    """How many of `num_inference_steps` run at `strength` (the last ones): diffusers'
    `get_timesteps`, `min(int(steps * strength), steps)`, multiplied in the precision of
    `strength` (a Python, numpy or 0-d tensor number in [0, 1]) as diffusers multiplies it.
    `custom_schedule`: "timesteps" or "sigmas" when the steps are those a custom schedule
    sets (the refusal then says to give more of them, not more `num_inference_steps`).

    Raises:
        ValueError: none would run (`strength` too small for that many steps).
    """
    steps = min(int(num_inference_steps * strength), num_inference_steps)
    if steps < 1:
        shown = as_float(strength)
        if custom_schedule is None:
            of, more = f"num_inference_steps={num_inference_steps} steps", "`num_inference_steps`"
        else:
            of, more = f"the {num_inference_steps} steps `{custom_schedule}` sets", f"give more `{custom_schedule}`"
        raise ValueError(
            f"`strength` {shown} runs int({num_inference_steps} x {shown}) = 0 of {of}; raise `strength` or {more}"
        )
    return steps


def check_batch_fits(images: ImageBatch, images_count: int, name: str) -> None:
    """diffusers repeats `count` images over `images_count` outputs (prompts x
    num_images_per_prompt), which needs `count` to divide it.

    Raises:
        ValueError: it does not.
    """
    if images.count > images_count or images_count % images.count:
        raise ValueError(
            f"`{name}` has {images.count} images for {images_count} outputs (prompts x num_images_per_prompt); "
            "give one image, or a number that divides the outputs"
        )


def _batch(value: Any, name: str, size_of, layout_of) -> ImageBatch:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"`{name}` must be {IMAGE_TYPES}, got an empty list")
    kinds = {_kind(item, name) for item in items}
    if len(kinds) > 1:
        raise TypeError(f"`{name}` is a list that mixes {sorted(kinds)}; give one type")
    counts_and_sizes = [size_of(item) for item in items]
    layouts = {layout_of(item) for item in items if not isinstance(item, PIL.Image.Image)}
    if len(layouts) > 1:
        raise ValueError(
            f"`{name}` is a list that mixes layouts {sorted(layouts)}; give every entry the same number of "
            "dimensions (and images all as pixels or all as latents)"
        )
    sizes = {size for _, size in counts_and_sizes}
    if len(sizes) > 1:
        raise ValueError(f"`{name}` holds images of different sizes {sorted(sizes)}; give them one size")
    (height, width), count = sizes.pop(), sum(count for count, _ in counts_and_sizes)
    return ImageBatch(count=count, height=height, width=width)


def _kind(item: Any, name: str) -> str:
    for kind in (PIL.Image.Image, np.ndarray, torch.Tensor):
        if isinstance(item, kind):
            return kind.__name__
    raise TypeError(f"`{name}` must be {IMAGE_TYPES}, got {type(item).__name__}")


def _image_size(item: Any, name: str, vae_scale_factor: int, latent_channels: int) -> tuple[int, tuple[int, int]]:
    """(images, (height, width)) of one entry: RGB pixels, or (tensors only) latents."""
    if isinstance(item, PIL.Image.Image):
        if item.mode != "RGB":  # diffusers would read RGBA or CMYK as 4-channel latents, L as 1 channel
            raise ValueError(f"`{name}` is a PIL image in mode {item.mode!r}; give RGB images (`image.convert('RGB')`)")
        return 1, (item.height, item.width)
    if item.ndim not in (3, 4):
        layout = (
            "(batch, channels, H, W) or (channels, H, W)"
            if isinstance(item, torch.Tensor)
            else "(batch, H, W, channels) or (H, W, channels)"
        )
        raise ValueError(f"`{name}` must be {layout}, got shape {tuple(item.shape)}")
    count = item.shape[0] if item.ndim == 4 else 1
    if isinstance(item, torch.Tensor):
        channels, height, width = item.shape[-3:]
        if channels == latent_channels:  # latents: not encoded again
            return count, (height * vae_scale_factor, width * vae_scale_factor)
        if channels != RGB_CHANNELS:
            raise ValueError(
                f"`{name}` has {channels} channels (axis -3); give RGB pixels ({RGB_CHANNELS} channels) or latents "
                f"({latent_channels} channels)"
            )
        _check_pixel_values(item, name)
        return count, (height, width)
    if item.shape[-1] != RGB_CHANNELS:
        raise ValueError(
            f"`{name}` has {item.shape[-1]} channels (last axis); give RGB pixels ({RGB_CHANNELS} channels)"
        )
    _check_pixel_values(item, name)
    return count, tuple(item.shape[-3:-1])


def _check_pixel_values(item: np.ndarray | torch.Tensor, name: str) -> None:
    """Pixels of an array or tensor are floats in [0, 1] or [-1, 1], as diffusers' image
    processor reads them (it rescales neither): `numpy.asarray(pil_image)` (uint8, 0-255) gave
    another image without a word, and bool or other integer dtypes failed in its resize after
    the prompt was encoded. NaN and infinity are left to the call's `non_finite` check."""
    floating = item.dtype.is_floating_point if isinstance(item, torch.Tensor) else item.dtype.kind == "f"
    scaled = "`image.float() / 255`" if isinstance(item, torch.Tensor) else "`image.astype(numpy.float32) / 255`"
    if not floating:
        raise ValueError(
            f"`{name}` has dtype {item.dtype}; give floats in [0, 1] (or [-1, 1]), e.g. {scaled}, or a PIL image "
            "(diffusers reads the numbers as they are: 0-255 as far past 1)"
        )
    values = item.detach().float() if isinstance(item, torch.Tensor) else torch.from_numpy(np.asarray(item, np.float32))
    finite = values[torch.isfinite(values)]
    if finite.numel() and (float(finite.min()) < -1 or float(finite.max()) > 1):
        raise ValueError(
            f"`{name}` holds values from {float(finite.min()):g} to {float(finite.max()):g}; give pixels in [0, 1] "
            f"(or [-1, 1]), e.g. {scaled} for 0-255 values (diffusers reads the numbers as they are)"
        )


def _channels(item: Any) -> int:
    """An image entry's channels: axis -3 of a tensor, the last axis of an array (checked entries)."""
    return item.shape[-3] if isinstance(item, torch.Tensor) else item.shape[-1]


def _check_mask_dtype(item: Any, name: str) -> None:
    """A mask array or tensor holds floats (0: keep, 1: repaint) or uint8 (0-255); diffusers' mask
    resize has no kernel for bool or other integer dtypes and fails after the prompt is encoded."""
    if isinstance(item, torch.Tensor):
        readable = item.dtype.is_floating_point or item.dtype == torch.uint8
    else:
        readable = item.dtype.kind == "f" or item.dtype == np.uint8
    if not readable:
        raise ValueError(
            f"`{name}` has dtype {item.dtype}; give a float mask in [0, 1] (1: repaint), e.g. `mask.float()` "
            "or `mask.astype(numpy.float32)`, a uint8 mask (255: repaint) or a PIL image"
        )


def _mask_size(item: Any, name: str) -> tuple[int, tuple[int, int]]:
    if isinstance(item, PIL.Image.Image):
        return 1, (item.height, item.width)
    _check_mask_dtype(item, name)
    shape = tuple(item.shape)
    if isinstance(item, torch.Tensor):
        # (batch, 1, H, W), (batch, H, W), (1, H, W) or (H, W): the last two axes are pixels
        if len(shape) in (2, 3) or (len(shape) == 4 and shape[1] == 1):
            return (shape[0] if len(shape) >= 3 else 1), shape[-2:]
        layout = "(batch, 1, H, W), (batch, H, W), (1, H, W) or (H, W)"
    else:
        # (batch, H, W, 1), (batch, H, W), (H, W, 1) or (H, W)
        if len(shape) == 2:
            return 1, shape
        if len(shape) == 3 and shape[-1] not in (3, 4):  # a last axis of 3 or 4 is RGB(A): refused below
            return (1, shape[:2]) if shape[-1] == 1 else (shape[0], shape[1:])
        if len(shape) == 4 and shape[-1] == 1:
            return shape[0], shape[1:3]
        layout = "(batch, H, W, 1), (batch, H, W), (H, W, 1) or (H, W)"
    raise ValueError(f"`{name}` is a one-channel mask: {layout}; got shape {shape}")


__all__ = [
    "ImageBatch",
    "check_batch_fits",
    "check_denoising_start",
    "check_image",
    "check_mask",
    "check_mask_fits",
    "check_strength",
    "holds_latents",
    "steps_after_strength",
]
