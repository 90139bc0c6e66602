"""ComfyUI's prompt weighting syntax -> weighted fragments, in linear time.

ComfyUI's CLIP text encode node (``comfy/sd1_clip.py``: ``token_weights`` over
``parse_parentheses``) reads:

    a (red fox) in snow        "red fox" x 1.1 (the enclosing weight times 1.1)
    a ((red fox))              "red fox" x 1.21
    a (red fox:1.3)            "red fox" x 1.3: an explicit weight replaces the enclosing one,
                               so ``((red fox:1.3))`` is 1.3 (A1111 multiplies: 1.43)
    (a (red:0.5) fox:1.2)      "a" and "fox" x 1.2, "red" x 0.5
    \\( \\)                      literal brackets
    embedding:name             the textual-inversion token ``name`` (loaded under that token)

Everything else is text: ``[red]``, ``BREAK``, ``AND``, ``[a:b:0.5]``, ``\\[``. The weight after
the last colon in a group is read as Python's ``float`` reads it (``1e2``, `` 1.5 ``); a group
whose text after its last colon is no number is weighted 1.1 and keeps the colon as text.
Unbalanced brackets read as ComfyUI reads them: a ``)`` without its ``(`` is text, and so is
an unclosed ``(``, except that an unclosed run that ends with ``)`` loses its first and last
bracket and is read again one level deeper (``((a)`` is the text "(a" x 1.1).

`parse_comfy_prompt` gives the fragments ComfyUI's parser gives (each weighted segment of text,
in order, with ComfyUI's weights), checked against a transcription of its parser
(`tests/comfy_reference.py`, on written and generated prompts). It differs on purpose in two
ways:

- Time is linear in the prompt's length. ComfyUI's parser reads each group's text again at
  every level of nesting (work that grows with the text times the depth) and recurses once per
  level: its transcription raises RecursionError at 1,000 nested brackets, which are read here
  (`tests/test_comfy_syntax.py`).
- A weight written as ``inf`` or ``nan`` (which ``float`` reads, and ComfyUI then applies) is a
  ValueError naming the prompt; finite weights are kept within [-`MAX_WEIGHT`, `MAX_WEIGHT`],
  as in `clipcond.prompts`.

A word that starts with ``embedding:`` loses that prefix: ComfyUI loads the file the rest names
from its embeddings folder, and here the rest is the token a textual inversion was loaded under
(`TextConditioner.load_textual_inversion(path, token="name")`; `TextConditioner` refuses a name
no CLIP tokenizer holds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from clipcond.prompts import MAX_WEIGHT, Fragment

GROUP_FACTOR = 1.1
EMBEDDING_PREFIX = "embedding:"

# ComfyUI's escapes: `\)` and `\(` stand for these while the brackets are read
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))
# a word (ComfyUI splits at spaces, line breaks read as spaces) that names an embedding
_EMBEDDING_WORD = re.compile(r"(?<![^ \n])" + re.escape(EMBEDDING_PREFIX))


def _escaped(text: str) -> str:
    """`text` with ComfyUI's escaped brackets replaced by their stand-ins."""
    for written, stand_in in _ESCAPES:
        text = text.replace(written, stand_in)
    return text


def _unescaped(text: str) -> str:
    """A segment of escaped text with its stand-ins read back as brackets."""
    for written, stand_in in _ESCAPES:
        text = text.replace(stand_in, written[-1])
    return text


def _clamped(weight: float) -> float:
    """`weight` within [-`MAX_WEIGHT`, `MAX_WEIGHT`]."""
    return max(-MAX_WEIGHT, min(MAX_WEIGHT, weight))


class _Brackets:
    """What ComfyUI's reading needs of the brackets of escaped text, in O(1) per question:
    the nesting level before each character, each ``(``'s closing ``)``, the last colon
    before each position and the brackets counted up to each position."""

    def __init__(self, text: str) -> None:
        self.level = [0] * (len(text) + 1)  # level[i]: open brackets before text[i]
        self.closes: dict[int, int] = {}  # "(" index -> the ")" that returns to its level
        self.last_colon = [-1] * (len(text) + 1)  # last_colon[i]: last ":" before text[i]
        self.brackets = [0] * (len(text) + 1)  # brackets[i]: "(" and ")" before text[i]
        open_at: list[int] = []
        for index, char in enumerate(text):
            level = self.level[index]
            self.last_colon[index + 1] = index if char == ":" else self.last_colon[index]
            self.brackets[index + 1] = self.brackets[index] + (char in "()")
            if char == "(":
                open_at.append(index)
                level += 1
            elif char == ")":
                if open_at:
                    self.closes[open_at.pop()] = index
                level -= 1
            self.level[index + 1] = level


