"""The prompt syntaxes clipcond reads, by name, and the parser of each.

- ``"a1111"`` (`clipcond.prompts`): ``(word:1.3)``, ``[word]``, ``BREAK``, and A1111's prompt
  editing, alternation and ``AND`` where steps are read.
- ``"compel"`` (`clipcond.compel_syntax`): ``word+``, ``(words)1.3``, ``.and()``, ``.blend()``.
- ``"comfy"`` (`clipcond.comfy_syntax`): ComfyUI's ``(words)``, ``(words:1.3)`` (an explicit
  weight replaces the enclosing one) and ``embedding:name``.

Only A1111's syntax changes text between steps; in the others ``[a:b:0.5]``, ``AND`` and
``BREAK`` are text.
"""

from __future__ import annotations

from clipcond.comfy_syntax import parse_comfy_prompt
from clipcond.compel_syntax import parse_compel_combination, parse_compel_prompt
from clipcond.network_tags import split_network_tags
from clipcond.prompts import Fragment, parse_prompt

SYNTAXES = ("a1111", "compel", "comfy")

_EXAMPLES = "A1111's `(word:1.3)`, compel's `word+`, `(words)1.3`, or ComfyUI's `(words:1.3)`"


def check_syntax(syntax: object, argument: str = "syntax") -> str:
    """`syntax` if it names a prompt syntax of `SYNTAXES`; a TypeError or ValueError naming
    `argument` otherwise."""
    if not isinstance(syntax, str):
        raise TypeError(f"`{argument}` must be a str, one of {list(SYNTAXES)}, got {type(syntax).__name__}")
    if syntax not in SYNTAXES:
        raise ValueError(f"`{argument}` must be one of {list(SYNTAXES)} ({_EXAMPLES}), got {syntax!r}")
    return syntax


def parse_in_syntax(text: str, syntax: str) -> list[Fragment]:
    """`text` (one prompt, or one step's text of it) read as weighted fragments in `syntax`
    (one of `SYNTAXES`), by that syntax's parser."""
    if syntax == "compel":
        return parse_compel_prompt(text)
    if syntax == "comfy":
        return parse_comfy_prompt(text)
    return parse_prompt(text)


def prompt_fragments(prompt: str, syntax: str) -> list[Fragment]:
    """Every weighted fragment a whole prompt holds in `syntax`, read as the conditioner reads
    it: the parts of compel's ``.blend()`` and ``.and()`` one after another, and A1111's LoRA
    tags taken out (a pipeline reads them; `split_network_tags`). For what a prompt says (its
    words), and to refuse one that cannot be read before a model loads.

    Raises:
        ValueError: what the syntax's parsers refuse (compel's ``.swap()``, a blend's weights
            that do not match its parts, a LoRA tag with a multiplier that is no number).
    """
    if syntax == "compel":
        combination = parse_compel_combination(prompt)
        return [
            fragment
            for part in (combination.parts if combination else [prompt])
            for fragment in parse_compel_prompt(part)
        ]
    if syntax == "a1111":
        prompt = split_network_tags(prompt)[0]
    return parse_in_syntax(prompt, syntax)
