"""Prompt editing and alternation: which text conditions which denoising step, as A1111 reads it.

The syntax of AUTOMATIC1111's web UI (``get_learned_conditioning_prompt_schedules`` in its
``modules/prompt_parser.py``), read before the weighting syntax:

    [from:to:when]   "from" until step `when`, then "to"
    [to:when]        nothing until step `when`, then "to"
    [from::when]     "from" until step `when`, then nothing
    [a|b|c]          "a" at the first step, "b" at the second, "c" at the third, then again

`when` is a step number (``10``) or, with a decimal point, a fraction of the steps (``0.25``,
``.5``); either way it is capped at the number of steps. Brackets nest (``a[b:[c:d:2]:1]e``), and
round brackets keep their text (``([a:b:3])`` becomes ``(a)`` or ``(b)`` for the weighting
syntax to read).

Which step sees which text: the schedule is a list of (end step, text) pairs; denoising step
``i`` (counted from 0) uses the first pair whose end step is at least ``i``. So ``[a:b:3]`` over
10 steps reads "a" at steps 0 to 3 and "b" at steps 4 to 9, and ``[a|b]`` reads a, a, b, a, b,
... (A1111's schedules end at step 1 for the first alternation entry, and its sampler counts
steps from 0).

Anything that does not read as this syntax is left as text, as A1111 leaves it: an unbalanced
bracket, a square bracket with a colon but no number, a stray ``]``. A ``|`` outside a square
bracket or a backslash at the very end makes A1111 read the whole prompt as plain text; the same
here. Parsing never raises, and its work is linear in the prompt's length: brackets nested
deeper than `MAX_DEPTH` make the prompt plain text (a deliberate limit; A1111 has none), so no
position is read more than `MAX_DEPTH` times, and each construct's result is kept per position
so that a failed bracket is not read again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from clipcond.prompts import MAX_WEIGHT

MAX_DEPTH = 64

# A1111's SIGNED_NUMBER (lark's): an optional sign, then an integer or a decimal, with an
# optional exponent, in ASCII digits only ("５" or "٠.٥" is text there).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Text, with backslash escapes; lark's `\\.` does not match a newline, so a backslash before one
# makes A1111 read the whole prompt as plain text: the same here (no DOTALL).
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_SPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class _Scheduled:
    before: tuple | None  # None: the "[to:when]" form
    after: tuple
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple


class _TooDeep(Exception):
    pass


class _Parser:
    """Recursive descent over the grammar, with each construct's result kept per position
    (packrat), so a prompt is read in linear time however its brackets fail."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.memo: dict[tuple[str, int], tuple | None] = {}

    def sequence(self, position: int, depth: int) -> tuple[tuple, int]:
        """Items up to the first character no item can start with: (items, end)."""
        items: list = []
        while position < len(self.text):
            char = self.text[position]
            if char in "([":
                parsed = (self.round if char == "(" else self.square)(position, depth + 1)
                if parsed is None:
                    break
                item, position = parsed
                items.append(item)
                continue
            match = _PLAIN.match(self.text, position)
            if match is None:  # one of ] ) : | or a lone backslash at the end
                break
            items.append(match.group())
            position = match.end()
        return tuple(items), position

    def _cached(self, kind: str, position: int, depth: int, parse) -> tuple | None:
        key = (kind, position)
        if key not in self.memo:
            if depth > MAX_DEPTH:
                raise _TooDeep
            self.memo[key] = parse(position, depth)
        return self.memo[key]

    def round(self, position: int, depth: int) -> tuple | None:
        """ "(" items ")" or "(" items ":" items ")", kept as text around the items."""
        return self._cached("round", position, depth, self._round)

    def _round(self, position: int, depth: int) -> tuple | None:
        first, position = self.sequence(position + 1, depth)
        if self._at(position, ")"):
            return ("(", first, ")"), position + 1
        if self._at(position, ":"):
            second, end = self.sequence(position + 1, depth)
            if self._at(end, ")"):
                return ("(", first, ":", second, ")"), end + 1
        return None

    def square(self, position: int, depth: int) -> tuple | None:
        """ "[" items "]", a schedule "[a:b:when]" / "[b:when]", or an alternation "[a|b]"."""
        return self._cached("square", position, depth, self._square)

    def _square(self, position: int, depth: int) -> tuple | None:
        first, position = self.sequence(position + 1, depth)
        if self._at(position, "]"):
            return ("[", first, "]"), position + 1
        if self._at(position, "|"):
            options = [first]
            while self._at(position, "|"):
                option, position = self.sequence(position + 1, depth)
                options.append(option)
            if self._at(position, "]"):
                return _Alternate(tuple(options)), position + 1
            return None
        if not self._at(position, ":"):
            return None
        when = self._when(position + 1)
        if when is not None:  # "[to:when]"
            return _Scheduled(None, first, when[0]), when[1]
        second, position = self.sequence(position + 1, depth)
        if self._at(position, ":"):
            when = self._when(position + 1)
            if when is not None:  # "[from:to:when]"
                return _Scheduled(first, second, when[0]), when[1]
        return None

    def _when(self, position: int) -> tuple[str, int] | None:
        """Optional spaces, a number, optional spaces and "]": (the number, the end)."""
        position = _SPACE.match(self.text, position).end()
        number = _NUMBER.match(self.text, position)
        if number is None:
            return None
        end = _SPACE.match(self.text, number.end()).end()
        return (number.group(), end + 1) if self._at(end, "]") else None

    def _at(self, position: int, char: str) -> bool:
        return position < len(self.text) and self.text[position] == char

    def prompt(self) -> tuple | None:
        """The whole prompt: items and stray brackets or colons, or None when it is not the syntax."""
        items: list = []
        position = 0
        while position < len(self.text):
            parsed, position = self.sequence(position, 0)
            items.extend(parsed)
            if position < len(self.text):
                char = self.text[position]
                if char not in "[]():":  # a "|" outside brackets, or a trailing backslash
                    return None
                items.append(char)  # a bracket or colon that opens or closes nothing: text
                position += 1
        return tuple(items)


