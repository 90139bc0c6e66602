"""Endless image-caption batches of one process: `ImageCaptionBatches`, through which every
objective that reads images (CLIP, diffusion) gets its data, whatever the source.

Every step of every process gets a batch that depends only on (seed, step, rank), so a
resumed run reads exactly what the uninterrupted run would have read; making the batches
draws nothing from torch's global generator, so the random draws of the steps (dropout)
after a resume are those of the uninterrupted run too. Step `s` (0-based) of
rank `r` reads the global samples ``(s * world + r) * batch + k`` (`indices`): the ranks'
batches are consecutive, disjoint parts of the step's global batch, in rank order, so
`world` processes of `batch` samples read what one process of `world * batch` samples reads,
in the same order (the order in which the contrastive loss gathers them):

- the shapes stream is random access: sample `i` is rendered from (seed, split, i);
- webdataset shards and JSONL manifests are read endlessly, epoch after epoch, each epoch in
  an order drawn from (seed, epoch) (`DataConfig.shuffle`; else in file order), by every rank,
  which keeps its own part of each step. Positions are given to samples before their images
  are decoded, so a resumed run reaches its first sample without decoding (a manifest jumps
  there; shards are read there undecoded), and a rank decodes only the images it uses. An
  image that cannot be loaded is counted and replaced by the next loadable one at its place
  in the following global batches (`ImageCaptionBatches._substitutes`), else a later one (a
  second copy in its batch only then). Skips of the stream (bad lines, shard members) are counted when a step's
  global batch reaches them, not when that search reads them: a resume counts as the run does.

A batch is a dict of tensors: ``pixel_values`` (batch, 3, size, size) float32 (CLIP's
normalisation unless another transform is given), ``input_ids`` (batch, seq) int64 padded to
the longest caption with the tokenizer's pad id, and with hard negatives
``negative_input_ids`` (batch, seq_neg); or, untokenized, (pixels, captions)
(`next_with_captions`).
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from webdataset.filters import shuffle

from clipcond.shapes import ShapesStream, negative_caption
from clipcond.training.data.caption_tokenizer import CaptionTokenizer
from clipcond.training.data.config import DataConfig
from clipcond.training.data.sources import (
    SkipCounter,
    _decoded,
    _image_file,
    _Unusable,
    manifest_entries,
    manifest_samples,
    shard_urls,
    undecoded_shard_samples,
    webdataset_samples,
)
from clipcond.training.data.transforms import ClipImageTransform


class _ShapesSamples(Dataset):
    """Map-style view of the shapes stream: index -> (image tensor, caption, negative caption)."""

    def __init__(
        self, data: DataConfig, seed: int, image_size: int, with_negatives: bool, transform: Callable | None = None
    ) -> None:
        self.stream = ShapesStream(
            seed=seed,
            image_size=image_size,
            min_objects=data.min_objects,
            max_objects=data.max_objects,
            split=data.split,
            count_weights=data.object_count_weights,
        )
        self.seed = seed
        self.transform = transform or ClipImageTransform(image_size)
        self.with_negatives = with_negatives

    def __len__(self) -> int:  # endless: DataLoader only needs it for samplers we do not use
        return 2**62

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str | None]:
        sample = self.stream.sample(index)
        negative = None
        if self.with_negatives:
            negative = negative_caption(sample.scene, random.Random(f"negative:{self.seed}:{index}"))
        return self.transform(sample.image), sample.caption, negative


def step_indices(step: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Global indices of the samples rank `rank` of `world` reads at `step` (0-based), `batch_size`
    of them: its consecutive part of the step's global batch of ``world * batch_size``."""
    first = (step * world + rank) * batch_size
    return list(range(first, first + batch_size))


class _StepIndices:
    """The sample indices of each step of one rank, from `start_step` on (a batch sampler)."""

    def __init__(self, start_step: int, batch_size: int, rank: int, world: int) -> None:
        self.start_step, self.batch_size, self.rank, self.world = start_step, batch_size, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield step_indices(step, self.batch_size, self.rank, self.world)
            step += 1


