"""The loop skeleton every objective runs on (`clipcond.training.loop`): throughput measured
over the window actually logged, the run folder of a failed run given back, and resumes of what
a kill, a disk or a hand left (damaged checkpoints, unfinished writes, metrics logged past the
last checkpoint, a finished run, a moved folder, a second live run)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import types
from pathlib import Path

import pytest
import torch
import yaml
from shards import write_shard, write_shards
from test_train_clip import model_weights
from test_train_diffusion import tiny_config
from test_train_t5 import tiny_config as tiny_t5_config

import clipcond.training.clip.loop as clip_loop
import clipcond.training.loop as loop
from clipcond.cli import main as cli_main
from clipcond.training.checkpoint import NoIntactCheckpoint
from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.clip.loop import train_clip
from clipcond.training.data import DataConfig
from clipcond.training.diffusion.loop import train_diffusion
from clipcond.training.loop import Throughput, TrainingDiverged
from clipcond.training.run_folder import (
    CONFIG_SNAPSHOT,
    FINISHED_MARKER,
    METRICS_FILE,
    RunAlreadyFinished,
    prepare_output_dir,
)
from clipcond.training.run_lock import LOCK_FILE, RunFolderInUse
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


# ---------------------------------------------------------------- resuming what a kill, a disk or a hand left


def _six_steps(shard_folder: Path, output_dir: Path) -> TrainClipConfig:
    """Six steps over two good shards and one whose 4 images do not decode, a checkpoint every
    2 steps, all three kept."""
    urls = f"{shard_folder}/good-000000.tar::{shard_folder}/broken-000000.tar::{shard_folder}/good-000001.tar"
    return _clip_on_shards(urls, output_dir, steps=6, checkpoint_every=2, keep_checkpoints=3, log_every=1)


@pytest.fixture(scope="module")
def uninterrupted(shard_folder: Path, tmp_path_factory) -> tuple[Path, object]:
    """The run every resumed run is compared with: (its folder, its result)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    return folder, train_clip(_six_steps(shard_folder, folder), show_progress=False)


@pytest.fixture(scope="module")
def killed_after_step_6(shard_folder: Path, tmp_path_factory) -> Path:
    """A run folder as a kill after the checkpoint of its last step leaves it: no result yet."""
    folder = tmp_path_factory.mktemp("killed")
    train_clip(_six_steps(shard_folder, folder), show_progress=False)
    shutil.rmtree(folder / "model")
    (folder / FINISHED_MARKER).unlink()
    return folder


