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
- webdataset shards and JSONL manifests are read in order, endlessly (epoch after epoch), by
  every rank, which keeps the samples of its own part of each step; a resumed run skips what
  was already read. (Every rank decodes every sample: which samples are unusable, and so
  which sample has which index, is then known to all ranks without talking.)

A batch is a dict of tensors: ``pixel_values`` (batch, 3, size, size) float32 (CLIP's
normalisation unless another transform is given), ``input_ids`` (batch, seq) int64 padded to
the longest caption with the tokenizer's pad id, and with hard negatives
``negative_input_ids`` (batch, seq_neg); or, untokenized, (pixels, captions)
(`next_with_captions`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from clipcond.shapes import ShapesStream, negative_caption
from clipcond.training.data.caption_tokenizer import CaptionTokenizer
from clipcond.training.data.config import DataConfig
from clipcond.training.data.sources import SkipCounter, manifest_samples, webdataset_samples
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


def _endless(data: DataConfig, skipped: SkipCounter) -> Iterator[tuple[object, str]]:
    """Shards or manifest, epoch after epoch; an epoch with no usable sample is an error."""
    while True:
        count = 0
        source = (
            webdataset_samples(data.urls, skipped)
            if data.source == "webdataset"
            else manifest_samples(data.manifest, skipped)
        )
        for sample in source:
            count += 1
            yield sample
        if count == 0:
            where = data.urls if data.source == "webdataset" else data.manifest
            raise ValueError(f"no usable sample in {where} ({skipped.report()})")


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
            self._items = self._sequential(
                transform or ClipImageTransform(image_size), start_step * batch_size * world, rank, world
            )

    def _sequential(
        self, transform: Callable, skip: int, rank: int, world: int
    ) -> Iterator[tuple[torch.Tensor, list[str], list[None]]]:
        samples = _endless(self.data, self.skipped)
        position = 0
        pending: list[tuple[torch.Tensor, str]] = []
        for image, caption in samples:
            mine = (position // self.batch_size) % world == rank  # this rank's part of its step
            position += 1
            if position <= skip or not mine:
                continue
            pending.append((transform(image), caption))
            if len(pending) == self.batch_size:
                yield torch.stack([p[0] for p in pending]), [p[1] for p in pending], [None] * len(pending)
                pending = []

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
