"""Skipped samples under several processes (accelerate's `debug_launcher`: two forked CPU
processes, gloo) are the run's, as one process of the same global batch counts them.

An image that cannot be loaded is met by the one rank whose part of the global batch holds it;
a bad caption or manifest line is met by every rank, in the stream they all read. The report,
`TrainClipResult.skipped` (on every rank) and each checkpoint's ``skipped_samples`` count the
first over all ranks and the second once, also after a resume (probe 13: 2 processes reported
1 of 4 undecodable images, rank 0's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from test_multiprocess_training import WORLD, clip_config, fresh_forked_process

from clipcond.training.clip.loop import train_clip
from clipcond.training.data import DataConfig

# what the manifest below holds within the 12 samples (3 steps x 4) the runs read
EXPECTED_AT_THE_END = {"undecodable image": 3, "missing image": 1, "empty caption": 2, "bad manifest line": 1}


def _manifest(folder: Path) -> DataConfig:
    """16 usable lines (samples 0-15 in file order), with undecodable images at samples 2, 4 and 7
    and a missing one at 11 (with 2 processes of 2: ranks 1, 0, 1, 1), between them two blank
    captions and a line that is not JSON."""
    lines = []
    for index in range(16):
        path = folder / f"{index}.png"
        if index in (2, 4, 7):
            path.write_bytes(b"not an image")
        elif index != 11:
            Image.new("RGB", (8, 8), (index * 15, 40, 0)).save(path)
        lines.append(json.dumps({"image": path.name, "caption": f"picture {index}"}))
        if index in (1, 5):
            lines.append(json.dumps({"image": "0.png", "caption": "   "}))
        if index == 8:
            lines.append("{not json")
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return DataConfig(source="manifest", manifest=str(folder / "data.jsonl"), shuffle=False)


def _forked_rank(config, resume: bool, out: str) -> None:
    """One rank of `train_clip`; writes the `skipped` of its result to ``<out>.rank<r>.json``."""
    fresh_forked_process()
    result = train_clip(config, resume=resume, show_progress=False)
    Path(f"{out}.rank{torch.distributed.get_rank()}.json").write_text(json.dumps(result.skipped))


def _ranks_results(out: Path) -> list[dict[str, int]]:
    return [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in range(WORLD)]


def _checkpoint_counts(run_dir: Path) -> dict[str, dict[str, int]]:
    return {
        folder.name: json.loads((folder / "trainer.json").read_text())["extra"]["skipped_samples"]
        for folder in sorted((run_dir / "checkpoints").glob("step-*"))
    }


def test_two_processes_count_the_skipped_samples_of_one(tmp_path: Path) -> None:
    from accelerate import debug_launcher

    data = _manifest(tmp_path)
    one = train_clip(clip_config(tmp_path / "one", 4, data=data), show_progress=False)
    assert one.skipped == EXPECTED_AT_THE_END

    two = clip_config(tmp_path / "two", 2, data=data)
    debug_launcher(_forked_rank, args=(two, False, str(tmp_path / "two-result")), num_processes=WORLD)
    assert _ranks_results(tmp_path / "two-result") == [EXPECTED_AT_THE_END] * WORLD
    assert _checkpoint_counts(tmp_path / "two") == _checkpoint_counts(tmp_path / "one")

    # killed after the checkpoint of step 2, resumed on two processes: the counts restored once, not per rank
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step-000000003")
    shutil.rmtree(tmp_path / "two" / "model")
    debug_launcher(_forked_rank, args=(two, True, str(tmp_path / "resumed-result")), num_processes=WORLD)
    assert _ranks_results(tmp_path / "resumed-result") == [EXPECTED_AT_THE_END] * WORLD
    assert _checkpoint_counts(tmp_path / "two") == _checkpoint_counts(tmp_path / "one")
