"""The results file of an experiment: one JSON object per generated image, one per line.

A line (``results.jsonl``)::

    {"key": "3f2a...", "setup": "bundled", "suite": "binding", "index": 4, "category": "binding",
     "prompt": "a red circle and a blue square", "seed": 1, "image": "images/bundled/binding/4-1.png",
     "metrics": {"objects_found": 1.0, "objects": true, "colour": true, "shape": true, "count": true,
                 "exact": true, "clip_score": 0.31},
     "clip_truncated": false}

`key` identifies everything the line's values depend on (see `clipcond.lab.runner`); `image`
is relative to the run folder; `clip_truncated` is present when CLIP score was measured.
Lines are appended and flushed batch by batch, so a killed run loses at most the batch in
flight; a torn last line is skipped (and counted) when the file is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipcond.output_paths import write_atomically

RESULTS_NAME = "results.jsonl"


def read_results(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The lines of a results file, and how many lines could not be read (torn, not JSON, not
    UTF-8, or nested past the recursion limit); each line is read on its own, so one bad byte
    costs its line only.

    A missing file reads as no lines.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    lines, unreadable = [], 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)  # bytes: decoded as UTF-8 (UnicodeDecodeError is a ValueError)
        except (ValueError, RecursionError):
            unreadable += 1
            continue
        if isinstance(line, dict) and "key" in line and isinstance(line.get("metrics"), dict):
            lines.append(line)
        else:
            unreadable += 1
    return lines, unreadable


def append_results(path: str | Path, lines: Iterable[dict[str, Any]]) -> None:
    """Append lines to a results file and flush them to disk."""
    with open(path, "a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def rewrite_results(path: str | Path, lines: Iterable[dict[str, Any]]) -> None:
    """Replace a results file by `lines`, atomically (a temporary file renamed over it)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    write_atomically(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


__all__ = ["RESULTS_NAME", "append_results", "read_results", "rewrite_results", "write_json_atomic"]
