"""Image-caption data for training: webdataset tar shards, a JSONL manifest, the shapes world.

Every source yields `(PIL.Image in RGB, caption)` pairs. A sample that cannot be used (an
image that does not decode, a missing file, an empty caption, a malformed manifest line, a
broken tar member) is skipped and counted in a `SkipCounter` by reason: never fatal, always
reported at the end of a run.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Sample = tuple[Image.Image, str]


@dataclass
class SkipCounter:
    """Counts skipped samples by reason."""

    counts: Counter = field(default_factory=Counter)

    def skip(self, reason: str, detail: str = "") -> None:
        """Record one skipped sample (logged at debug level with `detail`)."""
        self.counts[reason] += 1
        logger.debug("skipped sample (%s) %s", reason, detail)

    @property
    def total(self) -> int:
        """Samples skipped so far."""
        return sum(self.counts.values())

    def report(self) -> str:
        """One line: the total and the count per reason."""
        if not self.total:
            return "skipped samples: 0"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        return f"skipped samples: {self.total} ({reasons})"


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes into an RGB image; raises on anything Pillow cannot read."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def clean_caption(raw: bytes | str) -> str:
    """A caption as text with runs of whitespace collapsed to one space."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return " ".join(text.split())


def webdataset_samples(urls: str | Sequence[str], skipped: SkipCounter) -> Iterator[Sample]:
    """Samples from webdataset tar shards (``key.jpg|jpeg|png|webp`` + ``key.txt``), in order.

    Args:
        urls: a shard path, a brace pattern (``data/shard-{000..009}.tar``) or a list of them.
        skipped: receives one count per unusable sample or broken shard member.
    """
    import webdataset as wds

    def on_error(error: Exception) -> bool:
        skipped.skip("unreadable tar member", repr(error))
        return True

    dataset = wds.WebDataset(
        urls if isinstance(urls, str) else list(urls), shardshuffle=False, handler=on_error, empty_check=False
    )
    for sample in dataset:
        key = sample.get("__key__", "?")
        image_key = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if image_key is None:
            skipped.skip("no image", key)
            continue
        caption = clean_caption(sample.get("txt", b""))
        if not caption:
            skipped.skip("empty caption", key)
            continue
        try:
            image = decode_image(sample[image_key])
        except Exception as error:  # noqa: BLE001 - any decoder failure means a bad sample
            skipped.skip("undecodable image", f"{key}: {error!r}")
            continue
        yield image, caption


def manifest_entries(manifest: str | Path, skipped: SkipCounter) -> Iterator[tuple[Path | None, str]]:
    """The lines of a JSONL manifest as (image path or None, caption), in order.

    Each line is ``{"image": path, "caption": text}`` (``"text"`` is accepted for the caption;
    image paths are relative to the manifest's folder). Unparsable lines and empty captions
    are skipped and counted.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    with open(manifest, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                image = entry.get("image")
                caption = clean_caption(entry.get("caption", entry.get("text", "")))
            except (ValueError, AttributeError, TypeError) as error:
                skipped.skip("bad manifest line", f"{manifest}:{number}: {error!r}")
                continue
            if not caption:
                skipped.skip("empty caption", f"{manifest}:{number}")
                continue
            yield (None if image is None else manifest.parent / image), caption


def manifest_samples(manifest: str | Path, skipped: SkipCounter) -> Iterator[Sample]:
    """Samples (decoded image, caption) from a JSONL manifest (`manifest_entries`); lines
    without an image, missing and undecodable images are skipped and counted."""
    for path, caption in manifest_entries(manifest, skipped):
        if path is None:
            skipped.skip("bad manifest line", f"{manifest}: no image for {caption!r}")
            continue
        try:
            image = decode_image(path.read_bytes())
        except FileNotFoundError:
            skipped.skip("missing image", str(path))
            continue
        except Exception as error:  # noqa: BLE001
            skipped.skip("undecodable image", f"{path}: {error!r}")
            continue
        yield image, caption


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
