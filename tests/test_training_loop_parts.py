"""`clipcond.training.loop` in parts, in milliseconds: its module-level checks with their whole
messages, and `TrainingRun` driving a two-weight linear model through a hand-written objective
(no CLIP, no data), each number it logs and saves checked against a plain PyTorch loop written
here. The objectives' own runs (test_train_clip.py, test_training_loop.py) reach the same code
slowly."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import accelerate
import accelerate.utils
import pytest
import torch
import tqdm.auto
import yaml
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from test_checkpoint_mutants import _edit_trainer
from test_run_folder import _dead_pid

import clipcond.training.loop as loop
from clipcond.training.checkpoint import read_extra, save_checkpoint
from clipcond.training.loop import (
    RunSetupError,
    Throughput,
    TrainingDiverged,
    TrainingRun,
    check_distributed_type,
    check_runtime,
    check_seed,
    extra_problem,
)
from clipcond.training.run_folder import FINISHED_MARKER, RunAlreadyFinished, RunFolderError
from clipcond.training.run_lock import LOCK_FILE, RunFolderInUse

# ---------------------------------------------------------------- the module's checks


@pytest.mark.parametrize(
    ("extra", "counts", "problem"),
    [
        ({}, (), None),
        ({"ema_step": 0, "metrics_records": 0, "num_processes": 1, "skipped_samples": {"x": 0}}, ("ema_step",), None),
        ({}, ("ema_step",), "ema_step is missing"),
        ({"ema_step": True}, ("ema_step",), "ema_step is True, not a count (an integer >= 0)"),
        ({"ema_step": -1}, ("ema_step",), "ema_step is -1, not a count (an integer >= 0)"),
        ({"metrics_records": 1.0}, (), "metrics_records is 1.0, not a count (an integer >= 0)"),
        ({"metrics_records": "x" * 200}, (), "metrics_records is '" + "x" * 79 + ", not a count (an integer >= 0)"),
        ({"num_processes": 0}, (), "num_processes is 0, not a number of processes (an integer >= 1)"),
        ({"num_processes": "2"}, (), "num_processes is '2', not a number of processes (an integer >= 1)"),
        ({"skipped_samples": []}, (), "skipped_samples is [], not a mapping of reasons to counts"),
        ({"skipped_samples": {"a": -2}}, (), "skipped_samples is {'a': -2}, not a mapping of reasons to counts"),
    ],
)
def test_extra_problem_names_the_first_value_the_loop_cannot_take(extra, counts, problem):
    assert extra_problem(extra, counts) == problem


def test_fp16_without_a_gpu_and_tensorboard_without_its_package_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as error:
        check_runtime("fp16")
    assert str(error.value) == "mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no' on a CPU"
    check_runtime("bf16", None)

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(ValueError) as error:
        check_runtime("no", "tensorboard")
    assert str(error.value) == "log_with 'tensorboard' needs the tensorboard package: pip install tensorboard"
    check_runtime("no", "wandb")  # accelerate checks the other trackers itself
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: True)
    check_runtime("no", "tensorboard")


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_the_seed_range_ends_are_taken(seed):
    check_seed(seed)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.0, True, "3", None])
def test_a_seed_out_of_range_or_of_another_type_is_refused_naming_its_key(seed):
    with pytest.raises(ValueError) as error:
        check_seed(seed, "data.seed")
    assert str(error.value) == (
        f"`data.seed` must be an integer in [0, 2**32 - 1] (NumPy and torch are seeded with it), got {seed!r}"
    )


@pytest.mark.parametrize("name", ["FSDP", "DEEPSPEED", "MEGATRON_LM"])
def test_sharded_training_is_refused_by_its_name(name):
    message = (
        f"accelerate's {name} is not supported by clipcond's training loops: their checkpoints and results are "
        "written by rank 0 from whole weights, which sharded training does not keep on one process; launch with "
        "data parallelism (`accelerate launch --multi_gpu`, DDP)"
    )
    for given in (DistributedType[name], name):  # an accelerate enum, or its name
        with pytest.raises(ValueError) as error:
            check_distributed_type(given)
        assert str(error.value) == message


@pytest.mark.parametrize("name", ["NO", "MULTI_GPU", "MULTI_CPU", "XLA"])
def test_data_parallel_layouts_are_taken(name):
    check_distributed_type(DistributedType[name])


def test_a_window_of_no_time_and_a_meter_of_no_time_do_not_divide_by_zero():
    meter = Throughput(samples_per_step=4, clock=lambda: 5.0)
    meter.step()
    assert meter.window() == 4 / 1e-9
    assert meter.overall() == 0.0


def test_the_overall_rate_counts_from_the_meter_s_start():
    now = [10.0]
    meter = Throughput(samples_per_step=3, clock=lambda: now[0])
    now[0] = 12.0
    meter.step(), meter.step()
    assert meter.window() == 3.0
    now[0] = 14.0
    meter.step()
    assert meter.window() == 1.5 and meter.overall() == 9 / 4.0


def test_flat_names_nested_settings_by_their_dotted_path_and_keeps_only_tracker_values():
    config = {"lr": 0.1, "data": {"source": "shapes", "sizes": [1, 2], "inner": {"on": True}}, "unet": None, "n": 3}
    assert loop._flat(config) == {
        "lr": 0.1,
        "data.source": "shapes",
        "data.sizes": "[1, 2]",
        "data.inner.on": True,
        "unet": "None",
        "n": 3,
    }


@pytest.mark.parametrize(("show", "main"), [(True, True), (True, False), (False, True)])
def test_the_bar_counts_steps_from_the_resumed_one_on_the_local_main_process_only(show, main, monkeypatch):
    class Accelerator:
        is_local_main_process = main

    made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda **settings: made.append(settings) or "the bar")
    assert loop._progress_bar(Accelerator(), 10, 4, "train-x", show) == "the bar"
    assert made == [
        {"total": 10, "initial": 4, "desc": "train-x", "dynamic_ncols": True, "disable": not (show and main)}
    ]


@pytest.mark.parametrize(
    "error", [OSError("cut"), ValueError("cut"), RuntimeError("cut"), TypeError("cut")], ids=lambda e: type(e).__name__
)
def test_reading_a_part_turns_its_read_errors_into_a_setup_error_naming_key_and_path(error):
    with pytest.raises(RunSetupError) as raised:
        with loop.reading_part("init_from", "/runs/a"):
            raise error
    assert str(raised.value) == "init_from /runs/a: cut"
    with pytest.raises(RunSetupError) as raised:
        with loop.reading_part("model"):
            raise error
    assert str(raised.value) == "model: cut"


def test_reading_a_part_turns_a_safetensors_error_into_a_setup_error_and_leaves_others():
    with pytest.raises(RunSetupError, match="^text_encoder x: header too large$"):
        with loop.reading_part("text_encoder", "x"):
            raise SafetensorError("header too large")
    with pytest.raises(KeyError):
        with loop.reading_part("text_encoder", "x"):
            raise KeyError("a bug, not a damaged file")


# ---------------------------------------------------------------- a TrainingRun on a toy objective


@dataclass
class ToyData:
    """What `TrainingRun` asks of `config.data`: `check_files`."""

    source: str = "toy"

    def check_files(self) -> None:
        if self.source == "missing":
            raise FileNotFoundError("data.urls matches no file")


@dataclass
class ToyConfig:
    output_dir: str
    data: ToyData = field(default_factory=ToyData)
    steps: int = 5
    batch_size: int = 2
    mixed_precision: str = "no"
    log_every: int = 2
    checkpoint_every: int = 2
    keep_checkpoints: int = 2
    lr: float = 0.1


INPUTS = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
TARGETS = torch.tensor([[1.0], [0.0]])


def toy_parts(config: ToyConfig):
    """A linear model with a `shadow` buffer the loss never reads (as an EMA copy), its SGD and schedule."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    model.register_buffer("shadow", torch.zeros(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def plain_losses(config: ToyConfig) -> list[tuple[float, float]]:
    """(loss, learning rate) of each step, by a plain PyTorch loop."""
    model, optimizer, scheduler = toy_parts(config)
    seen = []
    for step in range(1, config.steps + 1):
        loss = torch.nn.functional.mse_loss(model(INPUTS * step), TARGETS)
        loss.backward()
        seen.append((loss.item(), scheduler.get_last_lr()[0]))
        optimizer.step(), scheduler.step(), optimizer.zero_grad()
    return seen


