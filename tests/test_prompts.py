"""The prompt weighting syntax: exact cases, A1111's own examples, an oracle built from syntax
trees, a differential fuzz against a reference of A1111's rules, invariants, and linear work."""

from __future__ import annotations

import math
import random

import a1111_attention_reference
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from line_counter import lines_executed

from clipcond.prompts import (
    MAX_WEIGHT,
    ROUND_MULTIPLIER,
    SQUARE_MULTIPLIER,
    Fragment,
    has_weights,
    parse_prompt,
    prompt_text,
)

UP, DOWN = 1.1, 1 / 1.1
BREAK = "<BREAK>"  # stands for a break marker in the tables below

CASES = [
    # plain prompts: one fragment, the text unchanged
    ("a photo of a cat", [("a photo of a cat", 1.0)]),
    ("", [("", 1.0)]),
    ("  spaced \t out \n", [("  spaced \t out \n", 1.0)]),
    ("time: noon, ratio 3:2", [("time: noon, ratio 3:2", 1.0)]),
    ("break BREAKING xBREAK BREAK_1", [("break BREAKING xBREAK BREAK_1", 1.0)]),
    # round and square brackets, nesting multiplies
    ("(word)", [("word", UP)]),
    ("((word))", [("word", UP**2)]),
    ("(((word)))", [("word", UP**3)]),
    ("[word]", [("word", DOWN)]),
    ("[[word]]", [("word", DOWN**2)]),
    ("[(word)]", [("word", 1.0)]),
    ("a (red) cat", [("a ", 1.0), ("red", UP), (" cat", 1.0)]),
    ("(a [b] c)", [("a ", UP), ("b", UP * DOWN), (" c", UP)]),
    # explicit weights
    ("(word:1.3)", [("word", 1.3)]),
    ("(word:0.5)", [("word", 0.5)]),
    ("(word:2)", [("word", 2.0)]),
    ("(word:.5)", [("word", 0.5)]),
    ("(word:1.)", [("word", 1.0)]),
    ("(word:+1.5)", [("word", 1.5)]),
    ("(word: 1.2 )", [("word", 1.2)]),
    ("(word:\t1.2\n)", [("word", 1.2)]),
    ("((a:1.5) b)", [("a", 1.5 * UP), (" b", UP)]),
    ("((a b):0.5)", [("a b", UP * 0.5)]),
    ("[(a:1.5)]", [("a", 1.5 * DOWN)]),
    ("a (red:1.2) cat", [("a ", 1.0), ("red", 1.2), (" cat", 1.0)]),
    ("a (cat:1.0) b", [("a cat b", 1.0)]),
    ("(a:1.2)(b:1.2)", [("ab", 1.2)]),
    ("(a:1.2)(b:1.3)", [("a", 1.2), ("b", 1.3)]),
    # zero and negative weights are weights, as in A1111
    ("(a:-1)", [("a", -1.0)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a:0.0) b", [("a", 0.0), (" b", 1.0)]),
    ("((a:-2))", [("a", -2.0 * UP)]),
    ("(a:-0.5)(b:-.5)", [("ab", -0.5)]),
    # no number A1111 reads (it has no exponents, no inf): the text stays, brackets act as ( )
    ("(word:1e-1)", [("word:1e-1", UP)]),
    ("(a:1e999)", [("a:1e999", UP)]),
    ("(a:inf)", [("a:inf", UP)]),
    ("(a:nan)", [("a:nan", UP)]),
    ("(a:1,5)", [("a:1,5", UP)]),
    ("(a:-)", [("a:-", UP)]),
    ("(a:b:1.5)", [("a:b", 1.5)]),
    # numbers A1111 raises on: the colon is text (a deliberate difference)
    ("(a:.)", [("a:.", UP)]),
    ("(a:1.2.3)", [("a:1.2.3", UP)]),
    # a weight spec with no round bracket open is text, its ")" included
    ("a:1.5) b", [("a:1.5) b", 1.0)]),
    ("[a:1.5)]", [("a:1.5)", DOWN)]),
    # square brackets never take a weight (A1111 prompt editing reads as text)
    ("[word:1.5]", [("word:1.5", DOWN)]),
    ("[a:b:0.5]", [("a:b:0.5", DOWN)]),
    # escapes
    (r"\(not weighted\)", [("(not weighted)", 1.0)]),
    (r"\[x\] \\ y", [("[x] \\ y", 1.0)]),
    (r"(\(a\))", [("(a)", UP)]),
    (r"\\(a)", [("\\", 1.0), ("a", UP)]),
    (r"(a\:1.5)", [("a", 1.5)]),  # ":" is not escapable: the backslash is dropped, as in A1111
    (r"C:\path\x", [("C:pathx", 1.0)]),
    ("a\\", [("a", 1.0)]),
    # unbalanced brackets: an open one weights the rest, a stray closing one is text
    ("a ) b ] c", [("a ) b ] c", 1.0)]),
    ("a (cat", [("a ", 1.0), ("cat", UP)]),
    ("a [cat", [("a ", 1.0), ("cat", DOWN)]),
    ("((a) b", [("a", UP**2), (" b", UP)]),
    ("(a:1.5", [("a:1.5", UP)]),
    ("(a:1.5))", [("a", 1.5), (")", 1.0)]),
    ("a ()[] b", [("a  b", 1.0)]),
    ("()", [("", 1.0)]),
    ("((((", [("", 1.0)]),
    # round and square brackets are matched separately, as in A1111
    ("(a [b) c]", [("a ", UP), ("b", UP * DOWN), (" c", DOWN)]),
    ("([a:1.5)]", [("a", 1.5 * DOWN)]),
    ("[a (b] c)", [("a ", DOWN), ("b", DOWN * UP), (" c", UP)]),
    # BREAK
    ("a red circle BREAK a blue square", [("a red circle", 1.0), BREAK, ("a blue square", 1.0)]),
    ("a  \n BREAK\t\tb", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("BREAK", [BREAK]),
    ("BREAK a", [BREAK, ("a", 1.0)]),
    ("a BREAK", [("a", 1.0), BREAK]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK, BREAK, ("b", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), BREAK, (",b", 1.0)]),
    ("(a BREAK b)", [("a", UP), BREAK, ("b", UP)]),
    ("(a) BREAK (b)", [("a", UP), BREAK, ("b", UP)]),
    ("(a ) BREAK", [("a ", UP), BREAK]),
    ("a BREAK (b:1.2) c", [("a", 1.0), BREAK, ("b", 1.2), (" c", 1.0)]),
    ("(BREAK:1.5)", [BREAK]),
    ("(a BREAK b:-1)", [("a", -1.0), BREAK, ("b", -1.0)]),  # a break inside brackets (a deliberate difference)
    ("\\BREAK", [BREAK]),
    ("x\\( BREAK y", [("x(", 1.0), BREAK, ("y", 1.0)]),  # whitespace dropped up to the escape
    ("x \\(BREAK", [("x (", 1.0), BREAK]),
    ("Break break", [("Break break", 1.0)]),
]


def _expected(rows) -> list[Fragment]:
    return [Fragment("", 1.0, True) if row == BREAK else Fragment(*row) for row in rows]


@pytest.mark.parametrize("text,rows", CASES)
def test_syntax(text, rows):
    fragments = parse_prompt(text)
    expected = _expected(rows)
    assert [(f.text, f.is_break) for f in fragments] == [(f.text, f.is_break) for f in expected]
    assert [f.weight for f in fragments] == pytest.approx([f.weight for f in expected], rel=1e-12)


def test_multipliers_are_a1111s():
    assert ROUND_MULTIPLIER == 1.1
    assert SQUARE_MULTIPLIER == 1 / 1.1


@pytest.mark.parametrize(
    "text", ["a red circle, to the left of a blue square; 3 dogs & 2 cats!", " ", "\n\n", "é 日本 🙂 ::"]
)
def test_plain_prompt_is_one_unchanged_fragment(text):
    fragments = parse_prompt(text)
    assert fragments == [Fragment(text, 1.0)]
    assert type(fragments[0].weight) is float
    assert not has_weights(fragments)
    assert prompt_text(fragments) == text


def test_weight_exactly_one_outside_brackets():
    # Exactly 1.0, not approximately: unweighted text must encode like a plain prompt.
    fragments = parse_prompt("a (b) c [d] e [(f)]")
    assert [(f.text, f.weight) for f in fragments if f.weight == 1.0] == [("a ", 1.0), (" c ", 1.0), (" e f", 1.0)]


def test_weights_are_kept_within_max_weight():
    """A1111's weights become infinite (and the embeddings NaN) with deep nesting or long digit
    runs; here every weight stays within [-MAX_WEIGHT, MAX_WEIGHT] (a deliberate difference)."""
    assert parse_prompt("(" * 2000 + "x") == [Fragment("x", MAX_WEIGHT)]
    assert parse_prompt("(" * 2000 + "x" + ")" * 2000) == [Fragment("x", MAX_WEIGHT)]
    assert parse_prompt("(((a:" + "9" * 400 + "):9):9)") == [Fragment("a", MAX_WEIGHT)]
    assert parse_prompt("((a:-" + "9" * 400 + "):9)") == [Fragment("a", -MAX_WEIGHT)]
    assert parse_prompt("(a:20000)(b:30000)") == [Fragment("ab", MAX_WEIGHT)]
    # deep nesting of a zero stays zero, never NaN (no infinite factor meets it)
    assert parse_prompt("(" * 2000 + "(x:0)") == [Fragment("x", 0.0)]
    # small weights underflow to zero like A1111's, keeping their sign
    assert parse_prompt("[" * 8000 + "x") == [Fragment("x", 0.0)]
    assert math.copysign(1, parse_prompt("[" * 8000 + "(x:-1)")[0].weight) == -1
    # in range: kept as is
    assert parse_prompt("(a:9999)") == [Fragment("a", 9999.0)]
    assert parse_prompt("(a:0.0002)") == [Fragment("a", 0.0002)]


# A1111's own examples: the docstring of parse_prompt_attention (modules/prompt_parser.py).
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


def test_products_beyond_the_float_range_are_exact_limits():
    """A product below the smallest float is zero with its sign; a factor beyond the largest
    float (a long digit run) times a zero inside it is zero, not NaN."""
    tiny = "0." + "0" * 199 + "1"  # 1e-200: two of them multiply to 1e-400, below any float
    assert parse_prompt(f"((a:{tiny}):{tiny}) b") == [Fragment("a", 0.0), Fragment(" b", 1.0)]
    (negative,) = parse_prompt(f"((a:-{tiny}):{tiny})")
    assert negative.weight == 0.0 and math.copysign(1.0, negative.weight) == -1.0
    huge = "9" * 400
    assert parse_prompt(f"((red:0) cat:{huge})") == [Fragment("red", 0.0), Fragment(" cat", MAX_WEIGHT)]


@pytest.mark.parametrize("text,rows", A1111_EXAMPLES)
def test_a1111_docstring_examples_exactly(text, rows):
    """Texts and weights equal to the last bit (the products of these examples come out the same
    in either multiplication order)."""
    assert [(f.text, f.weight) for f in parse_prompt(text)] == rows


def test_not_a_string_is_a_type_error():
    with pytest.raises(TypeError, match="must be a string, got list"):
        parse_prompt(["a cat"])
    with pytest.raises(TypeError, match="got NoneType"):
        parse_prompt(None)


def test_fragment_is_frozen():
    with pytest.raises(AttributeError):
        parse_prompt("a")[0].weight = 2.0


def test_has_weights():
    assert not has_weights([Fragment("a", 1.0)])
    assert not has_weights(parse_prompt("a [(b)] c \\(d\\)"))
    assert has_weights(parse_prompt("a (b)"))
    assert has_weights(parse_prompt("a [b]"))
    assert has_weights(parse_prompt("a BREAK b"))
    assert not has_weights([])


def test_prompt_text():
    assert prompt_text(parse_prompt("a (red:1.2) cat BREAK [on] a \\(mat\\)")) == "a red cat on a (mat)"
    assert prompt_text(parse_prompt("")) == ""
    assert prompt_text([]) == ""


# ------------------------------------------------------------------ oracle from syntax trees
# A tree of nodes renders to a prompt; walking the tree gives the fragments it must parse to.
# Nodes: ("text", s), ("break",), ("round", kids), ("square", kids), ("weight", kids, number).

LEAF_CHARS = "ab z,.é1\t()[]\\"  # brackets and backslash are rendered escaped
WEIGHT_NUMBERS = st.one_of(
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False).map(str),
    st.sampled_from(["1.3", ".5", "2", "1.", "+0.8", "-1", "0", "-.25", " 1.2 ", "\t0.9"]),
)
LEAVES = st.one_of(
    st.tuples(st.just("text"), st.text(alphabet=LEAF_CHARS, min_size=1, max_size=5)),
    st.tuples(st.just("break")),
)
TREES = st.lists(
    st.recursive(
        LEAVES,
        lambda kids: st.one_of(
            st.tuples(st.just("round"), st.lists(kids, max_size=3)),
            st.tuples(st.just("square"), st.lists(kids, max_size=3)),
            st.tuples(st.just("weight"), st.lists(kids, max_size=3), WEIGHT_NUMBERS),
        ),
        max_leaves=12,
    ),
    max_size=5,
)