def _parse(prompt: str) -> tuple | None:
    if "[" not in prompt:
        return None  # every schedule or alternation starts with "["
    try:
        return _Parser(prompt).prompt()
    except (_TooDeep, RecursionError):
        return None


def _when_step(when: str, steps: int) -> int:
    value = float(when)
    if "." in when:
        value *= steps  # a fraction of the steps
    if not math.isfinite(value):
        return steps if value > 0 else -1
    return min(steps, int(value))


def _boundaries(items, steps: int, found: set[int]) -> None:
    for item in items:
        if isinstance(item, _Scheduled):
            when = _when_step(item.when, steps)
            if when >= 1:
                found.add(when)
            _boundaries(item.before or (), steps, found)
            _boundaries(item.after, steps, found)
        elif isinstance(item, _Alternate):
            found.update(range(1, steps + 1))
            for option in item.options:
                _boundaries(option, steps, found)
        elif isinstance(item, tuple):
            _boundaries(item, steps, found)


def _text_at(items, step: int, steps: int, out: list[str]) -> None:
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, _Scheduled):
            _text_at(item.before or () if step <= _when_step(item.when, steps) else item.after, step, steps, out)
        elif isinstance(item, _Alternate):
            _text_at(item.options[(step - 1) % len(item.options)], step, steps, out)
        else:
            _text_at(item, step, steps, out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """A1111's schedule of `prompt` over `steps` denoising steps: (end step, text) pairs in
    order; denoising step ``i`` (from 0) reads the text of the first pair with end >= ``i``.

    Args:
        prompt: one prompt, with or without editing syntax.
        steps: the number of denoising steps, >= 1.

    Returns:
        ``[(steps, prompt)]`` for a prompt without editing syntax.

    Raises:
        TypeError, ValueError: `prompt` is not a string, or `steps` is not an int >= 1.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1, got {steps!r}")
    items = _parse(prompt)
    if items is None:
        return [(steps, prompt)]
    found = {steps}
    _boundaries(items, steps, found)
    schedule = []
    for end in sorted(found):
        out: list[str] = []
        _text_at(items, end, steps, out)
        schedule.append((end, "".join(out)))
    return schedule


def texts_per_step(prompt: str, steps: int) -> list[str]:
    """The text that conditions each denoising step 0 .. steps - 1 (A1111's rule above)."""
    schedule = prompt_schedule(prompt, steps)
    texts, entry = [], 0
    for step in range(steps):
        while schedule[entry][0] < step:
            entry += 1
        texts.append(schedule[entry][1])
    return texts


def has_schedule(prompt: str, steps: int = 2) -> bool:
    """True when `prompt` changes text between steps (editing or alternation that takes effect)
    over `steps` denoising steps (at least 2, the fewest over which a text can change)."""
    return len({text for _, text in prompt_schedule(prompt, max(steps, 2))}) > 1


def has_editing(prompt: str) -> bool:
    """True when `prompt` holds editing or alternation syntax that A1111 reads as such, whether
    or not its text changes over a given number of steps (``[cat:dog:0]`` never does)."""
    return _holds_construct(_parse(prompt) or ())


def _holds_construct(items) -> bool:
    return any(
        isinstance(item, (_Scheduled, _Alternate)) or (isinstance(item, tuple) and _holds_construct(item))
        for item in items
    )


def fixed_text(prompt: str, steps: int, split_at_and: bool = True) -> str:
    """The one text `prompt` reads at every one of `steps` steps when its schedule never
    changes (``"a [cat:dog:0]"`` -> ``"a dog"``, ``"[a:b:30]"`` over 20 steps -> ``"a"``), as
    A1111 conditions every step on it; `prompt` itself when its text changes between steps.
    With `split_at_and`, a prompt with AND is returned as it is: A1111 schedules each part on
    its own (negative prompts, which A1111 reads whole, pass False)."""
    if split_at_and and len(split_and(prompt)) > 1:
        return prompt
    schedule = prompt_schedule(prompt, steps)
    return schedule[0][1] if len({text for _, text in schedule}) == 1 else prompt


_AND = re.compile(r"\bAND\b")
_AND_WEIGHT = re.compile(r"\s*[-+]?(?:\d+\.?|\d*\.\d+)")  # what follows a part's last ":"


def split_and(prompt: str) -> list[tuple[str, float]]:
    """A1111's composable prompts: "a cat :1.2 AND a dog :0.8" -> [("a cat", 1.2), ("a dog", 0.8)].

    The prompt is split at every ``AND`` (upper case, a whole word); a part ending in
    ``:number`` takes that weight (default 1.0) and loses the suffix and the spaces before it.
    A weight is kept within [-`MAX_WEIGHT`, `MAX_WEIGHT`] as `parse_prompt` keeps its weights
    (A1111 reads a number beyond the largest float as inf, which makes every latent NaN).
    A prompt without ``AND`` is one part of weight 1.0, its text unchanged.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}")
    if "AND" not in prompt:
        return [(prompt, 1.0)]
    return [_weighted_part(part) for part in _AND.split(prompt)]


def _weighted_part(part: str) -> tuple[str, float]:
    """A1111's `^((?:\\s|.)*?)(?:\\s*:\\s*(number))?\\s*$` on one part, in linear time (the
    pattern rescans a long run of spaces from each of its positions): the part without its end
    spaces and, when it ends in ":number", without that suffix and the spaces before it."""
    text = part.rstrip()
    colon = text.rfind(":")  # a number holds no ":", so only the last one can start the suffix
    if colon >= 0 and _AND_WEIGHT.fullmatch(text, colon + 1):
        weight = float(text[colon + 1 :])
        return text[:colon].rstrip(), min(max(weight, -MAX_WEIGHT), MAX_WEIGHT)
    return text, 1.0
