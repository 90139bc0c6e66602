"""`DataConfig`: the data section of every training run config (CLIP, diffusion, T5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipcond.shapes.scene import check_count_weights
from clipcond.training.data.sources import shard_urls

SHUFFLE_BUFFER = 1000  # webdataset's default for its shuffle stage


# the values of `DataConfig.source`
DATA_SOURCES = ("shapes", "webdataset", "manifest")


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
        num_workers: shapes only: DataLoader worker processes that render the images (0: in the
            loop's process). Webdataset shards and manifests are decoded in the loop's process, so
            a value above 0 with them is refused rather than ignored.
        shuffle: webdataset and manifest only: read each epoch in an order drawn from (seed,
            epoch), as open_clip and diffusers' training scripts do; False reads the files in order,
            every epoch alike. A manifest is permuted whole; shards are read in a permuted order
            through a buffer of `shuffle_buffer` samples, from which the next is drawn at random
            (webdataset's ``shuffle``). The shapes stream is drawn at random already.
        shuffle_buffer: webdataset only: samples (undecoded: a caption and its image's bytes)
            held by that buffer; more mixes shards better and holds more memory.
    """

    source: Literal["shapes", "webdataset", "manifest"] = "shapes"
    urls: str | list[str] = field(default_factory=list)
    manifest: str | None = None
    min_objects: int = 1
    max_objects: int = 1
    object_count_weights: list[float] | None = None
    split: Literal["train", "heldout", "all"] = "train"
    num_workers: int = 0
    shuffle: bool = True
    shuffle_buffer: int = SHUFFLE_BUFFER

    @staticmethod
    def meaning_of_missing_keys(section: dict) -> dict:
        """What a run's config snapshot written before a key of this section existed meant by
        leaving it out (`run_folder.check_output_dir` reads it so, not as today's default):
        before `shuffle` (2026-11-30) shards and manifests were read in file order."""
        return {"shuffle": section.get("source", "shapes") == "shapes"}

    def __post_init__(self) -> None:
        if self.source not in DATA_SOURCES:  # as the YAML loader refuses it: a typo is no other source
            raise ValueError(f"data.source: expected one of {list(DATA_SOURCES)}, got {self.source!r}")
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
        if self.num_workers > 0 and self.source != "shapes":
            raise ValueError(
                f"data.num_workers applies to data.source 'shapes' only, got {self.num_workers} with "
                f"{self.source!r}: shards and manifests are decoded in the training process; set it to 0"
            )
        self._check_shuffle()

    def _check_shuffle(self) -> None:
        """`shuffle` and `shuffle_buffer` are valid and apply to `source`."""
        if not isinstance(self.shuffle, bool):
            raise TypeError(f"data.shuffle must be true or false, got {self.shuffle!r}")
        if not self.shuffle and self.source == "shapes":
            raise ValueError("data.shuffle applies to webdataset and manifest sources; the shapes stream is random")
        if isinstance(self.shuffle_buffer, bool) or not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be an integer >= 1, got {self.shuffle_buffer!r}")
        if self.shuffle_buffer != SHUFFLE_BUFFER and self.source != "webdataset":
            raise ValueError(f"data.shuffle_buffer applies to data.source 'webdataset' only, not {self.source!r}")

    def check_files(self) -> None:
        """Before any work: the files this section names exist (every shard of `urls`, the
        `manifest`); a `FileNotFoundError` names the key otherwise."""
        if self.source == "webdataset":
            shard_urls(self.urls, "data.urls")
        elif self.source == "manifest" and not Path(self.manifest).is_file():
            raise FileNotFoundError(f"data.manifest: no such file {self.manifest}")