def _render(nodes) -> str:
    parts = []
    for node in nodes:
        kind = node[0]
        if kind == "text":
            parts.append("".join("\\" + c if c in "()[]\\" else c for c in node[1]))
        elif kind == "break":
            parts.append(" BREAK ")
        elif kind == "round":
            parts.append("(" + _render(node[1]) + ")")
        elif kind == "square":
            parts.append("[" + _render(node[1]) + "]")
        else:
            parts.append("(" + _render(node[1]) + ":" + node[2] + ")")
    return "".join(parts)


def _items(nodes, factors, out) -> None:
    """Flatten to ("char", c, weight), ("edge",) where a bracket or weight spec is, ("break",)."""
    for node in nodes:
        kind = node[0]
        if kind == "text":
            # as clipcond documents: round brackets' product times square brackets', each
            # taken outermost first
            round_weight, square_weight = 1.0, 1.0
            for kind_of_factor, factor in factors:
                if kind_of_factor == "square":
                    square_weight *= factor
                else:
                    round_weight *= factor
            weight = round_weight * square_weight
            out.extend(("char", c, weight) for c in node[1])
        elif kind == "break":
            out.append(("break",))
        else:
            factor = {"round": 1.1, "square": 1 / 1.1}.get(kind) or float(node[2])
            out.append(("edge",))
            _items(node[1], factors + [(kind, factor)], out)
            out.append(("edge",))


