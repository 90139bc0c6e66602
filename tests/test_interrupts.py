"""Ctrl-C (SIGINT) and SIGTERM stop a command through its cleanup, with one line and the exit
status a shell gives a process that signal ended (130, 143), not a traceback; a lab's prepare
steps stop with the lab.

The real cases run ``python -m clipcond.cli`` in a subprocess and signal it as a terminal
(SIGINT to the process group) or ``kill PID`` / ``timeout`` (SIGTERM to the one process) does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clipcond.errors import run_command

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


# ------------------------------------------------------------------ run_command, in-process


def _interrupted(args: argparse.Namespace) -> int:
    print("stopped before its first checkpoint; rerun to start afresh", file=sys.stderr)  # a command's cleanup line
    raise KeyboardInterrupt


def _status(run, debug: bool = False) -> int:
    """`run_command`'s exit status; a KeyboardInterrupt that leaves it fails the test (rather
    than stopping pytest, which takes it for the user's Ctrl-C)."""
    try:
        return run_command(run, argparse.Namespace(debug=debug))
    except KeyboardInterrupt as interrupt:
        pytest.fail(f"{type(interrupt).__name__} left run_command")


def test_ctrl_c_prints_the_commands_line_then_interrupted_and_exits_130(capsys) -> None:
    assert _status(_interrupted) == 130
    err = capsys.readouterr().err
    assert err.splitlines() == ["stopped before its first checkpoint; rerun to start afresh", "interrupted"], err


def test_ctrl_c_with_debug_keeps_the_traceback(capsys) -> None:
    assert _status(_interrupted, debug=True) == 130
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyboardInterrupt" in err and err.splitlines()[-1] == "interrupted", err


class _SigtermNotHandled(Exception):
    pass


def _unhandled_sigterm(number: int, frame: object) -> None:
    raise _SigtermNotHandled("SIGTERM reached the test's own handler, not the command's")


def test_sigterm_runs_the_commands_cleanup_and_exits_143(capsys) -> None:
    cleaned = []
    previous = signal.signal(signal.SIGTERM, _unhandled_sigterm)  # a SIGTERM must not end pytest

    def terminated(args: argparse.Namespace) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises here
            return 0
        finally:
            cleaned.append(True)

    try:
        assert _status(terminated) == 143
        assert cleaned == [True]
        assert capsys.readouterr().err.splitlines() == ["terminated"]
        assert signal.getsignal(signal.SIGTERM) is _unhandled_sigterm  # put back after the command
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ real processes


def _train_clip_yaml(folder: Path, steps: int) -> Path:
    from test_encode_command import write_config
    from test_train_clip import tiny_config

    return write_config(tiny_config(folder / "run", steps=steps), folder / "clip.yaml")