class Clock:
    """perf_counter for `Throughput`: each reading one second after the last."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def run_toy(
    config: ToyConfig,
    resume: bool = False,
    poison_step: int | None = None,
    poison_weights_at: int | None = None,
    extra: bool = True,
    skips: dict[int, str] | None = None,
    evaluate: int | None = None,
    parts: tuple | None = None,
    **run_settings,
):
    """One invocation of `TrainingRun` on the toy objective; returns (run, outcome, start step,
    resumed extra, model). `parts` replaces `toy_parts(config)`; `poison_step` makes that step's
    loss NaN; `poison_weights_at` makes the shadow buffer inf in that step's update; `evaluate`
    logs an evaluation at that step; `skips` counts a skipped sample of a reason at a step;
    `run_settings` go to `TrainingRun`."""
    model, optimizer, scheduler = parts or toy_parts(config)
    with TrainingRun(config, "train-toy", resume=resume, **{"show_progress": False, **run_settings}) as run:
        start, resumed = run.resume({"model": model}, optimizer, scheduler, counts=("toy_count",) if extra else ())

        def backward(step: int) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(model(INPUTS * step), TARGETS)
            loss.backward()
            if skips and step in skips:
                run.skipped.skip(skips[step])
            return loss * math.nan if step == poison_step else loss

        def update() -> None:
            optimizer.step(), scheduler.step(), optimizer.zero_grad()
            if poison_weights_at is not None and scheduler.last_epoch == poison_weights_at:
                model.shadow.fill_(math.inf)

        def after_step(step: int) -> None:
            if step == evaluate:
                run.log_evaluation(step, "held-out", {"loss": 0.25, "accuracy": 0.5})

        outcome = run.train(
            backward,
            update,
            metrics=lambda: {"weight_norm": model.weight.norm().item()},
            after_step=after_step,
            extra=(lambda: {"toy_count": 7}) if extra else None,
        )
        with run.writing_result() as folder:
            folder.mkdir()
            (folder / "weights.txt").write_text(str(model.weight.tolist()))
    return run, outcome, start, resumed, model


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def back_to_step_2(run_dir: Path) -> Path:
    """A run of 4 steps as if killed after its step-2 checkpoint: the step-4 checkpoint and the
    result gone, ``latest`` naming step 2. Returns the step-2 checkpoint."""
    shutil.rmtree(run_dir / "checkpoints" / "step-000000004")
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    (run_dir / "checkpoints" / "latest").write_text("step-000000002")
    return run_dir / "checkpoints" / "step-000000002"


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(loop, "time", clock)
    return clock


def test_a_fresh_run_logs_saves_and_finishes_as_a_plain_loop_trains(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), keep_checkpoints=3)
    run, outcome, start, resumed, model = run_toy(config)
    expected = plain_losses(config)
    assert (start, resumed) == (0, {})
    assert outcome.steps == 5 and outcome.loss == pytest.approx(expected[-1][0], rel=1e-6)
    records = metrics(run.output_dir)
    assert [(r["step"], list(r)) for r in records] == [
        (step, ["step", "loss", "weight_norm", "lr", "samples_per_second"]) for step in (2, 4, 5)
    ]
    for record in records:
        loss, lr = expected[record["step"] - 1]
        assert record["loss"] == pytest.approx(loss, rel=1e-6) and record["lr"] == pytest.approx(lr)
    # the clock ticks once per reading: the start, then each window's end
    assert [r["samples_per_second"] for r in records] == [2 * 2 / 1.0, 2 * 2 / 1.0, 2 * 1 / 1.0]
    assert outcome.throughput == 2 * 5 / 4.0  # from the start to the overall reading: 4 ticks
    folders = sorted(path.name for path in (run.output_dir / "checkpoints").iterdir())
    assert folders == ["latest", "step-000000002", "step-000000004", "step-000000005"]  # keep_checkpoints: 3
    # one process: the checkpoint holds its generators once, not per process
    assert set(load_file(str(run.last_checkpoint / "rng.safetensors"))) == {"torch_cpu"}
    assert run.last_checkpoint == run.output_dir / "checkpoints" / "step-000000005"
    assert read_extra(run.last_checkpoint) == {
        "toy_count": 7,
        "metrics_records": 3,
        "skipped_samples": {},
        "num_processes": 1,
    }
    assert json.loads((run.output_dir / FINISHED_MARKER).read_text()) == {"step": 5}
    assert (run.result_dir / "weights.txt").read_text() == str(model.weight.tolist())
    snapshot = yaml.safe_load((run.output_dir / "train_config.yaml").read_text())
    assert snapshot == dataclasses.asdict(config)
    assert capsys.readouterr().out.splitlines()[-1] == "skipped samples: 0"
    assert not (run.output_dir / LOCK_FILE).exists()  # given back


def test_a_resume_goes_on_from_the_checkpoint_with_its_metrics_cut_back(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4, checkpoint_every=2, keep_checkpoints=3)
    run_toy(config)
    back_to_step_2(tmp_path / "run")
    run, outcome, start, resumed, _ = run_toy(config, resume=True)
    assert (start, resumed) == (2, {"toy_count": 7, "metrics_records": 1, "skipped_samples": {}, "num_processes": 1})
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'step-000000002'} (step 2)" in capsys.readouterr().out
    expected = plain_losses(config)
    records = metrics(run.output_dir)
    assert [r["step"] for r in records] == [2, 4]  # step 4's first record cut, logged again
    assert records[1]["loss"] == pytest.approx(expected[3][0], rel=1e-6)
    assert records[1]["lr"] == pytest.approx(expected[3][1])  # the schedule resumed with the weights
    assert outcome.steps == 4 and outcome.loss == pytest.approx(expected[3][0], rel=1e-6)
    assert read_extra(run.last_checkpoint)["metrics_records"] == 2


@pytest.mark.parametrize("records", ["kept", "deleted"])
def test_a_resume_at_the_last_step_reports_the_loss_logged_for_it(tmp_path, clock, records):
    """The loss of the last step's record, past the evaluation logged after it; nan without records."""
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    run_toy(config, evaluate=4)
    shutil.rmtree(tmp_path / "run" / "model")  # not finished: its result is gone
    if records == "deleted":
        (tmp_path / "run" / "metrics.jsonl").unlink()
    logged = metrics(tmp_path / "run")[-2] if records == "kept" else None
    run, outcome, start, _, _ = run_toy(config, resume=True)
    assert start == 4 and outcome.steps == 4 and outcome.throughput == 0.0
    if logged is None:
        assert math.isnan(outcome.loss)
    else:
        assert logged["step"] == 4 and outcome.loss == logged["loss"]


