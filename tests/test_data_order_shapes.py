"""The shapes stream (its path through batches.py, `source_images`, `__next__`): a resume and a split
of the global batch read the same images, captions and hard negatives."""

from __future__ import annotations

import torch

from clipcond.training.data import DataConfig, ImageCaptionBatches


class _Ids:
    """A stand-in tokenizer: each caption -> its characters' code points (padded with 0)."""

    def __call__(self, captions):
        longest = max(len(c) for c in captions)
        return torch.tensor([[ord(ch) for ch in c] + [0] * (longest - len(c)) for c in captions])


def _batches(steps, start=0, batch=4, rank=0, world=1, seed=3):
    b = ImageCaptionBatches(
        DataConfig(source="shapes"),
        _Ids(),
        16,
        batch,
        seed,
        start_step=start,
        rank=rank,
        world=world,
        hard_negatives=True,
    )
    return [next(b) for _ in range(steps)]


def _equal(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_shapes_batches_depend_on_seed_step_and_rank_only() -> None:
    straight = _batches(3)
    assert set(straight[0]) == {"pixel_values", "input_ids", "negative_input_ids"}
    assert straight[0]["pixel_values"].shape == (4, 3, 16, 16)
    assert _equal(_batches(2, start=1), straight[1:])
    assert not torch.equal(straight[0]["pixel_values"], straight[1]["pixel_values"])
    ranks = [_batches(3, batch=2, rank=r, world=2) for r in (0, 1)]
    for step in range(3):
        for key in straight[step]:
            a, b = ranks[0][step][key], ranks[1][step][key]
            if key != "pixel_values":  # ids padded per rank: compare the captions' own ids
                width = straight[step][key].shape[1]
                a, b = (torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (a, b))
            assert torch.equal(torch.cat([a, b]), straight[step][key]), (step, key)
    assert not _equal(_batches(1, seed=4), straight[:1])
