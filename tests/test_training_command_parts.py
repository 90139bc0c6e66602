"""What the three training commands share (`clipcond.training.command`) and each command's own
lines, on a stand-in for the training itself: the options and overrides, the checks before any
work, how each way a run can end becomes an exit status or a one-line error, and what each
command prints. Real runs through these commands are test_train_*.py's and test_cli_errors.py's."""

from __future__ import annotations

import argparse
import errno
import shutil
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import yaml

from clipcond.errors import RunFailed, UsageError
from clipcond.training import command, train_clip, train_diffusion, train_t5
from clipcond.training.loop import RunSetupError, TrainingDiverged
from clipcond.training.run_folder import RunAlreadyFinished, RunFolderError
from clipcond.training.t5.config import TrainT5Config

REPO = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train")
    command.add_training_arguments(parser, "the run's YAML")
    return parser


def _t5_config(tmp_path: Path, **changes) -> Path:
    """The shipped t5-tiny-shapes config with its output in `tmp_path`, written there."""
    data = yaml.safe_load((REPO / "configs/train/t5-tiny-shapes.yaml").read_text())
    data.update(output_dir=str(tmp_path / "run"), **changes)
    path = tmp_path / "t5.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---- options and overrides ---------------------------------------------------------------------


def test_the_options_and_their_defaults() -> None:
    args = _parser().parse_args(["--config", "c.yaml"])
    assert vars(args) == {
        "config": "c.yaml",
        "resume": False,
        "no_progress": False,
        "output_dir": None,
        "steps": None,
        "set": [],
    }
    args = _parser().parse_args(
        [
            "--config",
            "c.yaml",
            "--resume",
            "--no-progress",
            "--output-dir",
            "o",
            "--steps",
            "3",
            "--set",
            "a=1",
            "--set",
            "b.c=x",
        ]
    )
    assert (args.resume, args.no_progress, args.output_dir, args.steps, args.set) == (
        True,
        True,
        "o",
        3,
        ["a=1", "b.c=x"],
    )


