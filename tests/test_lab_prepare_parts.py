"""The lab's prepare steps without running one: `PrepareStep`'s checks and command line, the
files it names, one step per `creates`, the checks of every step's arguments and config
(argparse's and the config's messages, the step named), which steps are pending, which steps
need which (a path named whole, normalised, in an argument or a config file), the cores a step
gets beside others, and what a finished step must leave.

test_lab.py and test_lab_checks.py run prepare steps as processes; these pin each rule."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from clipcond.lab import prepare
from clipcond.lab.prepare import (
    PREPARE_COMMANDS,
    PrepareStep,
    check_steps,
    pending_steps,
    step_dependencies,
    unique_steps,
)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO / "configs" / "models" / "clip-tiny.yaml"


def test_the_commands_a_step_may_run() -> None:
    assert PREPARE_COMMANDS == ("init-clip", "train-clip", "train-t5", "train-diffusion")


@pytest.mark.parametrize(
    "command, creates, args, message",
    [
        (
            "train",
            "x",
            [],
            "prepare command must be one of ('init-clip', 'train-clip', 'train-t5', 'train-diffusion'), got 'train'",
        ),
        ("train-clip", " ", [], "prepare step 'train-clip': `creates` must name the path it makes"),
        ("train-clip", "x", ["--steps", "2", "--config"], "prepare step 'train-clip': --config needs a value"),
        ("init-clip", "x", ["--model"], "prepare step 'init-clip': --model needs a value"),
    ],
)
def test_a_steps_refusals(command, creates, args, message) -> None:
    with pytest.raises(ValueError) as error:
        PrepareStep(command, creates, args)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "command, resumed", [("init-clip", False), ("train-clip", True), ("train-t5", True), ("train-diffusion", True)]
)
def test_a_steps_command_line_resumes_the_training_commands(command, resumed) -> None:
    step = PrepareStep(command, "out", ["--a", "b"])
    assert step.command_line() == [
        sys.executable,
        "-m",
        "clipcond.cli",
        command,
        "--a",
        "b",
        *(["--resume"] if resumed else []),
    ]
    assert PrepareStep(command, "out").args == []


def test_the_files_a_step_reads() -> None:
    step = PrepareStep("train-clip", "out", ["--model", "m.yaml", "--steps", "3", "--config", "c.yaml"])
    assert step.input_files() == [Path("c.yaml"), Path("m.yaml")]
    assert PrepareStep("train-clip", "out", ["--steps", "3"]).input_files() == []


def test_one_step_per_path_made_in_the_order_first_listed() -> None:
    a, b = PrepareStep("train-clip", "runs/a", ["--config", "a.yaml"]), PrepareStep("init-clip", "runs/b")
    again = PrepareStep("train-clip", "runs/a", ["--config", "a.yaml"])
    assert unique_steps([[a, b], [again], []]) == [a, b]
    assert unique_steps([]) == []
    other_args = PrepareStep("train-clip", "runs/a", ["--config", "other.yaml"])
    other_command = PrepareStep("train-t5", "runs/a", ["--config", "a.yaml"])
    for clash, name in ((other_args, "train-clip"), (other_command, "train-t5")):
        with pytest.raises(ValueError) as error:
            unique_steps([[a], [clash]])
        assert str(error.value) == f"two different prepare steps create runs/a: train-clip and {name}"


def test_pending_steps_are_those_whose_path_is_missing(tmp_path) -> None:
    (tmp_path / "made").mkdir()
    (tmp_path / "file").write_text("x")
    steps = [PrepareStep("init-clip", str(tmp_path / name)) for name in ("made", "missing", "file", "other")]
    assert pending_steps(steps) == [steps[1], steps[3]]


# ------------------------------------------------------------------ check_steps


def test_a_step_whose_arguments_and_model_are_good_passes(tmp_path) -> None:
    check_steps(
        [
            PrepareStep(
                "init-clip", str(tmp_path / "clip"), ["--model", str(TINY_MODEL), "--output", str(tmp_path / "clip")]
            )
        ]
    )


def test_arguments_the_command_refuses_are_named_with_the_step(tmp_path) -> None:
    step = PrepareStep("init-clip", "runs/c", ["--model", str(TINY_MODEL), "--no-such-flag"])
    with pytest.raises(ValueError) as error:
        check_steps([step])
    message = str(error.value)
    assert message.startswith("prepare step init-clip (creates runs/c): ")
    assert "--no-such-flag" in message
    assert message.endswith(f"(in args: --model {TINY_MODEL} --no-such-flag)")


def test_a_missing_file_a_step_names_is_refused(tmp_path) -> None:
    step = PrepareStep("init-clip", "runs/c", ["--model", str(tmp_path / "none.yaml"), "--output", "runs/c"])
    with pytest.raises(FileNotFoundError) as error:
        check_steps([step])
    assert str(error.value) == f"prepare step init-clip (creates runs/c): no such file {tmp_path / 'none.yaml'}"


def test_a_model_file_its_command_would_refuse_is_named_with_the_step(tmp_path) -> None:
    bad = tmp_path / "model.yaml"
    bad.write_text(TINY_MODEL.read_text().replace("embed_dim: 64", "embed_dim: -1"))
    step = PrepareStep("init-clip", "runs/c", ["--model", str(bad), "--output", "runs/c"])
    with pytest.raises(ValueError) as error:
        check_steps([step])
    assert str(error.value) == (
        f"prepare step init-clip (creates runs/c): {bad}: ClipModelConfig: embed_dim must be a positive integer, got -1"
    )


def test_a_training_config_with_a_bad_override_is_named_with_the_step(tmp_path) -> None:
    config = REPO / "configs" / "train" / "clip-tiny-shapes.yaml"
    step = PrepareStep("train-clip", "runs/c", ["--config", str(config), "--set", "no_such_key=1"])
    with pytest.raises(ValueError) as error:
        check_steps([step])
    message = str(error.value)
    assert message.startswith("prepare step train-clip (creates runs/c): ") and "no_such_key" in message
    check_steps([PrepareStep("train-clip", "runs/c", ["--config", str(config), "--steps", "2"])])


# ------------------------------------------------------------------ which step needs which


@pytest.mark.parametrize(
    "text, path, named",
    [
        ("text_encoder=runs/clip", "runs/clip", True),
        ("text_encoder=runs/clip/model", "runs/clip", True),
        ("runs/clip-large", "runs/clip", False),
        ("runs/clip.old", "runs/clip", False),
        ("runs/clip_2", "runs/clip", False),
        ("my-runs/clip", "runs/clip", False),
        ("old.runs/clip", "runs/clip", False),
        ("/elsewhere/runs/clip", "runs/clip", True),  # only makes the step wait
        ("text_encoder: runs/clip\n", "./runs/clip/", True),
        ("runs/x", "runs/clip", False),
    ],
)
def test_a_path_is_named_whole_or_as_a_folder_above(text, path, named) -> None:
    assert prepare._names_path(text, path) is named


def test_a_step_needs_the_earlier_steps_it_names_in_its_arguments_or_config(tmp_path) -> None:
    config = tmp_path / "diffusion.yaml"
    config.write_text("text_encoder: runs/clip/model\n")
    clip = PrepareStep("train-clip", "runs/clip", ["--config", "clip.yaml"])
    t5 = PrepareStep("train-t5", "runs/t5", ["--set", "init_from=runs/clip"])
    diffusion = PrepareStep("train-diffusion", "runs/unet", ["--config", str(config), "--set", "t5=runs/t5"])
    later = PrepareStep("init-clip", "runs/late", ["--model", "runs/unet.yaml"])
    assert step_dependencies([clip, t5, diffusion, later]) == [set(), {0}, {0, 1}, set()]
    # a later step is never needed by an earlier one, whatever it names
    assert step_dependencies([t5, clip]) == [set(), set()]
    assert step_dependencies([]) == []


# ------------------------------------------------------------------ running side by side


def test_steps_side_by_side_share_the_cores_unless_the_user_chose(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(prepare.os, "cpu_count", lambda: 16)
    assert prepare._child_environment(1, 4) is None  # one at a time: the step's own default
    env = prepare._child_environment(2, 4)
    assert env["OMP_NUM_THREADS"] == "4" and env["PATH"] == os.environ["PATH"]
    assert prepare._child_environment(3, 3)["OMP_NUM_THREADS"] == "5"
    assert prepare._child_environment(2, 32)["OMP_NUM_THREADS"] == "1"
    assert prepare._child_environment(2, 0)["OMP_NUM_THREADS"] == "16"
    monkeypatch.setattr(prepare.os, "cpu_count", lambda: None)
    assert prepare._child_environment(2, 2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert prepare._child_environment(4, 2) is None


def test_a_finished_step_must_have_succeeded_and_made_its_path(tmp_path) -> None:
    step = PrepareStep("train-clip", str(tmp_path / "made"))
    log = tmp_path / "1-train-clip.log"
    log.write_text("\n".join(f"line {n}" for n in range(30)) + "\n")
    with pytest.raises(RuntimeError) as error:
        prepare._check_finished(step, 2, log)
    tail = "\n".join(f"line {n}" for n in range(10, 30))
    assert str(error.value) == f"prepare step `clipcond train-clip` failed with status 2; its log {log} ends:\n{tail}"
    with pytest.raises(RuntimeError) as error:
        prepare._check_finished(step, -9, None)
    assert str(error.value) == "prepare step `clipcond train-clip` failed with status -9"
    with pytest.raises(RuntimeError) as error:
        prepare._check_finished(step, 0, None)
    assert str(error.value) == f"prepare step `clipcond train-clip` finished but did not create {tmp_path / 'made'}"
    (tmp_path / "made").mkdir()
    assert prepare._check_finished(step, 0, log) is None


@pytest.mark.parametrize(
    "command, config",
    [("train-t5", "configs/train/t5-tiny-shapes.yaml"), ("train-diffusion", "configs/diffusion/shapes-tiny.yaml")],
)
def test_each_training_commands_arguments_and_config_are_checked_as_it_reads_them(command, config) -> None:
    check_steps([PrepareStep(command, "runs/x", ["--config", str(REPO / config), "--steps", "2"])])
    with pytest.raises(ValueError) as error:
        check_steps([PrepareStep(command, "runs/x", ["--config", str(REPO / config), "--set", "no_such_key=1"])])
    assert str(error.value).startswith(f"prepare step {command} (creates runs/x): ") and "no_such_key" in str(
        error.value
    )


def test_an_unknown_flag_is_refused_in_argparses_words_and_help_is_no_flag_of_a_step() -> None:
    for flag in ("--no-such-flag", "-h"):
        step = PrepareStep("init-clip", "runs/c", ["--model", str(TINY_MODEL), "--output", "runs/c", flag])
        with pytest.raises(ValueError) as error:
            check_steps([step])
        assert str(error.value) == (
            f"prepare step init-clip (creates runs/c): unrecognized arguments: {flag} "
            f"(in args: --model {TINY_MODEL} --output runs/c {flag})"
        )


def test_a_log_that_is_not_utf8_is_shown_with_replacement_characters(tmp_path) -> None:
    log = tmp_path / "1-train-clip.log"
    log.write_bytes(b"ok\nbad \xff byte\n")
    with pytest.raises(RuntimeError) as error:
        prepare._check_finished(PrepareStep("train-clip", str(tmp_path / "x")), 1, log)
    assert str(error.value).endswith("ends:\nok\nbad \ufffd byte")


def test_an_unknown_core_count_counts_as_one(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(prepare.os, "cpu_count", lambda: None)
    assert prepare._child_environment(2, 1)["OMP_NUM_THREADS"] == "1"