def _oracle(nodes) -> list[Fragment]:
    items: list = []
    _items(nodes, [], items)
    kept: list = []
    skip_space = False
    for item in items:
        if item[0] == "break":
            while kept and kept[-1][0] == "char" and kept[-1][1].isspace():
                kept.pop()  # whitespace right before BREAK, up to a bracket
            kept.append(item)
            skip_space = True
        elif item[0] == "char" and skip_space and item[1].isspace():
            continue  # whitespace right after BREAK
        else:
            skip_space = item[0] == "break"
            kept.append(item)
    fragments: list[Fragment] = []
    for item in kept:
        if item[0] == "break":
            fragments.append(Fragment("", 1.0, True))
        elif item[0] == "char":
            weight = min(max(item[2], -MAX_WEIGHT), MAX_WEIGHT)
            if fragments and not fragments[-1].is_break and fragments[-1].weight == weight:
                fragments[-1] = Fragment(fragments[-1].text + item[1], weight)
            else:
                fragments.append(Fragment(item[1], weight))
    return fragments or [Fragment("", 1.0)]


@settings(max_examples=1000, deadline=None)
@given(TREES)
def test_matches_oracle_on_well_formed_prompts(nodes):
    # Exact equality: the same products, outermost bracket first, so merging agrees too.
    assert parse_prompt(_render(nodes)) == _oracle(nodes)