def _copy(run: Path, to: Path) -> Path:
    """The run folder copied elsewhere: a resume there must not mind the move."""
    shutil.copytree(run, to)
    return to


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _one_tensor_reshaped(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(*tensors[key].shape, 2)
    save_file(tensors, str(path))


STEP_6 = Path("checkpoints") / "step-000000006"
DAMAGES = {
    "truncated model file": (lambda run: _truncate(run / STEP_6 / "model.safetensors"), "cannot be read"),
    "missing optimizer file": (lambda run: (run / STEP_6 / "optimizer.safetensors").unlink(), "is missing"),
    "trainer.json garbage": (lambda run: (run / STEP_6 / "trainer.json").write_bytes(b"\x00garbage"), "does not parse"),
    "wrong-shape tensor": (lambda run: _one_tensor_reshaped(run / STEP_6 / "model.safetensors"), "wrong shape"),
    "a file in its place": (
        lambda run: (shutil.rmtree(run / STEP_6), (run / STEP_6).write_bytes(b"")),
        "is not a checkpoint folder",
    ),
    "latest pointer not UTF-8, newest truncated": (
        lambda run: (
            (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00step"),
            _truncate(run / STEP_6 / "optimizer.safetensors"),
        ),
        "cannot be read",
    ),
}


def _metrics_steps(run: Path, key: str = "loss") -> list[int]:
    return [
        record["step"] for record in map(json.loads, (run / METRICS_FILE).read_text().splitlines()) if key in record
    ]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one_with_the_same_weights(
    damage: str, uninterrupted, killed_after_step_6: Path, shard_folder: Path, tmp_path: Path, capsys
) -> None:
    reference_dir, reference = uninterrupted
    run = _copy(killed_after_step_6, tmp_path / "run")
    harm, problem = DAMAGES[damage]
    harm(run)
    capsys.readouterr()
    result = train_clip(_six_steps(shard_folder, run), resume=True, show_progress=False)
    out, err = capsys.readouterr()
    assert f"resuming from {run / 'checkpoints' / 'step-000000004'} (step 4)" in out
    assert f"checkpoint {run / STEP_6} is damaged" in err and problem in err
    assert "warning: set aside as " in err and "set aside" not in out
    damaged = run / "checkpoints" / "damaged-step-000000006"  # set aside, replaced by a good step 6
    assert damaged.is_file() if damage == "a file in its place" else damaged.is_dir()
    # the 24 samples of the 6 steps (3 epochs of 8 good ones, each epoch in its own order) came
    # with 8 broken images read in their places; the resumed run restores the count of steps 1-4
    assert result.steps == 6 and result.skipped == reference.skipped == {"undecodable image": 8}
    expected, got = model_weights(reference_dir / "model"), model_weights(run / "model")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert _metrics_steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_run_with_no_intact_checkpoint_is_one_clear_error(
    killed_after_step_6: Path, shard_folder: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(killed_after_step_6, tmp_path / "run")
    for step in (2, 4, 6):
        (run / "checkpoints" / f"step-{step:09d}" / "trainer.json").unlink()
    with pytest.raises(NoIntactCheckpoint, match="none of its 3 checkpoints can be loaded"):
        train_clip(_six_steps(shard_folder, run), resume=True, show_progress=False)
    assert sorted(path.name for path in (run / "checkpoints").glob("step-*")) == [
        "step-000000002",
        "step-000000004",
        "step-000000006",
    ]  # nothing set aside: the user may have changed the model
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(_six_steps(shard_folder, run))))
    capsys.readouterr()
    assert cli_main(["train-clip", "--config", str(path), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and err.count("\n") == 1 and "Traceback" not in err


def test_a_kill_between_logging_and_checkpointing_leaves_each_step_recorded_once(
    uninterrupted, killed_after_step_6: Path, shard_folder: Path, tmp_path: Path
) -> None:
    """Steps 5 and 6 were logged, then the run died before its step-6 checkpoint: the resumed
    run logs them again, and only its records of them remain."""
    reference_dir, _ = uninterrupted
    run = _copy(killed_after_step_6, tmp_path / "run")
    shutil.rmtree(run / STEP_6)
    logged = (run / METRICS_FILE).read_text().splitlines()
    (run / METRICS_FILE).write_text("\n".join(logged) + '\n{"step": 7, "lo')  # and one cut mid-line
    train_clip(_six_steps(shard_folder, run), resume=True, show_progress=False)
    assert _metrics_steps(run) == [1, 2, 3, 4, 5, 6]
    records = (run / METRICS_FILE).read_text().splitlines()
    assert records[:4] == logged[:4] and len(records) == 6
    expected, got = model_weights(reference_dir / "model"), model_weights(run / "model")
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_what_killed_checkpoint_writers_left_is_removed(killed_after_step_6: Path, shard_folder: Path, tmp_path):
    run = _copy(killed_after_step_6, tmp_path / "run")
    unfinished = run / "checkpoints" / ".tmp-step-000000008-4242"
    shutil.copytree(run / STEP_6, unfinished)
    (run / "checkpoints" / ".latest-4242").write_text("step-000000008")
    train_clip(_six_steps(shard_folder, run), resume=True, show_progress=False)
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == [
        "latest",
        "step-000000002",
        "step-000000004",
        "step-000000006",
    ]


def test_a_finished_run_says_so_and_one_killed_while_saving_saves_again(
    uninterrupted, killed_after_step_6: Path, shard_folder: Path, tmp_path: Path, capsys
) -> None:
    reference_dir, reference = uninterrupted
    finished = _copy(reference_dir, tmp_path / "finished")
    saved = {path: path.stat().st_mtime_ns for path in (finished / "model").iterdir()}
    with pytest.raises(RunAlreadyFinished, match="run already finished at step 6; nothing to do"):
        train_clip(_six_steps(shard_folder, finished), resume=True, show_progress=False)
    path = tmp_path / "finished.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(_six_steps(shard_folder, finished))))
    capsys.readouterr()
    assert cli_main(["train-clip", "--config", str(path), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run already finished at step 6; nothing to do") and "nan" not in out
    assert {path: path.stat().st_mtime_ns for path in (finished / "model").iterdir()} == saved
    assert not (finished / LOCK_FILE).exists()

    killed = _copy(killed_after_step_6, tmp_path / "killed")  # killed while saving its model
    result = train_clip(_six_steps(shard_folder, killed), resume=True, show_progress=False)
    assert result.steps == 6 and result.loss == reference.loss  # the loss logged at step 6, not nan
    assert _metrics_steps(killed) == [1, 2, 3, 4, 5, 6]
    expected, got = model_weights(reference_dir / "model"), model_weights(killed / "model")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert json.loads((killed / FINISHED_MARKER).read_text()) == {"step": 6}


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_taken_over(
    killed_after_step_6: Path, shard_folder: Path, tmp_path: Path, capsys
) -> None:
    from test_run_folder import _dead_pid, _hold_lock

    run = _copy(killed_after_step_6, tmp_path / "run")
    config = _six_steps(shard_folder, run)
    before = (run / METRICS_FILE).read_text()
    holder = _hold_lock(run)
    try:
        with pytest.raises(RunFolderInUse, match=f"pid {holder.pid}"):
            train_clip(config, resume=True, show_progress=False)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
        capsys.readouterr()
        assert cli_main(["train-clip", "--config", str(path), "--resume", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "is in use by another run" in err and err.count("\n") == 1
        assert (run / METRICS_FILE).read_text() == before and not (run / "model").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (run / LOCK_FILE).write_text(json.dumps(stale))
    capsys.readouterr()
    assert train_clip(config, resume=True, show_progress=False).steps == 6
    assert f"took over the lock of a run that ended (pid {stale['pid']}" in capsys.readouterr().out
    assert not (run / LOCK_FILE).exists()


def test_the_lock_is_given_back_when_a_run_fails(shard_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="no usable sample"):
        train_clip(_clip_on_shards(f"{shard_folder}/broken-000000.tar", run), show_progress=False)
    assert not (run / LOCK_FILE).exists()
    with pytest.raises(FileNotFoundError):  # fails while building, before the folder is taken
        train_clip(
            _clip_on_shards(f"{shard_folder}/good-000000.tar", tmp_path / "new", model=str(tmp_path / "none.yaml")),
            show_progress=False,
        )
    assert not (tmp_path / "new").exists()  # the lock's folder does not outlive it


# ---------------------------------------------------------------- weights that became NaN or inf


def _poison_update_of_step(monkeypatch, poisoned: int) -> None:
    """The contrastive update of step `poisoned` leaves a NaN in one trained weight while the
    loss before it was finite, as an update that overflows does."""
    real = clip_loop.ContrastiveStep.update
    calls = {"n": 0}

    def update(self) -> None:
        real(self)
        calls["n"] += 1
        if calls["n"] == poisoned:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")

    monkeypatch.setattr(clip_loop.ContrastiveStep, "update", update)


def test_an_update_that_makes_the_weights_nan_stops_the_run_before_anything_is_saved(
    shard_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Before: "model saved" with NaN weights, exit 0."""
    run = tmp_path / "run"
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(dataclasses.asdict(_clip_on_shards(f"{shard_folder}/good-000000.tar", run, steps=1)))
    )
    _poison_update_of_step(monkeypatch, 1)
    capsys.readouterr()
    assert cli_main(["train-clip", "--config", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the weights became NaN or inf in the update of step 1 (model.clip.") and (
        err.count("\n") == 1
    )
    assert err.endswith(
        "with a finite loss; stopped without saving this state (no checkpoint was written yet). Lower `lr`, raise "
        "`warmup_steps`, or use mixed_precision 'no' / 'bf16'.\n"
    )
    assert not (run / "model").exists() and not (run / "checkpoints").exists()


def test_the_last_good_checkpoint_of_a_stop_holds_finite_weights(
    shard_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    """Before: the NaN weights of step 2 were checkpointed, and the NaN loss of step 3 named that
    checkpoint "the last good checkpoint"."""
    config = _clip_on_shards(
        f"{shard_folder}/good-000000.tar", tmp_path, steps=3, checkpoint_every=1, keep_checkpoints=3
    )
    _poison_update_of_step(monkeypatch, 2)
    with pytest.raises(TrainingDiverged, match=r"update of step 2 .*the last good checkpoint is \S*step-000000001\)"):
        train_clip(config, show_progress=False)
    assert [path.name for path in (tmp_path / "checkpoints").glob("step-*")] == ["step-000000001"]
    assert not (tmp_path / "model").exists()
    assert train_clip(config, resume=True, show_progress=False).steps == 3  # it resumes: finite weights
    assert all(torch.isfinite(value).all() for value in model_weights(tmp_path / "model").values())


def test_a_rank_that_does_not_write_names_the_checkpoint_the_main_process_wrote(
    shard_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    """Only the main process writes checkpoints; the other ranks' stop messages named none
    ("no checkpoint was written yet") though rank 0 had written one. Here the run is told it is
    not the main process: it writes nothing and names the folder the main process writes."""
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "is_main_process", property(lambda self: False))
    config = _clip_on_shards(
        f"{shard_folder}/good-000000.tar", tmp_path, steps=3, checkpoint_every=1, keep_checkpoints=3
    )
    _poison_update_of_step(monkeypatch, 2)
    with pytest.raises(TrainingDiverged, match=r"update of step 2 .*the last good checkpoint is \S*step-000000001\)"):
        train_clip(config, show_progress=False)
    assert not list((tmp_path / "checkpoints").glob("step-*"))


def _checkpoint_with_poisoned_tensors(shard_folder: Path, run: Path, count: int, value: float) -> tuple:
    """A two-step run in `run` cut back to its step-1 checkpoint, whose first `count` floating
    tensors (by name) hold `value` at one place: (the run's config, those tensors' names)."""
    from safetensors.torch import load_file, save_file

    config = _clip_on_shards(f"{shard_folder}/good-000000.tar", run, steps=2, checkpoint_every=1)
    train_clip(config, show_progress=False)
    shutil.rmtree(run / "checkpoints" / "step-000000002")
    shutil.rmtree(run / "model")
    (run / FINISHED_MARKER).unlink()
    weights = run / "checkpoints" / "step-000000001" / "model.safetensors"
    tensors = load_file(str(weights))
    names = sorted(key for key, tensor in tensors.items() if tensor.is_floating_point())[:count]
    for name in names:
        tensors[name].view(-1)[0] = value
    save_file(tensors, str(weights))
    return config, names


@pytest.mark.parametrize("poisoned", [3, 5])
def test_the_refusal_names_three_tensors_holding_nan_and_counts_the_rest(
    shard_folder: Path, tmp_path: Path, poisoned: int
) -> None:
    config, names = _checkpoint_with_poisoned_tensors(shard_folder, tmp_path, poisoned, float("nan"))
    with pytest.raises(TrainingDiverged) as refused:
        train_clip(config, resume=True, show_progress=False)
    listed = str(refused.value).split(" hold NaN or inf (", 1)[1].split("): that checkpoint", 1)[0]
    if poisoned > 3:
        listed, more = listed.split(" and ")
        assert more == f"{poisoned - 3} more"
    shown = listed.split(", ")
    assert len(shown) == 3 and set(shown) <= {f"model.{name}" for name in names}


def test_a_checkpoint_holding_nan_is_refused_when_resuming(shard_folder: Path, tmp_path: Path) -> None:
    """A checkpoint an older, unchecked run wrote from NaN weights is named as such. Before: the
    run resumed from it and stopped at the next step's NaN loss, calling it "the last good
    checkpoint"."""
    config, (name,) = _checkpoint_with_poisoned_tensors(shard_folder, tmp_path, 1, float("inf"))
    with pytest.raises(TrainingDiverged) as refused:
        train_clip(config, resume=True, show_progress=False)
    assert str(refused.value) == (
        f"the weights loaded from {tmp_path / 'checkpoints' / 'step-000000001'} hold NaN or inf (model.{name}): "
        "that checkpoint was written by a run that diverged. Move it aside to resume from an earlier one, or "
        "start afresh."
    )
    assert not (tmp_path / "model").exists()


def test_weights_checked_before_a_checkpoint_name_the_steps_since_the_last_one(
    shard_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    """Weights are checked before each write, not after every update: NaN left by the update
    of step 3, with checkpoints every 2 steps, is found before step 4's checkpoint (the loss of
    step 4 reads the NaN weight only if its batch does: this one keeps the loss finite), and the
    message names steps 3 to 4 and the checkpoint of step 2."""
    config = _clip_on_shards(
        f"{shard_folder}/good-000000.tar", tmp_path, steps=4, checkpoint_every=2, keep_checkpoints=3
    )
    real = clip_loop.ContrastiveStep.update
    calls = {"n": 0}

    def update(self) -> None:
        real(self)
        calls["n"] += 1
        if calls["n"] == 3:  # a weight the forward pass does not read: the logit scale's shadow copy
            self.model.register_buffer("poisoned_copy", torch.full((1,), float("nan")), persistent=True)

    monkeypatch.setattr(clip_loop.ContrastiveStep, "update", update)
    with pytest.raises(
        TrainingDiverged,
        match=r"updates of steps 3 to 4 \(model\.poisoned_copy\).*last good checkpoint is \S*step-000000002\)",
    ):
        train_clip(config, show_progress=False)
    assert [path.name for path in (tmp_path / "checkpoints").glob("step-*")] == ["step-000000002"]


def test_the_logged_learning_rate_is_the_one_the_logged_step_used(tiny_clip_text_path, tmp_path: Path) -> None:
    """Warm-up over 4 of 6 steps from lr 1e-3: step k updates with k/4 * 1e-3 (open_clip's
    warm-up), then the cosine over the last 2 steps: 1e-3 at step 5, half of it at step 6. Each
    record holds the rate of its own step, not of the step after."""
    config = tiny_config(tiny_clip_text_path, tmp_path, steps=6, warmup_steps=4, checkpoint_every=6, ema_decay=None)
    train_diffusion(config, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [record["lr"] for record in records if "lr" in record]
    assert logged == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 0.5e-3], rel=1e-12)


def test_the_progress_bar_counts_the_runs_steps_and_a_resume_starts_it_where_the_run_stopped(
    tmp_path, capfd, monkeypatch
) -> None:
    config = TrainClipConfig(
        model=TINY_MODEL, batch_size=4, steps=3, warmup_steps=1, checkpoint_every=2, output_dir=str(tmp_path)
    )
    real_loss, calls = clip_loop.clip_loss, []

    def failing_at_step_3(*args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("stopped at step 3")
        return real_loss(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(clip_loop, "clip_loss", failing_at_step_3)
        with pytest.raises(RuntimeError, match="stopped at step 3"):
            train_clip(config, show_progress=True)
    stopped = capfd.readouterr().err
    outcome = train_clip(config, resume=True, show_progress=True)
    assert outcome.steps == 3 and outcome.samples_per_second > 0
    resumed = capfd.readouterr().err
    assert "train-clip:" in stopped and "| 2/3 [" in stopped and "| 3/3 [" not in stopped
    assert "train-clip: 100%" in resumed and "| 2/3 [" in resumed and "| 3/3 [" in resumed
    assert "| 0/3 [" not in resumed and "| 1/3 [" not in resumed
    # the postfix: the losses and the throughput as samples_s, not the learning rate
    postfix = resumed.rsplit("| 3/3 [", 1)[1].split("\n")[0]
    assert "loss=" in postfix and "samples_s=" in postfix and "lr=" not in postfix
    train_clip(dataclasses.replace(config, output_dir=str(tmp_path / "quiet")), show_progress=False)
    assert "train-clip" not in capfd.readouterr().err
