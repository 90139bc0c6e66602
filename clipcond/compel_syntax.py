"""compel's prompt weighting syntax -> weighted fragments, in linear time.

compel (the prompt-weighting library diffusers' documentation points to) reads:

    a cat+ on a mat         "cat" x 1.1                  cat++ -> x 1.21, cat--- -> x 0.729
    a (red fox)1.3          "red fox" x 1.3              (red fox)0.5, (red fox).5, (red fox)2
    a (red fox)--           "red fox" x 0.81             a run of + or -, or a number, after ``)``
    ((a cat)+ in snow)0.8   "a cat" x 0.88, "in snow" x 0.8    nesting multiplies, outermost first
    "a red fox"+            "a red fox" x 1.1            quotes group words as round brackets do
    (a cat)                 "a cat" x 1                  brackets without a weight only group
    \\( \\) \\"                a literal ( ) "              never syntax
    ("a cat", "a dog").and()   "a cat", a BREAK, "a dog"    each part starts a CLIP window
    ("a cat", "a dog").and(1, 0.5)        `parse_compel_conjunction`: the parts' encodings
                                          joined, "a dog"'s moved halfway to the empty prompt's
    ("a cat", "a dog").blend(0.7, 0.3)    `parse_compel_blend`: the parts' encodings summed

`parse_compel_prompt` reads the same weights as compel's own parser (`compel.prompt_parser`,
a pyparsing grammar) on such prompts: the fragments give the same CLIP token ids with the
same weights (`tests/test_compel_syntax.py`, against compel's parser on generated prompts).
It differs on purpose in three ways:

- Time is linear in the prompt's length. compel's grammar backtracks: each level of bracket
  nesting multiplied its time by 3 to 4.5 (8 levels, ``((((((((a))))))))``, took 73 s on a
  2-core machine) and 200 unclosed brackets exhaust Python's recursion limit.
- compel's ``.swap()`` and ``withLora()``, and ``.and()`` or ``.blend()`` beside other
  text, are a ValueError here, not read. An unweighted ``.and()`` is its parts with a BREAK
  between them: compel encodes each part on its own and joins the encodings, which is what
  CLIP windows are (equal to compel for parts of one window each; a T5 reads the parts as one
  sequence, as it reads a BREAK). A whole-prompt ``.blend()``, and an ``.and()`` with part
  weights other than 1, combine whole encodings, which no list of fragments can say:
  `parse_compel_combination` reads them, and `TextConditioner` combines the parts' encodings
  (`clipcond.combined_records`).
- On text its grammar does not cover, compel often falls back to reading the whole prompt as
  plain text (an unclosed ``(`` anywhere); here only that bracket is text. Around stray signs
  and dots the two can also differ (``(a)1.``: here "a" x 1 and the text "."; compel drops
  the dot). Text is split into words at whitespace and rejoined with single spaces, with
  compel's space after every comma (``a,b`` reads "a, b"; the CLIP tokens are those of the
  raw text). A prompt with none of ``( ) " + - \\`` comes back unchanged, as one fragment.

Weights are kept within [-`MAX_WEIGHT`, `MAX_WEIGHT`] as in `clipcond.prompts`. The
fragments are `clipcond.prompts.Fragment`s: every emphasis mode reads them (``"compel"`` is
compel's own formula).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from clipcond.prompts import BREAK_MARKER, MAX_WEIGHT, Fragment

PLUS_BASE = 1.1
MINUS_BASE = 0.9

_SYNTAX_CHARS = '()"+-\\'
_COMMA_GAP = re.compile(r",(?=\S)")
_NUMBER = re.compile(r"\d+\.\d+|\.\d+|\d+")
# compel's operators over whole encodings: named in the refusal, never read as text
_OPERATORS = re.compile(r"\)\s*\.(and|blend|swap)\s*\(|\w\.(swap)\s*\(|\b(withLora)\s*\(")
# a whole prompt `("part", "part").and(weights)`: compel encodes each part on its own and joins them
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_CONJUNCTION = re.compile(
    rf"\s*\(\s*(?P<parts>{_QUOTED}(?:\s*,\s*{_QUOTED})*)\s*\)\s*\.and\((?P<weights>[^()]*)\)\s*", re.DOTALL
)
# a whole prompt `("part", "part").blend(weights)`: compel blends the parts' encodings
_BLEND = re.compile(
    rf"\s*\(\s*(?P<parts>{_QUOTED}(?:\s*,\s*{_QUOTED})*)\s*\)\s*\.blend\((?P<weights>[^()]*)\)\s*", re.DOTALL
)


# what compel's operators that clipcond does not read do, and what to use instead
_UNREAD = {
    "swap": "compel's `swap()` changes the text during the steps (cross-attention control), which clipcond's "
    "compel syntax does not read: A1111's prompt editing `[cat:dog:0.5]` (syntax 'a1111') does that",
    "withLora": "compel's `withLora()` names a LoRA, which clipcond's compel syntax does not read: load it with "
    "the pipeline's `load_lora_weights`",
}


def _power(base: float, count: int) -> float:
    """`base` ** `count` as compel computes a run of signs; inf where it overflows."""
    try:
        return math.pow(base, count)
    except OverflowError:
        return math.inf


def _clamped(weight: float) -> float:
    """`weight` within [-`MAX_WEIGHT`, `MAX_WEIGHT`] (an overflowed run of signs is inf)."""
    return max(-MAX_WEIGHT, min(MAX_WEIGHT, weight))


def _weight_after(text: str, start: int) -> tuple[float, int]:
    """The weight written at `start` (a run of ``+``, a run of ``-`` or a number) and where it
    ends; (1.0, `start`) when none is written there."""
    if start < len(text) and text[start] in "+-":
        end = start
        while end < len(text) and text[end] == text[start]:
            end += 1
        return _power(PLUS_BASE if text[start] == "+" else MINUS_BASE, end - start), end
    number = _NUMBER.match(text, start)
    if number is None:
        return 1.0, start
    return float(number.group()), number.end()


def _at_word_start(text: str, index: int, syntax_at: set[int]) -> bool:
    """True when a ``(`` or ``"`` at `index` may open a group: at the start, after whitespace,
    a sign, or a bracket or quote that is syntax (one that is text, escaped or unmatched, glues
    it to its word, as compel reads ``\\("b"+``)."""
    if index == 0 or text[index - 1].isspace():
        return True
    return index - 1 in syntax_at or text[index - 1] in "+-"


def _groups(text: str) -> dict[int, int]:
    """Where each group opens -> where it closes: ``(`` at a word's start with its matching
    ``)``, and a ``"`` with the next one (brackets inside quotes are groups too, as in compel).
    Escaped characters, a ``)`` that does not close the innermost open group, and groups never
    closed are text."""
    groups: dict[int, int] = {}
    opened: list[int] = []
    syntax_at: set[int] = set()  # where a bracket or quote opened or closed a group so far
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in '()"':
            index += 2
            continue
        innermost = text[opened[-1]] if opened else None
        if (char == '"' and innermost == '"') or (char == ")" and innermost == "("):
            groups[opened.pop()] = index
            syntax_at.add(index)
        elif char in '"(' and _at_word_start(text, index, syntax_at):
            opened.append(index)
            syntax_at.add(index)
        index += 1
    return groups


@dataclass(frozen=True)
class CompelBlend:
    """compel's ``("a cat", "a dog").blend(0.7, 0.3)``: the parts' encodings, summed with the
    weights (divided by their sum unless ``no_normalize`` ends them).

    Attributes:
        parts: each part's text, in compel's syntax (quotes removed).
        weights: one finite weight per part (all 1.0 when ``.blend()`` names none).
        normalize: divide the weights by their sum (compel's default; never 0 then).
    """

    parts: tuple[str, ...]
    weights: tuple[float, ...]
    normalize: bool = True


@dataclass(frozen=True)
class CompelConjunction:
    """compel's ``("a cat", "a dog").and(1, 0.5)`` with a part weight other than 1: each part
    encoded on its own and moved towards the empty prompt's encoding by its weight
    (``empty + (part - empty) * weight``), the parts' windows joined in order.

    Attributes:
        parts: each part's text, in compel's syntax (quotes removed).
        weights: one finite weight per part, at least one of them not 1.
    """

    parts: tuple[str, ...]
    weights: tuple[float, ...]


def _read_operator(text: str, match: re.Match, name: str) -> tuple[tuple[str, ...], tuple[float, ...], bool]:
    """The parts, weights and normalisation of compel's whole-prompt ``("a", "b").{name}(...)``
    that `match` found in `text`: one finite weight per part (all 1.0 when none are written);
    ``no_normalize`` after a blend's weights turns normalisation off.

    Raises:
        ValueError: weights that are no numbers, not one per part, not finite, or (a
            normalised blend's) summing to 0; or a part that `parse_compel_prompt` refuses.
    """
    written = match.group("weights")
    parts = tuple(part[1:-1] for part in re.findall(_QUOTED, match.group("parts")))
    words = [word.strip() for word in written.split(",") if word.strip()]
    normalize = not (name == "blend" and words and words[-1] == "no_normalize")
    words = words if normalize else words[:-1]
    try:
        weights = tuple(float(word) for word in words) or (1.0,) * len(parts)
    except ValueError:
        weights = ()
    problem = None
    if len(weights) != len(parts):
        problem = f"{len(parts)} parts need {len(parts)} numbers (or none)"
    elif not all(math.isfinite(weight) for weight in weights):
        problem = "its weights must be finite"
    elif name == "blend" and normalize and sum(weights) == 0:
        problem = "its weights sum to 0, and they are divided by their sum (add `no_normalize` to sum as given)"
    if problem is not None:
        raise ValueError(f"prompt {text[:80]!r}: compel's `{name}({written})`: {problem}")
    for part in parts:
        parse_compel_prompt(part)  # its own refusals, before any work
    return parts, weights, normalize


def parse_compel_blend(text: str) -> CompelBlend | None:
    """The blend `text` is, when the whole prompt is compel's ``("a", "b").blend(...)``; None
    for any other prompt (which `parse_compel_prompt` reads).

    Raises:
        ValueError: a blend whose weights are no numbers, not one per part, not finite, or
            summing to 0 where they are normalised; or a part that `parse_compel_prompt` refuses.
    """
    match = _BLEND.fullmatch(text) if ".blend" in text else None
    if match is None:
        return None
    return CompelBlend(*_read_operator(text, match, "blend"))


def parse_compel_conjunction(text: str) -> CompelConjunction | None:
    """The weighted conjunction `text` is, when the whole prompt is compel's
    ``("a", "b").and(...)`` with a part weight other than 1; None for any other prompt (an
    ``.and()`` whose weights are all 1 is read by `parse_compel_prompt`: its parts with a
    BREAK between them).

    Raises:
        ValueError: weights that are no numbers, not one per part or not finite; or a part
            that `parse_compel_prompt` refuses.
    """
    match = _CONJUNCTION.fullmatch(text) if ".and" in text else None
    if match is None:
        return None
    parts, weights, _ = _read_operator(text, match, "and")
    return CompelConjunction(parts, weights) if any(weight != 1.0 for weight in weights) else None


def parse_compel_combination(text: str) -> CompelBlend | CompelConjunction | None:
    """The whole-prompt operator over encodings that `text` is (a blend, or an ``.and()`` with
    part weights); None for a prompt `parse_compel_prompt` reads.

    Raises:
        ValueError: as `parse_compel_blend` and `parse_compel_conjunction`.
    """
    return parse_compel_blend(text) or parse_compel_conjunction(text)


def _conjunction_fragments(text: str, conjunction: re.Match) -> list[Fragment]:
    """The fragments of compel's unweighted `("a", "b").and()`: each part read as a prompt, a
    BREAK between parts (each part starts a CLIP window, as compel concatenates the parts'
    encodings). Part weights other than 1 are a ValueError: compel moves such a part's states
    towards the empty prompt's, which weights of tokens cannot say (`parse_compel_conjunction`
    reads it)."""
    parts, weights, _ = _read_operator(text, conjunction, "and")
    if any(weight != 1.0 for weight in weights):
        raise ValueError(
            f"prompt {text[:80]!r}: compel's `and({conjunction.group('weights')})` weights whole encodings, not "
            'fragments: TextConditioner(syntax="compel") reads it'
        )
    fragments: list[Fragment] = []
    for part in parts:
        if fragments:
            fragments.append(BREAK_MARKER)
        fragments.extend(parse_compel_prompt(part))
    return fragments


def parse_compel_prompt(text: str) -> list[Fragment]:
    """Read compel's weighting syntax in `text` (see the module docstring).

    Time and memory are linear in the length of `text`, whatever its brackets.

    Args:
        text: one prompt.

    Returns:
        At least one fragment: ``[Fragment("", 1.0)]`` when no text is left. Adjacent words of
        equal weight are one fragment, joined by single spaces; weights within
        [-`MAX_WEIGHT`, `MAX_WEIGHT`]. BREAK markers only between the parts of an ``.and()``
        (``BREAK`` is a word in compel).

    Raises:
        TypeError: `text` is not a string.
        ValueError: `text` uses ``.blend()``, ``.swap()`` or ``withLora()``, or ``.and()`` with
            part weights other than 1 (`parse_compel_conjunction` reads that) or beside other
            text.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}: {text!r:.80}")
    if not any(char in _SYNTAX_CHARS for char in text):
        return [Fragment(text, 1.0)]
    conjunction = _CONJUNCTION.fullmatch(text)
    if conjunction is not None:
        return _conjunction_fragments(text, conjunction)
    operator = _OPERATORS.search(text)
    if operator is not None:
        name = next(group for group in operator.groups() if group)
        if name == "and":
            raise ValueError(
                f"prompt {text[:80]!r}: compel's `and()` is read as a whole prompt, "
                '`("part one", "part two").and()`, each part in its own CLIP window, with nothing after it'
            )
        if name == "blend":
            if parse_compel_blend(text) is not None:
                raise ValueError(
                    f"prompt {text[:80]!r}: compel's `blend()` blends whole encodings, not fragments: "
                    'TextConditioner(syntax="compel") reads it'
                )
            raise ValueError(
                f"prompt {text[:80]!r}: compel's `blend()` is read as a whole prompt, "
                '`("part one", "part two").blend(0.7, 0.3)`, with nothing beside it'
            )
        raise ValueError(f"prompt {text[:80]!r}: {_UNREAD[name]}")
    text = _COMMA_GAP.sub(", ", text)
    groups = _groups(text)
    words: list[tuple[str, float]] = []
    scales = [1.0]  # the weight of the enclosing groups, outermost first
    closes: list[tuple[int, int]] = []  # per open group: where it closes, where its weight ends
    word: list[str] = []
    bracketed: list[bool] = []  # per character of `word`: an unescaped bracket or quote

    def end_word() -> None:
        if not word:
            return
        piece = "".join(word)
        glued_syntax = any(bracketed)  # compel reads `x(y)+` as text, not as a weighted word
        word.clear()
        bracketed.clear()
        base = piece.rstrip("+-")
        if glued_syntax or not base or base == piece:
            words.append((piece, scales[-1]))
            return
        # the first run of one sign weights the word; signs after it are text (`cat+-`)
        signs = piece[len(base) :]
        run = len(signs) - len(signs.lstrip(signs[0]))
        weight = _power(PLUS_BASE if signs[0] == "+" else MINUS_BASE, run)
        words.append((base, _clamped(scales[-1] * weight)))
        if run < len(signs):
            words.append((signs[run:], scales[-1]))

    index = 0
    while index < len(text):
        char = text[index]
        if closes and index == closes[-1][0]:
            end_word()
            scales.pop()
            index = closes.pop()[1]
            continue
        if char == "\\" and index + 1 < len(text) and text[index + 1] in '()"':
            word.append(text[index + 1])
            bracketed.append(False)
            index += 2
            continue
        if index in groups:  # never inside quotes (`_groups`)
            end_word()
            close = groups[index]
            weight, weight_end = _weight_after(text, close + 1)
            scales.append(_clamped(scales[-1] * weight))
            closes.append((close, weight_end))
            index += 1
            continue
        if char.isspace():
            end_word()
        else:
            word.append(char)
            bracketed.append(char in '()"')
        index += 1
    end_word()

    fragments: list[Fragment] = []
    for piece, weight in words:
        if fragments and fragments[-1].weight == weight:
            fragments[-1] = Fragment(f"{fragments[-1].text} {piece}", weight)
        else:
            fragments.append(Fragment(piece, weight))
    return fragments or [Fragment("", 1.0)]