def test_a_finished_run_resumed_stops_before_anything_is_built(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run_toy(config)
    with pytest.raises(RunAlreadyFinished) as error:
        TrainingRun(config, "train-toy", resume=True, show_progress=False)
    assert (
        str(error.value) == f"run already finished at step 2; nothing to do (its result: {tmp_path / 'run' / 'model'})"
    )


def test_a_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(TrainingDiverged) as error:
        run_toy(config, poison_step=3)
    kept = tmp_path / "run" / "checkpoints" / "step-000000002"
    assert str(error.value) == (
        f"loss became nan at step 3; stopped without saving this state (the last good checkpoint is {kept}). "
        "Lower `lr`, raise `warmup_steps`, or use mixed_precision 'no' / 'bf16'."
    )
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step-000000002"]
    assert (tmp_path / "run" / "train_config.yaml").is_file()  # a folder holding a checkpoint stays the run's
    assert not (tmp_path / "run" / "train_config.failed.yaml").exists()


def test_a_nan_loss_before_any_checkpoint_says_so_and_gives_the_folder_back(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(TrainingDiverged, match=r"at step 1; stopped without saving this state \(no checkpoint"):
        run_toy(config, poison_step=1)
    assert (  # nothing was logged yet: the snapshot alone is set aside
        f"train-toy stopped before its first checkpoint: {tmp_path / 'run'} holds no run any more "
        "(set aside: train_config.failed.yaml); rerun to start afresh"
    ) in capsys.readouterr().out
    run, outcome, _, _, _ = run_toy(config)  # a plain rerun starts afresh
    assert outcome.steps == 5


@pytest.mark.parametrize(
    ("poisoned", "checkpoint_every", "kept", "since"),
    [(4, 2, 2, "updates of steps 3 to 4"), (4, 1, 3, "update of step 4"), (1, 2, None, "updates of steps 1 to 2")],
)
def test_weights_made_inf_by_an_update_stop_at_its_checkpoint_naming_the_updates_since_the_last(
    tmp_path, clock, poisoned, checkpoint_every, kept, since
):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=6, log_every=10, checkpoint_every=checkpoint_every)
    with pytest.raises(TrainingDiverged) as error:
        run_toy(config, poison_weights_at=poisoned)
    kept = (
        f"the last good checkpoint is {tmp_path / 'run' / 'checkpoints' / f'step-{kept:09d}'}"
        if kept
        else "no checkpoint was written yet"
    )
    assert str(error.value) == (
        f"the weights became NaN or inf in the {since} (model.shadow), with a finite loss; stopped without saving "
        f"this state ({kept}). Lower `lr`, raise `warmup_steps`, or use mixed_precision 'no' / 'bf16'."
    )


def test_weights_inf_over_several_updates_name_every_step_since_the_last_check(tmp_path, clock):
    """With a loss that reads no weight (it stays finite), inf weights from step 4's update are found
    at the next checkpoint, naming every update since the last check."""
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=6, checkpoint_every=3, log_every=10)
    model, optimizer, scheduler = toy_parts(config)
    with pytest.raises(TrainingDiverged) as error:
        with TrainingRun(config, "train-toy", show_progress=False) as run:
            run.resume({"model": model}, optimizer, scheduler)

            def update() -> None:
                optimizer.step(), optimizer.zero_grad()  # the loss reads no weight: no gradient
                if scheduler.last_epoch == 4:
                    with torch.no_grad():
                        model.weight.fill_(math.inf)
                scheduler.step()

            run.train(lambda step: torch.tensor(1.0), update)
    kept = tmp_path / "run" / "checkpoints" / "step-000000003"
    assert str(error.value) == (
        "the weights became NaN or inf in the updates of steps 4 to 6 (model.weight), with a finite loss; stopped "
        f"without saving this state (the last good checkpoint is {kept}). "
        "Lower `lr`, raise `warmup_steps`, or use mixed_precision 'no' / 'bf16'."
    )


