"""Two small modules, each on its own: images of any stored mode read as the mode a model takes
(16-bit greyscale scaled, not clipped), and the device a command runs on. Each expected value
is written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipcond.devices import resolve_device
from clipcond.image_modes import SIXTEEN_BIT_MODES, converted

GREYS_16 = np.array([[0, 128, 129, 257], [32767, 65278, 65535, 65535]], dtype=np.uint16)
GREYS_8 = [[0, 0, 1, 1], [127, 254, 255, 255]]  # value / 257, rounded half to even


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_a_16_bit_grey_image_is_scaled_to_8_bits(mode) -> None:
    image = Image.fromarray(GREYS_16.astype(np.int32), mode="I") if mode == "I" else Image.fromarray(GREYS_16)
    assert image.mode == mode and mode in SIXTEEN_BIT_MODES
    image.info["dpi"] = (72, 72)
    grey = converted(image, "L")
    assert grey.mode == "L" and np.asarray(grey).tolist() == GREYS_8 and grey.info["dpi"] == (72, 72)
    rgb = converted(image, "RGB")
    assert rgb.mode == "RGB" and np.asarray(rgb)[..., 1].tolist() == GREYS_8


def test_mode_i_values_outside_16_bits_are_clipped_to_them() -> None:
    image = Image.fromarray(np.array([[-5, -1000, 70000]], dtype=np.int32), mode="I")
    assert np.asarray(converted(image, "L")).tolist() == [[0, 0, 255]]  # -1000 / 257 would wrap to 252


def test_other_modes_convert_as_pillow_converts_them() -> None:
    image = Image.fromarray(np.array([[[10, 200, 30]]], dtype=np.uint8), mode="RGB")
    assert np.asarray(converted(image, "L")).tolist() == np.asarray(image.convert("L")).tolist()
    assert converted(image, "RGB").tobytes() == image.tobytes()


def test_a_device_is_taken_checked_and_defaulted() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_with_torchs_reason() -> None:
    with pytest.raises(ValueError) as raised:
        resolve_device("cuda")
    assert str(raised.value).startswith("'cuda' is not a device this machine can run on: ")
    assert isinstance(raised.value.__cause__, (RuntimeError, AssertionError))


def test_an_unknown_or_meta_device_is_refused_whole() -> None:
    with pytest.raises(ValueError) as raised:
        resolve_device("gpu0")
    assert str(raised.value).startswith("'gpu0' is not a device this machine can run on: ")
    with pytest.raises(ValueError) as raised:
        resolve_device("meta")
    assert (
        str(raised.value) == "'meta' is not a device that computes: it holds shapes, not values (give cpu, cuda, ...)"
    )
