"""The one ``error:`` line a command prints is cut at `LINE_LIMIT` characters, saying so: a
message that quotes a value whole (an OSError's file name, a library's "Repo id must ...") had
printed the whole value, 52 MB of stderr for a 50 MB one."""

from __future__ import annotations

import pytest
from test_cli_errors import one_error

from clipcond.errors import LINE_LIMIT, UsageError, one_line, user_errors

CUT = f"... (the rest of this message, over {LINE_LIMIT:,} characters, is cut)"


def test_a_short_message_is_whole_on_one_line() -> None:
    assert one_line(ValueError("no such\n  folder\tx")) == "no such folder x"
    assert one_line(ValueError("y" * LINE_LIMIT)) == "y" * LINE_LIMIT
    assert one_line(KeyError()) == "KeyError"


@pytest.mark.parametrize("size", [LINE_LIMIT + 1, 4 * LINE_LIMIT + 1, 50 * 1024 * 1024])
def test_a_long_message_is_cut_and_says_so(size) -> None:
    message = ("name: " + "z" * size)[:size]
    assert one_line(ValueError(message)) == message[:LINE_LIMIT] + CUT


def test_a_cut_message_inside_another_is_cut_once() -> None:
    with pytest.raises(UsageError) as wrapped, user_errors(ValueError, context="--model x: "):
        raise ValueError("v" * 10**6)
    assert one_line(wrapped.value) == ("--model x: " + "v" * LINE_LIMIT)[:LINE_LIMIT] + CUT


def test_a_command_prints_a_cut_line(tmp_path, capsys) -> None:
    """A checkpoint path of 3,900 characters (short names, so the file system takes it) is
    named in the command's one line up to the limit."""
    checkpoint = "ab/" * 1300 + "x.safetensors"
    line = one_error(capsys, ["convert-clip", "--checkpoint", checkpoint, "--output", str(tmp_path / "m")], 2)
    assert line == f"error: --checkpoint: no such file {checkpoint}"[: len("error: ") + LINE_LIMIT] + CUT
