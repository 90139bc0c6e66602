"""Captions alone, for objectives that read no image (T5 pretraining): `CaptionSource`.

Every caption a step reads depends only on its global sample index, so a resumed run reads
exactly the captions of the uninterrupted one:

- the shapes stream is random access (sample `i` is rendered from (seed, split, i)); held-out
  captions are the first `heldout_count` of the "heldout" split of seed + 1 (scenes holding
  colour-shape pairs the "train" split never shows);
- a JSONL manifest or webdataset shards are read once for their captions (images are never
  opened); the last `heldout_count` are held out and sample `i` is training caption
  ``i mod count``.
"""

from __future__ import annotations

from clipcond.shapes import ShapesStream
from clipcond.training.data.config import DataConfig
from clipcond.training.data.sources import SkipCounter, manifest_captions, webdataset_captions

# Captions do not depend on the rendering, so render as little as the stream allows.
_SHAPES_IMAGE_SIZE = 16


class CaptionSource:
    """Training captions by sample index, and a fixed list of held-out captions.

    Args:
        data: the data section of the run config.
        seed: the run seed (selects the shapes scenes).
        heldout_count: how many held-out captions to keep aside.
        skipped: counts unusable manifest lines / shard members.
    """

    def __init__(self, data: DataConfig, seed: int, heldout_count: int, skipped: SkipCounter | None = None) -> None:
        self.skipped = skipped if skipped is not None else SkipCounter()
        self._stream: ShapesStream | None = None
        self._captions: list[str] = []
        if data.source == "shapes":
            counts = (data.min_objects, data.max_objects)
            weights = data.object_count_weights
            self._stream = ShapesStream(seed, _SHAPES_IMAGE_SIZE, *counts, data.split, count_weights=weights)
            heldout = ShapesStream(seed + 1, _SHAPES_IMAGE_SIZE, *counts, "heldout", count_weights=weights)
            self.heldout = [heldout.sample(i).caption for i in range(heldout_count)]
            return
        if data.source == "manifest":
            captions = manifest_captions(data.manifest, self.skipped)
            where = data.manifest
        else:
            captions = webdataset_captions(data.urls, self.skipped)
            where = data.urls
        if len(captions) <= heldout_count:
            raise ValueError(
                f"{where} holds {len(captions)} usable captions; eval_captions ({heldout_count}) are held out of "
                "them and at least one must remain for training"
            )
        self._captions = captions[: len(captions) - heldout_count]
        self.heldout = captions[len(captions) - heldout_count :]

    @property
    def size(self) -> int | None:
        """Distinct training captions (None: the endless shapes stream)."""
        return None if self._stream is not None else len(self._captions)

    def caption(self, index: int) -> str:
        """The training caption of global sample `index` (>= 0)."""
        if self._stream is not None:
            return self._stream.sample(index).caption
        return self._captions[index % len(self._captions)]

    def first(self, count: int) -> list[str]:
        """The first `count` training captions (fewer when a finite source holds fewer)."""
        if self.size is not None:
            count = min(count, self.size)
        return [self.caption(index) for index in range(count)]
