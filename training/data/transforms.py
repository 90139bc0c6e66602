"""Images as the models read them: PIL image -> (3, size, size) float32 tensor.

`ClipImageTransform` is CLIP's preprocessing (an image tower's input); `pixels_in_unit_range`
is what a diffusion UNet (or its VAE) denoises.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipImageTransform:
    """PIL image -> (3, size, size) float32 tensor, as CLIP preprocesses: resize the shorter side
    to `size` (bicubic), centre-crop, scale to [0, 1], normalise with CLIP's mean and std.

    It follows torchvision's rules, so it equals OpenAI's `clip._transform` and open_clip's eval
    transform (`Resize(size, BICUBIC)`, `CenterCrop(size)`, to RGB, `ToTensor`, `Normalize`) on
    RGB images: the long side becomes `int(size * long / short)` (truncated, as torchvision's
    `_compute_resized_output_size`), an image already of that size is not resampled, and the crop
    starts at `int(round((length - size) / 2.0))` (Python's round, half to even, as torchvision's
    `center_crop`). transformers' `CLIPImageProcessor` resizes the same way but floors the crop
    offset, so it starts one pixel earlier when `length - size` is 3 modulo 4. Images in other
    modes are converted to RGB first (the peers convert after cropping).
    """

    def __init__(self, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        if size < 1:
            raise ValueError(f"`size` must be >= 1, got {size}")
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        width, height = image.size
        long = int(self.size * max(width, height) / min(width, height))
        resized = (self.size, long) if width <= height else (long, self.size)
        if resized != (width, height):
            image = image.resize(resized, Image.BICUBIC)
        left = int(round((resized[0] - self.size) / 2.0))
        top = int(round((resized[1] - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, size, size)
        return (pixels - self.mean) / self.std


def pixels_in_unit_range(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> (3, size, size) float32 in [-1, 1] (resized with bicubic when needed)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)
