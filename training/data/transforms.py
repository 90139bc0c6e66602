"""Images as the models read them: PIL image -> (3, size, size) float32 tensor.

`ClipImageTransform` is CLIP's preprocessing (an image tower's input); `pixels_in_unit_range`
is what a diffusion UNet (or its VAE) denoises. Both keep an image's aspect ratio: the shorter
side is resized to `size` and the centre square is cut out (`resized_centre_square`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from clipcond.image_modes import converted

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_centre_square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """The (size, size) centre of `image` once its shorter side is resized to `size`, by
    torchvision's rules (``Resize(size)`` then ``CenterCrop(size)`` on a PIL image).

    The long side becomes `int(size * long / short)` (truncated, as torchvision's
    `_compute_resized_output_size`), an image already of that size is not resampled, and the crop
    starts at `int(round((length - size) / 2.0))` (Python's round, half to even, as torchvision's
    `center_crop`). A square image of side `size` comes back unchanged.
    """
    width, height = image.size
    long = int(size * max(width, height) / min(width, height))
    resized = (size, long) if width <= height else (long, size)
    if resized != (width, height):
        image = image.resize(resized, resample)
    left = int(round((resized[0] - size) / 2.0))
    top = int(round((resized[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


class ClipImageTransform:
    """PIL image -> (3, size, size) float32 tensor, as CLIP preprocesses: resize the shorter side
    to `size` (bicubic), centre-crop (`resized_centre_square`), scale to [0, 1], normalise with
    CLIP's mean and std.

    On RGB images it equals OpenAI's `clip._transform` and open_clip's eval transform
    (`Resize(size, BICUBIC)`, `CenterCrop(size)`, to RGB, `ToTensor`, `Normalize`). transformers'
    PIL backend, `CLIPImageProcessorPil` (what `CLIPImageProcessor` is when torchvision is not
    installed), resizes the same way but floors the crop offset, so it starts one pixel earlier
    when `length - size` is 3 modulo 4. With torchvision installed, `CLIPImageProcessor` is
    transformers' torchvision backend, which resamples differently: ask for
    `CLIPImageProcessorPil` to match this transform, as `clipcond.lab.metrics` does.

    Images in other modes are converted to RGB first, as transformers does; OpenAI's and
    open_clip's transforms convert after cropping (so they resize a palette or 1-bit image with
    nearest neighbour, and an RGBA one premultiplied). Converting drops alpha: a transparent
    pixel keeps the colour stored under it (often black), where transformers 5's
    processors composite transparency onto white. The readers (`decode_image`) give RGB images,
    so this matters only for images passed in directly. An EXIF orientation tag is not applied,
    as open_clip's transform and webdataset's decoders do not apply it: a photo stored sideways
    is read sideways, unlike in `pixels_in_unit_range`.
    """

    def __init__(self, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        if size < 1:
            raise ValueError(f"`size` must be >= 1, got {size}")
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = resized_centre_square(converted(image, "RGB"), self.size, Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, size, size)
        return (pixels - self.mean) / self.std


def pixels_in_unit_range(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> (3, size, size) float32 in [-1, 1], as diffusers' ``train_text_to_image.py``
    prepares a training image with ``--center_crop``: turned upright by its EXIF orientation tag
    (the `datasets` library that script loads images with applies it), converted to RGB, its
    shorter side resized to `size` (bilinear) and the centre square cut out
    (`resized_centre_square`). A square RGB image of side `size` without an orientation tag is
    not resampled.
    """
    if size < 1:
        raise ValueError(f"`size` must be >= 1, got {size}")
    image = resized_centre_square(converted(ImageOps.exif_transpose(image), "RGB"), size, Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (size, size, 3)
    return torch.from_numpy(array).permute(2, 0, 1)
