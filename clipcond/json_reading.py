"""Parsing a large JSON document (a tokenizer's 1-4 MB `tokenizer.json`) without paying for
Python's cyclic garbage collector.

A CLIP `tokenizer.json` holds 48,894 merges, written as two-element lists: parsing it makes
about 49,000 container objects, which the collector counts. In a process that has loaded torch,
transformers and diffusers (about 500,000 tracked objects), a few such parses set off a full
collection of every object: measured on this project's 2-core machine, ten parses of CLIP's
`tokenizer.json` took 1.0 s with the collector on and 0.24 s with it paused (one full
collection, about 0.25 s, every third parse). The parsed objects hold no reference cycles and
are freed by reference counting, so pausing the collector while they live loses nothing.

transformers' own tokenizer loading parses the same files (`tokenizer.json`, `vocab.json`) with
the collector on: `collector_paused()` is for wrapping such a load. Measured on this project's
2-core machine in a process holding torch, transformers and diffusers (465,000 tracked
objects), `AutoTokenizer.from_pretrained` of a saved CLIP tokenizer took 0.52 s with the
collector on and 0.21 s paused (mean of 8); diffusers' `StableDiffusionPipeline.from_pretrained`
of a tiny saved SD folder took 0.46-0.60 s in 3 of 8 loads with the collector on (full
collections) and 0.22-0.27 s in the others; paused, 0.18-0.33 s: mean 0.35 s against 0.23 s
(alternating loads in one process). So `clipcond.tokenization.load_saved_tokenizer` loads a
tokenizer paused, and `CLIPConditionedPipeline.from_pretrained` runs diffusers' load paused.
Anything cyclic made meanwhile is collected at the next collection after it.

`json_object_in` reads a small settings file (a tokenizer's or scheduler's config) as an object,
{} where there is none to read.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["collector_paused", "json_object_in", "read_json_with_collector_paused"]

Result = TypeVar("Result")


def read_json_with_collector_paused(text: str | bytes, use: Callable[[Any], Result]) -> Result:
    """`use(json.loads(text))`, with the cyclic garbage collector paused from the parse until
    `use` returns (restored to what it was before, also when either raises). `use` must keep
    nothing of the parsed value: it is freed before the collector runs again.

    Raises:
        json.JSONDecodeError, UnicodeDecodeError: as `json.loads` raises them.
    """
    with collector_paused():
        return use(json.loads(text))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Inside the block the cyclic garbage collector does not run; after it (also when the
    block raises) it is enabled again if it was enabled before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def json_object_in(path: Path) -> dict[str, Any]:
    """The JSON object in the file `path`; {} when it is missing, unreadable, no UTF-8 JSON or
    holds anything else (for reading a setting where its absence has a meaning; the loaders
    name a damaged file themselves)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
