"""ComfyUI's prompt syntax (`clipcond.comfy_syntax`, `syntax="comfy"`): the parser against a
transcription of ComfyUI's own (`tests/comfy_reference.py`), its linear time, and the
conditioner and pipeline reading it against ComfyUI's encoding re-implemented there."""

from __future__ import annotations

import copy
import random
import re

import numpy as np
import pytest
import torch
from comfy_reference import comfy_batches, comfy_encode, comfy_segments, comfy_words
from diffusers import StableDiffusionPipeline

from clipcond import CLIPConditionedPipeline, TextConditioner
from clipcond.comfy_syntax import embedding_names, parse_comfy_prompt
from clipcond.prompt_syntaxes import SYNTAXES, check_syntax, parse_in_syntax
from clipcond.prompts import MAX_WEIGHT, Fragment

WRITTEN = [
    "a (red fox) in snow",
    "a ((red fox)) in snow",
    "((red fox:1.3)), (a (red:0.5) fox:1.2)",
    "(red fox:0.5)(blue:1.5)glued",
    r"\(literal\) brackets, (a \(b\) c:1.2) and \\(x)",
    "((a)",
    "(((a))",
    "((:1)",
    "a ((:1.5(b)",
    ")(a)(b) stray",
    "a) b (c",
    "(a:1e2) (b: 1.5 ) (c:-1) (d:+2) (e:1_0)",
    "(:1.2) (a:) (a:b:0.5) (a:(b)) (a:1.2(b))",
    "[red] BREAK AND [a:b:0.5] \\[x\\]",
    "embedding:cat , (embedding:dog:1.2) x embedding:bird\nembedding:fish",
    "line one\nline (two:1.2)\n(three)",
    "",
    "()",
    "a (b (c (d:0.5) e) f:2) g",
]


def _words(fragments: list[Fragment]) -> list[tuple[str, float]]:
    """The words ComfyUI tokenizes one by one (cut at spaces and line breaks), with weights."""
    return [(word, f.weight) for f in fragments for word in f.text.replace("\n", " ").split(" ") if word]


@pytest.mark.parametrize("prompt", WRITTEN)
def test_written_prompts_read_comfyuis_segments_and_weights(prompt: str) -> None:
    ours = parse_comfy_prompt(prompt)
    theirs = comfy_segments(prompt)
    assert _words(ours) == comfy_words(theirs)
    if "embedding:" not in prompt:  # segment for segment, text kept as written
        assert [(f.text, f.weight) for f in ours] == (theirs or [("", 1.0)])


def _generated_prompt(rng: random.Random) -> str:
    pieces = ["a", "red", "fox", "(", "(", ")", ")", ":", "1.3", "0.5", ":1.2", "\\(", "\\)", "\\", " ", " ", "\n"]
    pieces += [" embedding:cat ", "[", "]", "BREAK", "1e1", ".", ",", ":x", ": 2 ", "-1", "nan_ish"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))


