"""compel's weighting syntax (`clipcond.compel_syntax`): the parser against compel's own parser
(token ids and weights), and `TextConditioner(syntax="compel", emphasis="compel")` against
`compel.Compel` itself on the tiny SD and SDXL pipelines."""

from __future__ import annotations

import random
import re

import pytest
import torch

from clipcond import TextConditioner
from clipcond.compel_syntax import (
    MAX_WEIGHT,
    CompelBlend,
    CompelConjunction,
    parse_compel_blend,
    parse_compel_combination,
    parse_compel_conjunction,
    parse_compel_prompt,
)
from clipcond.prompts import Fragment, parse_prompt
from clipcond.tokenization import clip_tokenizer

compel_parser = pytest.importorskip("compel.prompt_parser")

# well-formed prompts of every construct, and compel's readings this parser shares
WRITTEN = [
    "a cat+ on a (red mat)++",
    "a (red)1.3 fox, (blurry)0.5",
    "a cat--- in the snow",
    "(a (nested)+ phrase)0.8",
    '"a cat"+ sits on "a mat"-',
    '("a red fox")1.2 (in "deep snow"++)0.9',
    r"a \(literal\) bracket and a \"quote\"",
    r'(a\) b)1.3 "c \" d"+ x \(a)+',
    r"(a \)",
    "(a)+ b\\",  # a backslash at the very end
    '\\"(a)+ b (c)Xd Xmas+',  # an escaped quote glued to a bracket; a word after a group's bracket
    r'\("b"+ c \)"d"+ x \(("e")+ a\X (f)+',  # a quote glued to an escaped bracket is text too
    "X(b)+ c aX(d)+",  # a bracket glued to a word is text
    r'(a \))+ b ("c \"")+ d',  # a group closing right after an escaped bracket or quote
    '"a b\\',
    "(cat)1.5 (dog).5 (bird)2 (fish)0",
    "3+ cats, (well-known painting)-- by a_b+",
    "a+ (b)+ (c)++ d-",
    "(a)(b)+ (c)",
    "x (a)1.2.3",
    "a (cat",
    '(a "b) c',
    "cat+- x dog--+ y",
    '"a++ b-"1.2 c "(d)+ e"',
    r"a(b)c x(y)+ z a\(b\)+",
    "猫+ (日本)1.2",
    "a cat AND a dog [cat:dog:0.5] BREAK x",
]


def _token_weights(tokenizer, fragments) -> list[tuple[int, float]]:
    """(token id, weight) of every token the fragments tokenize to, in order."""
    pairs = []
    for fragment in fragments:
        ids = tokenizer(fragment.text, add_special_tokens=False).input_ids
        pairs.extend((token, fragment.weight) for token in ids)
    return pairs


def _compels_fragments(prompt: str):
    """compel's reading of `prompt`: its one flattened prompt's fragments."""
    (flattened,) = compel_parser.PromptParser().parse_conjunction(prompt).prompts
    return flattened.children


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


@pytest.mark.parametrize("prompt", WRITTEN)
def test_written_prompts_read_compels_tokens_and_weights(tokenizer, prompt: str) -> None:
    ours = _token_weights(tokenizer, parse_compel_prompt(prompt))
    assert ours == _token_weights(tokenizer, _compels_fragments(prompt))


def _generated_prompt(rng: random.Random, depth: int = 0) -> str:
    """A random well-formed prompt: words, words with a run of signs, brackets and quotes with
    or without a weight (signs or a number), nested up to two levels."""
    words = ["a", "red", "fox", "cat", "in", "the", "snow", "well-known", "3", "photo", "big,", "tree", "é"]
    weights = ["", "", "+", "++", "-", "---", "1.3", "0.5", ".5", "2", "0", "1.25"]
    items = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.45 or depth >= 2:
            word = rng.choice(words)
            # a sign after a comma is text in compel (its space after commas parts them)
            signs = rng.choice(["", "", "+", "++", "-", "--"]) if not word.endswith(",") else ""
            items.append(word + signs)
        elif kind < 0.8:
            items.append(f"({_generated_prompt(rng, depth + 1)}){rng.choice(weights)}")
        else:  # compel reads signs and brackets inside quotes too
            chosen = [rng.choice(words) for _ in range(rng.randint(1, 3))]
            quoted = " ".join(w if w.endswith(",") else w + rng.choice(["", "", "+", "-"]) for w in chosen)
            if rng.random() < 0.3:
                quoted += f" ({rng.choice(words)}){rng.choice(weights)}"
            items.append(f'"{quoted}"{rng.choice(weights)}')
    return " ".join(items)


