"""The `clipcond` command's table of subcommands: each name reaches its module's `run`, ``--help``
lists each with its line, ``--debug`` is taken before or after the subcommand, a missing
subcommand is a usage error, and `main` returns the subcommand's exit status. What each
subcommand does with its arguments is its own tests'; errors in one line are test_cli_errors.py's."""

from __future__ import annotations

import importlib

import pytest

from clipcond import cli

# name -> (module, the line `clipcond --help` shows), written out: the help users read
EXPECTED = {
    "train-clip": ("clipcond.training.train_clip", "pretrain or fine-tune CLIP towers (contrastive)"),
    "eval-clip": ("clipcond.training.clip.eval_command", "zero-shot and retrieval evaluation of a saved CLIP"),
    "convert-clip": (
        "clipcond.training.clip.convert",
        "OpenAI / open_clip / Long-CLIP checkpoint -> a clipcond folder",
    ),
    "init-clip": ("clipcond.training.clip.random_init", "a CLIP with fresh random weights (the untrained control)"),
    "encode": (
        "clipcond.training.encode_command",
        "pre-encode a dataset's captions (data.embeddings) and images (data.latents) for train-diffusion",
    ),
    "train-diffusion": (
        "clipcond.training.train_diffusion",
        "train a UNet, LoRA or a projection adapter against frozen text encoders",
    ),
    "train-t5": ("clipcond.training.train_t5", "pretrain a small T5 encoder on captions (span corruption)"),
    "generate": ("clipcond.pipelines.generate", "prompt (and --image / --mask) -> PNG with a saved pipeline"),
    "experiment": ("clipcond.lab.experiment", "run a prompt suite through conditioning setups and write a report"),
}

# the fewest arguments each subcommand parses with
MINIMAL = {
    "train-clip": ["--config", "c.yaml"],
    "eval-clip": ["--model", "m"],
    "convert-clip": ["--checkpoint", "ViT-B-32.pt", "--output", "o"],
    "init-clip": ["--model", "m.yaml", "--out", "o"],
    "encode": ["--train-config", "c.yaml"],
    "train-diffusion": ["--config", "c.yaml"],
    "train-t5": ["--config", "c.yaml"],
    "generate": ["a cat", "-o", "cat.png"],
    "experiment": ["e.yaml"],
}


def _subparsers(parser):
    (action,) = [action for action in parser._actions if action.dest == "command"]
    return action


def test_every_subcommand_is_listed_with_its_line_in_order() -> None:
    commands = _subparsers(cli.build_parser())
    assert list(commands.choices) == list(EXPECTED)
    assert {choice.dest: choice.help for choice in commands._choices_actions} == {
        name: line for name, (_, line) in EXPECTED.items()
    }
    assert commands.required


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_subcommand_parses_into_its_modules_run(name) -> None:
    module = importlib.import_module(EXPECTED[name][0])
    args = cli.build_parser().parse_args([name, *MINIMAL[name]])
    assert args.command == name and args.handler is module.run
    assert args.debug is False


@pytest.mark.parametrize(
    "argv",
    [["--debug", "experiment", "e.yaml"], ["experiment", "e.yaml", "--debug"], ["experiment", "--debug", "e.yaml"]],
)
def test_debug_is_taken_before_or_after_the_subcommand(argv) -> None:
    assert cli.build_parser().parse_args(argv).debug is True


def test_debug_before_the_subcommand_is_kept_when_the_subcommand_does_not_repeat_it() -> None:
    args = cli.build_parser().parse_args(["--debug", "generate", "a", "-o", "a.png"])
    assert args.debug is True and args.command == "generate"


def test_no_subcommand_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: clipcond ") and "the following arguments are required: command" in err


def test_an_unknown_subcommand_names_the_choices(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train"])
    assert exit_.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_help_names_the_program_and_its_purpose(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("usage: clipcond [-h] [--debug]")
        and "CLIP (and T5) text conditioning for diffusers" in out.splitlines()
    )


def test_main_returns_the_subcommands_exit_status_with_its_arguments(monkeypatch) -> None:
    import clipcond.lab.experiment as experiment

    seen = []

    def run(args):
        seen.append((args.config, args.jobs))
        return 7

    monkeypatch.setattr(experiment, "run", run)
    assert cli.main(["experiment", "e.yaml", "--jobs", "2"]) == 7
    assert seen == [("e.yaml", 2)]


def test_a_user_error_of_the_subcommand_is_one_line_and_status_2(monkeypatch, capsys) -> None:
    import clipcond.lab.experiment as experiment
    from clipcond.errors import UsageError

    def run(args):
        raise UsageError("e.yaml: no such file")

    monkeypatch.setattr(experiment, "run", run)
    assert cli.main(["experiment", "e.yaml"]) == 2
    assert capsys.readouterr().err == "error: e.yaml: no such file\n"
