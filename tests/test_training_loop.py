"""The loop skeleton every objective runs on (`clipcond.training.loop`): throughput measured
over the window actually logged."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest
from test_train_diffusion import tiny_config

import clipcond.training.loop as loop
from clipcond.training.diffusion.loop import train_diffusion
from clipcond.training.loop import Throughput


class FakeClock:
    """Seconds that advance only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_divides_the_samples_of_each_window_by_its_own_time() -> None:
    clock = FakeClock()
    meter = Throughput(samples_per_step=8, clock=clock)
    for seconds in (0.5, 0.5, 1.0):  # three steps, 2 s
        clock.now += seconds
        meter.step()
    assert meter.window() == pytest.approx(3 * 8 / 2.0)
    clock.now += 4.0  # a short last window: one step in 4 s
    meter.step()
    assert meter.window() == pytest.approx(8 / 4.0)
    assert meter.overall() == pytest.approx(4 * 8 / 6.0)


def test_throughput_before_any_step_is_zero() -> None:
    clock = FakeClock()
    meter = Throughput(samples_per_step=8, clock=clock)
    clock.now += 1.0
    assert meter.overall() == 0.0 and meter.window() == 0.0


def _logged_rates(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["samples_per_second"] for record in records if "samples_per_second" in record}


def test_diffusion_logs_samples_per_second_of_the_logged_window(
    tiny_clip_text_path, tmp_path: Path, monkeypatch
) -> None:
    """Each reading of the clock takes one second, so every logged window lasts 1 s and its
    rate is the samples of the steps it really holds: 2 steps of 4 samples, then the short
    last window of 1 step; after a resume at step 3, the first window holds 1 step."""
    ticks = iter(range(1000))
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    config = tiny_config(tiny_clip_text_path, tmp_path, steps=5, log_every=2, checkpoint_every=3, ema_decay=None)
    train_diffusion(config, show_progress=False)
    assert _logged_rates(tmp_path) == {2: 8.0, 4: 8.0, 5: 4.0}

    shutil.rmtree(tmp_path / "checkpoints" / "step-000000005")
    shutil.rmtree(tmp_path / "pipeline")
    (tmp_path / "metrics.jsonl").unlink()
    train_diffusion(config, resume=True, show_progress=False)
    assert _logged_rates(tmp_path) == {4: 4.0, 5: 4.0}
