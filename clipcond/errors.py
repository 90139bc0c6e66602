"""The mistakes a user of the ``clipcond`` command can make, and how the command reports them.

A `UserError` is printed as one line, ``error: <what is wrong and the fix>``, on stderr, and the
command exits with its `exit_code`; any other exception but a refused write (below) is a bug
and keeps its traceback (`run_command`, the one place that prints them). ``--debug`` prints a
`UserError`'s traceback too, with the exception it was made from.

Ctrl-C (SIGINT) and SIGTERM (``kill PID``, ``timeout``, a scheduler's stop) are not errors: the
command unwinds through the same cleanup for both (a SIGTERM raises `Terminated`, a
KeyboardInterrupt), prints what its cleanup says and then one line, ``interrupted`` or
``terminated``, and exits 130 or 143 (128 + the signal's number, as a shell reports a process
that signal ended); ``--debug`` prints the traceback first.

    UsageError   the command line, or a file or folder it names, is wrong: a missing path, a bad
                 value, a config that does not validate, an output that exists, a run folder
                 that holds another run. Found before any work; exit 2, as argparse's own errors.
    RunFailed    the work started and could not finish for a reason the user can act on (the
                 loss diverged, the latents became NaN, a prepare step failed); exit 1.

A write the machine refused (a full disk, a quota, a read-only or unwritable folder: an `OSError`
of `WRITE_FAILURES`, or safetensors' ``SafetensorError`` that carries one as ``(os error N)``) is
not a bug either: `run_command` prints it as one line, which file and why, and exits 1, as a
`RunFailed`. The commands write their checkpoints, models, shards and output files under a
temporary name, renamed into place once whole (a failed write deletes it), so the line says that
nothing was left half-written. (One file is not: ``metrics.jsonl``, appended to, whose cut
last line a resume drops (`clipcond.training.run_folder.keep_metrics`).)

Library functions keep raising `ValueError`, `TypeError` or `FileNotFoundError` for bad input.
A command marks the blocks where such an exception is the user's to fix with `user_errors`,
naming the exception types it expects there; the same types raised anywhere else stay bugs.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType


class UserError(Exception):
    """A mistake the user can fix; its message says what is wrong and what to do."""

    exit_code = 1


class UsageError(UserError):
    """The command line or a file it names is wrong (found before any work)."""

    exit_code = 2


class RunFailed(UserError):
    """The work started and stopped for a reason the user can act on."""

    exit_code = 1


@contextmanager
def user_errors(*kinds: type[BaseException], error: type[Exception] = UsageError, context: str = "") -> Iterator[None]:
    """Inside the block, an exception of one of `kinds` is the user's to fix: it is raised
    again as `error` (a `UserError` for the commands; training's `RunSetupError`, which they
    report as one) with its message after `context` (e.g. ``"--model runs/x: "``), chained to
    the original so that ``--debug`` shows where it came from."""
    try:
        yield
    except kinds as caught:
        raise error(f"{context}{one_line(caught)}") from caught


# The most characters of a message `one_line` gives: a message that quotes a value whole (a
# library's "Repo id must ...", an OSError's file name) could otherwise print megabytes.
LINE_LIMIT = 2000


def one_line(error: BaseException) -> str:
    """`error`'s message on one line (whitespace runs, newlines included, become one space);
    its type's name when it has no message. A line over `LINE_LIMIT` characters is cut there,
    and says so (not how long it was: a message may hold another's line, already cut)."""
    message = str(error)
    line = " ".join(message[: 4 * LINE_LIMIT].split()) or type(error).__name__  # bounded work
    if len(line) <= LINE_LIMIT and len(message) <= 4 * LINE_LIMIT:
        return line
    return f"{line[:LINE_LIMIT]}... (the rest of this message, over {LINE_LIMIT:,} characters, is cut)"


def add_debug_argument(parser: argparse.ArgumentParser, top_level: bool = True) -> None:
    """Add ``--debug`` to `parser`. A subcommand's parser (`top_level` False) takes it too, so
    that it may follow the subcommand, without resetting the top-level parser's value."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="show the traceback of an error, not just its one-line message",
    )


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the SIGTERM handler `run_command` installs, so that a
    SIGTERM runs every cleanup a Ctrl-C runs (a KeyboardInterrupt's ``except`` and ``finally``
    blocks: the run lock released, a lab's prepare steps stopped)."""


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The exit status of a command that `interrupt` stopped: 143 (128 + SIGTERM) for a
    `Terminated`, else 130 (128 + SIGINT), what a shell reports for a process the signal ended."""
    number = signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT
    return 128 + int(number)


def stopped_by(interrupt: KeyboardInterrupt) -> str:
    """How a command was stopped, as it says so: ``terminated`` (a SIGTERM, `Terminated`) or
    ``interrupted`` (Ctrl-C)."""
    return "terminated" if isinstance(interrupt, Terminated) else "interrupted"


def _raise_terminated(number: int, frame: object) -> None:
    raise Terminated("terminated")


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises `Terminated` (in the main thread only, the one place
    Python runs signal handlers); the previous handler is put back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The errno of a write the machine refused -> what the user does about it.
_FREE_SPACE = "free space on its disk and rerun"
_PERMISSION = "make its folder writable for you (or choose another output) and rerun"
WRITE_FAILURES: dict[int, str] = {
    errno.ENOSPC: _FREE_SPACE,
    errno.EDQUOT: "free space under your disk quota and rerun",
    errno.EFBIG: "raise the file-size limit (ulimit -f) and rerun",
    errno.EROFS: "choose an output on a writable file system and rerun",
    errno.EACCES: _PERMISSION,
    errno.EPERM: _PERMISSION,
}
# safetensors (Rust) names the OSError it met only in its message: "... I/O error: No space left
# on device (os error 28)".
_SAFETENSORS_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def refused_write(error: BaseException, args: argparse.Namespace) -> RunFailed | None:
    """`error` as a `RunFailed` of one line when it is a write the machine refused (an `OSError`
    of `WRITE_FAILURES`, or a ``SafetensorError`` carrying one), else None (a bug, or another
    failure). The line names the file (the error's, else safetensors' ``filename`` argument,
    else the command's output option), the reason and what to do; a training command (which
    takes ``--resume``) is told to rerun with it.

    A file that is missing because its folder is gone (``ENOENT``, and the folder the error
    names the file in no longer exists: the command's output folder, removed while it ran) is
    one line too, which says so."""
    number, where = _errno_and_file(error)
    if number == errno.ENOENT and where is not None and not os.path.isdir(os.path.dirname(where) or "."):
        return RunFailed(
            f"cannot reach {where}: its folder {os.path.dirname(where)} no longer exists (removed while the "
            "command ran); nothing was left half-written there: rerun the command"
        )
    if number not in WRITE_FAILURES:
        return None
    # a permission error may also come from a read that no `user_errors` block expected
    verb = "cannot write (or read)" if number in (errno.EACCES, errno.EPERM) else "cannot write"
    rerun = " with --resume (it continues from the last checkpoint)" if hasattr(args, "resume") else ""
    return RunFailed(
        f"{verb} {where or _output_of(args)}: {os.strerror(number)}; nothing was left half-written: "
        f"{WRITE_FAILURES[number]}{rerun}"
    )


def _errno_and_file(error: BaseException) -> tuple[int | None, str | None]:
    """The errno `error` reports and the file it names (None for either it lacks)."""
    if isinstance(error, OSError):
        return error.errno, None if error.filename is None else str(error.filename)
    safetensors = sys.modules.get("safetensors")  # a SafetensorError comes only once it is imported
    if safetensors is None or not isinstance(error, safetensors.SafetensorError):
        return None, None
    found = _SAFETENSORS_OS_ERROR.search(str(error))
    if found is None:
        return None, None
    return int(found.group(1)), _safetensors_file(error.__traceback__)


def _safetensors_file(trace: TracebackType | None) -> str | None:
    """The ``filename`` argument of the innermost safetensors function in `trace` (its
    ``save_file``): the file it could not write, which its error does not name."""
    file = None
    while trace is not None:
        frame = trace.tb_frame
        if str(frame.f_globals.get("__name__", "")).startswith("safetensors") and "filename" in frame.f_locals:
            file = str(frame.f_locals["filename"])
        trace = trace.tb_next
    return file


def _output_of(args: argparse.Namespace) -> str:
    """Where the command writes, from its options, for an error that names no file (a failed
    ``write()`` on an open file)."""
    for option in ("output_dir", "out", "output"):
        value = getattr(args, option, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return f"to {value}"
    return "a file"


def _report(error: UserError, args: argparse.Namespace) -> int:
    """Print `error` as one line, after the traceback being handled when ``args.debug``; its exit status."""
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"error: {one_line(error)}", file=sys.stderr)
    return error.exit_code


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call `run(args)` and return its exit status; a `UserError`, or a write the machine
    refused (`refused_write`), is printed as one line (after its traceback when ``args.debug``)
    and gives its `exit_code`. Ctrl-C and SIGTERM (module docstring) print ``interrupted`` or
    ``terminated`` and give 130 or 143."""
    try:
        with _sigterm_raises():
            return run(args)
    except UserError as error:
        return _report(error, args)
    except KeyboardInterrupt as interrupt:  # the command's own cleanup has run and said its piece
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(stopped_by(interrupt), file=sys.stderr)
        return interrupt_exit_code(interrupt)
    except Exception as error:
        failed = refused_write(error, args)
        if failed is None:  # a bug: its traceback
            raise
        return _report(failed, args)