def _compare_generated(tokenizer, count: int, seed: int) -> None:
    """`count` generated prompts read alike by both parsers; most of them weighted."""
    rng = random.Random(seed)
    weighted = 0
    for _ in range(count):
        prompt = _generated_prompt(rng)
        ours = _token_weights(tokenizer, parse_compel_prompt(prompt))
        assert ours == _token_weights(tokenizer, _compels_fragments(prompt)), prompt
        weighted += any(weight != 1.0 for _, weight in ours)
    assert weighted > 0.6 * count  # the generator writes weights, so the comparison covers them


def test_generated_prompts_read_compels_tokens_and_weights(tokenizer) -> None:
    _compare_generated(tokenizer, 100, seed=0)


@pytest.mark.slow
def test_many_more_generated_prompts_read_compels_tokens_and_weights(tokenizer) -> None:
    _compare_generated(tokenizer, 1000, seed=1)


def test_a_prompt_without_compels_characters_is_one_fragment_unchanged() -> None:
    for prompt in ["a red fox", "a,b,c  with  spaces", "", "  ", "a [cat:dog:0.5] BREAK (x:1.3)".replace("(", "")]:
        assert parse_compel_prompt(prompt) == [Fragment(prompt, 1.0)]


def test_text_is_split_at_whitespace_with_a_space_after_each_comma() -> None:
    assert parse_compel_prompt("a,b  (c)+\td") == [Fragment("a, b", 1.0), Fragment("c", 1.1), Fragment("d", 1.0)]
    assert parse_compel_prompt("a ++ b -") == [Fragment("a ++ b -", 1.0)]  # signs alone are text
    assert parse_compel_prompt("(a)1.") == [Fragment("a .", 1.0)]  # the module docstring's `(a)1.`
    # nothing left: one empty fragment (compel's parser raises IndexError on "()")
    assert parse_compel_prompt("()") == parse_compel_prompt('""+') == [Fragment("", 1.0)]


def test_nesting_multiplies_outermost_first_and_weights_are_clamped() -> None:
    assert parse_compel_prompt("((a)1.3 b)0.7") == [Fragment("a", 0.7 * 1.3), Fragment("b", 0.7)]
    assert parse_compel_prompt("(a)" + "9" * 400) == [Fragment("a", MAX_WEIGHT)]  # a number past float range
    assert parse_compel_prompt("a" + "+" * 20_000) == [Fragment("a", MAX_WEIGHT)]  # 1.1 ** 20000 overflows
    assert parse_compel_prompt("a" + "-" * 20_000) == [Fragment("a", 0.0)]
    # an overflowed group around a zero weight: 0, not NaN
    assert parse_compel_prompt("((a)0)" + "+" * 20_000) == [Fragment("a", 0.0)]


def test_deep_nesting_and_unclosed_brackets_read_where_compels_parser_gives_up() -> None:
    """compel's grammar backtracks (3 to 4.5 times the time per level of nesting) and exceeds
    Python's recursion limit on 200 unclosed brackets; this parser is linear, without recursion."""
    depth = 20_000
    assert parse_compel_prompt("(" * depth + "a" + ")+" * depth) == [Fragment("a", MAX_WEIGHT)]
    assert parse_compel_prompt("(" * depth + "a" + ")" * depth) == [Fragment("a", 1.0)]
    assert parse_compel_prompt("(" * 200 + "a") == [Fragment("(" * 200 + "a", 1.0)]
    with pytest.raises(RecursionError):
        compel_parser.PromptParser().parse_conjunction("(" * 200 + "a")


@pytest.mark.parametrize(
    "unit",
    ["(a", "a)", "(a)+ ", "((a)1.2 ", '"a', '"a"+ ', "a+- ", "\\(a ", "(a, b)1.1, ", "(x(y)+ ", "a" + "+" * 7 + " "],
)
def test_work_grows_linearly_with_the_prompt(unit: str) -> None:
    """Any piece of syntax repeated 500 or 1000 times: twice the text, at most about twice the
    lines run (a count of work that, unlike a clock, is the same on every machine)."""
    from line_counter import lines_executed

    small = lines_executed("compel_syntax.py", parse_compel_prompt, unit * 500)
    large = lines_executed("compel_syntax.py", parse_compel_prompt, unit * 1000)
    assert large <= 2.05 * small + 50, (unit, small, large)