@contextlib.contextmanager
def _sigint_not_ignored():
    """Let the processes started inside see SIGINT as a terminal's Ctrl-C delivers it. A command
    started with `&` by a shell without job control (a CI script, `(pytest &)`) ignores SIGINT, its
    children inherit that, and Python keeps an inherited SIG_IGN: the command would never see the
    signal. exec resets a handled signal to its default, so handling it here for the moment of the
    start is enough."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _signal_after_checkpoint(command: list[str], run_dir: Path, number: int, group: bool) -> tuple[int, str, list]:
    """Start `command` in a new session, wait for the first checkpoint in `run_dir`, send `number`
    to the process group (`group`) or the process alone. Returns its exit status, its stderr and
    the processes it had started (psutil), as they were when the signal was sent."""
    import psutil

    with _sigint_not_ignored():
        process = subprocess.Popen(
            command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "latest").exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(f"no checkpoint came: {process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    children = psutil.Process(process.pid).children(recursive=True)
    (os.killpg if group else os.kill)(process.pid, number)
    try:
        _, err = process.communicate(timeout=45)  # an orphan that holds the pipe makes this time out
        return process.returncode, err, children
    finally:
        for child in _running(children):  # what an assertion below would otherwise leave running
            child.kill()
        process.kill()


def _running(processes: list) -> list:
    """The psutil processes of `processes` still running (neither ended nor a zombie)."""
    import psutil

    time.sleep(1)  # a terminated child may take a moment to be reaped by init

    def runs(process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [process for process in processes if runs(process)]


def _lines(err: str) -> list[str]:
    """stderr without the import-time warnings a library may print."""
    return [line for line in err.splitlines() if line.strip() and "Warning" not in line and "warn(" not in line]


@pytest.mark.parametrize(
    "number, status, last",
    [
        pytest.param(signal.SIGINT, 130, "interrupted", id="ctrl-c"),
        pytest.param(signal.SIGTERM, 143, "terminated", id="sigterm"),
    ],
)
def test_train_clip_stopped_by_a_signal_prints_one_line_and_frees_its_folder(tmp_path, number, status, last) -> None:
    config = _train_clip_yaml(tmp_path, steps=100_000)
    command = [sys.executable, "-m", "clipcond.cli", "train-clip", "--config", str(config), "--no-progress"]
    code, err, _ = _signal_after_checkpoint(command, tmp_path / "run", number, group=number == signal.SIGINT)
    assert code == status and "Traceback" not in err and _lines(err)[-1:] == [last], err[-3000:]
    assert not (tmp_path / "run" / "run.lock").exists()


def _experiment_yaml(folder: Path) -> Path:
    """An experiment whose one prepare step is a train-clip that runs until stopped."""
    train = _train_clip_yaml(folder, steps=100_000)
    step = {
        "command": "train-clip",
        "creates": str(folder / "run" / "model"),
        "args": ["--config", str(train), "--output-dir", str(folder / "run"), "--no-progress"],
    }
    experiment = {
        "name": "interrupted",
        "suites": [str(REPO / "configs" / "suites" / "single.yaml")],
        "setups": [{"name": "clip", "pipeline": str(folder / "run" / "model"), "prepare": [step]}],
        "seeds": [0],
        "steps": 2,
        "output_dir": str(folder / "lab"),
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def test_ctrl_c_during_a_prepare_step_is_one_line_130_and_stops_the_step(tmp_path) -> None:
    command = [sys.executable, "-m", "clipcond.cli", "experiment", str(_experiment_yaml(tmp_path)), "--no-progress"]
    code, err, children = _signal_after_checkpoint(command, tmp_path / "run", signal.SIGINT, group=True)
    assert children, "the prepare step ran in no child process"
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert _lines(err)[-1] == "interrupted during the prepare steps; re-run to resume them", err[-3000:]
    assert not _running(children)
    assert not (tmp_path / "run" / "run.lock").exists()


# 14 s of subprocesses: the prepare step's stop stays in the default run through the Ctrl-C test above,
# a SIGTERM's one line through train-clip's
@pytest.mark.slow
def test_sigterm_to_the_lab_alone_stops_its_prepare_step(tmp_path) -> None:
    """``kill PID`` or ``timeout`` signal the experiment process only: its step must not run on
    as an orphan that holds the run lock (and the caller's stderr pipe)."""
    command = [sys.executable, "-m", "clipcond.cli", "experiment", str(_experiment_yaml(tmp_path)), "--no-progress"]
    code, err, children = _signal_after_checkpoint(command, tmp_path / "run", signal.SIGTERM, group=False)
    assert children, "the prepare step ran in no child process"
    assert not _running(children)
    assert code == 143 and "Traceback" not in err, err[-3000:]
    assert _lines(err)[-2:] == ["terminated", "terminated during the prepare steps; re-run to resume them"], err[-3000:]
    assert not (tmp_path / "run" / "run.lock").exists()


# ------------------------------------------------------------------ a write killed before its rename

_KILLED_WRITER = """
import os, signal, sys, time
from clipcond import output_paths
def stop(*args):  # the moment between write and rename
    print("written", flush=True)
    time.sleep(60) if sys.argv[2] == "wait" else os.kill(os.getpid(), signal.SIGKILL)
output_paths.os.replace = stop
output_paths.write_atomically(sys.argv[1], b"half-done")
"""


def _writer(path: Path, mode: str) -> subprocess.Popen:
    """A process that runs `write_atomically(path)` and, written but not yet renamed, is killed
    (`mode` "kill") or waits there (`mode` "wait")."""
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), mode], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert process.stdout.readline() == "written\n"
    return process


def test_the_next_write_removes_the_temporary_file_a_killed_writer_left_not_a_live_ones(tmp_path) -> None:
    from clipcond.output_paths import write_atomically

    killed = _writer(tmp_path / "out.png", "kill")
    killed.wait()
    left = [path.name for path in tmp_path.iterdir()]
    assert killed.returncode == -signal.SIGKILL and len(left) == 1 and left[0].startswith(".out.png."), left
    waiting = _writer(tmp_path / "out.png", "wait")
    try:
        live = {path.name for path in tmp_path.iterdir()} - set(left)
        (tmp_path / left[0].replace(".out.png.", ".other.png.")).write_bytes(b"another file's")
        write_atomically(tmp_path / "out.png", b"whole")
        assert (tmp_path / "out.png").read_bytes() == b"whole"
        after = {path.name for path in tmp_path.iterdir()}
        assert after == {"out.png", *live, left[0].replace(".out.png.", ".other.png.")}, after
    finally:
        waiting.kill()
        waiting.wait()
