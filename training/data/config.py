"""`DataConfig`: the data section of every training run config (CLIP, diffusion, T5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clipcond.shapes.scene import check_count_weights


@dataclass
class DataConfig:
    """Where image-caption pairs come from.

    Attributes:
        source: "shapes" (the synthetic stream), "webdataset" (tar shards) or "manifest" (JSONL).
        urls: webdataset shard paths or brace patterns.
        manifest: path of the JSONL manifest.
        min_objects, max_objects: shapes only: objects per scene (1 to 4).
        object_count_weights: shapes only: relative weights of the object counts
            min_objects..max_objects, one number each (e.g. [1, 3] with 1..2 objects: two-object
            scenes, most of which state a relation, 3 times in 4); unset: uniform.
        split: shapes only: "train" (held-out colour-shape pairs never appear), "heldout" or "all".
        num_workers: DataLoader worker processes that decode / render images (0: in the loop's process).
    """

    source: Literal["shapes", "webdataset", "manifest"] = "shapes"
    urls: list[str] = field(default_factory=list)
    manifest: str | None = None
    min_objects: int = 1
    max_objects: int = 1
    object_count_weights: list[float] | None = None
    split: Literal["train", "heldout", "all"] = "train"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.source == "webdataset" and not self.urls:
            raise ValueError("data.source 'webdataset' needs data.urls")
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