# ------------------------------------------------------------------ fuzz: never raises, invariants


def _is_subsequence(small: str, big: str) -> bool:
    chars = iter(big)
    return all(c in chars for c in small)


def _check_invariants(text: str) -> None:
    fragments = parse_prompt(text)
    assert fragments
    for fragment in fragments:
        assert type(fragment.weight) is float
        assert math.isfinite(fragment.weight) and -MAX_WEIGHT <= fragment.weight <= MAX_WEIGHT
        if fragment.is_break:
            assert fragment.text == "" and fragment.weight == 1.0
        elif fragments != [Fragment("", 1.0)]:
            assert fragment.text, fragments
    for left, right in zip(fragments, fragments[1:]):
        assert left.is_break or right.is_break or left.weight != right.weight, "unmerged neighbours"
    # Parsing only removes characters (syntax, escape backslashes, BREAK and its whitespace).
    assert _is_subsequence("".join(f.text for f in fragments), text)
    if not any(c in "()[]\\:" for c in text) and "BREAK" not in text:
        assert fragments == [Fragment(text, 1.0)]


@settings(max_examples=3000, deadline=None)
@given(st.text())
def test_fuzz_any_text(text):
    _check_invariants(text)


SYNTAX_PIECES = [
    "(",
    ")",
    "[",
    "]",
    ":",
    "\\",
    " ",
    "\t",
    ".",
    "0",
    "1",
    "9",
    "-",
    "+",
    "e",
    "E",
    "B",
    "BREAK",
    " BREAK ",
    "cat",
    "é",
    ":1.5)",
    ": 2 )",
    ":-2)",
    ":0)",
    ":inf)",
    ":1e999)",
    ":9e30)",
    ":.5)",
    "\\(",
    "\\)",
    "\\\\",
    "((",
    "]]",
    "((a:1.5) b)",
    "[(x)]",
    "(y:0.5",
    "[z:1.2]",
]
# Flat lists of pieces: cheap to generate, and brackets still nest and cross at random.
SYNTAX_TEXT = st.lists(st.sampled_from(SYNTAX_PIECES), max_size=30).map("".join)


