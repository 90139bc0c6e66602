"""The image transforms' bounds and dtypes on their own: the smallest size each takes, the
refusal below it, and float32 output whatever torch's default dtype. Their pixels against
torchvision's formulas, transformers and diffusers' script are in tests/test_data.py and
tests/test_diffusion_images.py."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from clipcond.training.data.transforms import CLIP_MEAN, CLIP_STD, ClipImageTransform, pixels_in_unit_range

GREY = Image.new("RGB", (5, 3), (51, 102, 255))


def test_a_size_of_one_gives_one_pixel() -> None:
    assert torch.equal(pixels_in_unit_range(GREY, 1), torch.tensor([51, 102, 255]).float().view(3, 1, 1) / 127.5 - 1)
    one = ClipImageTransform(1)(GREY)
    expected = (torch.tensor([51, 102, 255]).float() / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert one.shape == (3, 1, 1) and torch.allclose(one.view(3), expected, atol=1e-6)


@pytest.mark.parametrize("size", [0, -4])
def test_a_size_below_one_is_refused(size) -> None:
    for make in (lambda: pixels_in_unit_range(GREY, size), lambda: ClipImageTransform(size)):
        with pytest.raises(ValueError) as raised:
            make()
        assert str(raised.value) == f"`size` must be >= 1, got {size}"


def test_the_outputs_are_float32_whatever_the_default_dtype() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        clip = ClipImageTransform(4)(GREY)
        diffusion = pixels_in_unit_range(GREY, 4)
    finally:
        torch.set_default_dtype(previous)
    assert clip.dtype == torch.float32 and diffusion.dtype == torch.float32
    assert torch.equal(clip, ClipImageTransform(4)(GREY))
