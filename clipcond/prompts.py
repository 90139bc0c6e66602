"""Prompt weighting syntax -> weighted fragments.

The syntax of AUTOMATIC1111's web UI (``parse_prompt_attention`` in its
``modules/prompt_parser.py``); compel's own syntax (``word+``, ``(word)1.3``) is not read:

    a (red) cat         "red" x 1.1                 ((red)) -> x 1.21
    a [red] cat         "red" / 1.1                 [[red]] -> / 1.21
    a (red:1.3) cat     "red" x 1.3                 (red: .5 ) -> x 0.5
    ((a:1.5) b)         "a" x 1.65, " b" x 1.1      nesting multiplies
    [(red)]             "red" x 1.0                 1.1 / 1.1
    \\( \\) \\[ \\] \\\\      a literal ( ) [ ] \\, never syntax
    a cat BREAK a dog   "a cat", a break marker, "a dog"

Rules, in A1111's words where A1111 has them:

- An explicit weight is ``:`` + a number + ``)``, with optional spaces around the number. It
  closes the innermost open round bracket. The number may have a sign, a fraction and an
  exponent (``2``, ``.5``, ``1.``, ``1e-1``); one that is not finite and > 0 (``-1``, ``0``,
  ``1e999``) is not a weight: its text stays in the prompt and the brackets act as ``( )``.
- Square brackets only divide by 1.1: ``[word:1.5]`` is A1111's prompt editing, not a weight,
  so it reads as the text "word:1.5" at 1 / 1.1.
- Round and square brackets are matched separately, as in A1111: ``(a [b) c]`` gives
  a x 1.1, b x 1.1 / 1.1, c / 1.1.
- A bracket never closed weights the rest of the prompt; a ``)`` or ``]`` with no open bracket
  of its kind is plain text.
- A backslash before anything but ``( ) [ ] \\`` is kept as text (A1111 drops it).
- ``BREAK``, in upper case and not part of a longer word (the neighbours are not letters,
  digits or ``_``), ends the current CLIP window. The whitespace on both sides of it is
  dropped. A break inside brackets is still a break.
- Every weight is clamped into [`MIN_WEIGHT`, `MAX_WEIGHT`], so it is finite and > 0 however
  deep the nesting or large the numbers.
- Adjacent fragments of equal weight are merged; fragments with no text are dropped.

`parse_prompt` never raises on a string. A prompt with none of ``( ) [ ] \\ :`` and no
``BREAK`` comes back as one fragment holding the text unchanged at weight 1.0, so plain
prompts tokenize exactly like the raw string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
MIN_WEIGHT = 1e-4
MAX_WEIGHT = 1e4

_ESCAPABLE = "()[]\\"
_SYNTAX_CHARS = "()[]\\:"
_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*\)")
# `match(text, position)` sees the character before `position`, so \b checks the raw neighbour.
_BREAK_WORD = re.compile(r"\bBREAK\b")


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one weight, or a BREAK marker.

    Attributes:
        text: the text, escapes resolved ("" for a break marker).
        weight: finite and > 0; 1.0 means unweighted (always 1.0 for a break marker).
        is_break: True for a ``BREAK`` marker: the text after it starts a new CLIP window.
    """

    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK_MARKER = Fragment("", 1.0, is_break=True)


class _Run:
    """A mutable piece of text while parsing: brackets multiply `weight` when they close."""

    __slots__ = ("text", "weight")

    def __init__(self, text: str) -> None:
        self.text = text
        self.weight = 1.0


def _explicit_weight(text: str, position: int) -> tuple[float, int] | None:
    """The weight spec starting at the ``:`` at `position`: (weight, end), or None if invalid."""
    match = _EXPLICIT_WEIGHT.match(text, position)
    if match is None:
        return None
    weight = float(match.group(1))
    # `weight == weight` is False for nan; `< inf` rules out overflowed numbers like 1e999.
    if not (0.0 < weight < float("inf")):
        return None
    return weight, match.end()


def parse_prompt(text: str) -> list[Fragment]:
    """Parse the weighting syntax of `text` (see the module docstring); never raises on a string.

    Args:
        text: one prompt.

    Returns:
        At least one fragment: ``[Fragment("", 1.0)]`` when no text is left (e.g. for "").
        Text fragments are non-empty with weights in [`MIN_WEIGHT`, `MAX_WEIGHT`]; BREAK
        markers are ``Fragment("", 1.0, is_break=True)``.

    Raises:
        TypeError: `text` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}: {text!r:.80}")
    if not any(char in _SYNTAX_CHARS for char in text) and "BREAK" not in text:
        return [Fragment(text, 1.0)]

    runs: list[_Run | None] = []  # None is a BREAK marker.
    round_open: list[int] = []  # index into `runs` where each open "(" started
    square_open: list[int] = []  # the same for "["
    pending: list[str] = []  # characters of the run being read

    def end_run() -> None:
        if pending:  # so every run has text
            runs.append(_Run("".join(pending)))
            pending.clear()

    def multiply_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            if run is not None:
                run.weight *= factor

    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text) and text[position + 1] in _ESCAPABLE:
            pending.append(text[position + 1])
            position += 2
            continue
        if char == "(":
            end_run()
            round_open.append(len(runs))
        elif char == "[":
            end_run()
            square_open.append(len(runs))
        elif char == ")" and round_open:
            end_run()
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif char == "]" and square_open:
            end_run()
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        elif char == ":" and round_open and (spec := _explicit_weight(text, position)):
            end_run()
            weight, position = spec
            multiply_from(round_open.pop(), weight)
            continue
        elif char == "B" and _BREAK_WORD.match(text, position):
            while pending and pending[-1].isspace():
                pending.pop()
            end_run()
            runs.append(None)
            position += len("BREAK")
            while position < len(text) and text[position].isspace():
                position += 1
            continue
        else:
            pending.append(char)
        position += 1
    end_run()
    # Brackets left open weight everything after them (A1111 does the same).
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    fragments: list[Fragment] = []
    for run in runs:
        if run is None:
            fragments.append(BREAK_MARKER)
            continue
        # A product of finite positive factors overflows to inf or underflows to 0.0 but is
        # never nan, so clamping is enough to keep it finite and positive.
        weight = min(max(run.weight, MIN_WEIGHT), MAX_WEIGHT)
        previous = fragments[-1] if fragments else None
        if previous is not None and not previous.is_break and previous.weight == weight:
            fragments[-1] = Fragment(previous.text + run.text, weight)
        else:
            fragments.append(Fragment(run.text, weight))
    return fragments or [Fragment("", 1.0)]


def has_weights(fragments: Iterable[Fragment]) -> bool:
    """True when any fragment has a weight other than 1.0 or is a BREAK marker.

    False means the prompt encodes exactly like its plain text (`prompt_text`).
    """
    return any(fragment.is_break or fragment.weight != 1.0 for fragment in fragments)


def prompt_text(fragments: Iterable[Fragment]) -> str:
    """The plain text of `fragments`: texts concatenated, each BREAK marker as one space."""
    return "".join(" " if fragment.is_break else fragment.text for fragment in fragments)
