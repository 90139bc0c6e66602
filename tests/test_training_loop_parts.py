"""`clipcond.training.loop` in parts, in milliseconds: its module-level checks with their whole
messages, and `TrainingRun` driving a two-weight linear model through a hand-written objective
(no CLIP, no data), each number it logs and saves checked against a plain PyTorch loop written
here. The objectives' own runs (test_train_clip.py, test_training_loop.py) reach the same code
slowly."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

import clipcond.training.loop as loop
from clipcond.training.checkpoint import read_extra
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
from clipcond.training.run_folder import FINISHED_MARKER, RunAlreadyFinished

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

    import accelerate.utils

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
    from accelerate.utils import DistributedType

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
    from accelerate.utils import DistributedType

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
    import tqdm.auto

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
    from safetensors import SafetensorError

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
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
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
    evaluate: bool = False,
):
    """One invocation of `TrainingRun` on the toy objective; returns (run, outcome, start step,
    resumed extra, model). `poison_step` makes that step's loss NaN; `poison_weights_at` makes the
    weights inf in that step's update; `skips` counts a skipped sample of a reason at a step."""
    model, optimizer, scheduler = toy_parts(config)
    with TrainingRun(config, "train-toy", resume=resume, show_progress=False) as run:
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
                with torch.no_grad():
                    model.weight.fill_(math.inf)

        def after_step(step: int) -> None:
            if evaluate and step == 2:
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


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(loop, "time", clock)
    return clock


def test_a_fresh_run_logs_saves_and_finishes_as_a_plain_loop_trains(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
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
    assert folders == ["latest", "step-000000004", "step-000000005"]  # keep_checkpoints: 2
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
    assert not (run.output_dir / ".lock").exists() and not any(run.output_dir.glob("*.lock"))


def test_a_resume_goes_on_from_the_checkpoint_with_its_metrics_cut_back(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4, checkpoint_every=2, keep_checkpoints=3)
    run_toy(config)
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000000004")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000000002")
    run, outcome, start, resumed, _ = run_toy(config, resume=True)
    assert (start, resumed) == (2, {"toy_count": 7, "metrics_records": 1, "skipped_samples": {}, "num_processes": 1})
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'step-000000002'} (step 2)" in capsys.readouterr().out
    expected = plain_losses(config)
    records = metrics(run.output_dir)
    assert [r["step"] for r in records] == [2, 4]  # step 4's first record cut, logged again
    assert records[1]["loss"] == pytest.approx(expected[3][0], rel=1e-6)
    assert outcome.steps == 4 and outcome.loss == pytest.approx(expected[3][0], rel=1e-6)
    assert read_extra(run.last_checkpoint)["metrics_records"] == 2


def test_a_resume_at_the_last_step_reports_the_loss_logged_for_it(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=4)
    run_toy(config)
    shutil.rmtree(tmp_path / "run" / "model")  # not finished: its result is gone
    run, outcome, start, _, _ = run_toy(config, resume=True)
    logged = metrics(run.output_dir)[-1]
    assert start == 4 and outcome.steps == 4 and outcome.loss == logged["loss"] and logged["step"] == 4
    assert outcome.throughput == 0.0


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
    ("checkpoint_every", "kept", "since"), [(2, 2, "updates of steps 3 to 4"), (1, 3, "update of step 4")]
)
def test_weights_made_inf_by_an_update_stop_at_its_checkpoint_naming_the_updates_since_the_last(
    tmp_path, clock, checkpoint_every, kept, since
):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=6, log_every=10, checkpoint_every=checkpoint_every)
    with pytest.raises(TrainingDiverged) as error:
        run_toy(config, poison_weights_at=4)
    kept = tmp_path / "run" / "checkpoints" / f"step-{kept:09d}"
    assert str(error.value) == (
        f"the weights became NaN or inf in the {since} (model.weight), with a finite loss; stopped without saving "
        f"this state (the last good checkpoint is {kept}). "
        "Lower `lr`, raise `warmup_steps`, or use mixed_precision 'no' / 'bf16'."
    )


def test_weights_inf_over_several_updates_name_every_step_since_the_last_check(tmp_path, clock):
    """With the loss kept finite (inputs of zero), the first inf update is found at the next checkpoint."""
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


def test_nan_weights_before_the_first_step_are_refused(tmp_path, clock):
    config = ToyConfig(output_dir=str(tmp_path / "run"))
    model, optimizer, scheduler = toy_parts(config)
    extra = torch.nn.Module()
    for index in range(5):
        extra.register_buffer(f"b{index}", torch.full((2,), math.nan))
    with pytest.raises(TrainingDiverged) as error:
        with TrainingRun(config, "train-toy", show_progress=False) as run:
            run.resume({"model": model, "extra": extra}, optimizer, scheduler)
            run.train(lambda step: torch.tensor(1.0), lambda: None)
    assert str(error.value) == (
        "the weights hold NaN or inf before the first step (extra.b0, extra.b1, extra.b2 and 2 more); check the "
        "model the run starts from (`init_from`)"
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

    shutil.rmtree(run.output_dir / "model")
    shutil.rmtree(run.last_checkpoint)
    (run.output_dir / "checkpoints" / "latest").write_text("step-000000002")
    run, _, _, _, _ = run_toy(config, resume=True, skips={4: "empty caption"})
    assert read_extra(run.last_checkpoint)["skipped_samples"] == {"undecodable image": 1, "empty caption": 1}
    assert run.skipped.counts == {"undecodable image": 1, "empty caption": 1}


def test_an_evaluation_is_a_line_and_a_metrics_record_of_its_own(tmp_path, clock, capsys):
    config = ToyConfig(output_dir=str(tmp_path / "run"), steps=2)
    run, _, _, _, _ = run_toy(config, evaluate=True)
    records = metrics(run.output_dir)
    assert records[1] == {"step": 2, "eval/loss": 0.25, "eval/accuracy": 0.5}
    assert read_extra(run.last_checkpoint)["metrics_records"] == 2
    assert "step 2: held-out loss 0.2500, accuracy 0.5000" in capsys.readouterr().out


def test_missing_data_files_are_refused_before_the_folder_is_made(tmp_path):
    config = ToyConfig(output_dir=str(tmp_path / "run"), data=ToyData(source="missing"))
    with pytest.raises(FileNotFoundError, match="^data.urls matches no file$"):
        TrainingRun(config, "train-toy", show_progress=False)
    assert not (tmp_path / "run").exists()
