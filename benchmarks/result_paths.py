"""Where the benchmark scripts write: under runs/ (git-ignored) unless the user names a path.

A recorded result in benchmarks/results/ (tracked) is only ever replaced when its path is
given explicitly, e.g. `--output benchmarks/results/clip_step.md`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "benchmarks"


def default_output(name: str) -> Path:
    """The default path of a benchmark's output file `name`: runs/benchmarks/<name>."""
    return RUNS / name


def add_output_argument(parser: argparse.ArgumentParser, name: str, kind: str = "report") -> None:
    """A benchmark's `--output`: the markdown `kind` ("report" or "table") it writes, by default
    runs/benchmarks/<name>; giving benchmarks/results/<name> updates the recorded result."""
    parser.add_argument(
        "--output",
        type=Path,
        default=default_output(name),
        help=f"the markdown {kind} (default: runs/benchmarks/{name}; give benchmarks/results/{name} to update the "
        "recorded result)",
    )


def run_line(script: str, command: str) -> str:
    """The opening of a result's run line: when (UTC), on what machine (processor, cores, load
    average now, Python) and the command (`script` with `command`, its arguments)."""
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}. Command: `python benchmarks/{script} {command}`."
    )


def write_result(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` (parent folders created), through a temporary file renamed into
    place, so an interrupted run never leaves a half-written result. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


def publish(path: str | os.PathLike[str], lines: list[str]) -> Path:
    """Print a result's markdown `lines` and write them to `path` (`write_result`), saying where."""
    text = "\n".join(lines) + "\n"
    print(text)
    written = write_result(path, text)
    print(f"wrote {written}")
    return written


def ratio_table(
    rows: list[tuple[str, float, float, str]], peer: str = "reference", digits: int = 3, ratio_digits: int = 3
) -> list[str]:
    """The markdown lines of a table of timed sides: one row per (measurement, our seconds, the
    peer's seconds, goal), with their ratio; `peer` names the second column."""
    lines = [f"| measurement | ours (s) | {peer} (s) | ratio | goal |", "|---|---:|---:|---:|---|"]
    for name, ours, theirs, goal in rows:
        lines.append(
            f"| {name} | {ours:.{digits}f} | {theirs:.{digits}f} | {ours / theirs:.{ratio_digits}f} | {goal} |"
        )
    return lines
