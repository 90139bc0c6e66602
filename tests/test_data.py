"""Training data sources: corrupt images and empty captions are skipped and counted."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipcond.training.data import (
    CLIP_MEAN,
    CLIP_STD,
    ClipImageTransform,
    SkipCounter,
    manifest_samples,
    webdataset_samples,
)


def _png(color, size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(archive, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as archive:
        _add(archive, "a.png", _png((255, 0, 0)))
        _add(archive, "a.txt", b"a red square")
        _add(archive, "b.jpg", b"\xff\xd8\xff not really a jpeg")
        _add(archive, "b.txt", b"a broken image")
        _add(archive, "c.png", _png((0, 0, 255)))
        _add(archive, "c.txt", b"   ")
        _add(archive, "d.jpg", _jpg((0, 255, 0)))
        _add(archive, "d.txt", b"a green   square\n")
        _add(archive, "e.txt", b"caption without image")
    return path


def test_webdataset_skips_and_counts_bad_samples(shard):
    skipped = SkipCounter()
    samples = list(webdataset_samples(str(shard), skipped))
    assert [caption for _, caption in samples] == ["a red square", "a green square"]
    assert samples[0][0].getpixel((0, 0)) == (255, 0, 0)
    assert skipped.counts == {"undecodable image": 1, "empty caption": 1, "no image": 1}
    assert "skipped samples: 3" in skipped.report()


def test_manifest_skips_and_counts_bad_samples(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.png").write_bytes(_png((10, 20, 30)))
    (tmp_path / "images" / "bad.png").write_bytes(b"garbage")
    lines = [
        json.dumps({"image": "images/ok.png", "caption": "a dark square"}),
        json.dumps({"image": "images/bad.png", "caption": "corrupt"}),
        json.dumps({"image": "images/missing.png", "caption": "missing"}),
        json.dumps({"image": "images/ok.png", "caption": ""}),
        "{not json",
        json.dumps({"caption": "no image key"}),
        json.dumps({"image": "images/ok.png", "text": "alternative key"}),
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    skipped = SkipCounter()
    captions = [caption for _, caption in manifest_samples(manifest, skipped)]
    assert captions == ["a dark square", "alternative key"]
    assert skipped.counts == {"undecodable image": 1, "missing image": 1, "empty caption": 1, "bad manifest line": 2}
    with pytest.raises(FileNotFoundError):
        list(manifest_samples(tmp_path / "nope.jsonl", SkipCounter()))


def test_clip_transform_resizes_crops_and_normalises():
    image = Image.new("RGB", (40, 20), (255, 128, 0))
    pixels = ClipImageTransform(16)(image)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    expected = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[:, 8, 8], expected, rtol=0, atol=1e-6)
    gradient = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (20, 1, 3)))
    cropped = ClipImageTransform(20)(gradient)
    assert cropped.shape == (3, 20, 20)
    assert cropped[0, 0, 0] > (0 - CLIP_MEAN[0]) / CLIP_STD[0]  # the left edge was cropped away
