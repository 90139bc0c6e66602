"""T5's pretraining objective: span corruption.

A caption's token ids (without the final ``</s>``) lose about `noise_density` of their
tokens, in spans of about `mean_noise_span_length` tokens. The encoder reads the caption with
each dropped span replaced by one sentinel token; the decoder writes, for each span in order,
its sentinel followed by the dropped tokens, then ``</s>``::

    ids:     a  small  red  circle  above  a  blue  square
    noise:   .  x      x    .       .      .  x     .
    input:   a  <extra_id_0>  circle  above  a  <extra_id_1>  square  </s>
    target:  <extra_id_0>  small  red  <extra_id_1>  blue  </s>

Which tokens are dropped is a pure function of (seed, stream, key): the training loop keys
each caption by its global sample index, so a resumed run corrupts every caption exactly as
the uninterrupted run did, in any process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100  # labels that the loss skips (torch's cross_entropy default)

TRAIN_STREAM = 0  # the noise of training batches
EVAL_STREAM = 1  # the noise of held-out evaluation batches (independent of training's)


def span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """How many of `length` tokens are noise, and in how many spans.

    Noise is ``round(length * noise_density)`` tokens, at least 1 and, when the caption has
    two tokens or more, at most ``length - 1`` (the encoder always keeps some context). The
    span count is ``round(noise / mean_noise_span_length)``, at least 1, and at most what fits
    between kept tokens (spans are separated by at least one kept token). A length of 0 has
    no noise and no span.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length == 0:
        return 0, 0
    noise = min(max(round(length * noise_density), 1), max(length - 1, 1))
    spans = max(round(noise / mean_noise_span_length), 1)
    spans = min(spans, noise, length - noise + 1)
    return noise, spans


