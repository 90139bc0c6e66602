"""Quoting a value in an error message: its repr, bounded.

Errors quote a value through `quoted`, at most about `QUOTE_LIMIT` characters of it: a few
hundred bytes of YAML aliases ("billion laughs") expand to a value whose full repr is gigabytes,
and a path may be megabytes.
"""

from __future__ import annotations

import reprlib
from typing import Any

QUOTE_LIMIT = 200


def _short_repr() -> reprlib.Repr:
    # reprlib stops at these counts and depths, so the quote is built from a bounded part of
    # the value: a nested list is cut to 8 items per level, 3 levels deep.
    short = reprlib.Repr()
    short.maxlevel = 3
    short.maxtuple = short.maxlist = short.maxarray = short.maxdict = 8
    short.maxset = short.maxfrozenset = short.maxdeque = 8
    short.maxstring = short.maxlong = short.maxother = QUOTE_LIMIT
    return short


_SHORT_REPR = _short_repr()


def quoted(value: Any) -> str:
    """`repr(value)` of at most `QUOTE_LIMIT` characters (then "..."), without ever building the
    whole repr."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "..."


__all__ = ["QUOTE_LIMIT", "quoted"]
