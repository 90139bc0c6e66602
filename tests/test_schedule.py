"""Prompt editing, alternation and AND: A1111's own examples, properties, and linear work."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from line_counter import lines_executed

from clipcond.schedule import (
    MAX_DEPTH,
    fixed_text,
    has_editing,
    has_schedule,
    prompt_schedule,
    split_and,
    texts_per_step,
)

# The docstring of A1111's get_learned_conditioning_prompt_schedules, 10 steps.
A1111_EXAMPLES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
    # A1111's docstring lists [(5, 'a  c'), (10, 'a {b|d{ c')] here, from an older lark; lark 1.x,
    # and so A1111 today, cannot parse it and leaves the prompt as text, as clipcond does.
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
]


@pytest.mark.parametrize("prompt,expected", A1111_EXAMPLES)
def test_a1111_docstring_examples(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


@pytest.mark.parametrize(
    "prompt,steps,expected",
    [
        ("a [cat:dog:0.5]", 10, ["a cat"] * 6 + ["a dog"] * 4),  # step i reads the first entry ending >= i
        ("a [cat:dog:4]", 10, ["a cat"] * 5 + ["a dog"] * 5),
        ("a [cat:dog:20]", 10, ["a cat"] * 10 + []),  # `when` past the end: capped at the steps
        ("a [cat:dog:0]", 10, ["a dog"] * 10),  # `when` before the start: "to" from step 0
        ("a [cat:dog:-3]", 10, ["a dog"] * 10),
        ("[a|b|c]", 6, ["a", "a", "b", "c", "a", "b"]),
        ("x [:y:0.5]", 4, ["x "] * 3 + ["x y"]),  # "[to:when]" with an empty "from"
        ("x [y::0.5]", 4, ["x y"] * 3 + ["x "]),  # "[from::when]"
        ("a [b:c:1e1]", 20, ["a b"] * 11 + ["a c"] * 9),  # an exponent is a step number
    ],
)
def test_which_text_each_step_reads(prompt, steps, expected):
    assert texts_per_step(prompt, steps) == expected


@pytest.mark.parametrize(
    "prompt",
    ["a | b [c:d:5]", "[c:d:5] tail\\", "[a:b]", "[a:b:c]", "a ]b[ c", "[a:b:5", "(a [b:c:2]"],
)
def test_what_is_not_the_syntax_stays_text(prompt):
    """A "|" outside brackets or a trailing backslash: the whole prompt is text (as in A1111);
    a square bracket with a colon and no number, or unbalanced: that part is text."""
    schedule = prompt_schedule(prompt, 10)
    if "|" in prompt or prompt.endswith("\\") or prompt in ("[a:b]", "[a:b:c]", "a ]b[ c", "[a:b:5"):
        assert schedule == [(10, prompt)]
    else:  # "(a" is stray text, the schedule after it still applies
        assert [text for _, text in schedule] == ["(a b", "(a c"]


@pytest.mark.parametrize("prompt", ["a [cat:dog:５]", "a [cat:dog:٠.٥]", "a [cat:dog:0.5] \\\nphoto"])
def test_non_ascii_digits_and_a_backslash_before_a_newline_are_text_as_in_a1111(prompt):
    """lark's SIGNED_NUMBER reads ASCII digits only, and its escape does not take a newline (A1111
    then reads the whole prompt as text). Before: both were schedules here."""
    assert prompt_schedule(prompt, 10) == [(10, prompt)]
    assert not has_editing(prompt)


def test_has_editing_sees_the_syntax_whether_or_not_it_changes():
    assert has_editing("a [cat:dog:0]") and has_editing("[dog|dog]") and has_editing("x [a:b:30]")
    assert not has_schedule("a [cat:dog:0]", 10) and has_schedule("[cat|dog]", 2)
    assert not has_editing("a [cat] (dog:1.2)") and not has_editing("[a:b]")
    assert fixed_text("a [cat:dog:0]", 4) == "a dog" and fixed_text("[a:b:30]", 20) == "a"


def test_has_schedule_counts_two_steps_by_default():
    """Two steps, the fewest over which a text can change: a switch at step 1 takes effect, one
    at step 2 (or later) is capped to the last step and never does."""
    assert has_schedule("a [cat:dog:1]") and not has_schedule("a [cat:dog:2]")
    assert has_schedule("a [cat:dog:2]", 3)
    assert fixed_text("a [cat:dog:2]", 4) == "a [cat:dog:2]"  # it changes: kept for the schedule
    assert fixed_text("[a:b:0] AND c", 4) == "[a:b:0] AND c"  # A1111 schedules each part


def test_split_and_follows_a1111():
    assert split_and("a cat :1.2 AND a dog :0.8") == [("a cat", 1.2), (" a dog", 0.8)]
    assert split_and("a cat AND a dog") == [("a cat", 1.0), (" a dog", 1.0)]  # trailing spaces go
    assert split_and("a cat :-0.5 AND dog : .5") == [("a cat", -0.5), (" dog", 0.5)]
    assert split_and("ANDROID and ANDy") == [("ANDROID and ANDy", 1.0)]  # a whole word, upper case
    assert split_and("a [cat:dog:3] AND b") == [("a [cat:dog:3]", 1.0), (" b", 1.0)]
    # beyond the largest float A1111 reads inf (NaN latents after every step): kept within MAX_WEIGHT
    assert split_and("a cat :" + "9" * 400 + " AND b :-" + "9" * 400) == [("a cat", 1e4), (" b", -1e4)]
    assert split_and("a :20000 AND b :0.5") == [("a", 1e4), (" b", 0.5)]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="`steps` must be an int >= 1"):
        prompt_schedule("a [b:c:1]", 0)
    with pytest.raises(TypeError, match="`prompt` must be a string"):
        prompt_schedule(None, 10)


def test_nesting_deeper_than_the_limit_is_text_not_a_crash():
    deep = "[a:" * (MAX_DEPTH + 5) + "b" + ":1]" * (MAX_DEPTH + 5)
    assert prompt_schedule(deep, 10) == [(10, deep)]
    shallow = "[a:" * 5 + "b" + ":1]" * 5
    assert len(prompt_schedule(shallow, 10)) == 2


SCHEDULE_PIECES = ["[", "]", "(", ")", ":", "|", "\\", " ", "a", "b", "1", "0.5", ".3", "-2", "[a:b:", ":2]", "AND"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(SCHEDULE_PIECES), max_size=25).map("".join), st.integers(1, 30))
def test_never_raises_and_ends_at_the_last_step(prompt, steps):
    schedule = prompt_schedule(prompt, steps)
    ends = [end for end, _ in schedule]
    assert ends == sorted(set(ends)) and ends[-1] == steps and ends[0] >= 1
    assert len(texts_per_step(prompt, steps)) == steps
    if "[" not in prompt:
        assert schedule == [(steps, prompt)] and not has_schedule(prompt, steps)
    parts = split_and(prompt)
    assert parts and all(isinstance(weight, float) for _, weight in parts)


@pytest.mark.parametrize("unit", ["[a", "[a:", "[a|", "(a", "[a:b:", "]a[", "[(a:1"])
def test_parsing_work_grows_linearly(unit):
    """Brackets that never close are retried at every position by a naive parser (quadratic);
    results kept per position make the work linear."""
    small = lines_executed("schedule.py", prompt_schedule, unit * 1000, 10)
    large = lines_executed("schedule.py", prompt_schedule, unit * 2000, 10)
    assert large <= 2.2 * small, (unit, small, large)


# A1111's own patterns for BREAK and for an AND part's weight (modules/prompt_parser.py): the
# reference the linear-time versions must agree with on any text
A1111_BREAK = re.compile(r"\s*\bBREAK\b\s*")
A1111_AND_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
SPACE_PIECES = ["BREAK", "AND", " ", "   ", "\n", "\t", "\u00a0", "\u3000", "a", "x", ":", ":0.", "1", ".", "-"]
SPACE_PIECES += ["+", "2.5", ",", "BREAKx", "xBREAK", " :-1.5 ", ": .5", "ANDy"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(SPACE_PIECES), max_size=12).map("".join))
def test_break_and_and_weights_split_as_a1111s_patterns(text):
    """The linear-time BREAK split and AND-part weights equal A1111's regular expressions (which
    take seconds on a long run of spaces: 22 s and 8 s for 40,000 here)."""
    from clipcond.prompts import _split_at_breaks

    assert _split_at_breaks(text) == A1111_BREAK.split(text)
    expected = []
    for part in re.split(r"\bAND\b", text):
        body, weight = A1111_AND_WEIGHT.search(part).groups()
        expected.append((body, float(weight) if weight is not None else 1.0))
    assert split_and(text) == (expected if "AND" in text else [(text, 1.0)])


def test_round_brackets_keep_their_text_inside_and_around_editing():
    # the module docstring's own example: "([a:b:3])" becomes "(a)" or "(b)"
    assert prompt_schedule("([a:b:3])", 10) == [(3, "(a)"), (10, "(b)")]
    # a plain "( )" inside an editing construct or an alternation is one item of it
    assert prompt_schedule("[(a):b:3]", 10) == [(3, "(a)"), (10, "b")]
    assert prompt_schedule("[(a)|b]", 2) == [(1, "(a)"), (2, "b")]


def test_nesting_up_to_max_depth_is_read_and_one_more_is_text():
    for depth in (MAX_DEPTH - 1, MAX_DEPTH):
        square = "[a:" * depth + "b" + ":1]" * depth
        assert len(prompt_schedule(square, 10)) == 2, depth
        round_ = "(" * (depth - 1) + "[a:b:1]" + ")" * (depth - 1)
        assert len(prompt_schedule(round_, 10)) == 2, depth
    over = "[a:" * (MAX_DEPTH + 1) + "b" + ":1]" * (MAX_DEPTH + 1)
    assert prompt_schedule(over, 10) == [(10, over)]


def test_any_letter_is_text_around_the_syntax():
    # every letter, upper case included, is plain text beside and inside the brackets
    assert prompt_schedule("X [a:b:1]", 10) == [(1, "X a"), (10, "X b")]
    assert prompt_schedule("[X:Y:1] XX", 10) == [(1, "X XX"), (10, "Y XX")]


def test_a_when_beyond_the_float_range_is_the_first_or_the_last_step():
    # float("1e999") is inf: "from" at every step; -inf: "to" at every step (A1111 raises there)
    assert prompt_schedule("[a:b:1e999]", 10) == [(10, "a")]
    assert prompt_schedule("[a:b:1.e999]", 10) == [(10, "a")]
    assert prompt_schedule("[a:b:-1e999]", 10) == [(10, "b")]


def test_schedules_nested_in_from_in_an_alternation_and_after_a_weight_colon():
    # A1111's own examples nest only in "to"; "from", an alternation's options and the part of
    # a round bracket after its colon hold schedules too
    assert prompt_schedule("[[a:b:2]:c:5]", 10) == [(2, "a"), (5, "b"), (10, "c")]
    assert prompt_schedule("[[a:b:2]|c]", 4) == [(1, "a"), (2, "c"), (3, "b"), (4, "c")]
    assert prompt_schedule("(a:[b:c:2])", 10) == [(2, "(a:b)"), (10, "(a:c)")]


def test_steps_must_be_a_whole_number_and_prompt_a_string():
    for steps in (True, 2.5, "10"):
        with pytest.raises((ValueError, TypeError), match="`steps` must be an int >= 1"):
            prompt_schedule("a [b:c:1]", steps)
    with pytest.raises(TypeError, match="`prompt` must be a string, got int"):
        prompt_schedule(5, 10)
    with pytest.raises(TypeError, match="`prompt` must be a string, got bytes"):
        split_and(b"a AND b")


def test_an_and_part_that_is_only_a_weight():
    # A1111's pattern on ":1.5 ": body "", weight 1.5
    assert split_and(":1.5 AND b") == [("", 1.5), (" b", 1.0)]
