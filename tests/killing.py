"""Run a command in a subprocess and SIGKILL it midway: once a training run has written a
checkpoint (`kill_after_checkpoint`), or once any condition on its output holds (`kill_when`).
Under a launcher (``accelerate launch``) one rank's worker can be killed instead of the launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_when(
    command: list[str], ready: Callable[[], str | None], env: dict | None = None, rank: int | None = None
) -> str:
    """Start `command`, poll `ready()` until it returns a description of the state reached (not
    None), then SIGKILL it (with `rank`: only its worker process of that rank, after which the
    launcher must fail). Returns that description; fails if the command ended first."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reached, deadline = None, time.time() + 120
    while time.time() < deadline and process.poll() is None:
        reached = ready()
        if reached is not None:
            os.kill(process.pid if rank is None else _worker_of_rank(process.pid, rank), signal.SIGKILL)
            break
        time.sleep(0.01)
    if reached is None and process.poll() is None:  # too slow (a loaded machine), not finished: stop it
        process.send_signal(signal.SIGKILL)
        process.wait()
        raise AssertionError("the command did not reach the state to kill it at within 120 s")
    process.wait()
    assert reached is not None, f"the command ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    if rank is None:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode != 0, "the launch went on after one of its ranks was killed"
    return reached


def kill_after_checkpoint(
    command: list[str], run_dir: Path, at_least: int, env: dict | None = None, rank: int | None = None
) -> str:
    """Start `command`, wait until ``run_dir/checkpoints/latest`` names step >= `at_least`, then
    SIGKILL it (or, with `rank`, its worker of that rank: see `kill_when`). Returns the checkpoint
    name it was killed at; fails if the run ended first."""
    latest = run_dir / "checkpoints" / "latest"
    wanted = f"step-{at_least:09d}"

    def checkpoint_reached() -> str | None:
        if latest.is_file() and latest.read_text().strip() >= wanted:
            return latest.read_text().strip()
        return None

    killed_at = kill_when(command, checkpoint_reached, env, rank)
    assert not (run_dir / "model").exists() and not (run_dir / "pipeline").exists()
    return killed_at


def _worker_of_rank(launcher: int, rank: int) -> int:
    """The process id of the descendant of `launcher` whose environment says ``RANK=rank``."""
    import psutil

    for child in psutil.Process(launcher).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child.pid
        except psutil.Error:  # a helper process that ended meanwhile
            continue
    raise AssertionError(f"no process of rank {rank} under the launcher {launcher}")