def _group_weight(text: str, brackets: _Brackets, start: int, end: int, weight: float) -> tuple[float, int]:
    """The weight of a group whose text is text[`start`:`end`] inside a group of `weight`, and
    where its text ends: the number after its last colon (not the group's first character),
    when ``float`` reads it, replaces the weight, and the text ends at that colon; otherwise
    the weight is `weight` x 1.1.

    Raises:
        ValueError: the number is not finite.
    """
    colon = brackets.last_colon[end]
    # A number holds no bracket: skipping those keeps the reading linear (each colon's number
    # is read for one group at most), and `float` would refuse them.
    if colon > start and brackets.brackets[end] == brackets.brackets[colon]:
        written = text[colon + 1 : end]
        try:
            explicit = float(written)
        except ValueError:
            pass
        else:
            if not math.isfinite(explicit):
                raise ValueError(
                    f"the weight {_unescaped(written).strip()!r} is no finite number: write one such as 1.3"
                )
            return _clamped(explicit), colon
    return _clamped(weight * GROUP_FACTOR), end


def _segments(text: str) -> list[tuple[str, float]]:
    """ComfyUI's weighted segments of escaped `text`, in order (see the module docstring).

    Each frame reads text[start:end] at one weight, as ComfyUI's ``token_weights`` reads a
    string: a ``(`` at the frame's own nesting level starts a group, which ends at its closing
    bracket when that lies in the frame, else runs to the frame's end (unclosed). Frames sit
    on an explicit stack, so nesting depth costs no recursion, and each character is read in
    one frame only."""
    brackets = _Brackets(text)
    segments: list[tuple[str, float]] = []
    frames = [(0, len(text), 1.0)]  # (start, end, weight), the next to read last
    while frames:
        start, end, weight = frames.pop()
        base = brackets.level[start]
        index = start
        while index < end:
            if text[index] != "(" or brackets.level[index] != base:
                index += 1
                continue
            segments.append((text[start:index], weight))
            close = brackets.closes.get(index, end)
            if close < end:  # a closed group; the rest of this frame after it
                frames.append((close + 1, end, weight))
                inner_weight, inner_end = _group_weight(text, brackets, index + 1, close, weight)
                frames.append((index + 1, inner_end, inner_weight))
            elif text[end - 1] == ")":  # unclosed, but ending with a bracket (not this one)
                inner_weight, inner_end = _group_weight(text, brackets, index + 1, end - 1, weight)
                frames.append((index + 1, inner_end, inner_weight))
            else:  # unclosed: text to the frame's end
                segments.append((text[index:end], weight))
            break
        else:
            segments.append((text[start:end], weight))
    return segments


def parse_comfy_prompt(text: str) -> list[Fragment]:
    """Read ComfyUI's weighting syntax in `text` (see the module docstring).

    Time and memory are linear in the length of `text`, whatever its brackets.

    Args:
        text: one prompt.

    Returns:
        At least one fragment: ComfyUI's weighted segments in order, those with no text
        dropped, each with its brackets' escapes read and ``embedding:`` removed from the
        words it starts; ``[Fragment("", 1.0)]`` when no text is left. Never a BREAK:
        ``BREAK`` is a word in ComfyUI.

    Raises:
        TypeError: `text` is not a string.
        ValueError: a weight is written as a number that is not finite (``inf``, ``nan``).
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}: {text!r:.80}")
    if "(" not in text and ")" not in text and EMBEDDING_PREFIX not in text:
        return [Fragment(text, 1.0)]
    try:
        segments = _segments(_escaped(text))
    except ValueError as error:
        raise ValueError(f"prompt {text[:80]!r}: {error}") from None
    fragments = [
        Fragment(_EMBEDDING_WORD.sub("", _unescaped(segment)), weight) for segment, weight in segments if segment
    ]
    return fragments or [Fragment("", 1.0)]


def embedding_names(text: str) -> list[str]:
    """The names `text` (one prompt in ComfyUI's syntax) writes after ``embedding:``, in order,
    each once, as ComfyUI reads them: the rest of each word that starts with it (wherever
    brackets put the word), trailing commas stripped (ComfyUI reads them as text after the
    embedding).

    Raises:
        ValueError: as `parse_comfy_prompt`.
    """
    if EMBEDDING_PREFIX not in text:
        return []
    names = []
    for fragment in _segments(_escaped(text)):
        for word in _unescaped(fragment[0]).replace("\n", " ").split(" "):
            if word.startswith(EMBEDDING_PREFIX):
                names.append(word[len(EMBEDDING_PREFIX) :].rstrip(","))
    return list(dict.fromkeys(names))


def unheld_embeddings(text: str, tokenizers: Iterable[Any]) -> list[str]:
    """The names `text` writes after ``embedding:`` (`embedding_names`) that none of
    `tokenizers` holds as an added token (a textual inversion loaded under that name), in order.

    Raises:
        ValueError: as `parse_comfy_prompt`.
    """
    names = embedding_names(text)
    if not names:
        return []
    held = [getattr(tokenizer, "added_tokens_encoder", {}) for tokenizer in tokenizers]
    return [name for name in names if not any(name in tokens for tokens in held)]
