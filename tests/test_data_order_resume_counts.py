"""Skips of the shared stream (bad manifest lines, bad shard members) counted once per pass, so that the counts of a run
resumed at any step add up to the uninterrupted run's; and which sample stands in for an
unloadable image (its place in the next global batch, else the next position)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from shards import png, write_shard

from clipcond.training.data import DataConfig, ImageCaptionBatches


def _bad_lines_manifest(folder: Path) -> DataConfig:
    """12 usable lines (an epoch: 3 steps of 4), a line that is no JSON, one without an image
    and one with a blank caption."""
    lines = []
    for index in range(12):
        Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(folder / f"{index}.png")
        lines.append(json.dumps({"image": f"{index}.png", "caption": f"picture {index}"}))
        if index == 4:
            lines += [
                "{not json",
                json.dumps({"caption": "no image here"}),
                json.dumps({"image": "0.png", "caption": " "}),
            ]
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return DataConfig(source="manifest", manifest=str(folder / "data.jsonl"), shuffle=False)


def _bad_members_shards(folder: Path) -> DataConfig:
    """12 usable samples in two shards, file order; a blank caption before the first sample and
    one between samples 3 and 4 (where step 1 of batches of 4 starts)."""
    samples = [(f"{i:04d}", png(i), f"picture {i}".encode()) for i in range(12)]
    samples.insert(4, ("blank-b", png(99), b"  "))
    samples.insert(0, ("blank-a", png(98), b"\t"))
    write_shard(folder / "a.tar", samples[:7])
    write_shard(folder / "b.tar", samples[7:])
    return DataConfig(source="webdataset", urls=f"{folder}/{{a,b}}.tar", shuffle=False)


def _counts(data: DataConfig, start: int, steps: int) -> dict[str, int]:
    batches = ImageCaptionBatches(data, None, 8, 4, 0, start_step=start)
    for _ in range(steps):
        batches.next_with_captions()
    return dict(batches.skipped.counts)


@pytest.mark.parametrize(
    "source, per_pass",
    [
        ("manifest", {"bad manifest line": 2, "empty caption": 1}),
        ("webdataset", {"empty caption": 2}),
    ],
)
def test_a_resume_at_any_step_counts_the_skips_of_the_uninterrupted_run(tmp_path: Path, source, per_pass) -> None:
    data = (_bad_lines_manifest if source == "manifest" else _bad_members_shards)(tmp_path)
    assert _counts(data, 0, 3) == per_pass  # one pass, each skip once
    assert _counts(data, 0, 5) == {reason: 2 * count for reason, count in per_pass.items()}  # into the second
    for start in range(1, 5):
        before, since = _counts(data, 0, start), _counts(data, start, 5 - start)
        total = {reason: before.get(reason, 0) + since.get(reason, 0) for reason in {*before, *since}}
        assert total == _counts(data, 0, 5), start


def _manifest_with_bad_images(folder: Path, bad: set[int]) -> DataConfig:
    lines = []
    for index in range(12):
        path = folder / f"{index}.png"
        path.write_bytes(b"no image") if index in bad else Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(path)
        lines.append(json.dumps({"image": path.name, "caption": f"picture {index}"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return DataConfig(source="manifest", manifest=str(folder / "data.jsonl"), shuffle=False)


@pytest.mark.parametrize(
    "bad, first_batch",
    [
        ({2}, ["picture 0", "picture 1", "picture 6", "picture 3"]),  # its place one global batch on
        ({2, 6}, ["picture 0", "picture 1", "picture 10", "picture 3"]),  # two on
        # 2, 6, 10 and (next epoch) 14, 18, 22 never load, 26 is two epochs on: the next position
        ({2, 6, 10}, ["picture 0", "picture 1", "picture 3", "picture 3"]),
    ],
)
def test_the_stand_in_for_an_unloadable_image(tmp_path: Path, bad, first_batch) -> None:
    data = _manifest_with_bad_images(tmp_path, bad)
    assert ImageCaptionBatches(data, None, 8, 4, 0).next_with_captions()[1] == first_batch
    two_ranks = [ImageCaptionBatches(data, None, 8, 2, 0, rank=r, world=2).next_with_captions()[1] for r in (0, 1)]
    assert two_ranks[0] + two_ranks[1] == first_batch


def test_a_stand_in_is_never_drawn_from_two_epochs_on(tmp_path: Path) -> None:
    """Batches of 5 (12 samples an epoch): the strided places of sample 2 hold images 7, 0, 5, 10
    (unloadable) until position 27, two epochs on, where the search turns to the next positions:
    3 (unloadable), 4. Samples 0 and 3 find image 8 one and two global batches on."""
    data = _manifest_with_bad_images(tmp_path, {0, 2, 3, 5, 7, 10})
    captions = ImageCaptionBatches(data, None, 8, 5, 0).next_with_captions()[1]
    assert captions == ["picture 8", "picture 1", "picture 4", "picture 8", "picture 4"]