def test_config_is_required_and_steps_an_integer(capsys) -> None:
    for argv in ([], ["--config", "c.yaml", "--steps", "many"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(argv)
    err = capsys.readouterr().err
    assert "the following arguments are required: --config" in err and "--steps: invalid int value: 'many'" in err


def test_set_is_shown_as_key_value(capsys) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    assert "[--set KEY=VALUE]" in capsys.readouterr().out


def test_every_option_says_what_it_does() -> None:
    helps = {action.dest: action.help for action in _parser()._actions}
    assert helps["config"] == "the run's YAML"
    assert all(isinstance(text, str) and len(text) > 15 for name, text in helps.items() if name != "config")


def _overridden(tmp_path, *argv) -> TrainT5Config:
    config = TrainT5Config.from_yaml(_t5_config(tmp_path))
    return command.config_with_overrides(config, _parser().parse_args(["--config", "c.yaml", *argv]))


def test_no_override_gives_the_config_itself(tmp_path) -> None:
    config = TrainT5Config.from_yaml(_t5_config(tmp_path))
    assert command.config_with_overrides(config, _parser().parse_args(["--config", "c"])) is config


def test_output_dir_steps_and_set_reach_the_config(tmp_path) -> None:
    config = _overridden(
        tmp_path, "--set", "lr=0.01", "--set", "model.num_layers=3", "--output-dir", "elsewhere", "--steps", "7"
    )
    assert (config.lr, config.model.num_layers, config.output_dir, config.steps) == (0.01, 3, "elsewhere", 7)


def test_output_dir_and_steps_win_over_set(tmp_path) -> None:
    config = _overridden(tmp_path, "--set", "steps=3", "--set", "output_dir=a", "--steps", "9", "--output-dir", "b")
    assert (config.steps, config.output_dir) == (9, "b")


def test_steps_zero_is_an_override_not_none(tmp_path) -> None:
    with pytest.raises(ValueError) as caught:
        _overridden(tmp_path, "--steps", "0")
    assert str(caught.value).startswith("--steps: ")


@pytest.mark.parametrize(
    "argv,source",
    [
        (["--steps", "0"], "--steps"),
        (["--set", "steps=0"], "--set"),
        (["--set", "lr=0.1", "--output-dir", "o", "--steps", "0"], "--set/--output-dir/--steps"),
        (["--output-dir", "o", "--steps", "0"], "--output-dir/--steps"),
    ],
)
def test_an_error_names_the_options_that_were_given(tmp_path, argv, source) -> None:
    with pytest.raises(ValueError) as caught:
        _overridden(tmp_path, *argv)
    assert str(caught.value).startswith(f"{source}: ")


# ---- run_training_command ----------------------------------------------------------------------


class _Training:
    """Stands in for `train(config, config_dir)`; records its calls, ends as told."""

    def __init__(self, outcome=None):
        self.outcome, self.calls = outcome, []

    def __call__(self, config, folder):
        from diffusers.utils import logging as diffusers_logging

        self.calls.append((config, folder, diffusers_logging.is_progress_bar_enabled()))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _run(path, training, *argv, report=lambda result: [f"done: {result}"]):
    args = _parser().parse_args(["--config", str(path), *argv])
    return command.run_training_command(args, TrainT5Config, training, report)


def test_a_run_trains_the_overridden_config_and_prints_its_report(tmp_path, capsys) -> None:
    path = _t5_config(tmp_path)
    training = _Training("result")
    assert _run(path, training, "--steps", "5", report=lambda result: [f"one {result}", "two"]) == 0
    ((config, folder, bars),) = training.calls
    assert isinstance(config, TrainT5Config) and config.steps == 5 and folder == tmp_path and bars is True
    assert capsys.readouterr().out == "one result\ntwo\n"


def test_no_progress_turns_the_libraries_bars_off_for_the_run_only(tmp_path) -> None:
    from diffusers.utils import logging as diffusers_logging

    training = _Training("r")
    _run(_t5_config(tmp_path), training, "--no-progress")
    assert training.calls[0][2] is False and diffusers_logging.is_progress_bar_enabled()


def test_a_missing_config_file_is_named(tmp_path) -> None:
    training = _Training()
    with pytest.raises(UsageError) as caught:
        _run(tmp_path / "none.yaml", training)
    assert str(caught.value) == f"--config: no such file {tmp_path / 'none.yaml'}"
    with pytest.raises(UsageError, match="^--config: no such file"):
        _run(tmp_path, training)  # a folder
    assert training.calls == []


def test_a_bad_key_a_bad_override_or_missing_data_is_a_usage_error_before_training(tmp_path) -> None:
    training = _Training()
    with pytest.raises(UsageError, match="no_such_key"):
        _run(_t5_config(tmp_path, no_such_key=1), training)
    with pytest.raises(UsageError, match="^--steps: "):
        _run(_t5_config(tmp_path), training, "--steps", "-1")
    data = {"source": "manifest", "manifest": str(tmp_path / "missing.jsonl")}
    with pytest.raises(UsageError, match="missing.jsonl"):
        _run(_t5_config(tmp_path, data=data), training)
    assert training.calls == []


def test_what_the_machine_lacks_is_checked_for_the_configs_precision_and_logger_before_training(
    tmp_path, monkeypatch
) -> None:
    import clipcond.training.loop as loop

    asked = []

    def check_runtime(mixed_precision, log_with=None):
        asked.append((mixed_precision, log_with))
        raise ValueError("mixed_precision 'bf16' needs what this machine lacks")

    monkeypatch.setattr(loop, "check_runtime", check_runtime)
    training = _Training()
    with pytest.raises(UsageError) as caught:
        _run(_t5_config(tmp_path, mixed_precision="bf16"), training)
    assert str(caught.value) == "mixed_precision 'bf16' needs what this machine lacks"
    assert asked == [("bf16", None)] and training.calls == []


class _StandInConfig:
    """A config class whose file reads as `read` says (a config, or an error to raise)."""

    read: object = None

    @classmethod
    def from_yaml(cls, path):
        if isinstance(cls.read, BaseException):
            raise cls.read
        return cls.read


def test_a_type_error_of_the_config_is_a_usage_error(tmp_path, monkeypatch) -> None:
    path = _t5_config(tmp_path)
    monkeypatch.setattr(_StandInConfig, "read", TypeError(f"{path}: key `steps`: expected an int, got [1]"))
    args = _parser().parse_args(["--config", str(path)])
    with pytest.raises(UsageError) as caught:
        command.run_training_command(args, _StandInConfig, _Training(), lambda result: [])
    assert str(caught.value) == f"{path}: key `steps`: expected an int, got [1]"


def test_the_configs_logger_is_checked_when_it_has_one(tmp_path, monkeypatch) -> None:
    import clipcond.training.loop as loop

    asked = []
    monkeypatch.setattr(loop, "check_runtime", lambda precision, log_with=None: asked.append((precision, log_with)))
    config = NS(
        mixed_precision="no", log_with="tensorboard", data=NS(check_files=lambda: None), output_dir=str(tmp_path / "o")
    )
    monkeypatch.setattr(_StandInConfig, "read", config)
    training = _Training("r")
    args = _parser().parse_args(["--config", str(_t5_config(tmp_path))])
    assert command.run_training_command(args, _StandInConfig, training, lambda result: []) == 0
    assert asked == [("no", "tensorboard")] and training.calls[0][0] is config


def test_resume_continues_a_run_of_the_same_config(tmp_path) -> None:
    from clipcond.training.run_folder import prepare_output_dir

    path = _t5_config(tmp_path)
    prepare_output_dir(TrainT5Config.from_yaml(path), resume=False)
    training = _Training("r")
    assert _run(path, training, "--resume") == 0
    assert len(training.calls) == 1


def test_a_folder_that_holds_a_run_needs_resume(tmp_path) -> None:
    path = _t5_config(tmp_path)
    (tmp_path / "run").mkdir()
    shutil.copy(path, tmp_path / "run" / "train_config.yaml")
    training = _Training("r")
    with pytest.raises(UsageError) as caught:
        _run(path, training)
    assert str(caught.value) == (
        f"{tmp_path / 'run'} already holds a run; pass --resume to continue it or choose another output_dir"
    )
    assert training.calls == []


@pytest.mark.parametrize(
    "error",
    [
        RunSetupError("`lora.target_modules` ['x'] match no module"),
        RunFolderError("run.lock is held by process 12"),
        FileNotFoundError("text_encoder: runs/clip/model has no config.json"),
    ],
)
def test_what_the_run_finds_wrong_with_its_parts_is_a_usage_error(tmp_path, error) -> None:
    with pytest.raises(UsageError) as caught:
        _run(_t5_config(tmp_path), _Training(error))
    assert str(caught.value) == str(error) and caught.value.__cause__ is error


def test_a_diverged_run_is_a_failed_run(tmp_path) -> None:
    error = TrainingDiverged("loss became nan at step 12; the last good checkpoint is step 10")
    with pytest.raises(RunFailed) as caught:
        _run(_t5_config(tmp_path), _Training(error))
    assert str(caught.value) == str(error)


def test_a_run_folder_removed_under_the_run_is_a_failed_run(tmp_path) -> None:
    gone = tmp_path / "run" / "checkpoints" / "step-10"
    error = FileNotFoundError(errno.ENOENT, "No such file or directory", str(gone / "model.safetensors"))
    with pytest.raises(RunFailed) as caught:
        _run(_t5_config(tmp_path), _Training(error))
    assert str(caught.value).startswith(
        f"cannot reach {gone / 'model.safetensors'}: its folder {gone} no longer exists"
    )


def test_a_refused_write_is_a_failed_run_that_says_to_resume(tmp_path) -> None:
    error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "x.safetensors"))
    with pytest.raises(OSError) as caught:
        _run(_t5_config(tmp_path), _Training(error))
    # not this function's: `run_command` turns it into a line (test_cli_errors.py)
    assert caught.value is error


