"""Prompt weighting syntax -> weighted fragments.

The syntax users know from AUTOMATIC1111's web UI (and compel):

    (word)          weight x 1.1            ((word)) -> 1.21
    [word]          weight / 1.1            [[word]] -> 1 / 1.21
    (word:1.3)      weight x 1.3            ((a:1.5) b) -> a: 1.65, b: 1.1
    \\( \\) \\[ \\] \\\\  a literal bracket or backslash
    BREAK           (upper case, standing alone) ends the current CLIP window

Nesting multiplies. An opening bracket that is never closed weights the rest of the prompt
(as in A1111); a closing bracket with no opening one is plain text. An explicit weight that is
not a finite number > 0 (``(a:-1)``, ``(a:0)``, ``(a:inf)``) is plain text, and the brackets
around it act as ``( )``. Every weight is clamped into [`MIN_WEIGHT`, `MAX_WEIGHT`], so it is
always finite and positive. `parse_prompt` never raises.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
MIN_WEIGHT = 1e-4
MAX_WEIGHT = 1e4

_ESCAPABLE = "()[]\\"
_SPECIAL = "()[]\\:"
_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one weight.

    Attributes:
        text: the text, with escapes resolved.
        weight: finite, > 0; 1.0 means unweighted.
        is_break: True for a ``BREAK`` marker (then `text` is "" and `weight` is 1.0).
    """

    text: str
    weight: float = 1.0
    is_break: bool = False


def _split_breaks(text: str) -> list[Fragment | None]:
    """Plain text -> fragments, with None standing for a BREAK marker."""
    if "BREAK" not in text:
        return [Fragment(text, 1.0)]
    pieces: list[Fragment | None] = []
    for index, part in enumerate(_BREAK.split(text)):
        if index:
            pieces.append(None)
        if part:
            pieces.append(Fragment(part, 1.0))
    return pieces


def parse_prompt(text: str) -> list[Fragment]:
    """Parse `text` into weighted fragments; never raises on a string.

    Returns:
        At least one fragment. A prompt with no syntax comes back as one fragment holding the
        text unchanged at weight 1.0 ("" gives ``[Fragment("", 1.0)]``). Adjacent fragments of
        equal weight are merged; BREAK markers are fragments with ``is_break=True``.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}")
    if not any(char in _SPECIAL for char in text) and "BREAK" not in text:
        return [Fragment(text, 1.0)]

    # Working list of [text, weight] pairs; None marks a BREAK.
    pieces: list[list | None] = []
    # Open brackets: (index into pieces where they started, kind).
    open_brackets: list[tuple[int, str]] = []
    plain: list[str] = []

    def flush() -> None:
        if plain:
            for fragment in _split_breaks("".join(plain)):
                pieces.append(None if fragment is None else [fragment.text, 1.0])
            plain.clear()

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece is not None:
                piece[1] *= factor

    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text) and text[position + 1] in _ESCAPABLE:
            plain.append(text[position + 1])
            position += 2
            continue
        if char in "([":
            flush()
            open_brackets.append((len(pieces), char))
        elif char == ":" and open_brackets and open_brackets[-1][1] == "(":
            match = _EXPLICIT_WEIGHT.match(text, position)
            weight = float(match.group(1)) if match else math.nan
            if match and math.isfinite(weight) and weight > 0:
                flush()
                start, _ = open_brackets.pop()
                multiply(start, weight)
                position = match.end()
                continue
            plain.append(char)
        elif char == ")" and open_brackets and open_brackets[-1][1] == "(":
            flush()
            multiply(open_brackets.pop()[0], ROUND_MULTIPLIER)
        elif char == "]" and open_brackets and open_brackets[-1][1] == "[":
            flush()
            multiply(open_brackets.pop()[0], SQUARE_MULTIPLIER)
        else:
            plain.append(char)
        position += 1
    flush()
    # Brackets left open weight everything after them, as in A1111.
    for start, kind in reversed(open_brackets):
        multiply(start, ROUND_MULTIPLIER if kind == "(" else SQUARE_MULTIPLIER)

    fragments: list[Fragment] = []
    for piece in pieces:
        if piece is None:
            fragments.append(Fragment("", 1.0, is_break=True))
            continue
        piece_text, weight = piece
        if not piece_text:
            continue
        weight = min(max(weight, MIN_WEIGHT), MAX_WEIGHT) if math.isfinite(weight) else MAX_WEIGHT
        last = fragments[-1] if fragments else None
        if last is not None and not last.is_break and last.weight == weight:
            fragments[-1] = Fragment(last.text + piece_text, weight)
        else:
            fragments.append(Fragment(piece_text, weight))
    return fragments or [Fragment("", 1.0)]


def has_weights(fragments: list[Fragment]) -> bool:
    """True when any fragment has a weight other than 1.0 or is a BREAK."""
    return any(fragment.is_break or fragment.weight != 1.0 for fragment in fragments)


def prompt_text(fragments: list[Fragment]) -> str:
    """The plain text of `fragments`, with each BREAK as one space."""
    return "".join(" " if fragment.is_break else fragment.text for fragment in fragments)
