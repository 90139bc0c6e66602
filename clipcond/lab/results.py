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
flight; a torn last line is skipped (and counted) when the file is read. So is a line edited by
hand or damaged into something the runner never writes (`line_problem`: a field missing or of
another type, a metric that is not true/false or a finite number, an `image` that is not
``images/<setup>/<suite>/<index>-<seed>.png``); a run drops it and draws its image again.
A run does the same for a line whose PNG is missing or does not read back (`image_problem`: a
file cut short by an interrupted copy, or overwritten), and ``--report-only`` names that PNG.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from clipcond.output_paths import write_atomically

RESULTS_NAME = "results.jsonl"

# the fields every line has, and their types (bool is an int in Python: refused for index and seed)
_FIELDS: dict[str, type] = {
    "key": str,
    "setup": str,
    "suite": str,
    "index": int,
    "category": str,
    "prompt": str,
    "seed": int,
    "image": str,
}
# the judge's values that are pass/fail (`clipcond.lab.metrics.JUDGE_VALUES`); objects_found and
# clip_score are numbers
_PASS_FAIL = ("objects", "colour", "shape", "count", "relation", "exact")


def image_path(setup: str, suite: str, index: int, seed: int) -> str:
    """Where the runner saves the image of (setup, suite entry, seed), relative to the run folder."""
    return f"images/{setup}/{suite}/{index}-{seed}.png"


def line_problem(line: Any) -> str | None:
    """What makes `line` something the runner never writes, or None for a well-formed line."""
    if not isinstance(line, dict):
        return "not a JSON object"
    for name, kind in _FIELDS.items():
        value = line.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name!r} is missing or not {'a string' if kind is str else 'an integer'}"
    metrics = line.get("metrics")
    if not isinstance(metrics, dict):
        return "'metrics' is missing or not an object"
    for name, value in metrics.items():
        if name in _PASS_FAIL and not isinstance(value, bool):
            return f"metric {name!r} is {json.dumps(value)}, not true or false"
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if name not in _PASS_FAIL and not number:
            return f"metric {name!r} is {json.dumps(value)}, not a finite number"
    if not isinstance(line.get("clip_truncated", False), bool):
        return "'clip_truncated' is not true or false"
    expected = image_path(line["setup"], line["suite"], line["index"], line["seed"])
    if line["image"] != expected:
        return f"'image' is {line['image']!r}, not {expected!r}"
    return None


def image_problem(path: Path) -> str | None:
    """Why the PNG at `path` cannot be read back (missing, cut short, not a PNG, a chunk whose
    checksum fails), or None when it opens and its chunks check out (`PIL.Image.verify`: reads
    the file once, decodes no pixels)."""
    if not path.is_file():
        return "is missing"
    try:
        with Image.open(path) as image:
            image.verify()
    except UnidentifiedImageError:  # its message repeats the path
        return "cannot be read as a PNG (not an image file PIL knows)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL raises OSError for a cut file, SyntaxError for a failed checksum; one raised
        # without words is named by its type (str() of a bare SyntaxError is "None")
        words = " ".join(str(error).split()) if error.args else ""
        return f"cannot be read as a PNG ({words or type(error).__name__})"
    return None


def read_results(path: str | Path, strict: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The lines of a results file, and how many lines could not be read (torn, not JSON, not
    UTF-8, nested past the recursion limit, or not a line the runner writes: `line_problem`);
    each line is read on its own, so one bad byte costs its line only.

    A missing file reads as no lines.

    Args:
        strict: raise instead of counting a line that reads as a JSON object but is not a
            well-formed result, or whose image is missing or does not read as a PNG
            (`image_problem`: edited or damaged by hand or by a cut copy, not torn by a kill).

    Raises:
        ValueError: with `strict`, naming the file, the line's number and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    lines, unreadable = [], 0
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)  # bytes: decoded as UTF-8 (UnicodeDecodeError is a ValueError)
        except (ValueError, RecursionError):
            unreadable += 1
            continue
        problem = line_problem(line)
        if strict and problem is None:
            image = image_problem(path.parent / line["image"])
            problem = None if image is None else f"its image {path.parent / line['image']} {image}"
        if problem is None:
            lines.append(line)
            continue
        if strict and isinstance(line, dict):
            raise ValueError(f"{path}, line {number}: {problem}; re-run the experiment to draw that image again")
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


__all__ = [
    "RESULTS_NAME",
    "append_results",
    "image_path",
    "image_problem",
    "line_problem",
    "read_results",
    "rewrite_results",
    "write_json_atomic",
]


def save_image(image: Any, output: str | Path, name: str) -> None:
    """Write the PIL image `image` as the PNG `name` (`image_path`) of the run folder `output`,
    atomically, its folders made below `output` only: a run folder removed while the run went on
    is not made again (`FileNotFoundError`, naming it), so no images pile up there without the
    run's record.
    """
    output = Path(output)
    if not output.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the experiment's folder was removed while it ran", str(output))
    path = output / name
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    write_atomically(path, encoded.getvalue(), remove_leftovers=False)  # one of many images: no folder listing