def _random_composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`parts` positive ints summing to `total` (>= parts), every composition equally likely."""
    if parts == 1:
        return np.array([total])
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """Which of `length` tokens to drop: a bool array (length,), True for noise.

    The noise spans and the kept runs between them are random compositions of their totals
    (`span_counts`); kept runs before the first span and after the last may be empty, the
    ones between spans are not, so every span becomes one sentinel.
    """
    noise, spans = span_counts(length, noise_density, mean_noise_span_length)
    mask = np.zeros(length, dtype=bool)
    if spans == 0:
        return mask
    span_lengths = _random_composition(noise, spans, rng)
    # spans + 1 kept runs, interior ones >= 1: give each interior run its one token, then
    # split the rest into spans + 1 runs >= 0 (a composition of rest + spans + 1 into
    # positive parts, minus one each).
    rest = length - noise - (spans - 1)
    kept_lengths = _random_composition(rest + spans + 1, spans + 1, rng) - 1
    kept_lengths[1:-1] += 1
    position = 0
    for kept, span in zip(kept_lengths[:-1], span_lengths):
        position += int(kept)
        mask[position : position + int(span)] = True
        position += int(span)
    return mask


def corrupt_spans(
    ids: Sequence[int], mask: np.ndarray, sentinel_ids: Sequence[int], eos_id: int
) -> tuple[list[int], list[int]]:
    """Apply a noise mask: (encoder input ids, decoder target ids), both ending with `eos_id`.

    Args:
        ids: the caption's token ids, without ``</s>``.
        mask: bool (len(ids),), True for dropped tokens (from `noise_mask`).
        sentinel_ids: the sentinel token ids; span k is replaced by ``sentinel_ids[k]``.
        eos_id: the ``</s>`` id.
    """
    if len(mask) != len(ids):
        raise ValueError(f"mask has {len(mask)} entries for {len(ids)} tokens")
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    previous = False
    for token, dropped in zip(ids, mask):
        if dropped:
            if not previous:
                span += 1
                if span >= len(sentinel_ids):
                    raise ValueError(f"{span + 1} noise spans need more than the {len(sentinel_ids)} sentinel tokens")
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(int(token))
        else:
            inputs.append(int(token))
        previous = bool(dropped)
    return inputs + [eos_id], targets + [eos_id]


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Rows of ids -> (len(rows), longest) int64, right-padded with `value`."""
    longest = max((len(row) for row in rows), default=0)
    batch = torch.full((len(rows), longest), value, dtype=torch.long)
    for index, row in enumerate(rows):
        batch[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return batch


@dataclass(frozen=True)
class SpanCorruption:
    """The span-corruption settings of a run, and the batches they make.

    Attributes:
        noise_density: fraction of each caption's tokens to drop (T5: 0.15).
        mean_noise_span_length: mean length of a dropped span, in tokens (T5: 3).
        sentinel_ids: ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in order.
        eos_id, pad_id: the ``</s>`` and ``<pad>`` ids.
        seed: the run seed; with `stream` and a caption's key it fixes that caption's noise.
    """

    noise_density: float
    mean_noise_span_length: float
    sentinel_ids: tuple[int, ...]
    eos_id: int
    pad_id: int
    seed: int

    def rng(self, key: int, stream: int = TRAIN_STREAM) -> np.random.Generator:
        """The generator of one caption's noise; `key` >= 0 (the loop uses the sample index)."""
        return np.random.default_rng([self.seed, stream, key])

    def corrupt(self, ids: Sequence[int], key: int, stream: int = TRAIN_STREAM) -> tuple[list[int], list[int]]:
        """One caption (ids without ``</s>``) -> (input ids, target ids)."""
        mask = noise_mask(len(ids), self.noise_density, self.mean_noise_span_length, self.rng(key, stream))
        return corrupt_spans(ids, mask, self.sentinel_ids, self.eos_id)

    def batch(
        self, rows: Sequence[Sequence[int]], keys: Sequence[int], stream: int = TRAIN_STREAM
    ) -> dict[str, torch.Tensor]:
        """Captions (ids without ``</s>``) and their keys -> a padded batch for T5.

        Returns:
            ``input_ids`` (batch, in_len) int64 padded with `pad_id`; ``attention_mask``
            (batch, in_len) int64, 1 on real tokens; ``labels`` (batch, out_len) int64 padded
            with -100 (T5 turns them into decoder inputs by shifting right).
        """
        if len(rows) != len(keys):
            raise ValueError(f"{len(rows)} rows but {len(keys)} keys")
        pairs = [self.corrupt(ids, key, stream) for ids, key in zip(rows, keys)]
        inputs = pad_rows([p[0] for p in pairs], self.pad_id)
        mask = pad_rows([[1] * len(p[0]) for p in pairs], 0)
        labels = pad_rows([p[1] for p in pairs], IGNORE_INDEX)
        return {"input_ids": inputs, "attention_mask": mask, "labels": labels}


def max_spans(max_length: int, noise_density: float, mean_noise_span_length: float) -> int:
    """The most spans any caption of at most `max_length` tokens (``</s>`` included) gets:
    the sentinel tokens a tokenizer needs. Constant time, whatever `max_length`.

    That caption is the longest one, of ``max_length - 1`` ids before ``</s>``: `span_counts`'s
    span count does not fall as the length n grows. Its noise, ``round(n * density)`` clipped to
    [1, n - 1], rises by at most one token per token when the density is at most 1 (the product,
    and its rounding, grow by less than one per step; the cap n - 1 by exactly one); so the
    three bounds of the span count, ``round(noise / mean span length)``, `noise` and
    ``n - noise + 1``, never fall, nor does their minimum. (`tests/test_train_t5.py` checks it
    against the maximum over every length.)

    Raises:
        ValueError: `noise_density` not in (0, 1], or `mean_noise_span_length` below 1.
    """
    if not 0.0 < noise_density <= 1.0 or not mean_noise_span_length >= 1.0:
        raise ValueError(
            f"max_spans needs noise_density in (0, 1] and mean_noise_span_length >= 1, "
            f"got {noise_density}, {mean_noise_span_length}"
        )
    return span_counts(max_length - 1, noise_density, mean_noise_span_length)[1] if max_length > 0 else 0
