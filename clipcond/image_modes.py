"""Images of any stored mode read as the mode a model takes, 16-bit greyscale included.

Pillow converts a 16-bit greyscale image (a PNG opens as mode ``"I;16"`` or ``"I"``, values
0..65535) to ``"RGB"`` or ``"L"`` by clipping every value above 255, so all but the darkest
pixels come out white. diffusers' `load_image`, transformers' image processors and open_clip
convert that way. `converted` scales such an image to 8 bits first (value / 257, rounded: 65535
is 255), then converts; every other mode converts as Pillow converts it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Modes Pillow gives 16-bit greyscale PNGs and TIFFs: values 0..65535 in 32-bit or 16-bit integers.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def converted(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode` ("RGB", "L", ...); a 16-bit greyscale image is scaled to 8 bits first
    (`SIXTEEN_BIT_MODES`; a mode ``"I"`` image is read as 16-bit: values outside 0..65535 are
    clipped to it)."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image.convert(mode)
    values = np.asarray(image, dtype=np.float64).clip(0, 65535)
    eight_bit = Image.fromarray(np.rint(values / 257).astype(np.uint8), mode="L")
    eight_bit.info.update(image.info)
    return eight_bit.convert(mode)
