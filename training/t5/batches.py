"""Captions for T5 pretraining, and the span-corrupted batches made from them.

Every caption a step reads depends only on (seed, step, rank), and its noise on (seed, the
caption's global sample index), so a resumed run sees exactly the batches of the
uninterrupted one:

- the shapes stream is random access: step `s` (0-based) of rank `r` reads samples
  ``(s * world + r) * batch + k``; held-out captions are the first `eval_captions` of the
  "heldout" split of seed + 1 (scenes holding colour-shape pairs the "train" split never shows);
- a JSONL manifest or webdataset shards are read once for their captions (images are never
  opened); the last `eval_captions` are held out and sample `i` is training caption
  ``i mod count``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from clipcond.shapes import ShapesStream
from clipcond.training.clip.config import DataConfig
from clipcond.training.data import SkipCounter, clean_caption, manifest_entries
from clipcond.training.data.batches import CaptionTokenizer
from clipcond.training.t5.span_corruption import EVAL_STREAM, TRAIN_STREAM, SpanCorruption

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


def manifest_captions(manifest: str | Path | None, skipped: SkipCounter) -> list[str]:
    """Every caption of a JSONL manifest (``"caption"`` or ``"text"`` of each line), in order;
    image files are neither needed nor read."""
    return [caption for _, caption in manifest_entries(str(manifest), skipped)]


def webdataset_captions(urls: Sequence[str], skipped: SkipCounter) -> list[str]:
    """Every ``txt`` member of webdataset shards, in order (image members are not decoded)."""
    import webdataset as wds

    def on_error(error: Exception) -> bool:
        skipped.skip("unreadable tar member", repr(error))
        return True

    captions = []
    for sample in wds.WebDataset(list(urls), shardshuffle=False, handler=on_error, empty_check=False):
        caption = clean_caption(sample.get("txt", b""))
        if caption:
            captions.append(caption)
        else:
            skipped.skip("empty caption", sample.get("__key__", "?"))
    return captions


def content_ids(tokenizer: CaptionTokenizer, caption: str) -> list[int]:
    """A caption's ids without the final ``</s>`` (at most ``context_length - 1`` of them)."""
    return tokenizer.ids(caption)[:-1]


class SpanCorruptionBatches:
    """Endless training batches of one rank from `start_step` (0-based) on.

    Each batch is `SpanCorruption.batch`'s dict: ``input_ids`` and ``attention_mask``
    (batch, in_len), ``labels`` (batch, out_len), int64.
    """

    def __init__(
        self,
        source: CaptionSource,
        tokenizer: CaptionTokenizer,
        corruption: SpanCorruption,
        batch_size: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.source, self.tokenizer, self.corruption = source, tokenizer, corruption
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.step = start_step

    def indices(self, step: int) -> list[int]:
        """Global sample indices read by this rank at `step` (0-based)."""
        first = (step * self.world + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        keys = self.indices(self.step)
        self.step += 1
        rows = [content_ids(self.tokenizer, self.source.caption(key)) for key in keys]
        return self.corruption.batch(rows, keys, TRAIN_STREAM)


def heldout_batches(
    captions: Sequence[str], tokenizer: CaptionTokenizer, corruption: SpanCorruption, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """The held-out captions as span-corrupted batches, with noise independent of training's
    and the same at every evaluation (caption `i` has key `i` in the evaluation stream)."""
    batches = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        rows = [content_ids(tokenizer, caption) for caption in chunk]
        batches.append(corruption.batch(rows, list(range(start, start + len(chunk))), EVAL_STREAM))
    return batches
