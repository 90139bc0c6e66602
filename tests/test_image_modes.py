"""16-bit greyscale images (PNG mode "I;16" / "I"): Pillow's own conversion clips every value
above 255, so a 0..65535 ramp comes out white but for its first pixels; clipcond scales such an
image to 8 bits (value / 257, rounded) wherever it reads images: training shards and manifests,
the training transforms, and `generate --image` / `--mask`."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from clipcond.image_modes import converted
from clipcond.pipelines.generate_sources import _read_image
from clipcond.training.data.sources import decode_image
from clipcond.training.data.transforms import pixels_in_unit_range

RAMP = np.linspace(0, 65535, 64).round().astype(np.uint16)[None, :].repeat(8, axis=0)  # (8, 64)
EXPECTED = np.rint(RAMP / 257).astype(np.uint8)  # 65535 -> 255, 257 -> 1


def _png() -> bytes:
    """The ramp as a 16-bit greyscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(RAMP).save(buffer, format="PNG")  # uint16: mode "I;16"
    return buffer.getvalue()


def test_a_16_bit_png_ramp_is_scaled_where_pillow_clips_it() -> None:
    with Image.open(io.BytesIO(_png())) as opened:
        opened.load()
        assert opened.mode in ("I;16", "I")
        assert (np.asarray(opened.convert("L")) == 255).mean() > 0.9  # Pillow's own: near white
        assert np.array_equal(np.asarray(converted(opened, "L")), EXPECTED)
    rgb = np.asarray(decode_image(_png()))
    assert rgb.shape == (8, 64, 3) and all(np.array_equal(rgb[..., c], EXPECTED) for c in range(3))


def test_a_32_bit_integer_image_is_read_as_16_bit() -> None:
    image = Image.fromarray(RAMP.astype(np.int32))
    assert image.mode == "I"
    assert np.array_equal(np.asarray(converted(image, "L")), EXPECTED)


def test_the_training_transform_and_generate_read_16_bit_images_scaled(tmp_path) -> None:
    with Image.open(io.BytesIO(_png())) as opened:
        opened.load()
        pixels = pixels_in_unit_range(opened, 8)  # (3, 8, 8) in [-1, 1]: the ramp's centre square
    assert float(pixels.max()) < 0.9  # not clipped to white
    path = tmp_path / "ramp16.png"
    path.write_bytes(_png())
    image, mask = _read_image(str(path), "--image", "RGB"), _read_image(str(path), "--mask", "L")
    assert np.array_equal(np.asarray(image)[..., 0], EXPECTED) and np.array_equal(np.asarray(mask), EXPECTED)


def test_other_modes_convert_as_pillow_converts() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.array_equal(np.asarray(converted(rgba, "RGB")), np.asarray(rgba.convert("RGB")))
    palette = rgba.convert("P")
    assert np.array_equal(np.asarray(converted(palette, "L")), np.asarray(palette.convert("L")))


def test_a_32_bit_image_outside_the_16_bit_range_is_clipped_to_it() -> None:
    values = np.array([[-(2**31), -70000, -300, 0, 257, 65535, 70000, 2**31 - 1]], dtype=np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    assert np.asarray(converted(image, "L")).tolist() == [[0, 0, 0, 0, 1, 255, 255, 255]]