@pytest.mark.parametrize(
    ("poisoned", "named"), [(5, "extra.b0, extra.b1, extra.b2 and 2 more"), (3, "extra.b0, extra.b1, extra.b2")]
)
def test_nan_weights_before_the_first_step_are_refused(tmp_path, clock, poisoned, named):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
    model, optimizer, scheduler = toy_parts(config)
    extra = torch.nn.Module()
    for index in range(poisoned):
        extra.register_buffer(f"b{index}", torch.full((2,), math.nan))
    with pytest.raises(TrainingDiverged) as error:
        with TrainingRun(config, "train-toy", show_progress=False) as run:
            run.resume({"model": model, "extra": extra}, optimizer, scheduler)
            run.train(lambda step: torch.tensor(1.0), lambda: None)
    assert str(error.value) == (
        f"the weights hold NaN or inf before the first step ({named}); check the model the run starts from "
        "(`init_from`)"
    )


def test_train_before_resume_is_a_programming_error(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError) as error:
        with TrainingRun(config, "train-toy", show_progress=False) as run:
            run.train(lambda step: torch.tensor(1.0), lambda: None)
    assert str(error.value) == "TrainingRun.resume(modules, optimizer, scheduler) must come before train()"
    assert not (tmp_path / "run").exists()  # made by the run, left empty: removed


