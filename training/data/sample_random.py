"""Random draws made per sample, keyed by the sample's global index: `SampleGenerators`.

A training step that draws its noise for the whole batch from one generator gets different
numbers when the batch is split across processes (each process would draw a different part
of the stream) or cut differently. Drawing each sample's numbers from its own generator,
seeded by (run seed, stream name, global sample index), makes every sample's noise the same
whether one process reads the global batch or `world` processes read a part each, and after a
resume. A generator draws in call order, so the objective calls the draws in a fixed order
(e.g. latent noise, then noise, then the timestep).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch


class SampleGenerators:
    """One `torch.Generator` per sample of a batch.

    Args:
        seed: the run seed.
        indices: the batch's global sample indices (`ImageCaptionBatches.indices`), one per row.
        stream: names what the numbers are for, so that two uses of one sample are independent.
    """

    def __init__(self, seed: int, indices: Sequence[int], stream: str = "noise") -> None:
        if not indices:
            raise ValueError("indices must name at least one sample")
        # random.Random of a string seeds from its SHA-512: the same on every process and run
        self._generators = [
            torch.Generator().manual_seed(random.Random(f"{stream}:{seed}:{index}").getrandbits(63))
            for index in indices
        ]

    def __len__(self) -> int:
        return len(self._generators)

    def normal(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal float32 of `shape` (batch, ...): row `i` drawn by sample `i`'s generator."""
        self._check_rows(shape)
        row = tuple(shape[1:])
        return torch.stack([torch.randn(row, generator=generator) for generator in self._generators])

    def integers(self, high: int) -> torch.Tensor:
        """(batch,) int64, each uniform in [0, high), drawn by each sample's generator."""
        return torch.cat([torch.randint(0, high, (1,), generator=generator) for generator in self._generators])

    def _check_rows(self, shape: Sequence[int]) -> None:
        if not shape or shape[0] != len(self._generators):
            raise ValueError(f"shape {tuple(shape)} must have {len(self._generators)} rows, one per sample")
