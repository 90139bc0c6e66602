"""What `train_clip` returns on every rank of two processes (accelerate's `debug_launcher`: two
forked CPU processes, gloo): the loss, also of a run resumed at its last step, which rank 0 reads
back from the metrics it logged; the throughput, counted over the global batch as one process of
the same global batch counts it; the last zero-shot evaluation, which the main process makes
(train-t5's held-out one: tests/test_multiprocess_t5.py)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_multiprocess_training import WORLD, clip_config, fresh_forked_process

import clipcond.training.loop as loop
from clipcond.training.clip.loop import train_clip


def _forked_rank(config, resume: bool, out: str) -> None:
    """One rank of `train_clip`; writes its result's loss, throughput and evaluation to
    ``<out>.rank<r>.json``."""
    fresh_forked_process()
    result = train_clip(config, resume=resume, show_progress=False)
    Path(f"{out}.rank{torch.distributed.get_rank()}.json").write_text(
        json.dumps(
            {"loss": result.loss, "samples_per_second": result.samples_per_second, "evaluation": result.evaluation}
        )
    )


def _ranks_results(out: Path) -> list[dict[str, float]]:
    return [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in range(WORLD)]


def _logged(run_dir: Path, key: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record[key] for record in records if key in record]


class _TickingThroughput(loop.Throughput):
    """`Throughput` on a clock that moves one second per reading: rates that are a function of
    the samples counted alone."""

    def __init__(self, samples_per_step: int, clock=None) -> None:
        ticks = itertools.count()
        super().__init__(samples_per_step, clock=lambda: float(next(ticks)))


def test_every_rank_returns_the_runs_loss_and_global_throughput(tmp_path: Path, monkeypatch) -> None:
    from accelerate import debug_launcher

    monkeypatch.setattr(loop, "Throughput", _TickingThroughput)  # the forked ranks inherit it
    one = train_clip(clip_config(tmp_path / "one", 4), show_progress=False)
    two = clip_config(tmp_path / "two", 2)
    debug_launcher(_forked_rank, args=(two, False, str(tmp_path / "two-result")), num_processes=WORLD)
    # 4 samples a step on both: 2 per process on two processes
    assert _logged(tmp_path / "two", "samples_per_second") == _logged(tmp_path / "one", "samples_per_second")
    ran = _ranks_results(tmp_path / "two-result")
    assert [result["samples_per_second"] for result in ran] == [one.samples_per_second] * WORLD
    # ticks: 0 at the start, 1-3 at the three logged windows, 4 at the end: 3 steps of 4 samples in 4 s
    assert _logged(tmp_path / "one", "samples_per_second") == [4.0] * 3 and one.samples_per_second == 3.0
    last_logged = _logged(tmp_path / "two", "loss")[-1]
    assert [result["loss"] for result in ran] == [last_logged] * WORLD
    # the last evaluation, made by the main process, is every rank's
    assert ran[0]["evaluation"] is not None and ran[1]["evaluation"] == ran[0]["evaluation"]

    # killed after its last checkpoint, before its result was written: resumed at its last step,
    # it takes no step, and every rank returns the loss logged for that step
    assert (tmp_path / "two" / "checkpoints" / "step-000000003").is_dir()
    shutil.rmtree(tmp_path / "two" / "model")
    debug_launcher(_forked_rank, args=(two, True, str(tmp_path / "resumed-result")), num_processes=WORLD)
    resumed = _ranks_results(tmp_path / "resumed-result")
    assert [result["loss"] for result in resumed] == [last_logged] * WORLD
    assert [result["samples_per_second"] for result in resumed] == [0.0] * WORLD
    assert last_logged == pytest.approx(one.loss, abs=1e-6)
