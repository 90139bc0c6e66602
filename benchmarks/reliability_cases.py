"""What the reliability benchmark's groups share: a report row (`Case`), the ``clipcond``
command run in this process (`cli`), and the text of a table cell."""

from __future__ import annotations

import contextlib
import io
from typing import NamedTuple


class Case(NamedTuple):
    """One row of the report: `passed` None when the case could not be set up here."""

    group: str
    name: str
    expected: str
    observed: str
    passed: bool | None


def cli(*argv: str) -> tuple[int, str, str]:
    """``clipcond <argv>`` in this process: (exit status, stdout, stderr). An exception that
    escapes the command (a traceback for a user) is returned as status -1 with its type."""
    from clipcond.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except Exception as error:  # noqa: BLE001 - what a user would see as a traceback is the observation
            status = -1
            print(f"TRACEBACK {type(error).__name__}: {error}", file=err)
    return status, out.getvalue(), err.getvalue()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(nothing)"


def cell(text: str) -> str:
    """Text safe in a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
