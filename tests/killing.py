"""Run a training command in a subprocess and SIGKILL it once a checkpoint has been written."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_checkpoint(
    command: list[str], run_dir: Path, at_least: int, env: dict | None = None, rank: int | None = None
) -> str:
    """Start `command`, wait until ``run_dir/checkpoints/latest`` names step >= `at_least`, then
    SIGKILL it. Returns the checkpoint name it was killed at; fails if the run ended first.

    With `rank`, `command` is a launcher (``accelerate launch``) and only its worker process of
    that rank (the one whose ``RANK`` is `rank`) is killed; the launcher must then fail."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run_dir / "checkpoints" / "latest"
    wanted = f"step-{at_least:09d}"
    killed_at, deadline = None, time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= wanted:
            os.kill(process.pid if rank is None else _worker_of_rank(process.pid, rank), signal.SIGKILL)
            killed_at = latest.read_text().strip()
            break
        time.sleep(0.01)
    process.wait()
    assert killed_at is not None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    if rank is None:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode != 0, "the launch went on after one of its ranks was killed"
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