@settings(max_examples=3000, deadline=None)
@given(SYNTAX_TEXT)
def test_fuzz_syntax_heavy_text(text):
    _check_invariants(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(exclude_characters="B"), max_size=30))
def test_escaped_text_reads_literally(text):
    escaped = "".join("\\" + c if c in "()[]\\" else c for c in text)
    assert parse_prompt(escaped) == [Fragment(text, 1.0)]


# ------------------------------------------------------------------ differential: A1111's rules


def _normalized(entries) -> list[tuple[str, float | None]]:
    """Texts and weights with empty texts dropped and neighbours of equal weight (to 1e-12,
    the documented last-bit difference) merged; a break is (BREAK, None)."""
    out: list[list] = []
    for text, weight in entries:
        if weight is None:
            out.append([BREAK, None])
        elif text:
            if out and out[-1][1] is not None and math.isclose(out[-1][1], weight, rel_tol=1e-12):
                out[-1][0] += text
            else:
                out.append([text, weight])
    return [tuple(item) for item in out]


def _ours(text: str):
    return _normalized((f.text, None if f.is_break else f.weight) for f in parse_prompt(text))


def _a1111(text: str):
    entries = a1111_attention_reference.parse_attention(text)
    return _normalized((None, None) if e is a1111_attention_reference.BREAK else tuple(e) for e in entries)


def _same(ours, theirs) -> bool:
    return len(ours) == len(theirs) and all(
        a[0] == b[0]
        and (a[1] is None) == (b[1] is None)
        and (a[1] is None or math.isclose(a[1], b[1], rel_tol=1e-12, abs_tol=1e-300))
        for a, b in zip(ours, theirs)
    )


FUZZ_ALPHABET = [*"()[]:\\|.- ", *"0123456789", *"abcxyz", "BREAK", " BREAK ", "  "]


def test_matches_a1111_on_20000_random_prompts():
    """Differential fuzz over ()[]:\\| digits letters . - spaces and BREAK: the same fragments
    and breaks as the reference of A1111's rules, weights within 1e-12. Prompts that make A1111
    raise (an explicit weight such as "1.2.3") are counted and checked to parse here."""
    rng = random.Random(19)
    raising = 0
    for _ in range(20000):
        text = "".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, 40)))
        try:
            theirs = _a1111(text)
        except a1111_attention_reference.RaisesInA1111:
            raising += 1
            assert parse_prompt(text)  # a documented difference: read, never raised
            continue
        assert _same(_ours(text), theirs), (text, _ours(text), theirs)
    assert raising < 2000, f"{raising} of 20000 prompts make A1111 raise: the fuzz tests too little"


def test_the_reference_knows_a1111s_examples():
    for text, rows in A1111_EXAMPLES:
        assert [tuple(entry) for entry in a1111_attention_reference.parse_attention(text)] == rows
    with pytest.raises(a1111_attention_reference.RaisesInA1111):
        a1111_attention_reference.parse_attention("(a:1.2.3)")


@pytest.mark.parametrize(
    "text,ours",
    [
        ("(a:1.2.3)", [("a:1.2.3", UP)]),  # A1111 raises: float("1.2.3")
        ("(a:.)", [("a:.", UP)]),  # A1111 raises: float(".")
        ("(a BREAK b)", [("a", UP), BREAK, ("b", UP)]),  # A1111: the word "BREAK" at weight -1.1
        ("(" * 300 + "a", [("a", MAX_WEIGHT)]),  # A1111: inf
    ],
)
def test_deliberate_differences_from_a1111(text, ours):
    """Each difference listed in clipcond.prompts' docstring, pinned."""
    test_syntax(text, ours)


# ------------------------------------------------------------------ linear work


def _lines_executed(text: str) -> int:
    """Python lines run inside clipcond.prompts while parsing `text`."""
    return lines_executed("prompts.py", parse_prompt, text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(SYNTAX_PIECES + ["a", "(a", "[a", ")", "]"]), min_size=1, max_size=6).map("".join))
def test_work_grows_linearly_with_the_prompt(unit):
    """Repeating any piece of syntax 400 or 800 times: twice the text, at most ~twice the work
    (the old parser multiplied every open bracket's range on close: quadratic)."""
    small, large = _lines_executed(unit * 400), _lines_executed(unit * 800)
    assert large <= 2.1 * small + 50, (unit, small, large)


def test_adversarial_bracket_patterns_are_linear():
    for unit in ("(a", "[a", "(a:1.1)", "((a)", "[(a", "(a BREAK ", "(:"):
        small, large = _lines_executed(unit * 2000), _lines_executed(unit * 4000)
        assert large <= 2.1 * small, (unit, small, large)
