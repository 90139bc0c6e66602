"""What `train_clip` returns on every rank of two processes (accelerate's `debug_launcher`: two
forked CPU processes, gloo): the loss, also of a run resumed at its last step, which rank 0 reads
back from the metrics it logged; the throughput, counted over the global batch as one process of
the same global batch counts it; the last evaluation (train-clip's zero-shot one, train-t5's
held-out one), which the main process makes."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_multiprocess_training import WORLD, clip_config
from test_train_t5 import tiny_config

import clipcond.training.loop as loop
from clipcond.training.clip.loop import train_clip
from clipcond.training.t5.loop import train_t5


def _forked_rank(train, config, resume: bool, out: str) -> None:
    """One rank of `train` (`train_clip` or `train_t5`); writes its result's loss, throughput
    and evaluation to ``<out>.rank<r>.json``."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    result = train(config, resume=resume, show_progress=False)
    throughput = getattr(result, "samples_per_second", getattr(result, "captions_per_second", None))
    Path(f"{out}.rank{torch.distributed.get_rank()}.json").write_text(
        json.dumps({"loss": result.loss, "samples_per_second": throughput, "evaluation": result.evaluation})
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
    debug_launcher(_forked_rank, args=(train_clip, two, False, str(tmp_path / "two-result")), num_processes=WORLD)
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
    debug_launcher(_forked_rank, args=(train_clip, two, True, str(tmp_path / "resumed-result")), num_processes=WORLD)
    resumed = _ranks_results(tmp_path / "resumed-result")
    assert [result["loss"] for result in resumed] == [last_logged] * WORLD
    assert [result["samples_per_second"] for result in resumed] == [0.0] * WORLD
    assert last_logged == pytest.approx(one.loss, abs=1e-6)


def test_every_rank_returns_the_t5_runs_final_evaluation(tmp_path: Path) -> None:
    """train-t5 evaluates on the held-out captions at the end, on the main process."""
    from accelerate import debug_launcher

    config = tiny_config(tmp_path / "t5", batch_size=4)
    debug_launcher(_forked_rank, args=(train_t5, config, False, str(tmp_path / "t5-result")), num_processes=WORLD)
    ranks = _ranks_results(tmp_path / "t5-result")
    assert ranks[0]["evaluation"] and ranks[1]["evaluation"] == ranks[0]["evaluation"]
    assert ranks[1]["loss"] == ranks[0]["loss"]
