"""The loop skeleton every objective runs on (`clipcond.training.loop`): throughput measured
over the window actually logged, and the run folder of a failed run given back."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import pytest
import yaml
from shards import write_shard, write_shards
from test_train_diffusion import tiny_config
from test_train_t5 import tiny_config as tiny_t5_config

import clipcond.training.clip.loop as clip_loop
import clipcond.training.loop as loop
from clipcond.cli import main as cli_main
from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.clip.loop import train_clip
from clipcond.training.data import DataConfig
from clipcond.training.diffusion.loop import train_diffusion
from clipcond.training.loop import Throughput, TrainingDiverged
from clipcond.training.run_folder import CONFIG_SNAPSHOT, METRICS_FILE, prepare_output_dir
from clipcond.training.t5.loop import train_t5

TINY_MODEL = str(Path(__file__).resolve().parents[1] / "configs" / "models" / "clip-tiny.yaml")


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


# ---------------------------------------------------------------- a failed run's folder


def _clip_on_shards(urls: str, output_dir: Path, **overrides) -> TrainClipConfig:
    data = DataConfig(source="webdataset", urls=urls)
    settings = dict(model=TINY_MODEL, data=data, batch_size=4, steps=2, warmup_steps=1, output_dir=str(output_dir))
    return TrainClipConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory) -> Path:
    """``good-000000..000001.tar`` (4 samples each) and ``broken-000000.tar`` (4 samples whose
    images do not decode)."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, "good", 2)
    write_shard(folder / "broken-000000.tar", [(f"{k:04d}", b"not an image", b"a caption") for k in range(4)])
    return folder


def test_a_run_that_failed_before_its_first_checkpoint_leaves_a_reusable_folder(shard_folder: Path, tmp_path: Path):
    run = tmp_path / "run"
    broken = _clip_on_shards(f"{shard_folder}/broken-000000.tar", run)
    with pytest.raises(ValueError, match="no usable sample"):
        train_clip(broken, show_progress=False)
    assert not (run / CONFIG_SNAPSHOT).exists() and (run / "train_config.failed.yaml").is_file()

    fixed = _clip_on_shards(f"{shard_folder}/good-{{000000..000001}}.tar", run)
    result = train_clip(fixed, show_progress=False)  # a plain restart, with the corrected urls
    assert result.steps == 2 and (run / "model").is_dir()
    assert yaml.safe_load((run / CONFIG_SNAPSHOT).read_text())["data"]["urls"] == fixed.data.urls

    again = tmp_path / "again"
    with pytest.raises(ValueError, match="no usable sample"):
        train_clip(_clip_on_shards(f"{shard_folder}/broken-000000.tar", again), show_progress=False)
    path = again.parent / "fixed.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(_clip_on_shards(fixed.data.urls, again))))
    assert cli_main(["train-clip", "--config", str(path), "--resume", "--no-progress"]) == 0
    assert (again / "model").is_dir()


def test_a_diverged_run_without_checkpoint_restarts_with_clean_metrics(
    shard_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    config = _clip_on_shards(f"{shard_folder}/good-000000.tar", tmp_path, steps=3, log_every=1, checkpoint_every=10)
    calls = {"n": 0}
    real_loss = clip_loop.clip_loss

    def poisoned(*args, **kwargs):  # step 1 is logged, step 2 diverges
        calls["n"] += 1
        return real_loss(*args, **kwargs) * (float("nan") if calls["n"] == 2 else 1.0)

    monkeypatch.setattr(clip_loop, "clip_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="step 2.*no checkpoint was written yet"):
        train_clip(config, show_progress=False)
    monkeypatch.setattr(clip_loop, "clip_loss", real_loss)
    train_clip(dataclasses.replace(config, lr=1e-4), resume=True, show_progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.failed.jsonl").read_text().splitlines()] == [1]


def test_a_run_killed_before_its_first_checkpoint_resumes_afresh(shard_folder: Path, tmp_path: Path) -> None:
    """A killed process cannot hand its folder back: the folder may as well belong to a run
    still going, so a plain start is refused; --resume starts afresh, its metrics clean."""
    config = _clip_on_shards(f"{shard_folder}/good-000000.tar", tmp_path, steps=2, log_every=1, checkpoint_every=10)
    prepare_output_dir(config, resume=False)  # what the killed run had written: its snapshot ...
    (tmp_path / METRICS_FILE).write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")  # ... and a record
    with pytest.raises(ValueError, match="--resume"):
        train_clip(config, show_progress=False)
    train_clip(config, resume=True, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[0]["loss"] != 9.0


def test_a_folder_holding_a_checkpoint_stays_the_runs(shard_folder: Path, tmp_path: Path, monkeypatch) -> None:
    config = _clip_on_shards(f"{shard_folder}/good-000000.tar", tmp_path, steps=4, checkpoint_every=2)
    calls = {"n": 0}
    real_loss = clip_loop.clip_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        return real_loss(*args, **kwargs) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(clip_loop, "clip_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="step-000000002"):
        train_clip(config, show_progress=False)
    assert (tmp_path / CONFIG_SNAPSHOT).is_file()
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        train_clip(config, show_progress=False)
    with pytest.raises(ValueError, match=r"config changed \(lr\)"):
        train_clip(dataclasses.replace(config, lr=1e-4), resume=True, show_progress=False)


def test_t5_retrains_its_tokenizer_after_a_failed_attempt(tmp_path: Path, monkeypatch) -> None:
    """The tokenizer kept by an attempt that left no checkpoint is not reused: the retry's
    config may ask for another one."""
    import clipcond.training.t5.loop as t5_loop

    config = tiny_t5_config(tmp_path / "run", steps=2, checkpoint_every=10)
    real_loss = t5_loop.span_loss

    def poisoned(logits, labels):
        loss, correct = real_loss(logits, labels)
        return loss * float("nan"), correct

    monkeypatch.setattr(t5_loop, "span_loss", poisoned)
    with pytest.raises(TrainingDiverged):
        train_t5(config, show_progress=False)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    monkeypatch.setattr(t5_loop, "span_loss", real_loss)
    smaller = dataclasses.replace(config, tokenizer=dataclasses.replace(config.tokenizer, vocab_size=48))
    retried = train_t5(smaller, resume=True, show_progress=False)
    fresh = train_t5(dataclasses.replace(smaller, output_dir=str(tmp_path / "fresh")), show_progress=False)
    first = train_t5(dataclasses.replace(config, output_dir=str(tmp_path / "first")), show_progress=False)
    assert retried.vocab_size == fresh.vocab_size != first.vocab_size
