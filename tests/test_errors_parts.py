"""How the command reports what went wrong (clipcond.errors), in its parts: the line cap at its
bounds, which file a refused write names, `--debug` at the top level and after a subcommand,
and a namespace without `debug` (a command run from code)."""

from __future__ import annotations

import argparse
import errno
import re

import pytest
from safetensors import SafetensorError

from clipcond.errors import (
    LINE_LIMIT,
    RunFailed,
    Terminated,
    UsageError,
    _raise_terminated,
    _safetensors_file,
    add_debug_argument,
    one_line,
    refused_write,
    run_command,
)

CUT = f"... (the rest of this message, over {LINE_LIMIT:,} characters, is cut)"


def test_one_line_reads_at_most_four_lines_worth_of_a_message():
    """A message of 4 x LINE_LIMIT characters is read whole; one character more is cut, and
    what lies past 4 x LINE_LIMIT is never read."""
    whole = "a" + " " * (4 * LINE_LIMIT - 2) + "b"
    assert one_line(ValueError(whole)) == "a b"
    longer = whole + "c"
    assert one_line(ValueError(longer)) == "a b" + CUT
    assert one_line(ValueError("x" * LINE_LIMIT)) == "x" * LINE_LIMIT
    assert one_line(ValueError("x" * (LINE_LIMIT + 1))) == "x" * LINE_LIMIT + CUT
    assert one_line(ValueError("  \n ")) == "ValueError"


def test_an_error_that_only_mentions_an_os_error_is_no_refused_write():
    """Only an OSError, or safetensors' own error, is read for an errno: a ValueError whose
    message quotes "(os error 28)" stays a bug."""
    args = argparse.Namespace(output="out.png")
    assert refused_write(ValueError("bad value (os error 28)"), args) is None
    failed = refused_write(SafetensorError("I/O error: No space left on device (os error 28)"), args)
    assert isinstance(failed, RunFailed) and str(failed).startswith("cannot write to out.png: No space left")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"output_dir": "runs/a", "out": "o", "output": "p"}, "to runs/a"),
        ({"out": "shards", "output": "p"}, "to shards"),
        ({"output": "x.png"}, "to x.png"),
        ({"output_dir": "", "output": "x.png"}, "to x.png"),  # an empty option names nothing
        ({"output_dir": None, "out": 3}, "a file"),  # neither a path nor text
        ({}, "a file"),
    ],
)
def test_a_refused_write_without_a_file_names_the_commands_output(options, named):
    failed = refused_write(OSError(errno.ENOSPC, "No space left on device"), argparse.Namespace(**options))
    assert str(failed) == (
        f"cannot write {named}: No space left on device; nothing was left half-written: free space on its disk and rerun"
    )


def test_a_refused_permission_may_be_a_read_and_a_trainer_is_told_to_resume():
    error = PermissionError(errno.EACCES, "Permission denied", "runs/a/model.safetensors")
    assert str(refused_write(error, argparse.Namespace(resume=False))) == (
        "cannot write (or read) runs/a/model.safetensors: Permission denied; nothing was left half-written: "
        "make its folder writable for you (or choose another output) and rerun with --resume (it continues "
        "from the last checkpoint)"
    )


def _raise_with(filename: str) -> None:
    """A frame outside safetensors that holds a `filename` local."""
    raise SafetensorError(f"I/O error (os error 28) {filename}")


def test_the_file_a_safetensors_error_names_is_its_innermost_safetensors_frames():
    """The `filename` of the innermost frame of a module named safetensors*, not that of a
    deeper frame of another module that happens to hold a local of that name."""
    namespace = {"__name__": "safetensors.torch", "_raise_with": _raise_with}
    exec("def save_file(tensors, filename):\n    _raise_with('decoy.safetensors')\n", namespace)  # noqa: S102
    with pytest.raises(SafetensorError) as raised:
        namespace["save_file"]({}, "real.safetensors")
    assert _safetensors_file(raised.value.__traceback__) == "real.safetensors"
    assert _safetensors_file(None) is None


def test_debug_is_taken_before_and_after_a_subcommand():
    parser = argparse.ArgumentParser(prog="clipcond")
    add_debug_argument(parser)
    command = parser.add_subparsers(dest="command").add_parser("run")
    add_debug_argument(command, top_level=False)
    assert parser.parse_args([]).debug is False
    assert parser.parse_args(["run"]).debug is False
    assert parser.parse_args(["--debug", "run"]).debug is True
    assert parser.parse_args(["run", "--debug"]).debug is True
    help_text = " ".join(command.format_help().split())
    assert re.search(r"--debug show the traceback of an error, not just its one-line message( |$)", help_text)


def test_a_namespace_without_debug_reports_in_one_line(capsys):
    """A command run from code with a namespace that has no `debug`: no traceback, one line."""

    def refuse(args):
        raise UsageError("--model x: no such folder")

    def interrupted(args):
        raise KeyboardInterrupt

    assert run_command(refuse, argparse.Namespace()) == 2
    assert capsys.readouterr().err == "error: --model x: no such folder\n"
    assert run_command(interrupted, argparse.Namespace()) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_the_sigterm_handler_raises_terminated():
    with pytest.raises(Terminated, match="^terminated$"):
        _raise_terminated(15, None)
