"""The prompt weighting syntax: exact cases and a fuzz that it never raises."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipcond.prompts import MAX_WEIGHT, MIN_WEIGHT, Fragment, has_weights, parse_prompt, prompt_text

CASES = [
    ("a photo of a cat", [("a photo of a cat", 1.0)]),
    ("", [("", 1.0)]),
    ("  spaced  out  ", [("  spaced  out  ", 1.0)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word: 1.3 )", [("word", 1.3)]),
    ("(word:.5)", [("word", 0.5)]),
    ("(word:2)", [("word", 2.0)]),
    ("(word)", [("word", 1.1)]),
    ("((word))", [("word", 1.1**2)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("[(word)]", [("word", 1.0)]),
    ("((a:1.5) b)", [("a", 1.65), (" b", 1.1)]),
    ("a (red:1.2) cat", [("a ", 1.0), ("red", 1.2), (" cat", 1.0)]),
    ("a (cat:1.0) b", [("a cat b", 1.0)]),
    (r"\(not weighted\)", [("(not weighted)", 1.0)]),
    (r"\[x\] \\ y", [("[x] \\ y", 1.0)]),
    ("a ) b ] c", [("a ) b ] c", 1.0)]),
    ("a (cat", [("a ", 1.0), ("cat", 1.1)]),
    ("a [cat", [("a ", 1.0), ("cat", 1 / 1.1)]),
    ("(a:-1)", [("a:-1", 1.1)]),
    ("(a:0)", [("a:0", 1.1)]),
    ("(a:1e999)", [("a:1e999", 1.1)]),
    ("[w:1.5]", [("w:1.5", 1 / 1.1)]),
    ("time: noon", [("time: noon", 1.0)]),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_syntax(text, expected):
    fragments = parse_prompt(text)
    assert [f.text for f in fragments] == [t for t, _ in expected]
    assert [f.weight for f in fragments] == pytest.approx([w for _, w in expected])
    assert not any(f.is_break for f in fragments)


def test_plain_prompt_is_returned_unchanged():
    text = "a red circle, to the left of a blue square; 3 dogs & 2 cats!"
    assert parse_prompt(text) == [Fragment(text, 1.0)]
    assert not has_weights(parse_prompt(text))


def test_break_splits_and_trims():
    fragments = parse_prompt("a red circle BREAK a (blue:1.2) square")
    assert [(f.text, f.is_break) for f in fragments] == [
        ("a red circle", False), ("", True), ("a ", False), ("blue", False), (" square", False)
    ]
    assert has_weights(fragments)
    assert prompt_text(fragments) == "a red circle a blue square"
    assert not any(f.is_break for f in parse_prompt("BREAKING news break"))


def test_weights_are_clamped():
    deep = parse_prompt("(" * 2000 + "x")
    assert deep[-1].weight == MAX_WEIGHT
    tiny = parse_prompt("[" * 2000 + "x")
    assert tiny[-1].weight == MIN_WEIGHT
    huge = parse_prompt("(((a:9e30):9e30):9e30)")
    assert huge[0].weight == MAX_WEIGHT


def _check(text: str) -> None:
    fragments = parse_prompt(text)
    assert fragments
    for fragment in fragments:
        assert isinstance(fragment.weight, float)
        assert math.isfinite(fragment.weight) and fragment.weight > 0
        if fragment.is_break:
            assert fragment.text == "" and fragment.weight == 1.0
        elif len(fragments) > 1:
            assert fragment.text
    allowed = set(text)
    assert set(prompt_text(fragments)) <= allowed | {" "}


@settings(max_examples=3000, deadline=None)
@given(st.text())
def test_fuzz_any_text(text):
    _check(text)


SYNTAX = st.lists(
    st.sampled_from(["(", ")", "[", "]", ":", "\\", " ", ".", "1", "0", "-", "e", "9", "BREAK", "cat", ":1.5)", ":-2)", ":inf)"]),
    max_size=40,
).map("".join)


@settings(max_examples=3000, deadline=None)
@given(SYNTAX)
def test_fuzz_syntax_heavy_text(text):
    _check(text)
