"""Parsing a large JSON document (a tokenizer's 1-4 MB `tokenizer.json`) without paying for
Python's cyclic garbage collector.

A CLIP `tokenizer.json` holds 48,894 merges, written as two-element lists: parsing it makes
about 49,000 container objects, which the collector counts. In a process that has loaded torch,
transformers and diffusers (about 500,000 tracked objects), a few such parses set off a full
collection of every object: measured on this project's 2-core machine, ten parses of CLIP's
`tokenizer.json` took 1.0 s with the collector on and 0.24 s with it paused (one full
collection, about 0.25 s, every third parse). The parsed objects hold no reference cycles and
are freed by reference counting, so pausing the collector while they live loses nothing.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["read_json_with_collector_paused"]

Result = TypeVar("Result")


def read_json_with_collector_paused(text: str | bytes, use: Callable[[Any], Result]) -> Result:
    """`use(json.loads(text))`, with the cyclic garbage collector paused from the parse until
    `use` returns (restored to what it was before, also when either raises). `use` must keep
    nothing of the parsed value: it is freed before the collector runs again.

    Raises:
        json.JSONDecodeError, UnicodeDecodeError: as `json.loads` raises them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return use(json.loads(text))
    finally:
        if was_enabled:
            gc.enable()