CONJUNCTIONS = [
    '("a red circle+", "a (blue square)0.8 on a mat").and()',
    ' ( "a cat" , "a (dog)1.2 \\" barks", "(a bird)++" ) .and(1, 1.0, 1) ',
    '("one part only").and()',
]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ('("a cat", "a dog").and(1, 0.5)', "compel's `and(1, 0.5)` weights whole encodings, not fragments"),
        ('("a cat", "a dog").and(x)', "compel's `and(x)`: 2 parts need 2 numbers (or none)"),
        ('("a cat", "a dog").and(1)', "compel's `and(1)`: 2 parts need 2 numbers (or none)"),
        ('("a cat", "a dog").and(1, inf)', "compel's `and(1, inf)`: its weights must be finite"),
        ('("a cat", "a dog").and() and more', "compel's `and()` is read as a whole prompt"),
        ('("a cat", ("b", "c").and()).and()', "compel's `and()` is read as a whole prompt"),
    ],
)
def test_and_with_part_weights_or_beside_other_text_is_refused(prompt: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_compel_prompt(prompt)
    assert str(refused.value).startswith(f"prompt {prompt!r}: {message}")


WEIGHTED_CONJUNCTIONS = [
    '("a red circle+", "a (blue square)0.8 on a mat").and(1, 0.5)',
    ' ( "a cat" , "a (dog)1.2 \\" barks", "(a bird)++" ) .and(0.3, 1, -0.5) ',
    '("one part only").and(2)',
]


def _our_parts(prompt: str) -> tuple[list[list[Fragment]], list[float]]:
    """Each part of an `.and()` as clipcond reads it, and the parts' weights: a weighted one's
    parts (`parse_compel_conjunction`), an unweighted one's fragments cut at its BREAKs."""
    conjunction = parse_compel_conjunction(prompt)
    if conjunction is not None:
        assert parse_compel_combination(prompt) == conjunction
        return [parse_compel_prompt(part) for part in conjunction.parts], list(conjunction.weights)
    parts: list[list[Fragment]] = [[]]
    for fragment in parse_compel_prompt(prompt):
        if fragment.is_break:
            parts.append([])
        else:
            parts[-1].append(fragment)
    return parts, [1.0] * len(parts)


@pytest.mark.parametrize("prompt", CONJUNCTIONS + WEIGHTED_CONJUNCTIONS)
def test_and_reads_compels_parts_and_weights(tokenizer, prompt: str) -> None:
    """An unweighted `.and()` is its parts with a BREAK between; a weighted one a
    `CompelConjunction`: either way, compel's parts and weights."""
    parts, weights = _our_parts(prompt)
    assert (prompt in WEIGHTED_CONJUNCTIONS) == isinstance(parse_compel_conjunction(prompt), CompelConjunction)
    theirs = compel_parser.PromptParser().parse_conjunction(prompt)
    assert weights == theirs.weights and len(parts) == len(theirs.prompts)
    for mine, flattened in zip(parts, theirs.prompts):
        assert _token_weights(tokenizer, mine) == _token_weights(tokenizer, flattened.children)


def test_an_and_without_part_weights_or_a_plain_prompt_is_no_weighted_conjunction() -> None:
    for text in ['("a", "b").and()', '("a", "b").and(1, 1.0)', "a plain prompt", 'x ("a", "b").and(1, 2)']:
        assert parse_compel_conjunction(text) is None
    blend = '("a", "b").blend(1, 2)'
    assert parse_compel_conjunction(blend) is None
    assert parse_compel_combination(blend) == CompelBlend(("a", "b"), (1.0, 2.0), True)
    with pytest.raises(ValueError, match=re.escape("compel's `and(1, nan)`: its weights must be finite")):
        parse_compel_conjunction('("a", "b").and(1, nan)')
    with pytest.raises(ValueError, match=re.escape("compel's `swap()` changes the text")):
        parse_compel_conjunction('("a cat.swap(dog)", "b").and(1, 2)')


def test_the_refusals_of_and_and_blend_are_whole_sentences_that_show_the_prompts_start() -> None:
    long_part = "a red fox " * 12
    cases = {
        f'("{long_part}", "b").and(1, 0.5)': "compel's `and(1, 0.5)` weights whole encodings, not fragments: "
        'TextConditioner(syntax="compel") reads it',
        f'("{long_part}", "b").and(1)': "compel's `and(1)`: 2 parts need 2 numbers (or none)",
        f'("{long_part}", "b").and() x': "compel's `and()` is read as a whole prompt, "
        '`("part one", "part two").and()`, each part in its own CLIP window, with nothing after it',
        f'("{long_part}", "b").blend()': "compel's `blend()` blends whole encodings, not fragments: "
        'TextConditioner(syntax="compel") reads it',
        f'x ("{long_part}", "b").blend()': "compel's `blend()` is read as a whole prompt, "
        '`("part one", "part two").blend(0.7, 0.3)`, with nothing beside it',
    }
    for prompt, message in cases.items():
        with pytest.raises(ValueError) as refused:
            parse_compel_prompt(prompt)
        assert str(refused.value) == f"prompt {prompt[:80]!r}: {message}"
    weightless = f'("{long_part}", "b").blend(1)'
    with pytest.raises(ValueError) as refused:
        parse_compel_blend(weightless)
    assert str(refused.value) == (f"prompt {weightless[:80]!r}: compel's `blend(1)`: 2 parts need 2 numbers (or none)")


def test_blend_is_read_whole_with_its_weights_and_refused_where_compel_would_fail() -> None:
    assert parse_compel_blend('("a cat", "a (dog)1.2").blend(0.7, 0.3)') == CompelBlend(
        ("a cat", "a (dog)1.2"), (0.7, 0.3), True
    )
    assert parse_compel_blend(' ("a", "b", "c").blend() ') == CompelBlend(("a", "b", "c"), (1.0, 1.0, 1.0), True)
    assert parse_compel_blend('("a", "b").blend(1, -1, no_normalize)') == CompelBlend(("a", "b"), (1.0, -1.0), False)
    for text in ["a plain prompt", 'x ("a", "b").blend()', '("a", "b").and()']:
        assert parse_compel_blend(text) is None
    refusals = {
        '("a", "b").blend(1)': "compel's `blend(1)`: 2 parts need 2 numbers (or none)",
        '("a", "b").blend(1, x)': "compel's `blend(1, x)`: 2 parts need 2 numbers (or none)",
        '("a", "b").blend(inf, 1)': "compel's `blend(inf, 1)`: its weights must be finite",
        '("a", "b").blend(1, -1)': "compel's `blend(1, -1)`: its weights sum to 0, and they are divided by their "
        "sum (add `no_normalize` to sum as given)",
    }
    for text, message in refusals.items():
        with pytest.raises(ValueError) as refused:
            parse_compel_blend(text)
        assert str(refused.value) == f"prompt {text!r}: {message}"
    with pytest.raises(ValueError, match="compel.s `swap\\(\\)` changes the text during the steps"):
        parse_compel_blend('("a", "b.swap(c)").blend()')
    # read as fragments, a blend names the conditioner; beside other text, how to write it
    with pytest.raises(
        ValueError, match=re.escape('blends whole encodings, not fragments: TextConditioner(syntax="compel")')
    ):
        parse_compel_prompt('("a", "b").blend()')
    with pytest.raises(ValueError, match=re.escape("compel's `blend()` is read as a whole prompt")):
        parse_compel_prompt('x ("a", "b").blend()')


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (
            "a cat.swap(dog) " + "in a garden " * 8,
            "compel's `swap()` changes the text during the steps (cross-attention control), which clipcond's "
            "compel syntax does not read: A1111's prompt editing `[cat:dog:0.5]` (syntax 'a1111') does that",
        ),
        (
            "a cat withLora(style, 0.5)",
            "compel's `withLora()` names a LoRA, which clipcond's compel syntax does not read: load it with the "
            "pipeline's `load_lora_weights`",
        ),
    ],
)
def test_operators_clipcond_does_not_read_are_refused_by_name(prompt: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_compel_prompt(prompt)
    assert str(refused.value) == f"prompt {prompt[:80]!r}: {message}"
    # compel reads each of them as an operator, not as text
    conjunction = compel_parser.PromptParser().parse_conjunction(prompt)
    assert (
        conjunction.lora_weights
        or len(conjunction.prompts) > 1
        or type(conjunction.prompts[0]).__name__ != ("FlattenedPrompt")
        or conjunction.prompts[0].wants_cross_attention_control
    )


def test_a_prompt_that_is_no_string_is_refused() -> None:
    with pytest.raises(TypeError, match="`text` must be a string, got int"):
        parse_compel_prompt(3)


# ---------------------------------------------------------------------------- the conditioner

PROMPTS = [
    "a red circle+ and a (blue square)1.3 on a mat",
    'a (small green)-- triangle, ("yellow star")0.5',
    "((a purple)1.2 hexagon)0.9 under a sky++",
    "a plain prompt with no weights",
]


def _compel_for(pipe, family: str):
    """compel's own `Compel` over `pipe`'s encoders, as its README sets it up per family."""
    from compel import Compel, ReturnedEmbeddingsType

    if family == "sd":
        return Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    return Compel(
        tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
        text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=[False, True],
    )


def _compels_batch(pipe, family: str, prompts: list[str]) -> torch.Tensor:
    """compel's token embeddings of a batch: `Compel(prompts)` for SD; for SDXL each encoder's
    own `Compel` joined on channels (compel pads a batch per encoder only: its two-encoder
    provider has no empty prompt)."""
    if family == "sd":
        return _compel_for(pipe, family)(prompts)
    from compel import Compel, ReturnedEmbeddingsType

    layer = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    return torch.cat(
        [Compel(tokenizer=t, text_encoder=e, returned_embeddings_type=layer)(prompts) for t, e in pairs], -1
    )


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_the_conditioner_in_compel_syntax_and_emphasis_equals_compel(family: str, request) -> None:
    pipe = request.getfixturevalue(f"{family}_pipe")
    compel = _compel_for(pipe, family)
    conditioner = TextConditioner.from_pipeline(pipe, syntax="compel", emphasis="compel", cache_size=0)
    a1111 = TextConditioner.from_pipeline(pipe, emphasis="compel", cache_size=0)
    with torch.no_grad():
        ours = conditioner.encode(PROMPTS).tokens
        read_as_a1111 = a1111.encode(PROMPTS).tokens
        for index, prompt in enumerate(PROMPTS):
            theirs = compel(prompt)
            theirs = theirs[0] if family == "sdxl" else theirs  # (tokens, pooled)
            torch.testing.assert_close(ours[index : index + 1], theirs, rtol=1e-5, atol=1e-5)
            if index < 3:  # A1111's syntax reads these weights as text: the comparison bites
                assert not torch.allclose(read_as_a1111[index], theirs[0], atol=1e-3)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_and_in_the_conditioner_equals_compels_joined_parts(family: str, request) -> None:
    """A batch of one-, two- and three-part prompts: each part a CLIP window, the shorter
    prompts padded with the empty prompt's window, as `compel(prompts)` pads them."""
    pipe = request.getfixturevalue(f"{family}_pipe")
    prompts = [*CONJUNCTIONS, "a plain (prompt)1.2"]
    conditioner = TextConditioner.from_pipeline(pipe, syntax="compel", emphasis="compel", cache_size=0)
    with torch.no_grad():
        ours = conditioner.encode(prompts).tokens
        theirs = _compels_batch(pipe, family, prompts)
    assert ours.shape == theirs.shape == (4, 3 * 77, conditioner.token_width)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


BLENDS = [
    '("a red circle+", "a (blue square)0.8 on a mat").blend(0.7, 0.3)',
    '("a cat", "a dog", "(a bird)--").blend()',
    "a plain (prompt)1.2",
    '("a cat", "a dog").blend(1, 0.5, no_normalize)',
]


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_blend_in_the_conditioner_equals_compels_and_blends_the_pooled_vectors(family: str, request) -> None:
    pipe = request.getfixturevalue(f"{family}_pipe")
    conditioner = TextConditioner.from_pipeline(pipe, syntax="compel", emphasis="compel", cache_size=0)
    with torch.no_grad():
        ours = conditioner.encode(BLENDS)
        theirs = _compels_batch(pipe, family, BLENDS)
        torch.testing.assert_close(ours.tokens, theirs, rtol=1e-5, atol=1e-5)
        if family == "sdxl":  # compel pools the raw prompt; here the parts' pooled vectors, blended
            parts = conditioner.encode(["a red circle+", "a (blue square)0.8 on a mat"]).pooled
            torch.testing.assert_close(ours.pooled[0], 0.7 * parts[0] + 0.3 * parts[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_a_weighted_and_in_the_conditioner_equals_compels_and_pools_its_first_part(family: str, request) -> None:
    """A batch of weighted `.and()` prompts of one to three parts, a plain prompt and a blend:
    each part's window moved towards the empty prompt's by its weight, as compel moves it."""
    pipe = request.getfixturevalue(f"{family}_pipe")
    prompts = [*WEIGHTED_CONJUNCTIONS, "a plain (prompt)1.2", BLENDS[0]]
    conditioner = TextConditioner.from_pipeline(pipe, syntax="compel", emphasis="compel", cache_size=0)
    with torch.no_grad():
        ours = conditioner.encode(prompts)
        theirs = _compels_batch(pipe, family, prompts)
        assert ours.tokens.shape == theirs.shape == (5, 3 * 77, conditioner.token_width)
        torch.testing.assert_close(ours.tokens, theirs, rtol=1e-5, atol=1e-5)
        # the weights bite: the same parts at weight 1 (a BREAK between them, other batches) read otherwise
        unweighted = conditioner.encode('("a red circle+", "a (blue square)0.8 on a mat").and()')
        torch.testing.assert_close(unweighted.tokens[0, :77], ours.tokens[0, :77], rtol=0, atol=1e-6)
        assert not torch.allclose(unweighted.tokens[0, 77:], ours.tokens[0, 77:154], atol=1e-3)
        if family == "sdxl":  # compel pools the raw prompt; here the first part's pooled vector, as a BREAK pools
            first = conditioner.encode(["a red circle+", "a cat"]).pooled
            torch.testing.assert_close(ours.pooled[:2], first, rtol=0, atol=1e-6)
            torch.testing.assert_close(ours.pooled[0], unweighted.pooled[0], rtol=0, atol=1e-6)


LONG_PART = "a small red circle next to a large (blue square)1.2, " * 8


@pytest.mark.parametrize(
    ("prompt", "windows"),
    [
        (f'("{LONG_PART}", "a (green)-- triangle").blend(0.6, 0.4)', 2),
        (f'("a (green)-- triangle", "{LONG_PART}").and(1, 0.6)', 3),
    ],
    ids=["blend", "weighted_and"],
)
def test_a_part_of_two_windows_is_padded_or_moved_as_compel_does(sd_pipe, prompt: str, windows: int) -> None:
    """compel without truncation, splitting long text at words (the split clipcond's windows
    equal): a blend's short part is padded with the empty prompt's window before the sum, and a
    weighted `.and()` moves each window of its long part towards the empty prompt's."""
    from compel import Compel
    from compel.embeddings_provider import SplitLongTextMode

    prompts = [prompt, "a cat"]
    conditioner = TextConditioner.from_pipeline(sd_pipe, syntax="compel", emphasis="compel", cache_size=0)
    compel = Compel(
        tokenizer=sd_pipe.tokenizer,
        text_encoder=sd_pipe.text_encoder,
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.WORDS,
    )
    with torch.no_grad():
        ours = conditioner.encode(prompts).tokens
        theirs = compel(prompts)
    assert ours.shape == theirs.shape == (2, windows * 77, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("prompt", "operator"), [('("a cat", "a dog").blend()', "blend()"), ('("a cat", "a dog").and(1, 0.5)', "and()")]
)
def test_blend_and_weighted_and_need_clip_alone_and_one_text_for_every_encoder(
    prompt: str, operator: str, sdxl_pipe, sd3_pipe
) -> None:
    sdxl = TextConditioner.from_pipeline(sdxl_pipe, syntax="compel", cache_size=0)
    with pytest.raises(ValueError) as refused:
        sdxl.encode(prompt, prompt_2="a dog")
    assert str(refused.value) == (
        f"prompt {prompt!r}: compel's `{operator}` must be every encoder's text (`prompt_2` / `prompt_3` left out or "
        "the same)"
    )
    windows = 2 if operator == "and()" else 1
    assert sdxl.encode(prompt, prompt_2=prompt).tokens.shape == (1, windows * 77, 64)
    sd3 = TextConditioner.from_pipeline(sd3_pipe, syntax="compel", cache_size=0)
    with pytest.raises(ValueError) as refused:
        sd3.encode(prompt)
    assert str(refused.value) == (
        f"prompt {prompt!r}: compel's `{operator}` is read over CLIP windows, and this conditioner ('sd3') has a T5 "
        "encoder"
    )


def test_pipeline_kwargs_read_no_steps_in_compel_syntax_and_schedule_is_refused(sd_pipe) -> None:
    conditioner = TextConditioner.from_pipeline(sd_pipe, syntax="compel", cache_size=0)
    prompt = "a [cat:dog:0.5] AND a (dog)1.2"  # A1111 editing and AND: text in compel's syntax
    kwargs = conditioner.pipeline_kwargs(prompt, num_inference_steps=4)
    assert "callback_on_step_end" not in kwargs
    expected = conditioner.encode([prompt, ""]).tokens
    torch.testing.assert_close(kwargs["prompt_embeds"], expected[:1], rtol=0, atol=0)
    torch.testing.assert_close(kwargs["negative_prompt_embeds"], expected[1:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="`num_inference_steps` must be an int >= 1, got 0"):
        conditioner.pipeline_kwargs(prompt, num_inference_steps=0)
    with pytest.raises(ValueError, match=re.escape("`schedule` reads A1111's prompt editing")):
        conditioner.schedule(prompt, 4)


def test_the_syntax_is_checked_and_part_of_the_cache_key(sd_pipe, tmp_path) -> None:
    with pytest.raises(ValueError, match=re.escape("`syntax='compel'` says how weights are written")):
        TextConditioner.from_pipeline(sd_pipe, syntax="compel", parse_weights=False)
    with pytest.raises(ValueError, match="`syntax` must be one of"):
        TextConditioner.from_pipeline(sd_pipe, syntax="A1111")
    prompt = "a (red)1.3 cat+"
    a1111 = TextConditioner.from_pipeline(sd_pipe, cache_dir=str(tmp_path))
    compel = TextConditioner.from_pipeline(sd_pipe, syntax="compel", cache_dir=str(tmp_path))
    first = a1111.encode(prompt).tokens
    second = compel.encode(prompt).tokens  # the same folder: another key, not the first's file
    assert not torch.allclose(first, second, atol=1e-3)
    fresh = TextConditioner.from_pipeline(sd_pipe, syntax="compel", cache_size=0).encode(prompt).tokens
    torch.testing.assert_close(second, fresh, rtol=0, atol=0)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2
    # A1111's key is the one it was before the setting existed: no syntax part in it
    assert ":syntax=" not in a1111._settings_key(by_content=True)
    assert ":syntax=compel" in compel._settings_key(by_content=True)


def test_plain_prompts_encode_alike_in_both_syntaxes(sd_pipe) -> None:
    plain = ["a red fox in the snow", "a,b,c", ""]
    with torch.no_grad():
        compel = TextConditioner.from_pipeline(sd_pipe, syntax="compel", cache_size=0).encode(plain).tokens
        a1111 = TextConditioner.from_pipeline(sd_pipe, cache_size=0).encode(plain).tokens
    torch.testing.assert_close(compel, a1111, rtol=0, atol=0)
    assert parse_prompt("a red fox") == parse_compel_prompt("a red fox")


def test_a_conditioner_yaml_takes_the_syntax_and_refuses_an_unknown_one(sd_pipe, tmp_path) -> None:
    import yaml

    folder = tmp_path / "pipe"
    sd_pipe.save_pretrained(folder)
    source = {"path": str(folder), "subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer"}
    path = tmp_path / "conditioner.yaml"
    path.write_text(yaml.safe_dump({"recipe": "sd", "clip": [source], "syntax": "compel", "emphasis": "compel"}))
    loaded = TextConditioner.from_config(path)
    assert loaded.syntax == "compel"
    direct = TextConditioner.from_pipeline(sd_pipe, syntax="compel", emphasis="compel", cache_size=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(PROMPTS).tokens, direct.encode(PROMPTS).tokens, rtol=0, atol=1e-6)
    path.write_text(yaml.safe_dump({"recipe": "sd", "clip": [source], "syntax": "invoke"}))
    with pytest.raises(ValueError, match=r"syntax.*invoke") as refused:
        TextConditioner.from_config(path)
    assert "compel" in str(refused.value) and "comfy" in str(refused.value)


def test_blend_records_sums_padded_windows_and_refuses_t5_records() -> None:
    from clipcond.combined_records import blend_records, combine_records
    from clipcond.records import EncodedPrompt

    one = EncodedPrompt(clip_tokens=torch.full((1, 3, 2), 1.0), pooled=torch.tensor([1.0, 0.0]))
    two = EncodedPrompt(clip_tokens=torch.full((2, 3, 2), 3.0), pooled=torch.tensor([0.0, 1.0]))
    empty = EncodedPrompt(clip_tokens=torch.full((1, 3, 2), -1.0), pooled=torch.tensor([9.0, 9.0]))
    blended = combine_records([one, two], CompelBlend(("a", "b"), (1.0, 3.0), True), empty)
    # window 0: (1 * 1 + 3 * 3) / 4; window 1: one's padding (-1) and two's 3
    expected = torch.stack([torch.full((3, 2), 2.5), torch.full((3, 2), 2.0)])
    torch.testing.assert_close(blended.clip_tokens, expected)
    torch.testing.assert_close(blended.pooled, torch.tensor([0.25, 0.75]))
    summed = blend_records([one, two], CompelBlend(("a", "b"), (1.0, 3.0), False), empty)
    torch.testing.assert_close(summed.pooled, torch.tensor([1.0, 3.0]))
    # one part; parts without pooled vectors (SD's CLIP); an empty prompt of two windows pads with its first
    alone = blend_records([two], CompelBlend(("b",), (2.0,), True), empty)
    torch.testing.assert_close(alone.clip_tokens, two.clip_tokens, rtol=0, atol=0)
    unpooled = [EncodedPrompt(clip_tokens=part.clip_tokens) for part in (one, two)]
    two_windows = EncodedPrompt(clip_tokens=torch.cat([empty.clip_tokens, torch.full((1, 3, 2), 5.0)]))
    blended = blend_records(unpooled, CompelBlend(("a", "b"), (1.0, 3.0), True), two_windows)
    torch.testing.assert_close(blended.clip_tokens, expected, rtol=0, atol=0)
    assert blended.pooled is None
    with_t5 = EncodedPrompt(clip_tokens=one.clip_tokens, t5_tokens=torch.zeros(4, 2), t5_mask=torch.ones(4))
    without_clip = EncodedPrompt(pooled=one.pooled)
    for parts in ([one, with_t5], [without_clip, one]):
        with pytest.raises(ValueError) as refused:
            blend_records(parts, CompelBlend(("a", "b"), (1.0, 1.0), True), empty)
        assert str(refused.value) == (
            "compel's `blend()` and weighted `and()` are read over CLIP windows only: this conditioner has a T5 or "
            "no CLIP tokens"
        )


def test_join_records_moves_weighted_parts_towards_the_empty_window_and_joins_them() -> None:
    from clipcond.combined_records import combine_records, join_records
    from clipcond.records import EncodedPrompt

    one = EncodedPrompt(clip_tokens=torch.full((1, 3, 2), 1.0), pooled=torch.tensor([1.0, 0.0]))
    two = EncodedPrompt(clip_tokens=torch.stack([torch.full((3, 2), 3.0), torch.full((3, 2), 5.0)]))
    two.pooled = torch.tensor([0.0, 1.0])
    empty = EncodedPrompt(
        clip_tokens=torch.stack([torch.full((3, 2), -1.0), torch.full((3, 2), 7.0)]), pooled=torch.tensor([9.0, 9.0])
    )
    joined = combine_records([one, two], CompelConjunction(("a", "b"), (1.0, 0.5)), empty)
    # part one as it is; part two's windows halfway to the empty prompt's first window (-1)
    expected = torch.stack([torch.full((3, 2), 1.0), torch.full((3, 2), 1.0), torch.full((3, 2), 2.0)])
    torch.testing.assert_close(joined.clip_tokens, expected, rtol=0, atol=0)
    torch.testing.assert_close(joined.pooled, one.pooled, rtol=0, atol=0)
    # a part of weight 1 is kept bit for bit (moving it by 1 would round: (0.1 - 1e8) + 1e8 is 0)
    tenth = EncodedPrompt(clip_tokens=torch.full((1, 3, 2), 0.1))
    far = EncodedPrompt(clip_tokens=torch.full((1, 3, 2), 1e8))
    kept = join_records([tenth, one], CompelConjunction(("t", "a"), (1.0, 2.0)), far)
    torch.testing.assert_close(kept.clip_tokens[0], tenth.clip_tokens[0], rtol=0, atol=0)
    backwards = join_records([two, one], CompelConjunction(("b", "a"), (-1.0, 2.0)), empty)
    expected = torch.stack([torch.full((3, 2), -5.0), torch.full((3, 2), -7.0), torch.full((3, 2), 3.0)])
    torch.testing.assert_close(backwards.clip_tokens, expected, rtol=0, atol=0)
    torch.testing.assert_close(backwards.pooled, two.pooled, rtol=0, atol=0)
    with_t5 = EncodedPrompt(clip_tokens=one.clip_tokens, t5_tokens=torch.zeros(4, 2), t5_mask=torch.ones(4))
    with pytest.raises(ValueError, match=r"compel's `blend\(\)` and weighted `and\(\)` are read over CLIP windows"):
        join_records([one, with_t5], CompelConjunction(("a", "b"), (1.0, 2.0)), empty)
