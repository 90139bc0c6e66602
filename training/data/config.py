"""`DataConfig`: the data section of every training run config (CLIP, diffusion, T5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipcond.shapes.scene import check_count_weights
from clipcond.training.data.sources import shard_urls


@dataclass
class DataConfig:
    """Where image-caption pairs (or, for T5, captions) come from.

    Attributes:
        source: "shapes" (the synthetic stream), "webdataset" (tar shards) or "manifest" (JSONL).
        urls: webdataset shards, as webdataset and open_clip take them: a path or URL with brace
            ranges (``shards/train-{000000..000099}.tar``), several joined with ``::``, or a
            list of those (see `clipcond.training.data.shard_urls`).
        manifest: path of the JSONL manifest.
        min_objects, max_objects: shapes only: objects per scene (1 to 4).
        object_count_weights: shapes only: relative weights of the object counts
            min_objects..max_objects, one number each (e.g. [1, 3] with 1..2 objects: two-object
            scenes, most of which state a relation, 3 times in 4); unset: uniform.
        split: shapes only: "train" (held-out colour-shape pairs never appear), "heldout" or "all".
        num_workers: DataLoader worker processes that decode / render images (0: in the loop's process).
    """

    source: Literal["shapes", "webdataset", "manifest"] = "shapes"
    urls: str | list[str] = field(default_factory=list)
    manifest: str | None = None
    min_objects: int = 1
    max_objects: int = 1
    object_count_weights: list[float] | None = None
    split: Literal["train", "heldout", "all"] = "train"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.source == "webdataset":
            patterns = [self.urls] if isinstance(self.urls, str) else list(self.urls)
            if not patterns or not all(isinstance(pattern, str) and pattern.strip() for pattern in patterns):
                raise ValueError(
                    "data.source 'webdataset' needs data.urls: a shard pattern such as "
                    f"'shards/train-{{000000..000099}}.tar' ('::' between several) or a list of them, got {self.urls!r}"
                )
        if self.source == "manifest" and not self.manifest:
            raise ValueError("data.source 'manifest' needs data.manifest")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(
                f"data.min_objects and data.max_objects must satisfy 1 <= min <= max <= 4, "
                f"got {self.min_objects} and {self.max_objects}"
            )
        if self.object_count_weights is not None:
            if self.source != "shapes":
                raise ValueError(f"data.object_count_weights applies to data.source 'shapes' only, not {self.source!r}")
            check_count_weights(
                self.object_count_weights, self.min_objects, self.max_objects, name="data.object_count_weights"
            )
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def check_files(self) -> None:
        """Before any work: the files this section names exist (every shard of `urls`, the
        `manifest`); a `FileNotFoundError` names the key otherwise."""
        if self.source == "webdataset":
            shard_urls(self.urls, "data.urls")
        elif self.source == "manifest" and not Path(self.manifest).is_file():
            raise FileNotFoundError(f"data.manifest: no such file {self.manifest}")
