"""Span-corrupted T5 batches made from captions (`clipcond.training.data.CaptionSource`).

Every caption a step reads depends only on (seed, step, rank), and its noise on (seed, the
caption's global sample index), so a resumed run sees exactly the batches of the
uninterrupted one: step `s` (0-based) of rank `r` reads samples ``(s * world + r) * batch + k``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from clipcond.training.data import CaptionSource, CaptionTokenizer
from clipcond.training.t5.span_corruption import EVAL_STREAM, TRAIN_STREAM, SpanCorruption


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
