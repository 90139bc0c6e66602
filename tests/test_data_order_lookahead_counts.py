"""The skips of the shared stream (bad manifest lines, bad shard members) are counted when a step
reaches the position they precede, not when the search for a stand-in image reads ahead into the
next epoch: the counts after any step are those of the positions its global batches hold, so a
run resumed at any step (its checkpoint's counts plus the resumed part's) counts exactly what the
uninterrupted run counts, on one process or two."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from shards import png, write_shard

from clipcond.training.data import DataConfig, ImageCaptionBatches

PER_EPOCH = 16  # usable samples: 4 steps of a global batch of 4 an epoch
UNLOADABLE = 13  # in step 3: its stand-in is looked for one global batch on, in the next epoch
STEPS = 7


def _manifest(folder: Path) -> DataConfig:
    """16 lines ``picture k`` and a line that is no JSON, met by each pass over the file."""
    lines = []
    for index in range(PER_EPOCH):
        path = folder / f"{index}.png"
        path.write_bytes(b"not an image") if index == UNLOADABLE else Image.new("RGB", (8, 8)).save(path)
        lines.append(json.dumps({"image": path.name, "caption": f"picture {index}"}))
    lines.insert(5, "{not json")
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return DataConfig(source="manifest", manifest=str(folder / "data.jsonl"), shuffle=False)


def _manifest_skips_before(position: int) -> list[str]:
    """A pass's bad lines come before its first sample."""
    return ["bad manifest line"] if position % PER_EPOCH == 0 else []


def _shards(folder: Path) -> DataConfig:
    """16 samples in two shards, a blank caption before sample 1 and one after sample 15."""
    samples = [(f"{i:04d}", b"not an image" if i == UNLOADABLE else png(i), f"picture {i}".encode()) for i in range(16)]
    samples.insert(1, ("blank-a", png(98), b"  "))
    samples.append(("blank-b", png(99), b"\t"))
    write_shard(folder / "a.tar", samples[:8])
    write_shard(folder / "b.tar", samples[8:])
    return DataConfig(source="webdataset", urls=f"{folder}/{{a,b}}.tar", shuffle=False)


def _shard_skips_before(position: int) -> list[str]:
    """blank-a comes before sample 1; blank-b, after sample 15, before the next pass's sample 0."""
    return ["empty caption"] if position % PER_EPOCH == 1 or (position % PER_EPOCH == 0 and position > 0) else []


SOURCES = {"manifest": (_manifest, _manifest_skips_before), "webdataset": (_shards, _shard_skips_before)}


def _expected(skips_before, steps: int, world: int) -> Counter:
    """The skips of the first `steps` global batches of 4, from the layout above: every rank
    counts the shared ones before each position the batches hold, one rank the unloadable image."""
    positions = range(steps * 4)
    counts = Counter(reason for position in positions for reason in skips_before(position) for _ in range(world))
    counts["undecodable image"] = sum(position % PER_EPOCH == UNLOADABLE for position in positions)
    return +counts


def _counts(data: DataConfig, start: int, steps: int, world: int) -> Counter:
    """Every rank's counts after `steps` steps from `start_step` (global batch 4), added up."""
    total: Counter = Counter()
    for rank in range(world):
        batches = ImageCaptionBatches(data, None, 8, 4 // world, 0, start_step=start, rank=rank, world=world)
        for _ in range(steps):
            batches.next_with_captions()
        total.update(batches.skipped.counts)
    return +total


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_counts_after_each_step_are_those_of_its_positions(tmp_path: Path, source: str, world: int) -> None:
    make, skips_before = SOURCES[source]
    data = make(tmp_path)
    for steps in range(1, STEPS + 1):  # step 3 looks ahead into the next pass for the stand-in of 13
        assert _counts(data, 0, steps, world) == _expected(skips_before, steps, world), steps


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_a_resume_at_any_step_counts_what_the_uninterrupted_run_counts(tmp_path: Path, source: str, world: int) -> None:
    make, skips_before = SOURCES[source]
    data = make(tmp_path)
    for start in range(1, STEPS):
        resumed = _counts(data, 0, start, world) + _counts(data, start, STEPS - start, world)
        assert resumed == _expected(skips_before, STEPS, world), start
