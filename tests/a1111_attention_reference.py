"""A reference for A1111's attention syntax, written from its documented rules (not its code).

AUTOMATIC1111's `parse_prompt_attention` (``modules/prompt_parser.py``) reads a prompt token by
token, in this order of preference:

1. a backslash before ``( ) [ ] \\`` is that character as text; any other backslash is an empty
   text;
2. ``(`` and ``[`` open a bracket of their kind (the position in the result list is remembered);
3. ``:`` + spaces + a run of digits and dots with an optional sign + spaces + ``)`` is an explicit
   weight: with a round bracket open, every result entry since that bracket is multiplied by
   the number (a run that is no number raises); with none open, the whole token is text;
4. ``)`` / ``]`` multiply every entry since the innermost open bracket of their kind by 1.1 /
   (1 / 1.1), or are text when none is open;
5. a run of anything else but ``: \\ ( ) [ ]`` is text, split at ``BREAK`` (a whole word, the
   whitespace around it inside the run dropped) with a break marker between the parts;
6. a lone ``:`` is text.

At the end, round brackets still open multiply everything since them by 1.1 (outermost
first), then open square brackets by 1 / 1.1. Adjacent entries of equal weight merge.

Where clipcond differs on purpose, this reference follows clipcond's documented choices so the
comparison tests everything else: a break marker here is an object of its own that brackets
do not multiply (A1111 marks breaks with the weight -1, which brackets do multiply), and a
final weight beyond +-`MAX_WEIGHT` is clamped (A1111 keeps it, up to inf).
"""

from __future__ import annotations

import re

BREAK = object()
MAX_WEIGHT = 1e4
_SPECIAL = set("\\()[]:")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*")


class RaisesInA1111(ValueError):
    """The prompt makes A1111's parser raise (an explicit weight that is no number)."""


def _weight_token(text: str, start: int) -> tuple[str, int] | None:
    """(number, end) of an explicit weight token starting at the ':' at `start`, else None."""
    position = start + 1
    while position < len(text) and text[position].isspace():
        position += 1
    number_start = position
    if position < len(text) and text[position] in "+-":
        position += 1
    digits_start = position
    while position < len(text) and (text[position] == "." or text[position].isdecimal()):
        position += 1
    if position == digits_start:
        return None
    number = text[number_start:position]
    while position < len(text) and text[position].isspace():
        position += 1
    if position < len(text) and text[position] == ")":
        return number, position + 1
    return None


def parse_attention(text: str) -> list:
    """A1111's entries for `text`: [text, weight] lists and `BREAK` markers, merged as A1111
    merges (adjacent equal weights, empty texts included).

    Raises:
        RaisesInA1111: where A1111's parser raises.
    """
    result: list = []
    rounds: list[int] = []
    squares: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for entry in result[start:]:
            if entry is not BREAK:
                entry[1] *= factor

    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            if position + 1 < len(text) and text[position + 1] in "()[]\\":
                result.append([text[position + 1], 1.0])
                position += 2
            else:
                result.append(["", 1.0])
                position += 1
            continue
        if char == "(":
            rounds.append(len(result))
        elif char == "[":
            squares.append(len(result))
        elif char == ":":
            token = _weight_token(text, position)
            if token is None:
                result.append([":", 1.0])
            else:
                number, end = token
                if rounds:
                    try:
                        factor = float(number)
                    except ValueError as error:
                        raise RaisesInA1111(number) from error
                    multiply(rounds.pop(), factor)
                else:
                    result.append([text[position:end], 1.0])
                position = end
                continue
        elif char == ")" and rounds:
            multiply(rounds.pop(), 1.1)
        elif char == "]" and squares:
            multiply(squares.pop(), 1 / 1.1)
        elif char in ")]":
            result.append([char, 1.0])
        else:
            end = position
            while end < len(text) and text[end] not in _SPECIAL:
                end += 1
            for index, part in enumerate(_BREAK_SPLIT.split(text[position:end])):
                if index:
                    result.append(BREAK)
                result.append([part, 1.0])
            position = end
            continue
        position += 1
    for start in rounds:
        multiply(start, 1.1)
    for start in squares:
        multiply(start, 1 / 1.1)
    for entry in result:
        if entry is not BREAK:
            entry[1] = min(max(entry[1], -MAX_WEIGHT), MAX_WEIGHT)
    merged: list = []
    for entry in result:
        if merged and entry is not BREAK and merged[-1] is not BREAK and merged[-1][1] == entry[1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return merged or [["", 1.0]]
