"""Run a training command in a subprocess and SIGKILL it once a checkpoint has been written."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def kill_after_checkpoint(command: list[str], run_dir: Path, at_least: int, env: dict | None = None) -> str:
    """Start `command`, wait until ``run_dir/checkpoints/latest`` names step >= `at_least`, then
    SIGKILL it. Returns the checkpoint name it was killed at; fails if the run ended first."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run_dir / "checkpoints" / "latest"
    wanted = f"step-{at_least:09d}"
    killed_at, deadline = None, time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= wanted:
            process.send_signal(signal.SIGKILL)
            killed_at = latest.read_text().strip()
            break
        time.sleep(0.01)
    process.wait()
    assert killed_at is not None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "model").exists() and not (run_dir / "pipeline").exists()
    return killed_at