def _collate(items: list[tuple[torch.Tensor, str, str | None]]) -> tuple[torch.Tensor, list[str], list[str | None]]:
    return torch.stack([item[0] for item in items]), [item[1] for item in items], [item[2] for item in items]


def source_images(
    data: DataConfig, seed: int, image_size: int, transform: Callable, count: int | None, skipped: SkipCounter
) -> Iterator[torch.Tensor]:
    """The images of one pass over a source, each as `transform` makes it (what a run's
    batches hold): the shapes stream's first `count` samples (`count` is needed there), or
    every usable sample of the shards or the manifest once, in order (`count` ignored)."""
    if data.source == "shapes":
        if count is None:
            raise ValueError("the shapes stream is endless: give how many of its images to read")
        samples = _ShapesSamples(data, seed, image_size, False, transform)
        return (samples[index][0] for index in range(count))
    source = (
        webdataset_samples(data.urls, skipped)
        if data.source == "webdataset"
        else manifest_samples(data.manifest, skipped)
    )
    return (transform(image) for image, _ in source)


SUBSTITUTE_STRIDES = 8  # global batches ahead where an unloadable sample's substitute is looked for first
MAX_SUBSTITUTE_TRIES = 10_000  # unloadable samples in a row after which the source is taken for broken


class _Candidate(NamedTuple):
    """A sample before its image is decoded: the image (a shard member's bytes, or the path a
    manifest line names), its caption, and a name for the skip log."""

    image: bytes | str
    caption: str
    name: str

    def load(self) -> Image.Image:
        """The decoded RGB image; raises `_Unusable` (missing, unreadable, undecodable)."""
        return _decoded(self.image) if isinstance(self.image, bytes) else _image_file(Path(self.image))


def _shard_candidates(shards: list[str], skipped: _HeldSkips) -> Iterator[_Candidate]:
    """The samples of `shards` in that order, undecoded; those without an image member or a
    usable caption are skipped and counted (as `webdataset_samples` counts them)."""
    for key, image, caption in undecoded_shard_samples(shards, skipped):
        yield _Candidate(image, caption, key)


def _manifest_candidates(manifest: str) -> tuple[list[_Candidate], _HeldSkips]:
    """Every usable line of a manifest, undecoded, and the skips of its bad lines."""
    bad_lines = _HeldSkips()
    candidates = []
    for path, caption in manifest_entries(manifest, bad_lines):
        if path is None:
            bad_lines.skip("bad manifest line", f"{manifest}: no image for {caption!r}")
        else:
            candidates.append(_Candidate(str(path), caption, str(path)))
    return candidates, bad_lines


