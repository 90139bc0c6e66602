"""A run resumes only on the number of processes its checkpoints were written on.

Step `s` of rank `r` reads the global samples ``(s * world + r) * batch_size + k``, so a run
killed on 2 processes and resumed on 1 (or the other way) would read samples again or never and
end at neither run's weights (probe 13). The checkpoints record the count; a resume on another
one is refused before any work, naming both counts, with the folder left as it was. Two
processes are forked by accelerate's `debug_launcher` (CPU, gloo), as in
test_multiprocess_training.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_multiprocess_training import WORLD, _forked_rank, clip_config

from clipcond.training.clip.loop import train_clip


def _folder_state(run_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}


def _interrupted(run_dir: Path) -> None:
    """A run killed after its checkpoint of step 2 (of 3): the last checkpoint and the result gone."""
    shutil.rmtree(run_dir / "checkpoints" / "step-000000003")
    shutil.rmtree(run_dir / "model")


def test_a_run_of_two_processes_resumed_on_one_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    from accelerate import debug_launcher

    from clipcond.cli import main

    config = clip_config(tmp_path / "run", 2)
    debug_launcher(_forked_rank, args=("clip", config, str(tmp_path / "audit")), num_processes=WORLD)
    _interrupted(tmp_path / "run")
    trainer = json.loads((tmp_path / "run" / "checkpoints" / "step-000000002" / "trainer.json").read_text())
    assert trainer["extra"]["num_processes"] == WORLD
    before = _folder_state(tmp_path / "run")
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    capsys.readouterr()

    assert main(["train-clip", "--config", str(config_path), "--no-progress", "--resume"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "on 1 process: its checkpoints were written by a run on 2 processes" in err
    assert "accelerate launch --num_processes 2" in err
    assert "resuming" not in out
    assert _folder_state(tmp_path / "run") == before  # nothing set aside, cut back or written


def test_a_run_of_one_process_resumed_on_two_is_refused(tmp_path: Path) -> None:
    from accelerate import debug_launcher

    config = clip_config(tmp_path / "run", 4)
    train_clip(config, show_progress=False)
    _interrupted(tmp_path / "run")
    before = _folder_state(tmp_path / "run")
    with pytest.raises(Exception, match=r"on 2 processes: its checkpoints were written by a run on 1 process,"):
        debug_launcher(_resume_rank, args=(config,), num_processes=WORLD)
    assert _folder_state(tmp_path / "run") == before


def _resume_rank(config) -> None:
    """One forked rank resuming `config` (the refusal is raised on every rank)."""
    import os

    import torch
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    train_clip(config, resume=True, show_progress=False)


def test_a_checkpoint_without_the_count_resumes_as_before(tmp_path: Path) -> None:
    """Checkpoints written before the count was saved are accepted."""
    config = clip_config(tmp_path / "run", 4)
    train_clip(config, show_progress=False)
    _interrupted(tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "step-000000002" / "trainer.json"
    trainer = json.loads(path.read_text())
    del trainer["extra"]["num_processes"]
    path.write_text(json.dumps(trainer))
    assert train_clip(config, resume=True, show_progress=False).steps == 3


def test_the_count_is_checked_as_a_count() -> None:
    from clipcond.training.loop import extra_problem

    assert extra_problem({"num_processes": 2}) is None
    for bad in (0, -1, True, "2", None, 1.0):
        assert "num_processes is" in extra_problem({"num_processes": bad}), bad
