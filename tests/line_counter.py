"""Counting the Python lines a function runs inside one module: a measure of work that, unlike
a clock, is the same on every machine (the linear-time tests of the parsers use it)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def lines_executed(module_file: str, function: Callable[..., Any], *args: Any) -> int:
    """Lines run in files whose name ends with `module_file` while `function(*args)` runs."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename.endswith(module_file):
            if event == "line":
                count += 1
            return tracer
        return None

    sys.settrace(tracer)
    try:
        function(*args)
    finally:
        sys.settrace(None)
    return count
