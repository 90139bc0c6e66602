"""The order `ImageCaptionBatches` reads webdataset shards and manifests in: each epoch shuffled
from (seed, epoch) (open_clip's shard and sample shuffles, diffusers' `shuffle=True`), the same
for the same run, a resume and any split of the global batch; a resume decodes only the images
of the batches it reads; `num_workers` is refused where it would be ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from shards import captions_of, png, write_shard, write_shards

import clipcond.training.data.sources as sources
from clipcond.training.data import DataConfig, ImageCaptionBatches

PER_EPOCH = 12  # usable samples of each source below; batches of 4 or 2 x 2: 3 steps an epoch


def _manifest(folder: Path, bad: tuple[int, ...] = (), **settings) -> DataConfig:
    """12 lines ``picture k``; the images of the lines in `bad` do not decode."""
    lines = []
    for index in range(PER_EPOCH):
        path = folder / f"{index}.png"
        if index in bad:
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(path)
        lines.append(json.dumps({"image": path.name, "caption": f"picture {index}"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return DataConfig(source="manifest", manifest=str(folder / "data.jsonl"), **settings)


def _shards(folder: Path, bad: tuple[int, ...] = (), **settings) -> DataConfig:
    """3 shards of 4 samples ``s shard i sample k``; the images of the samples in `bad`
    (numbered 0..11 across the shards) do not decode."""
    made = write_shards(folder, "s", 3)
    for number in bad:
        shard, k = divmod(number, 4)
        samples = [
            (f"{shard:06d}{j:03d}", b"not a png" if j == k else png(shard * 1000 + j), caption.encode())
            for j, caption in enumerate(captions_of([made[shard]]))
        ]
        write_shard(made[shard], samples)
    return DataConfig(source="webdataset", urls=f"{folder}/s-{{000000..000002}}.tar", **settings)


SOURCES = {"manifest": _manifest, "webdataset": _shards}


def _read(data: DataConfig, steps: int, start: int = 0, seed: int = 0, batch: int = 4, rank: int = 0, world: int = 1):
    """(pixels, captions) of `steps` steps from `start`, and the skips counted."""
    batches = ImageCaptionBatches(data, None, 8, batch, seed, start_step=start, rank=rank, world=world)
    return [batches.next_with_captions() for _ in range(steps)], batches.skipped


def _captions(read) -> list[str]:
    return [caption for _, captions in read for caption in captions]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_each_epoch_is_a_new_permutation_drawn_from_the_seed(tmp_path: Path, source: str) -> None:
    data = SOURCES[source](tmp_path)
    file_order = _captions(_read(DataConfig(**{**vars(data), "shuffle": False}), 3)[0])
    assert len(set(file_order)) == PER_EPOCH
    read, skipped = _read(data, 9)  # three epochs
    epochs = [_captions(read)[k * PER_EPOCH : (k + 1) * PER_EPOCH] for k in range(3)]
    assert all(sorted(epoch) == sorted(file_order) for epoch in epochs)  # each sample once an epoch
    assert len({tuple(epoch) for epoch in [file_order, *epochs]}) == 4  # none in file order, none repeated
    assert _captions(_read(data, 3, seed=1)[0]) != epochs[0]
    assert _same(_read(data, 9)[0], read) and skipped.total == 0


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_a_resume_and_any_split_of_the_global_batch_read_what_the_run_reads(tmp_path: Path, source: str) -> None:
    data = SOURCES[source](tmp_path, bad=(2, 7))
    straight, skipped = _read(data, 8)
    counted = skipped.counts["undecodable image"]
    assert 4 <= counted <= 6 and skipped.total == counted  # 2 a pass; 32 reads: 2 passes and 8 of the third
    assert all(len(set(captions)) == 4 for _, captions in straight)  # a substitute is no second copy
    for start in (1, 4, 5):
        assert _same(_read(data, 8 - start, start=start)[0], straight[start:]), start
    ranks = [_read(data, 8, batch=2, rank=rank, world=2) for rank in (0, 1)]
    joined = [(torch.cat([a[0], b[0]]), a[1] + b[1]) for a, b in zip(ranks[0][0], ranks[1][0])]
    assert _same(joined, straight)
    assert sum(skips.counts["undecodable image"] for _, skips in ranks) == counted  # each counted by its rank


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_a_resume_decodes_only_the_images_of_the_batches_it_reads(tmp_path: Path, source: str, monkeypatch) -> None:
    data = SOURCES[source](tmp_path)
    straight = _read(data, 7)[0]
    decoded = []
    original = sources.decode_image
    monkeypatch.setattr(sources, "decode_image", lambda raw: decoded.append(raw) or original(raw))
    resumed = _read(data, 2, start=5)[0]
    assert len(decoded) == 8 and _same(resumed, straight[5:])
    decoded.clear()
    _read(data, 2, start=5, batch=2, rank=1, world=2)
    assert len(decoded) == 4  # a rank decodes its own part only


def test_file_order_and_a_shuffle_buffer_are_settings(tmp_path: Path) -> None:
    data = _shards(tmp_path, shuffle=False)
    assert _captions(_read(data, 3)[0]) == captions_of(sorted(tmp_path.glob("s-*.tar")))
    one_sample_buffer = _read(_shards(tmp_path, shuffle_buffer=1), 3)[0]
    per_shard = [_captions(one_sample_buffer)[k : k + 4] for k in (0, 4, 8)]  # shards permuted, samples kept
    assert sorted(per_shard) == [captions_of([path]) for path in sorted(tmp_path.glob("s-*.tar"))]


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(source="manifest", manifest="m.jsonl", num_workers=2), r"data\.num_workers applies to .*'shapes' only"),
        (dict(source="webdataset", urls="a.tar", num_workers=1), r"data\.num_workers applies to .*'shapes' only"),
        (dict(source="manifest", manifest="m.jsonl", shuffle_buffer=10), r"data\.shuffle_buffer applies to"),
        (dict(source="webdataset", urls="a.tar", shuffle_buffer=0), r"data\.shuffle_buffer must be an integer >= 1"),
        (dict(source="shapes", shuffle=False), r"data\.shuffle applies to webdataset and manifest"),
        (dict(source="manifest", manifest="m.jsonl", shuffle="yes"), r"data\.shuffle must be true or false"),
    ],
)
def test_settings_that_would_be_ignored_or_cannot_work_are_refused(settings: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        DataConfig(**settings)
    assert DataConfig(source="shapes", num_workers=2).num_workers == 2


def test_a_source_whose_images_never_decode_is_one_clear_error(tmp_path: Path) -> None:
    data = _manifest(tmp_path, bad=tuple(range(PER_EPOCH)))
    with pytest.raises(ValueError, match="no usable sample in .*data.jsonl: no image from global sample 0 on"):
        _read(data, 1)
