"""`run_skip_counts` and `check_process_count` tested directly, in milliseconds, on hand-written
checkpoint files (the forked two-process training runs also reach them, but slowly)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clipcond.training import loop
from clipcond.training.run_folder import RunFolderError


def test_run_skip_counts_adds_image_failures_and_takes_the_furthest_rank_for_the_shared_stream() -> None:
    before = {"undecodable image": 2, "empty caption": 3, "bad manifest line": 1}
    ranks = [
        {"undecodable image": 1, "missing image": 1, "empty caption": 2},
        {"undecodable image": 2, "empty caption": 4, "no caption": 1},
    ]
    assert loop.run_skip_counts(before, ranks) == Counter(
        {"undecodable image": 5, "missing image": 1, "empty caption": 7, "bad manifest line": 1, "no caption": 1}
    )
    assert loop.run_skip_counts(before, []) == Counter(before)


def _checkpoint(run: Path, step: int, extra: dict | None, damaged: bool = False) -> None:
    folder = run / "checkpoints" / f"step-{step:09d}"
    folder.mkdir(parents=True)
    if damaged:
        (folder / "trainer.json").write_text("{cut")
        return
    version, values, gauss = random.Random(0).getstate()
    name, keys, *rest = np.random.RandomState(0).get_state()
    trainer = {
        "step": step,
        "extra": extra or {},
        "rng": {"python": [version, list(values), gauss], "numpy": [name, keys.tolist(), *rest]},
    }
    (folder / "trainer.json").write_text(json.dumps(trainer))


@pytest.mark.parametrize("saved, asked, suffix", [(1, 2, True), (2, 1, False), (3, 2, False)])
def test_check_process_count_names_both_counts(tmp_path: Path, saved: int, asked: int, suffix: bool) -> None:
    _checkpoint(tmp_path, 2, {"num_processes": saved})
    loop.check_process_count(tmp_path, saved)  # the same count resumes
    with pytest.raises(RunFolderError) as refused:
        loop.check_process_count(tmp_path, asked)
    names = {1: "1 process", 2: "2 processes", 3: "3 processes"}
    assert str(refused.value) == (
        f"cannot resume {tmp_path} on {names[asked]}: its checkpoints were written by a run on {names[saved]}, and "
        f"the samples each step reads depend on that number; resume it with `accelerate launch --num_processes {saved}`"
        + (" (or without accelerate launch)" if suffix else "")
    )


def test_a_damaged_newest_checkpoint_leaves_the_decision_to_the_older_one(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2, {"num_processes": 2})
    _checkpoint(tmp_path, 4, None, damaged=True)
    with pytest.raises(RunFolderError, match="on 1 process: its checkpoints were written by a run on 2 processes"):
        loop.check_process_count(tmp_path, 1)
    _checkpoint(tmp_path, 6, {})  # newest, written before the count was saved: accepted
    loop.check_process_count(tmp_path, 1)
    loop.check_process_count(tmp_path / "nothing-there", 3)


def test_a_newest_checkpoint_whose_extra_fails_the_loop_s_checks_leaves_the_decision_to_the_older_one(
    tmp_path: Path,
) -> None:
    """A value the loop never writes (0 processes) makes the checkpoint damaged, as the resume will find it."""
    _checkpoint(tmp_path, 2, {"num_processes": 2})
    _checkpoint(tmp_path, 4, {"num_processes": 0})
    with pytest.raises(RunFolderError, match="on 1 process: its checkpoints were written by a run on 2 processes"):
        loop.check_process_count(tmp_path, 1)
    loop.check_process_count(tmp_path, 2)