def test_a_finished_run_resumed_says_so_and_succeeds(tmp_path, capsys) -> None:
    training = _Training(RunAlreadyFinished(f"{tmp_path / 'run'} finished all 10 steps; nothing to do"))
    assert _run(_t5_config(tmp_path), training, "--resume") == 0
    assert capsys.readouterr().out == f"{tmp_path / 'run'} finished all 10 steps; nothing to do\n"


def test_any_other_error_is_a_bug_and_keeps_its_type(tmp_path) -> None:
    with pytest.raises(KeyError):
        _run(_t5_config(tmp_path), _Training(KeyError("x")))


# ---- each command's own lines ------------------------------------------------------------------


def _command_parser(module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser


def _command_args(module, *argv):
    return _command_parser(module).parse_args(["--config", "c.yaml", *argv])


@pytest.fixture
def shared(monkeypatch):
    """`run_training_command` stood in for: each command's train and report called on a stand-in."""
    seen = {}

    def run_training_command(args, config_class, train, report):
        seen.update(args=args, config_class=config_class, train=train, report=report)
        seen.setdefault("all_args", []).append(args)
        return 0

    for module in (train_clip, train_diffusion, train_t5):
        monkeypatch.setattr(module, "run_training_command", run_training_command)
    return seen


def test_train_clip_passes_resume_the_folder_and_progress_and_reports_zero_shot(shared, monkeypatch) -> None:
    import clipcond.training.clip.loop as loop
    from clipcond.training.clip.config import TrainClipConfig

    calls = []
    monkeypatch.setattr(loop, "train_clip", lambda config, **kwargs: calls.append((config, kwargs)) or "r")
    assert train_clip.run(_command_args(train_clip, "--resume", "--no-progress")) == 0
    assert shared["config_class"] is TrainClipConfig
    assert shared["train"]("config", Path("/configs")) == "r"
    assert calls == [("config", {"resume": True, "config_dir": Path("/configs"), "show_progress": False})]
    report = shared["report"]
    result = NS(model_dir="runs/m", steps=40, loss=0.123456, evaluation={"top1": 0.5, "top5": 0.98765})
    assert report(result) == ["model saved to runs/m after 40 steps (loss 0.1235)", "zero-shot: top1 0.500, top5 0.988"]
    assert report(NS(model_dir="m", steps=1, loss=2.0, evaluation=None)) == [
        "model saved to m after 1 steps (loss 2.0000)"
    ]
    assert report(NS(model_dir="m", steps=1, loss=2.0, evaluation={})) == [
        "model saved to m after 1 steps (loss 2.0000)"
    ]


def test_train_t5_passes_resume_and_progress_and_reports_the_held_out_scores(shared, monkeypatch) -> None:
    import clipcond.training.t5.loop as loop

    calls = []
    monkeypatch.setattr(loop, "train_t5", lambda config, **kwargs: calls.append((config, kwargs)) or "r")
    train_t5.run(_command_args(train_t5))
    assert shared["config_class"] is TrainT5Config
    assert shared["train"]("config", Path("/configs")) == "r"
    assert calls == [("config", {"resume": False, "show_progress": True})]
    result = NS(model_dir="runs/t5", steps=4000, loss=0.31789, evaluation={"loss": 0.318, "accuracy": 0.84312})
    assert shared["report"](result) == [
        "T5 encoder and tokenizer saved to runs/t5 after 4000 steps (loss 0.3179)",
        "held-out: loss 0.3180, accuracy 0.8431",
    ]


def test_train_diffusion_passes_resume_and_progress_and_names_shard_problems(shared, monkeypatch) -> None:
    import clipcond.training.diffusion.loop as loop
    from clipcond.training.data.embedding_shards import EmbeddingShardError, MissingRecord
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    calls = []
    outcome = {"value": "r"}

    def train(config, **kwargs):
        calls.append((config, kwargs))
        if isinstance(outcome["value"], BaseException):
            raise outcome["value"]
        return outcome["value"]

    monkeypatch.setattr(loop, "train_diffusion", train)
    train_diffusion.run(_command_args(train_diffusion, "--resume"))
    assert shared["config_class"] is TrainDiffusionConfig
    assert shared["train"]("config", Path("/configs")) == "r"
    assert calls == [("config", {"resume": True, "show_progress": True})]
    result = NS(pipeline_dir="runs/p", steps=12, loss=0.5)
    assert shared["report"](result) == ["pipeline saved to runs/p after 12 steps (loss 0.5000)"]
    outcome["value"] = EmbeddingShardError("shard 0 was encoded with another text encoder")
    with pytest.raises(UsageError, match="^shard 0 was encoded with another text encoder$"):
        shared["train"]("config", None)
    outcome["value"] = MissingRecord("caption 'a red circle' is in no shard")
    with pytest.raises(RunFailed, match="^caption 'a red circle' is in no shard$"):
        shared["train"]("config", None)


SCRIPTS = [
    (
        train_clip,
        "train_clip",
        "contrastive CLIP training",
        "run config YAML (e.g. configs/train/clip-tiny-shapes.yaml)",
    ),
    (
        train_diffusion,
        "train_diffusion",
        "diffusion training against a frozen conditioner",
        "run config YAML (TrainDiffusionConfig)",
    ),
    (
        train_t5,
        "train_t5",
        "span-corruption pretraining of a small T5",
        "run config YAML (e.g. configs/train/t5-tiny-shapes.yaml)",
    ),
]


@pytest.mark.parametrize("module,prog,description,config_help", SCRIPTS)
def test_each_module_runs_as_a_script_with_debug_and_says_what_it_trains(
    module, prog, description, config_help, shared, monkeypatch, capsys
) -> None:
    assert {action.dest: action.help for action in _command_parser(module)._actions}["config"] == config_help
    monkeypatch.setattr(module, "run", lambda args: 5 if args.debug and args.config == "c.yaml" else 1)
    assert module.main(["--config", "c.yaml", "--debug"]) == 5
    with pytest.raises(SystemExit):
        module.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ") and description in out.splitlines()


@pytest.mark.parametrize("module", [train_clip, train_diffusion, train_t5])
def test_each_command_hands_its_own_arguments_on(module, shared, monkeypatch) -> None:
    args = _command_args(module, "--steps", "3")
    module.run(args)
    assert shared["all_args"] == [args]