def _epoch_random(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


@dataclass
class _HeldSkips(SkipCounter):
    """Skips as read (logged then), their reasons held until `take` gives them a position."""

    held: list[str] = field(default_factory=list)

    def skip(self, reason: str, detail: str = "") -> None:
        super().skip(reason, detail)
        self.held.append(reason)

    def take(self) -> tuple[str, ...]:
        """The reasons held, which are no longer held."""
        taken, self.held = tuple(self.held), []
        return taken


class _Read(NamedTuple):
    """A position of the stream: its epoch, candidate and the skips read since the previous."""

    epoch: int
    candidate: _Candidate
    skips: tuple[str, ...]  # their reasons


def _candidate_stream(data: DataConfig, seed: int, start: int) -> Iterator[_Read]:
    """The global positions `start`, `start + 1`, ... of the endless stream: epoch after
    epoch, each in the order (seed, epoch) draws when `data.shuffle`, else in file order.
    Which candidate, and which skips before it, a position has depends neither on decoding
    nor on `start`: `start` is reached without decoding, the skips before it left out."""
    if data.source == "manifest":
        return _manifest_stream(data, seed, start)
    return _shard_stream(data, seed, start)


def _manifest_stream(data: DataConfig, seed: int, start: int) -> Iterator[_Read]:
    """A manifest's candidates, permuted whole each epoch, the bad lines preceding each
    epoch's first position; `start` is reached in one jump."""
    candidates, bad_lines = _manifest_candidates(data.manifest)
    if not candidates:
        raise ValueError(f"no usable sample in {data.manifest} ({bad_lines.report()})")
    epoch, offset = divmod(start, len(candidates))
    while True:
        order = _epoch_random(seed, epoch).permutation(len(candidates)) if data.shuffle else range(len(candidates))
        for place in range(offset, len(candidates)):
            yield _Read(epoch, candidates[order[place]], tuple(bad_lines.held) if place == 0 else ())
        epoch, offset = epoch + 1, 0


def _shard_stream(data: DataConfig, seed: int, start: int) -> Iterator[_Read]:
    """Shards' candidates: each epoch the shards in a permuted order, their samples through a
    shuffle buffer of `data.shuffle_buffer` (open_clip's two stages); those before `start` are
    read (not decoded) and dropped with the skips that precede them."""
    shards = shard_urls(data.urls, "data.urls")
    skips = _HeldSkips()
    position = 0
    for epoch in itertools.count():
        if data.shuffle:
            order = _epoch_random(seed, epoch).permutation(len(shards))
            rng = random.Random(f"samples:{seed}:{epoch}")
            read = _shard_candidates([shards[index] for index in order], skips)
            read = shuffle(data.shuffle_buffer, data.shuffle_buffer, rng=rng)(read)
        else:
            read = _shard_candidates(shards, skips)
        epoch_start = position
        for candidate in read:
            before = skips.take()
            if position >= start:
                yield _Read(epoch, candidate, before)
            position += 1
        if position == epoch_start:
            raise ValueError(f"no usable sample in {data.urls} ({skips.report()})")


class _Window:
    """The stream read on demand from a global position on, those before `forget_before`'s
    dropped; its skips are counted by `count_through` the positions they precede, not by `get`."""

    def __init__(self, stream: Iterator[_Read], start: int, skipped: SkipCounter) -> None:
        self.stream, self.first, self.skipped = stream, start, skipped
        self.counted = start  # the first position whose skips are not counted yet
        self.held: deque[_Read] = deque()

    def get(self, position: int) -> _Read:
        """The stream at `position` (>= the first position held)."""
        while position - self.first >= len(self.held):
            self.held.append(next(self.stream))
        return self.held[position - self.first]

    def count_through(self, position: int) -> None:
        """Count the skips that precede the positions up to `position` (included), once each."""
        while self.counted <= position:
            for reason in self.get(self.counted).skips:  # logged when read
                self.skipped.counts[reason] += 1
            self.counted += 1

    def forget_before(self, position: int) -> None:
        """Drop the positions before `position`, their skips counted."""
        self.count_through(position - 1)
        while self.first < position:
            self.held.popleft()
            self.first += 1


class ImageCaptionBatches:
    """Endless batches for one rank, starting at `start_step`.

    Args:
        data: the data section of the run config.
        tokenizer: a `CaptionTokenizer`, or None for batches read with `next_with_captions` only.
        image_size: side of the square images, in pixels (the image tower's input size).
        batch_size: samples per step on this rank.
        seed: the run seed (selects the shapes samples and the hard negatives).
        start_step: the first step to produce (0, or the resumed step).
        rank, world: this process and the number of processes.
        hard_negatives: add ``negative_input_ids`` (shapes only).
        skipped: counts unusable samples (shards and manifests).
        transform: PIL image -> (3, size, size) tensor; default CLIP's preprocessing.
    """

    def __init__(
        self,
        data: DataConfig,
        tokenizer: CaptionTokenizer | None,
        image_size: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
        hard_negatives: bool = False,
        skipped: SkipCounter | None = None,
        transform: Callable | None = None,
    ) -> None:
        self.data = data
        self.tokenizer = tokenizer
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.hard_negatives = hard_negatives
        self.skipped = skipped if skipped is not None else SkipCounter()
        if data.source == "shapes":
            dataset = _ShapesSamples(data, seed, image_size, hard_negatives, transform)
            self._items = iter(
                DataLoader(
                    dataset,
                    batch_sampler=_StepIndices(start_step, batch_size, rank, world),
                    num_workers=data.num_workers,
                    collate_fn=_collate,
                    prefetch_factor=4 if data.num_workers else None,
                    persistent_workers=data.num_workers > 0,
                    # Its own generator: starting an iterator draws the workers' base seed, which
                    # from torch's global generator would shift every later draw of the run
                    # (dropout) by one after a resume restored the global state.
                    generator=torch.Generator().manual_seed(seed),
                )
            )
        else:
            self._items = self._sequential(transform or ClipImageTransform(image_size), seed, start_step)

    def _sequential(
        self, transform: Callable, seed: int, start_step: int
    ) -> Iterator[tuple[torch.Tensor, list[str], list[None]]]:
        stride = self.batch_size * self.world  # the global batch: every rank counts its stream's skips
        window = _Window(_candidate_stream(self.data, seed, start_step * stride), start_step * stride, self.skipped)
        for step in itertools.count(start_step):
            positions = self.indices(step)
            window.forget_before(positions[0])
            loaded = [self._load(window, position) for position in positions]
            window.count_through((step + 1) * stride - 1)
            pixels = torch.stack([transform(image) for image, _ in loaded])  # (batch, 3, size, size)
            yield pixels, [caption for _, caption in loaded], [None] * len(loaded)

    def _load(self, window: _Window, position: int) -> tuple[Image.Image, str]:
        """(image, caption) of the sample at global `position`. One whose image cannot be loaded
        is counted (by the rank whose part holds it) and replaced by the first loadable of
        `_substitutes`, which depend on the positions alone, not on how the batch is split."""
        epoch, candidate, _ = window.get(position)
        try:
            return candidate.load(), candidate.caption
        except _Unusable as unusable:
            self.skipped.skip(unusable.reason, f"{candidate.name}: {unusable}")
        for candidate_at in self._substitutes(window, position, epoch):
            substitute = window.get(candidate_at).candidate
            try:
                return substitute.load(), substitute.caption
            except _Unusable:
                continue  # counted at its own place
        where = self.data.urls if self.data.source == "webdataset" else self.data.manifest
        raise ValueError(
            f"no usable sample in {where}: no image from global sample {position} on can be decoded, up to the end "
            f"of the next epoch or {MAX_SUBSTITUTE_TRIES} samples ({self.skipped.report()})"
        )

    def _substitutes(self, window: _Window, position: int, epoch: int) -> Iterator[int]:
        """Positions whose samples may replace the unloadable one at `position`, in order: its
        place in the next steps' global batches (`SUBSTITUTE_STRIDES` of them: not a second copy
        within one global batch, where it would be its own negative), then every later position
        (which, when images near it fail too, can be such a copy); all within the next epoch and `MAX_SUBSTITUTE_TRIES`."""
        stride = self.batch_size * self.world
        strided = (position + stride * k for k in range(1, SUBSTITUTE_STRIDES + 1))
        tried = 0
        for path in (strided, itertools.count(position + 1)):
            for candidate_at in path:
                if tried == MAX_SUBSTITUTE_TRIES or window.get(candidate_at).epoch > epoch + 1:
                    break
                tried += 1
                yield candidate_at

    def indices(self, step: int) -> list[int]:
        """Global indices of the samples this rank reads at `step` (0-based): what keys a
        sample's randomness, so that it does not depend on how the global batch is split."""
        return step_indices(step, self.batch_size, self.rank, self.world)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def next_with_captions(self) -> tuple[torch.Tensor, list[str]]:
        """The next batch as (pixels (batch, 3, size, size), captions) without tokenizing."""
        pixels, captions, _ = next(self._items)
        return pixels, captions

    def __next__(self) -> dict[str, torch.Tensor]:
        pixels, captions, negatives = next(self._items)
        batch = {"pixel_values": pixels, "input_ids": self.tokenizer(captions)}
        if self.hard_negatives:
            batch["negative_input_ids"] = self.tokenizer(negatives)
        return batch
