"""`clipcond generate --help` states the defaults argparse applies to the numbers a user tunes."""

from __future__ import annotations

import pytest

from clipcond.cli import build_parser


@pytest.mark.parametrize("dest", ["steps", "guidance", "seed", "n"])
def test_generate_help_states_each_default_argparse_applies(dest, capsys) -> None:
    parser = build_parser()
    applied = getattr(parser.parse_args(["generate", "a red circle"]), dest)
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    option = f"--{dest} {dest.upper()}"
    assert option in help_text
    assert f"(default: {applied}" in help_text.rsplit(option, 1)[1].split(" --", 1)[0]


def test_every_option_of_every_command_says_what_it_is() -> None:
    """Each option of each `clipcond` command has a help text (generate's --height and --width had none)."""
    import argparse

    parser = build_parser()
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    unexplained = [
        f"{name} {action.dest}"
        for name, command in subparsers.choices.items()
        for action in command._actions
        if not action.help
    ]
    assert unexplained == []
