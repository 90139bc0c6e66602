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
    to `size` (bicubic), centre-crop, scale to [0, 1], normalise with CLIP's mean and std."""

    def __init__(self, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        if size < 1:
            raise ValueError(f"`size` must be >= 1, got {size}")
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        width, height = image.size
        scale = self.size / min(width, height)
        if (width, height) != (self.size, self.size):
            resized = (max(self.size, round(width * scale)), max(self.size, round(height * scale)))
            image = image.resize(resized, Image.BICUBIC)
            left = (resized[0] - self.size) // 2
            top = (resized[1] - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std


def pixels_in_unit_range(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> (3, size, size) float32 in [-1, 1] (resized with bicubic when needed)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)
