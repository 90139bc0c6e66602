"""Prompt weighting syntax -> weighted fragments.

The attention syntax of AUTOMATIC1111's web UI (``parse_prompt_attention`` in its
``modules/prompt_parser.py``), read the same way (compel's ``word+``, ``(words)1.3`` is
`clipcond.compel_syntax`'s):

    a (red) cat         "red" x 1.1                 ((red)) -> x 1.21
    a [red] cat         "red" / 1.1                 [[red]] -> / 1.21
    a (red:1.3) cat     "red" x 1.3                 (red: .5 ) -> x 0.5
    (red:0) (red:-1)    weight 0, weight -1         any sign, any size
    ((a:1.5) b)         "a" x 1.65, " b" x 1.1      nesting multiplies
    [(red)]             "red" x 1.0                 1.1 / 1.1
    \\( \\) \\[ \\] \\\\      a literal ( ) [ ] \\, never syntax
    a cat BREAK a dog   "a cat", a break marker, "a dog"

The rules, as A1111 reads them:

- An explicit weight is ``:``, optional spaces, a number of digits and dots with an optional
  sign (``2``, ``.5``, ``1.``, ``-1``), optional spaces, ``)``. It closes the innermost open
  round bracket. With no round bracket open, all of it is text.
- Square brackets only divide by 1.1 (``[word:1.5]`` is prompt editing, `clipcond.schedule`'s
  business: read alone it is the text "word:1.5" at 1 / 1.1).
- Round and square brackets are matched separately: ``(a [b) c]`` gives a x 1.1,
  b x 1.1 / 1.1, c / 1.1.
- A bracket never closed weights the rest of the prompt; a ``)`` or ``]`` with no open bracket
  of its kind is text.
- A backslash before ``( ) [ ] \\`` makes that character text; any other backslash is dropped.
- ``BREAK``, in upper case and not part of a longer word, ends the current CLIP window; the
  whitespace around it (up to the nearest bracket, colon or backslash) is dropped.
- Adjacent fragments of equal weight are merged; fragments with no text are dropped.

Where clipcond differs from A1111, on purpose (each pinned by a test):

- A number A1111 cannot read (``(a:1.2.3)``, ``(a:.)``) makes A1111 raise; here its colon is
  text and the bracket an ordinary ``( )``.
- Weights are kept within [-`MAX_WEIGHT`, `MAX_WEIGHT`]: a product beyond is clamped (deep
  nesting, or a run of hundreds of digits, makes A1111's weights infinite and the embeddings NaN).
- A ``BREAK`` inside brackets is a break. A1111 marks breaks with the weight -1, which
  brackets then multiply, and its tokenizer reads such a marker as the word "BREAK".
- A weight is the product of its round brackets' multipliers times the product of its square
  brackets', each taken outermost first, in time linear in the prompt's length. A1111
  multiplies in the order the brackets close, in quadratic time, so the last bits of a weight
  can differ (relative 1e-16 per bracket): rarely, two adjacent fragments whose weights differ
  only there are merged by one and not by the other.

`parse_prompt` never raises on a string. A prompt with none of ``( ) [ ] \\ :`` and no
``BREAK`` comes back as one fragment holding the text unchanged at weight 1.0, so plain
prompts tokenize exactly like the raw string.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
MAX_WEIGHT = 1e4

_SYNTAX_CHARS = "()[]\\:"
# One token of the syntax, tried in this order (the alternatives A1111 reads; A1111's number is
# any run of digits and dots, and it raises on one that is no number, where this reads a colon).
_TOKEN = re.compile(
    r"""
      \\(?P<escaped>[()\[\]\\])           # a backslash makes a bracket or a backslash text
    | (?P<backslash>\\)                   # any other backslash is dropped
    | (?P<open>[(\[])
    | :\s*(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # an explicit weight, closing a round bracket
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\bBREAK\b")


def _split_at_breaks(text: str) -> list[str]:
    """`text` split at every whole-word ``BREAK``, the whitespace around each one dropped (A1111's
    ``\\s*\\bBREAK\\b\\s*``, in linear time: that pattern rescans a long run of spaces from
    each of its positions)."""
    parts = _BREAK.split(text)
    for index in range(len(parts)):
        if index > 0:  # after a BREAK
            parts[index] = parts[index].lstrip()
        if index < len(parts) - 1:  # before one
            parts[index] = parts[index].rstrip()
    return parts


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one weight, or a BREAK marker.

    Attributes:
        text: the text, escapes resolved ("" for a break marker).
        weight: finite, within [-MAX_WEIGHT, MAX_WEIGHT]; 1.0 means unweighted (always 1.0 for a
            break marker).
        is_break: True for a ``BREAK`` marker: the text after it starts a new CLIP window.
    """

    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK_MARKER = Fragment("", 1.0, is_break=True)


class _Brackets:
    """The brackets of one kind opened so far, as a tree: each bracket's parent is the bracket
    that was open around it. Node 0 is the root (no bracket)."""

    __slots__ = ("default", "multiplier", "open", "parent")

    def __init__(self, default: float) -> None:
        self.default = default
        self.parent = [0]
        self.multiplier = [1.0]
        self.open = [0]  # the stack of open brackets; the root stays at the bottom

    @property
    def innermost(self) -> int:
        return self.open[-1]

    def push(self) -> None:
        self.parent.append(self.open[-1])
        self.multiplier.append(self.default)  # a bracket never closed keeps the default
        self.open.append(len(self.parent) - 1)

    def close(self, multiplier: float | None = None) -> bool:
        """Close the innermost bracket with `multiplier` (its default when None); False if none is open."""
        if len(self.open) == 1:
            return False
        node = self.open.pop()
        if multiplier is not None:
            self.multiplier[node] = multiplier
        return True

    def products(self) -> tuple[list[float], list[int]]:
        """Per node, the product of the multipliers from the root down to it, as mantissas and
        exponents (`math.frexp`), so that deep nesting neither overflows nor turns a zero into
        NaN. Parallel lists of numbers, which the garbage collector need not track."""
        mantissas, exponents = [1.0], [0]
        for node in range(1, len(self.parent)):
            parent = self.parent[node]
            mantissa, shift = math.frexp(mantissas[parent] * self.multiplier[node])
            mantissas.append(mantissa)
            exponents.append(exponents[parent] + shift)
        return mantissas, exponents


def _explicit_weight(number: str) -> float:
    """The factor an explicit number gives. A run of digits too long for a float reads as the
    largest float (A1111: inf); the product it joins is then kept within MAX_WEIGHT like any."""
    value = float(number)
    return value if math.isfinite(value) else math.copysign(sys.float_info.max, value)


def _weight(mantissa: float, exponent: int) -> float:
    """mantissa * 2**exponent, kept within [-MAX_WEIGHT, MAX_WEIGHT]."""
    if mantissa == 0.0 or exponent < -1100:
        return 0.0 * mantissa
    if exponent > 64:  # far beyond MAX_WEIGHT: clamp without overflowing ldexp
        return math.copysign(MAX_WEIGHT, mantissa)
    return min(max(math.ldexp(mantissa, exponent), -MAX_WEIGHT), MAX_WEIGHT)


def parse_prompt(text: str) -> list[Fragment]:
    """Parse the weighting syntax of `text` (see the module docstring); never raises on a string.

    Time and memory are linear in the length of `text`, whatever its brackets.

    Args:
        text: one prompt.

    Returns:
        At least one fragment: ``[Fragment("", 1.0)]`` when no text is left (e.g. for "").
        Text fragments are non-empty with weights in [-`MAX_WEIGHT`, `MAX_WEIGHT`]; BREAK
        markers are ``Fragment("", 1.0, is_break=True)``.

    Raises:
        TypeError: `text` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}: {text!r:.80}")
    if not any(char in _SYNTAX_CHARS for char in text) and "BREAK" not in text:
        return [Fragment(text, 1.0)]

    round_brackets, square_brackets = _Brackets(ROUND_MULTIPLIER), _Brackets(SQUARE_MULTIPLIER)
    round_open, square_open = round_brackets.open, square_brackets.open
    # Per piece of text: the text ("" is a BREAK) and its innermost round and square brackets.
    # Parallel lists of str and int, which the garbage collector need not track.
    texts: list[str] = []
    rounds: list[int] = []
    squares: list[int] = []

    def add(piece: str) -> None:
        texts.append(piece)
        rounds.append(round_open[-1])
        squares.append(square_open[-1])

    for token in _TOKEN.finditer(text):
        kind = token.lastgroup
        if kind == "text":
            piece = token.group()
            if "BREAK" in piece:
                for index, part in enumerate(_split_at_breaks(piece)):
                    if index:
                        add("")
                    if part:
                        add(part)
            else:
                add(piece)
        elif kind == "open":
            (round_brackets if token.group() == "(" else square_brackets).push()
        elif kind == "close":
            if not (round_brackets if token.group() == ")" else square_brackets).close():
                add(token.group())
        elif kind == "number":
            if len(round_open) == 1:  # no round bracket to close: all of it is text
                add(token.group())
            else:
                round_brackets.close(_explicit_weight(token.group("number")))
        elif kind == "escaped":
            add(token.group("escaped"))
        elif kind == "colon":
            add(":")
        # kind == "backslash": dropped

    (round_mantissas, round_exponents), (square_mantissas, square_exponents) = (
        round_brackets.products(),
        square_brackets.products(),
    )
    fragments: list[Fragment] = []
    run: list[str] = []  # texts of the fragment being merged, joined once (no quadratic concatenation)
    run_weight = 1.0
    for piece, round_node, square_node in zip(texts, rounds, squares):
        weight = None
        if piece:
            mantissa = round_mantissas[round_node] * square_mantissas[square_node]
            weight = _weight(mantissa, round_exponents[round_node] + square_exponents[square_node])
        if run and (not piece or weight != run_weight):
            fragments.append(Fragment("".join(run), run_weight))
            run = []
        if piece:
            run.append(piece)
            run_weight = weight
        else:
            fragments.append(BREAK_MARKER)
    if run:
        fragments.append(Fragment("".join(run), run_weight))
    return fragments or [Fragment("", 1.0)]


def has_weights(fragments: Iterable[Fragment]) -> bool:
    """True when any fragment has a weight other than 1.0 or is a BREAK marker.

    False means the prompt encodes exactly like its plain text (`prompt_text`).
    """
    return any(fragment.is_break or fragment.weight != 1.0 for fragment in fragments)


def prompt_text(fragments: Iterable[Fragment]) -> str:
    """The plain text of `fragments`: texts concatenated, each BREAK marker as one space."""
    return "".join(" " if fragment.is_break else fragment.text for fragment in fragments)