def test_skipped_samples_are_counted_into_each_checkpoint_and_reported(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    skips = {1: "undecodable image", 3: "undecodable image", 4: "empty caption"}
    run, _, _, _, _ = run_toy(config, skips=skips)
    first = run.output_dir / "checkpoints" / "step-000000002"
    assert read_extra(first)["skipped_samples"] == {"undecodable image": 1}
    assert read_extra(run.last_checkpoint)["skipped_samples"] == {"undecodable image": 2, "empty caption": 1}
    assert "skipped samples: 3 (empty caption: 1, undecodable image: 2)" in capsys.readouterr().out

    back_to_step_2(run.output_dir)
    run, _, _, _, _ = run_toy(config, resume=True, skips={4: "empty caption"})
    assert read_extra(run.last_checkpoint)["skipped_samples"] == {"undecodable image": 1, "empty caption": 1}
    assert run.skipped.counts == {"undecodable image": 1, "empty caption": 1}


def test_an_evaluation_is_a_line_and_a_metrics_record_of_its_own(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run, _, _, _, _ = run_toy(config, evaluate=2)
    records = metrics(run.output_dir)
    assert records[1] == {"step": 2, "eval/loss": 0.25, "eval/accuracy": 0.5}
    assert read_extra(run.last_checkpoint)["metrics_records"] == 2
    assert "step 2: held-out loss 0.2500, accuracy 0.5000" in capsys.readouterr().out


def test_missing_data_files_are_refused_before_the_folder_is_made(tmp_path):
    config = ToyConfig(output_dir=str(tmp_path / "run"), data=ToyData(source="missing"))
    with pytest.raises(FileNotFoundError, match="^data.urls matches no file$"):
        TrainingRun(config, "train-toy", show_progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- each stage's survivors of the mutation run


def test_the_default_seed_key_is_named():
    with pytest.raises(ValueError, match=r"^`seed` must be an integer"):
        check_seed(-1)


def test_a_meter_read_within_a_second_of_its_start_has_a_rate():
    now = [0.0]
    meter = Throughput(samples_per_step=2, clock=lambda: now[0])
    meter.step()
    now[0] = 0.5
    assert meter.overall() == 4.0


class RecordingBar:
    """A stand-in for the tqdm bar: what it was made with, and each update, postfix and line."""

    def __init__(self, accelerator, total, initial, name, show) -> None:
        self.accelerator, self.settings = accelerator, (total, initial, name, show)
        self.updates, self.postfixes, self.lines, self.closed = [], [], [], 0

    def update(self, count):
        self.updates.append(count)

    def set_postfix(self, **shown):
        self.postfixes.append(shown)

    def write(self, line):
        self.lines.append(line)

    def close(self):
        self.closed += 1


@pytest.fixture
def bars(monkeypatch) -> list[RecordingBar]:
    made: list[RecordingBar] = []
    monkeypatch.setattr(loop, "_progress_bar", lambda *args: made.append(RecordingBar(*args)) or made[-1])
    return made


def test_the_bar_counts_each_step_shows_the_logged_numbers_and_the_evaluations(tmp_path, clock, bars, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    run, *_ = run_toy(config, evaluate=2, show_progress=True)
    back_to_step_2(run.output_dir)
    run_toy(config, resume=True)
    first, resumed = bars
    assert first.accelerator is run.accelerator
    assert (first.settings, resumed.settings) == ((4, 0, "train-toy", True), (4, 2, "train-toy", False))
    assert (first.updates, resumed.updates) == ([1, 1, 1, 1], [1, 1])
    losses = [record for record in metrics(run.output_dir) if "loss" in record]
    assert first.postfixes == [
        {"loss": f"{record['loss']:.4g}", "weight_norm": f"{record['weight_norm']:.4g}", "samples_s": "4"}
        for record in losses[:2]
    ]
    assert first.lines == ["step 2: held-out loss 0.2500, accuracy 0.5000"]
    assert "held-out" not in capsys.readouterr().out  # written under the bar, not printed
    assert first.closed >= 1


def test_a_run_shows_its_bar_unless_told_not_to(tmp_path):
    with TrainingRun(ToyConfig(output_dir=str(tmp_path / "run")), "train-toy") as run:
        assert run.show_progress is True and run.log_with is None
    assert not (tmp_path / "run").exists()  # made by the run and left empty: removed


def test_the_tracker_gets_the_settings_each_logged_step_and_each_evaluation_in_the_run_folder(tmp_path, clock):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    run, *_ = run_toy(config, evaluate=2, log_with="tensorboard")
    assert run.log_with == "tensorboard"
    logs = run.output_dir / "clipcond-train-toy"
    scalars = EventAccumulator(str(logs))
    scalars.Reload()
    records = metrics(run.output_dir)
    for tag in ("loss", "weight_norm", "lr", "samples_per_second", "eval/loss", "eval/accuracy"):
        logged = [(event.step, event.value) for event in scalars.Scalars(tag)]
        assert logged == [(record["step"], pytest.approx(record[tag])) for record in records if tag in record], tag
    [hparams] = logs.glob("*/hparams.yml")
    assert yaml.safe_load(hparams.read_text()) == loop._flat(dataclasses.asdict(config))


def test_the_accelerator_runs_at_the_configured_precision(tmp_path):
    config = ToyConfig(output_dir=str(tmp_path / "run"), mixed_precision="bf16")
    AcceleratorState._reset_state()  # accelerate keeps one precision per process: start clean, leave clean
    try:
        with TrainingRun(config, "train-toy", show_progress=False) as run:
            assert run.accelerator.mixed_precision == "bf16"
    finally:
        AcceleratorState._reset_state()


@pytest.mark.parametrize("refusal", ["fp16 on a CPU", "tensorboard missing", "sharded weights"])
def test_the_machine_checks_refuse_before_the_folder_is_made(tmp_path, monkeypatch, refusal):
    config, settings = ToyConfig(output_dir=str(tmp_path / "run")), {}
    if refusal == "fp16 on a CPU":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        config.mixed_precision = "fp16"
        message = "mixed_precision 'fp16' needs a CUDA GPU"
    elif refusal == "tensorboard missing":
        monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
        settings["log_with"] = "tensorboard"
        message = "log_with 'tensorboard' needs the tensorboard package"
    else:
        monkeypatch.setattr(accelerate.Accelerator, "distributed_type", property(lambda self: DistributedType.FSDP))
        message = "accelerate's FSDP is not supported"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        TrainingRun(config, "train-toy", show_progress=False, **settings)
    assert not (tmp_path / "run").exists()


def test_without_resume_a_folder_holding_a_run_is_refused(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run_toy(config)
    with pytest.raises(RunFolderError, match="already holds a run; pass --resume to continue it"):
        TrainingRun(config, "train-toy", show_progress=False)


def test_a_live_run_holds_its_folder_and_a_dead_run_s_lock_is_taken_over(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
    with TrainingRun(config, "train-toy", show_progress=False):
        with pytest.raises(RunFolderInUse):
            TrainingRun(config, "train-toy", resume=True, show_progress=False)
    (tmp_path / "run").mkdir()
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(stale))
    with TrainingRun(config, "train-toy", show_progress=False):
        pass
    expected = (
        f"took over the lock of a run that ended (pid {stale['pid']} on {stale['host']}, since {stale['started']})"
    )
    assert expected in capsys.readouterr().out.splitlines()


def test_what_killed_writers_left_is_removed_with_a_line_each(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run, *_ = run_toy(config)
    shutil.rmtree(run.result_dir)
    leftovers = [run.output_dir / "checkpoints" / ".tmp-step-000000003-999", run.output_dir / ".tmp-model-999"]
    for path in leftovers:
        path.mkdir()
    capsys.readouterr()
    run_toy(config, resume=True)
    lines = capsys.readouterr().out.splitlines()
    assert f"removed {leftovers[0]}, left by a checkpoint write that was killed" in lines
    assert f"removed {leftovers[1]}, left by a save of the result that was killed" in lines
    assert not any(path.exists() for path in leftovers)


def test_a_resume_on_another_process_count_is_refused_and_gives_the_lock_back(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run, *_ = run_toy(config)
    shutil.rmtree(run.result_dir)
    _edit_trainer(run.last_checkpoint, lambda trainer: {**trainer, "extra": {**trainer["extra"], "num_processes": 2}})
    with pytest.raises(RunFolderError, match=r"on 1 process: its checkpoints were written by a run on 2 processes"):
        TrainingRun(config, "train-toy", resume=True, show_progress=False)
    assert not (run.output_dir / LOCK_FILE).exists()


def test_an_error_before_the_folder_is_taken_sets_nothing_aside_and_a_run_without_steps_is_not_finished(
    tmp_path, clock, capsys
):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(KeyError):
        with TrainingRun(config, "train-toy", show_progress=False):
            raise KeyError("a model that did not build")
    assert "stopped before" not in capsys.readouterr().out and not (tmp_path / "run").exists()
    model, optimizer, scheduler = toy_parts(config)
    with TrainingRun(config, "train-toy", show_progress=False) as run:
        run.resume({"model": model}, optimizer, scheduler)
    assert not (tmp_path / "run" / FINISHED_MARKER).exists()


def test_a_resumed_checkpoint_holding_nan_weights_is_named(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    run, *_ = run_toy(config)
    checkpoint = back_to_step_2(run.output_dir)
    poisoned, _, _ = toy_parts(config)
    poisoned.weight.data.fill_(math.nan)
    save_model(poisoned, str(checkpoint / "model.safetensors"))
    with pytest.raises(TrainingDiverged) as error:
        run_toy(config, resume=True)
    assert str(error.value) == (
        f"the weights loaded from {checkpoint} hold NaN or inf (model.weight): that checkpoint was written by a run "
        "that diverged. Move it aside to resume from an earlier one, or start afresh."
    )


def test_a_nan_loss_after_a_resume_names_the_resumed_checkpoint_and_leaves_no_gradient(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    run, *_ = run_toy(config)
    back_to_step_2(run.output_dir)
    parts = toy_parts(config)
    with pytest.raises(TrainingDiverged, match=r"at step 3; .*\(the last good checkpoint is .*step-000000002\)"):
        run_toy(config, resume=True, poison_step=3, parts=parts)
    assert all(parameter.grad is None for parameter in parts[0].parameters())


def test_buffers_of_every_kind_that_are_finite_do_not_stop_the_run(tmp_path, clock):
    """An integer count, an empty tensor and a finite 1e30 (whose 2-norm overflows)."""
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    parts = toy_parts(config)
    parts[0].register_buffer("count", torch.tensor(3))
    parts[0].register_buffer("nothing", torch.zeros(0))
    parts[0].register_buffer("large", torch.full((4,), 1e30))
    run, outcome, *_ = run_toy(config, parts=parts)
    assert outcome.steps == 2
    assert run._finite_everywhere([]) and run._finite_everywhere([torch.zeros(3, dtype=torch.long)])


def test_an_error_after_logging_before_the_first_checkpoint_sets_both_files_aside(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), log_every=1, checkpoint_every=10)
    with pytest.raises(TrainingDiverged):
        run_toy(config, poison_step=2)
    assert (
        f"train-toy stopped before its first checkpoint: {tmp_path / 'run'} holds no run any more "
        "(set aside: train_config.failed.yaml, metrics.failed.jsonl); rerun to start afresh"
    ) in capsys.readouterr().out.splitlines()


def test_a_resume_that_finds_no_checkpoint_starts_afresh_with_the_old_records_set_aside(tmp_path, clock):
    """A run killed before its first checkpoint (no error handling ran) left its snapshot and records."""
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run, *_ = run_toy(config)
    shutil.rmtree(run.output_dir / "checkpoints")
    shutil.rmtree(run.result_dir)
    (run.output_dir / FINISHED_MARKER).unlink()
    old = (run.output_dir / "metrics.jsonl").read_text()
    run, outcome, start, resumed, _ = run_toy(config, resume=True)
    assert (start, resumed, outcome.steps) == (0, {}, 2)
    assert (run.output_dir / "metrics.failed.jsonl").read_text() == old
    assert [record["step"] for record in metrics(run.output_dir)] == [2]


def test_checkpoints_deleted_after_the_start_make_a_fresh_start(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run, *_ = run_toy(config)
    shutil.rmtree(run.result_dir)
    model, optimizer, scheduler = toy_parts(config)
    with TrainingRun(config, "train-toy", resume=True, show_progress=False) as run:
        assert run.resume_from == run.output_dir / "checkpoints" / "step-000000002"
        shutil.rmtree(run.output_dir / "checkpoints")
        assert run.resume({"model": model}, optimizer, scheduler) == (0, {})
        assert run.resume_from is None and run.last_checkpoint is None


def test_a_checkpoint_without_the_objective_s_count_is_passed_over_and_set_aside(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    run, *_ = run_toy(config)
    shutil.rmtree(run.result_dir)
    newest = run.last_checkpoint
    _edit_trainer(
        newest, lambda trainer: {**trainer, "extra": {k: v for k, v in trainer["extra"].items() if k != "toy_count"}}
    )
    capsys.readouterr()
    run, _, start, resumed, _ = run_toy(config, resume=True)
    assert start == 2 and resumed["toy_count"] == 7
    assert capsys.readouterr().err.splitlines() == [
        f"warning: checkpoint {newest} is damaged (trainer.json `extra`: toy_count is missing); not resuming from it",
        f"warning: set aside as {run.output_dir / 'checkpoints' / 'damaged-step-000000004'}",
    ]


def test_an_evaluation_logged_after_the_last_checkpoint_is_logged_once_after_a_resume(tmp_path, clock):
    """As the trainers' final evaluation: its record is past the last checkpoint's count, so a
    resume at the last step drops it and the resumed run logs it again, once."""
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)

    def run_with_final_evaluation(resume: bool) -> Path:
        model, optimizer, scheduler = toy_parts(config)
        with TrainingRun(config, "train-toy", resume=resume, show_progress=False) as run:
            run.resume({"model": model}, optimizer, scheduler)
            run.train(lambda step: torch.nn.functional.mse_loss(model(INPUTS), TARGETS), lambda: None)
            run.log_evaluation(config.steps, "final", {"accuracy": 0.75})
        return run.output_dir

    output_dir = run_with_final_evaluation(resume=False)
    run_with_final_evaluation(resume=True)  # killed before its result was saved: no finished marker
    assert metrics(output_dir)[1:] == [{"step": 2, "eval/accuracy": 0.75}]


def test_an_evaluation_before_the_first_step_is_printed(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
    model, optimizer, scheduler = toy_parts(config)
    with TrainingRun(config, "train-toy", show_progress=False) as run:
        run.resume({"model": model}, optimizer, scheduler)
        run.log_evaluation(0, "start", {"accuracy": 0.125})
    assert "step 0: start accuracy 0.1250" in capsys.readouterr().out.splitlines()
    assert metrics(run.output_dir) == [{"step": 0, "eval/accuracy": 0.125}]


def test_without_resume_checkpoints_of_a_folder_without_a_snapshot_are_not_resumed_from(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run, *_ = run_toy(config)
    for name in ("train_config.yaml", FINISHED_MARKER, "metrics.jsonl"):
        (run.output_dir / name).unlink()
    shutil.rmtree(run.result_dir)
    run, outcome, start, resumed, _ = run_toy(config)
    assert (start, resumed, run.resume_from, outcome.steps) == (0, {}, None, 2)


def test_weights_that_diverged_on_another_process_are_named_so(tmp_path, clock, monkeypatch):
    """In a run of several processes the finiteness check sums every rank's largest value: here
    another rank's inf arrives through that sum at step 2's check while this rank's weights are
    finite."""
    sums = []
    real_reduce = accelerate.Accelerator.reduce

    def reduce(self, tensor, reduction="sum", scale=1.0):
        if reduction == "sum":
            sums.append(tensor)
            if len(sums) == 2:  # the first checkpoint's check, after the one before the first step
                return tensor + math.inf
        return real_reduce(self, tensor, reduction, scale)

    monkeypatch.setattr(accelerate.Accelerator, "reduce", reduce)
    with pytest.raises(TrainingDiverged) as error:
        run_toy(ToyConfig(output_dir=str(tmp_path / "run")))
    assert str(error.value) == (
        "the weights became NaN or inf in the updates of steps 1 to 2 (on another process), with a finite loss; "
        "stopped without saving this state (no checkpoint was written yet). "
        "Lower `lr`, raise `warmup_steps`, or use mixed_precision 'no' / 'bf16'."
    )


def test_a_resumed_process_takes_its_own_generator_states(tmp_path, clock, monkeypatch):
    """Rank 1 of a run of several processes (its index stood in for) resumes its own CPU
    generator, not the main process's."""
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    run, *_ = run_toy(config)
    shutil.rmtree(run.result_dir)
    own = [torch.Generator().manual_seed(10 + rank).get_state() for rank in range(2)]
    model, optimizer, scheduler = toy_parts(config)
    save_checkpoint(  # the last checkpoint again, as two processes write it
        run.output_dir,
        4,
        {"model": model},
        optimizer,
        scheduler,
        extra=read_extra(run.last_checkpoint),
        process_rng=[{"torch_cpu": state} for state in own],
    )
    monkeypatch.setattr(accelerate.Accelerator, "process_index", property(lambda self: 1))
    model, optimizer, scheduler = toy_parts(config)
    with TrainingRun(config, "train-toy", resume=True, show_progress=False) as run:
        assert run.resume({"model": model}, optimizer, scheduler, counts=("toy_count",))[0] == 4
        assert torch.equal(torch.get_rng_state(), own[1])
