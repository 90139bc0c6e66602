"""train-diffusion's images (`pixels_in_unit_range`, also what ``encode --latents`` hashes and
encodes) against diffusers' ``examples/text_to_image/train_text_to_image.py`` with
``--center_crop``: ``Resize(size, BILINEAR)``, ``CenterCrop(size)``, ``ToTensor``,
``Normalize([0.5], [0.5])`` on ``image.convert("RGB")``; here re-expressed in PIL with the
geometry worked out by hand from torchvision's formulas, and against torchvision itself when it
is installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipcond.training.data import pixels_in_unit_range

# (width, height, size) -> the resized (width, height) and the crop's (left, top), worked out by
# hand from torchvision's `Resize(size)` (long side `int(size * long / short)`) and
# `CenterCrop(size)` (offset `int(round((length - size) / 2.0))`, half to even)
DIFFUSERS_GEOMETRY = {
    (256, 128, 64): ((128, 64), (32, 0)),
    (20, 24, 16): ((16, 19), (0, 2)),  # 19.2 -> 19; 1.5 -> 2
    (37, 100, 16): ((16, 43), (0, 14)),  # 43.24 -> 43; 13.5 -> 14 (half to even)
    (101, 20, 16): ((80, 16), (32, 0)),  # 80.8 -> 80
    (45, 32, 32): ((45, 32), (6, 0)),  # not resampled; 6.5 -> 6 (half to even)
    (64, 48, 32): ((42, 32), (5, 0)),
    (48, 48, 16): ((16, 16), (0, 0)),
}


def diffusers_pixels(image: Image.Image, resized: tuple[int, int], corner: tuple[int, int], size: int) -> torch.Tensor:
    """(3, size, size): diffusers' recipe in PIL for one image, its geometry given."""
    image = image.convert("RGB")
    if resized != image.size:
        image = image.resize(resized, Image.BILINEAR)
    left, top = corner
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # ToTensor
    return (pixels - 0.5) / 0.5  # Normalize([0.5], [0.5])


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("case", list(DIFFUSERS_GEOMETRY), ids=lambda case: "{}x{}@{}".format(*case))
def test_training_images_are_resized_and_centre_cropped_as_diffusers_script(case) -> None:
    width, height, size = case
    image = noise(width, height)
    expected = diffusers_pixels(image, *DIFFUSERS_GEOMETRY[case], size)
    torch.testing.assert_close(pixels_in_unit_range(image, size), expected, rtol=0, atol=1e-6)


def test_a_wide_image_keeps_its_aspect_ratio() -> None:
    # a round disc, 80 px across, in the middle of a 256x128 frame: 40 px across at 64 px
    yy, xx = np.mgrid[0:128, 0:256]
    scene = np.full((128, 256, 3), 255, np.uint8)
    scene[(xx - 128) ** 2 + (yy - 64) ** 2 < 40**2] = (220, 20, 20)
    pixels = pixels_in_unit_range(Image.fromarray(scene), 64)
    red = (pixels[0] > 0.5) & (pixels[1] < -0.5)  # (64, 64)
    rows, columns = red.any(1).nonzero(), red.any(0).nonzero()
    width, height = int(columns.max() - columns.min() + 1), int(rows.max() - rows.min() + 1)
    assert width == height == 39  # squashed into the square, it was 19 wide


def test_a_square_image_of_the_size_is_not_resampled() -> None:
    # what keeps the keys of latent shards of such images (the shapes stream's) as they were
    image = noise(16, 16, seed=3)
    expected = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    assert torch.equal(pixels_in_unit_range(image, 16), expected)


def test_torchvision_gives_the_same_images() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    for width, height, size in DIFFUSERS_GEOMETRY:
        recipe = transforms.Compose(
            [
                transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize([0.5], [0.5]),
            ]
        )
        image = noise(width, height)
        torch.testing.assert_close(pixels_in_unit_range(image, size), recipe(image), rtol=0, atol=1e-6)


def test_encode_latents_keys_and_encodes_the_centre_cropped_image(tmp_path: Path) -> None:
    from test_encode_command import write_config
    from test_encode_latents import latent_run, stored_latents, the_vae
    from tiny_pipelines import build_sd

    from clipcond.cli import main as clipcond
    from clipcond.training.data.latent_shards import image_hash

    sd = tmp_path / "sd"
    build_sd().save_pretrained(sd)
    image = noise(20, 24, seed=5)  # 20 wide, 24 high: the run reads its middle 16x16 after a resize to 16x19
    image.save(tmp_path / "tall.png")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"image": "tall.png", "caption": "noise"}) + "\n")
    config = write_config(latent_run(sd, tmp_path / "run"), tmp_path / "run.yaml")
    argv = ["encode", "--train-config", str(config), "--manifest", str(tmp_path / "manifest.jsonl")]
    assert clipcond([*argv, "--latents", str(tmp_path / "lat"), "--no-progress"]) == 0
    # the key: the hash of the cropped image's pixels; the latents: the VAE's of those pixels
    expected = diffusers_pixels(image, *DIFFUSERS_GEOMETRY[(20, 24, 16)], 16)
    cropped = image.resize((16, 19), Image.BILINEAR).crop((0, 2, 16, 18))
    exact = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    torch.testing.assert_close(exact, expected, rtol=0, atol=1e-6)
    stored = stored_latents(tmp_path / "lat")
    assert list(stored) == [image_hash(exact)]
    mean = the_vae(sd).encode(expected[None]).latent_dist.mean[0].detach()
    torch.testing.assert_close(stored[image_hash(exact)]["mean"], mean, rtol=0, atol=1e-5)


def sideways_photo(folder: Path) -> tuple[Path, np.ndarray]:
    """A JPEG stored 64 wide and 32 high with EXIF Orientation=6 (shown turned 90 degrees
    clockwise: 32 wide, 64 high), in a manifest; (the manifest, its pixels as stored)."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (230, 20, 20)  # red on the stored left half: the top half once upright
    stored[:, 32:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "photo.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(folder / "photo.jpg") as opened:
        decoded = np.asarray(opened.convert("RGB"))  # as stored, the tag not applied
    (folder / "manifest.jsonl").write_text(json.dumps({"image": "photo.jpg", "caption": "a photo"}) + "\n")
    return folder / "manifest.jsonl", decoded


def test_a_photo_with_an_exif_orientation_trains_diffusion_upright_and_clip_as_stored(tmp_path: Path) -> None:
    from clipcond.training.data import ClipImageTransform, SkipCounter, manifest_samples

    manifest, decoded = sideways_photo(tmp_path)
    [(image, _)] = list(manifest_samples(manifest, SkipCounter()))
    # diffusion, as diffusers' script reads it through `datasets`: upright (Orientation 6 is a
    # quarter turn clockwise), 32x64, resized to 16x32 and its middle 16x16 kept
    upright = Image.fromarray(np.ascontiguousarray(np.rot90(decoded, k=-1)))
    expected = diffusers_pixels(upright, (16, 32), (0, 8), 16)
    torch.testing.assert_close(pixels_in_unit_range(image, 16), expected, rtol=0, atol=1e-6)
    assert expected[0, 0, 8] > 0.5 and expected[2, -1, 8] > 0.5  # red on top, blue below
    # turned once only: an image already upright (its tag removed) is not turned again
    from PIL import ImageOps

    assert torch.equal(pixels_in_unit_range(ImageOps.exif_transpose(image), 16), pixels_in_unit_range(image, 16))
    # CLIP, as open_clip reads a webdataset image: as stored
    transform = ClipImageTransform(16)
    assert torch.equal(transform(image), transform(Image.fromarray(decoded)))
