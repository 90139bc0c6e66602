"""The T5 batches on stand-ins that record what they are asked: which samples each step of
each rank reads, the ids handed to the corruption (without the end token), the stream and keys
of training and of the held-out captions."""

from __future__ import annotations

from clipcond.training.t5.batches import SpanCorruptionBatches, content_ids, heldout_batches
from clipcond.training.t5.span_corruption import EVAL_STREAM, TRAIN_STREAM


class Captions:
    def caption(self, index: int) -> str:
        return f"caption {index}"


class Ids:
    """Caption -> ids: its number plus 100 and plus 200, then an end token 1."""

    def ids(self, caption: str) -> list[int]:
        number = int(caption.split()[-1])
        return [number + 100, number + 200, 1]


class Corruption:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def batch(self, rows, keys, stream):
        self.calls.append((rows, keys, stream))
        return {"call": len(self.calls)}


def test_content_ids_are_the_ids_without_the_end_token() -> None:
    assert content_ids(Ids(), "caption 7") == [107, 207]


def test_each_step_of_each_rank_reads_its_own_samples() -> None:
    batches = SpanCorruptionBatches(Captions(), Ids(), Corruption(), batch_size=3, rank=1, world=2)
    assert batches.indices(0) == [3, 4, 5] and batches.indices(2) == [15, 16, 17]
    fresh = SpanCorruptionBatches(Captions(), Ids(), Corruption(), batch_size=2)
    assert fresh.step == 0 and fresh.indices(4) == [8, 9]  # rank 0 of 1, from step 0
    next(fresh)
    assert fresh.corruption.calls[0][1] == [0, 1]


def test_the_batches_go_on_from_the_start_step_with_the_training_stream() -> None:
    corruption = Corruption()
    batches = SpanCorruptionBatches(Captions(), Ids(), corruption, batch_size=2, start_step=5, rank=0, world=3)
    assert iter(batches) is batches
    assert next(batches) == {"call": 1} and next(batches) == {"call": 2} and batches.step == 7
    assert corruption.calls == [
        ([[130, 230], [131, 231]], [30, 31], TRAIN_STREAM),
        ([[136, 236], [137, 237]], [36, 37], TRAIN_STREAM),
    ]


def test_held_out_batches_key_caption_i_as_i_in_the_evaluation_stream() -> None:
    corruption = Corruption()
    captions = [f"caption {index}" for index in range(5)]
    assert heldout_batches(captions, Ids(), corruption, batch_size=2) == [{"call": 1}, {"call": 2}, {"call": 3}]
    assert corruption.calls == [
        ([[100, 200], [101, 201]], [0, 1], EVAL_STREAM),
        ([[102, 202], [103, 203]], [2, 3], EVAL_STREAM),
        ([[104, 204]], [4], EVAL_STREAM),
    ]
    assert heldout_batches([], Ids(), Corruption(), batch_size=2) == []
    assert TRAIN_STREAM != EVAL_STREAM
