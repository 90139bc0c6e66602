"""Webdataset shards for tests: real tar files of PNG images (Pillow) and their captions."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def png(seed: int, size: tuple[int, int] = (20, 24)) -> bytes:
    """A PNG of random pixels, different for each seed."""
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path: Path, samples: list[tuple[str, bytes, bytes]]) -> Path:
    """A tar shard holding ``<key>.png`` + ``<key>.txt`` per (key, image bytes, caption bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            for name, data in ((f"{key}.png", image), (f"{key}.txt", caption)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_shards(folder: Path, prefix: str, count: int, per_shard: int = 4) -> list[Path]:
    """`count` shards ``<prefix>-000000.tar``, ... of `per_shard` samples each; the caption of
    sample `k` of shard `s` is ``"<prefix> shard s sample k"``."""
    paths = []
    for shard in range(count):
        samples = [
            (f"{shard:06d}{k:03d}", png(shard * 1000 + k), f"{prefix} shard {shard} sample {k}".encode())
            for k in range(per_shard)
        ]
        paths.append(write_shard(folder / f"{prefix}-{shard:06d}.tar", samples))
    return paths


def write_image_manifest(folder: Path, count: int, side: int, extra: Sequence[dict] = ()) -> Path:
    """`folder`/manifest.jsonl naming `count` PNGs of random pixels (`side` x `side`, seed 1)
    written beside it, captioned "picture <k>", then the lines `extra` (e.g. a missing image)."""
    rng = np.random.default_rng(1)
    lines = []
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{index}.png")
        lines.append(json.dumps({"image": f"{index}.png", "caption": f"picture {index}"}))
    lines += [json.dumps(line) for line in extra]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def captions_of(paths: list[Path], per_shard: int = 4) -> list[str]:
    """The captions `write_shards` put in these shards, in order."""
    return [
        f"{path.stem.rsplit('-', 1)[0]} shard {int(path.stem.rsplit('-', 1)[1])} sample {k}"
        for path in paths
        for k in range(per_shard)
    ]