def _compare_generated(count: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        prompt = _generated_prompt(rng)
        assert _words(parse_comfy_prompt(prompt)) == comfy_words(comfy_segments(prompt)), prompt


def test_generated_prompts_read_comfyuis_segments_and_weights() -> None:
    _compare_generated(400, seed=11)


@pytest.mark.slow
def test_many_more_generated_prompts_read_comfyuis_segments_and_weights() -> None:
    _compare_generated(5000, seed=12)


def test_explicit_weights_replace_and_plain_groups_multiply() -> None:
    assert parse_comfy_prompt("((red:1.3))") == [Fragment("red", 1.3)]
    assert parse_comfy_prompt("(((red)))") == [Fragment("red", pytest.approx(1.331))]
    assert parse_comfy_prompt("(a (red) b:0.5)") == [
        Fragment("a ", 0.5),
        Fragment("red", pytest.approx(0.55)),
        Fragment(" b", 0.5),
    ]
    # A1111's syntax reads the same text otherwise: nested weights multiply, [red] is a down-weight
    assert parse_in_syntax("((red:1.3))", "a1111") == [Fragment("red", pytest.approx(1.43))]
    assert parse_in_syntax("[red]", "comfy") == [Fragment("[red]", 1.0)]
    assert parse_in_syntax("a BREAK b", "comfy") == [Fragment("a BREAK b", 1.0)]


def test_weights_are_clamped_and_written_non_finite_ones_refused() -> None:
    assert parse_comfy_prompt("(a:1e9) (b:-1e9)") == [
        Fragment("a", MAX_WEIGHT),
        Fragment(" ", 1.0),
        Fragment("b", -MAX_WEIGHT),
    ]
    for written in ["nan", "inf", " -Infinity "]:
        prompt = f"a (red fox:{written}) " + "x" * 100
        with pytest.raises(ValueError) as refused:
            parse_comfy_prompt(prompt)
        assert str(refused.value) == (
            f"prompt {prompt[:80]!r}: the weight {written.strip()!r} is no finite number: write one such as 1.3"
        )
    with pytest.raises(TypeError, match="`text` must be a string, got int"):
        parse_comfy_prompt(3)


def test_deep_nesting_reads_where_comfyuis_recursion_gives_up() -> None:
    depth = 20_000
    assert parse_comfy_prompt("(" * depth + "a" + ")" * depth) == [Fragment("a", MAX_WEIGHT)]
    assert parse_comfy_prompt("(" * depth + "a:0.5" + ")" * depth) == [Fragment("a", 0.5)]
    assert parse_comfy_prompt("(" * depth + "a") == [Fragment("(" * depth + "a", 1.0)]
    with pytest.raises(RecursionError):
        comfy_segments("(" * 1000 + "a" + ")" * 1000)


@pytest.mark.parametrize(
    "unit",
    ["(a", "a)", "(a) ", "(a:1.2) ", "((a) ", "(a:(b)) ", ")(", "\\(a ", "embedding:x ", "(a:b ", ":1 (", "(a:1)) "],
)
def test_work_grows_linearly_with_the_prompt(unit: str) -> None:
    """Any piece of syntax repeated 500 or 1000 times, and nesting 500 or 1000 deep: twice the
    text, at most about twice the lines run (a count of work that is the same on every machine)."""
    from line_counter import lines_executed

    small = lines_executed("comfy_syntax.py", parse_comfy_prompt, unit * 500)
    large = lines_executed("comfy_syntax.py", parse_comfy_prompt, unit * 1000)
    assert large <= 2.05 * small + 50, (unit, small, large)


@pytest.mark.parametrize("inner", ["a", "a:1.2", "a (b:0.5) c", "a:" + "1" * 50])
def test_work_grows_linearly_with_the_nesting_depth(inner: str) -> None:
    from line_counter import lines_executed

    def nested(depth: int) -> str:
        return "(" * depth + inner + ")" * depth

    small = lines_executed("comfy_syntax.py", parse_comfy_prompt, nested(500))
    large = lines_executed("comfy_syntax.py", parse_comfy_prompt, nested(1000))
    assert large <= 2.05 * small + 50, (inner, small, large)


def test_groups_nested_around_one_colon_read_its_number_once(monkeypatch) -> None:
    """Groups nested around one colon share its number: each is read once, not once per level
    (the characters `float` is given, which a count of Python lines does not see)."""
    from clipcond import comfy_syntax

    read = []

    def counting_float(text: str) -> float:
        read.append(len(text))
        return float(text)

    monkeypatch.setattr(comfy_syntax, "float", counting_float, raising=False)
    depth = 2000
    assert parse_comfy_prompt("(" * depth + "a:" + "1" * 40 + ")" * depth) == [Fragment("a", MAX_WEIGHT)]
    assert len(read) == 1 and sum(read) == 40
    read.clear()
    parse_comfy_prompt("(a:" * depth + ")" * depth)
    assert sum(read) <= 2 * depth


def test_embedding_names_are_the_words_after_the_prefix_as_comfyui_finds_them() -> None:
    prompt = "embedding:cat, (embedding:dog:1.2) x embedding:cat\nembedding:birdX,, a\\(embedding:no a\tembedding:no"
    assert embedding_names(prompt) == ["cat", "dog", "birdX"]
    assert embedding_names("no embeddings here") == []
    assert parse_comfy_prompt("xembedding:cat") == [Fragment("xembedding:cat", 1.0)]


def test_the_syntax_setting_is_checked_by_name() -> None:
    assert SYNTAXES == ("a1111", "compel", "comfy")
    assert [check_syntax(name) for name in SYNTAXES] == list(SYNTAXES)
    with pytest.raises(TypeError) as refused:
        check_syntax(1)
    assert str(refused.value) == "`syntax` must be a str, one of ['a1111', 'compel', 'comfy'], got int"
    with pytest.raises(ValueError) as refused:
        check_syntax("invoke", "--syntax")
    assert str(refused.value) == (
        "`--syntax` must be one of ['a1111', 'compel', 'comfy'] (A1111's `(word:1.3)`, compel's `word+`, "
        "`(words)1.3`, or ComfyUI's `(words:1.3)`), got 'invoke'"
    )


# ---------------------------------------------------------------------------- the conditioner

PROMPTS = [
    "a photo of a (red fox:1.2) in ((snow)), (a (small:0.5) cabin:1.3)",
    "((a cat:1.4)) and [a dog] BREAK [a:b:0.5]",
    ", ".join(["masterpiece (red fox:1.2) ultra, detailed"] * 8 + ["((snow forest:0.8)) 8k"] * 6),
]


@pytest.fixture(scope="module")
def comfy_clip(sd_pipe):
    """sd_pipe's CLIP and tokenizer, copied, with a one-vector textual inversion `<cat>`."""
    text_encoder, tokenizer = copy.deepcopy(sd_pipe.text_encoder), copy.deepcopy(sd_pipe.tokenizer)
    conditioner = TextConditioner("sd", clip=[(text_encoder, tokenizer)], cache_size=0)
    width = text_encoder.config.hidden_size
    conditioner.load_textual_inversion({"<cat>": torch.randn(width, generator=torch.Generator().manual_seed(3))})
    return text_encoder, tokenizer


def _reference(text_encoder, tokenizer, prompt: str) -> torch.Tensor:
    words = comfy_words(comfy_segments(prompt))
    fragments = [Fragment(word, weight) for word, weight in words]
    return comfy_encode(text_encoder, tokenizer, comfy_batches(tokenizer, fragments, {"<cat>": 1}))


@pytest.mark.parametrize("prompt", [*PROMPTS, "a photo of embedding:<cat>, (embedding:<cat>:1.3) in snow"])
def test_the_conditioner_in_comfy_syntax_emphasis_and_windows_equals_comfyui(comfy_clip, prompt: str) -> None:
    text_encoder, tokenizer = comfy_clip
    settings = dict(emphasis="comfy", window_split="comfy", cache_size=0)
    comfy = TextConditioner("sd", clip=[(text_encoder, tokenizer)], syntax="comfy", **settings)
    a1111 = TextConditioner("sd", clip=[(text_encoder, tokenizer)], **settings)
    reference = _reference(text_encoder, tokenizer, prompt)
    with torch.no_grad():
        ours = comfy.encode(prompt).tokens
        read_as_a1111 = a1111.encode(prompt).tokens
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    # A1111's syntax reads these prompts otherwise: the comparison bites
    assert read_as_a1111.shape != reference.shape or not torch.allclose(read_as_a1111, reference, atol=1e-3)


@pytest.mark.parametrize("prompt", PROMPTS[::2])
def test_sdxl_in_comfy_syntax_emphasis_and_windows_equals_comfyuis_two_encoders(sdxl_pipe, prompt: str) -> None:
    """ComfyUI's SDXL encoding (``comfy/sdxl_clip.py``, read): each CLIP's layer -2, weighted
    away from its own empty prompt, joined on channels; the pooled vector is the second CLIP's
    projection of the first window, weights left out."""
    pipe = sdxl_pipe
    fragments = [Fragment(word, weight) for word, weight in comfy_words(comfy_segments(prompt))]
    pairs = [(pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)]
    reference = torch.cat(
        [comfy_encode(encoder, tokenizer, comfy_batches(tokenizer, fragments), -2) for encoder, tokenizer in pairs], -1
    )
    first_window = comfy_batches(pipe.tokenizer_2, fragments)[0]
    ids = [pipe.tokenizer_2.bos_token_id, *(t for t, _ in first_window), pipe.tokenizer_2.eos_token_id]
    ids += [pipe.tokenizer_2.pad_token_id] * (77 - len(ids))
    comfy = TextConditioner.from_pipeline(pipe, syntax="comfy", emphasis="comfy", window_split="comfy", cache_size=0)
    with torch.no_grad():
        pooled = pipe.text_encoder_2(torch.tensor([ids])).text_embeds
        ours = comfy.encode(prompt)
    torch.testing.assert_close(ours.tokens, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.pooled, pooled, rtol=1e-5, atol=1e-5)


def test_an_embedding_no_tokenizer_holds_is_refused_before_encoding(comfy_clip) -> None:
    text_encoder, tokenizer = comfy_clip
    comfy = TextConditioner("sd", clip=[(text_encoder, tokenizer)], syntax="comfy", cache_size=0)
    prompt = "a photo of embedding:<dog>, in snow"
    with pytest.raises(ValueError) as refused:
        comfy.encode(prompt)
    assert str(refused.value) == (
        f"prompt {prompt!r}: `embedding:<dog>` names no textual inversion this conditioner holds: load it first "
        "with `load_textual_inversion(path, token='<dog>')`"
    )
    with pytest.raises(ValueError, match=re.escape("`embedding:red` names no textual inversion")):
        comfy.encode("a (embedding:red:1.2)")  # a word of the vocabulary is no embedding
    assert comfy.encode("embedding:<cat>,").tokens.shape == (1, 77, 32)


def test_no_text_changes_between_steps_and_the_syntax_is_in_the_cache_key(sd_pipe, tmp_path) -> None:
    comfy = TextConditioner.from_pipeline(sd_pipe, syntax="comfy", cache_size=0)
    prompt = "a [cat:dog:0.5] AND a (red:1.2) fox"
    with torch.no_grad():
        kwargs = comfy.pipeline_kwargs(prompt, "(blurry:1.3)", num_inference_steps=4)
        plain = comfy.encode(prompt).tokens
    assert "callback_on_step_end" not in kwargs
    torch.testing.assert_close(kwargs["prompt_embeds"], plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="`schedule` reads A1111's prompt editing, and this conditioner reads syntax"):
        comfy.schedule(prompt, 4)
    a1111_key = TextConditioner.from_pipeline(sd_pipe, cache_size=0)._settings_key(by_content=False)
    comfy_key = comfy._settings_key(by_content=False)
    assert comfy_key != a1111_key and comfy_key.replace(":syntax=comfy", "", 1) == a1111_key
    assert "syntax='comfy'" in repr(comfy)


def test_the_pipeline_draws_what_stable_diffusion_draws_from_the_conditioners_embeddings(sd_pipe) -> None:
    prompt, negative = "a ((red circle:1.3)) on (a blue square)", "(blurry:1.2)"
    conditioner = TextConditioner.from_pipeline(sd_pipe, syntax="comfy", emphasis="comfy", cache_size=0)
    kwargs = conditioner.pipeline_kwargs(prompt, negative, num_inference_steps=3)

    def images(pipe, **arguments) -> np.ndarray:
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(5)
        return pipe(num_inference_steps=3, generator=generator, output_type="np", **arguments).images

    expected = images(StableDiffusionPipeline(**sd_pipe.components), **kwargs)
    ours = CLIPConditionedPipeline.from_pipe(sd_pipe, syntax="comfy", emphasis="comfy")
    assert ours.config.syntax == "comfy"
    np.testing.assert_array_equal(images(ours, prompt=prompt, negative_prompt=negative), expected)
    a1111 = CLIPConditionedPipeline.from_pipe(sd_pipe, emphasis="comfy")
    assert not np.allclose(images(a1111, prompt=prompt, negative_prompt=negative), expected, atol=1e-4)
