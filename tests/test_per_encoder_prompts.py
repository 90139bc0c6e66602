"""Per-encoder prompts (`prompt_2`, `prompt_3` and their negatives) read as in each family's
diffusers `encode_prompt`: the same encoder reads the same argument, a left-out one is the
first prompt, and the tensors are diffusers' (max abs diff <= 1e-6 in float32, under no_grad as
in tests/test_exactness.py). Weights, long prompts, BREAK, the cache and prompt editing work
in each encoder's text."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tiny_pipelines
import torch
from tensor_checks import close, differs

from clipcond import CLIPConditionedPipeline, TextConditioner
from clipcond.cache_key import prompt_keys, reading_keys

PROMPTS = ["a photo of an astronaut riding a horse", "Two RED circles to the left of a blue square"]
SECOND = ["an oil painting with thick brush strokes", "a pencil sketch of a cat"]
THIRD = ["a watercolour of a lighthouse", "neon lights in the rain at night"]
LONG = ", ".join(f"a {colour} circle next to a {colour} square" for colour in ["red", "blue", "green", "pink"] * 6)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _listify(value):
    return [value] * len(PROMPTS) if isinstance(value, str) else value


SDXL_CASES = {
    "both-negatives": dict(prompt_2=SECOND, negative_prompt="blurry", negative_prompt_2=["ugly", "dark"]),
    "one-second-prompt-for-all": dict(prompt_2="an oil painting", negative_prompt=["blurry", "grainy"]),
    "no-negative": dict(prompt_2=SECOND),
}


@pytest.mark.parametrize("case", SDXL_CASES)
def test_sdxl_prompt_2_is_read_by_the_second_clip_as_in_diffusers(sdxl_pipe, case):
    arguments = SDXL_CASES[case]
    cond = TextConditioner.from_pipeline(sdxl_pipe)
    expected = sdxl_pipe.encode_prompt(
        prompt=PROMPTS,
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        **{name: _listify(value) for name, value in arguments.items()},
    )
    kwargs = cond.pipeline_kwargs(PROMPTS, **arguments)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, value in zip(names, expected):
        close(kwargs[name], value)
    plain = cond.pipeline_kwargs(PROMPTS, arguments.get("negative_prompt"))
    assert differs(kwargs["prompt_embeds"], plain["prompt_embeds"])  # prompt_2 was read
    close(kwargs["prompt_embeds"][..., :32], plain["prompt_embeds"][..., :32])  # by the second CLIP only
    close(cond.encode(PROMPTS, prompt_2=arguments["prompt_2"]).tokens, expected[0])


def test_sdxl_negative_prompt_2_without_negative_prompt_when_negatives_are_not_zeros():
    """With `force_zeros_for_empty_prompt` off, a missing negative prompt is "" and
    `negative_prompt_2` still reaches the second CLIP, as in diffusers."""
    pipe = tiny_pipelines.build_sdxl()
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    cond = TextConditioner.from_pipeline(pipe)
    expected = pipe.encode_prompt(
        prompt=PROMPTS, device="cpu", do_classifier_free_guidance=True, negative_prompt_2=["ugly", "dark"]
    )
    kwargs = cond.pipeline_kwargs(PROMPTS, negative_prompt_2=["ugly", "dark"])
    close(kwargs["negative_prompt_embeds"], expected[1])
    close(kwargs["negative_pooled_prompt_embeds"], expected[3])
    assert differs(kwargs["negative_prompt_embeds"], cond.pipeline_kwargs(PROMPTS)["negative_prompt_embeds"])


def test_sdxl_negative_prompt_2_that_diffusers_would_ignore_is_refused(sdxl_pipe):
    cond = TextConditioner.from_pipeline(sdxl_pipe)  # force_zeros_for_empty_prompt: zeros without a negative
    with pytest.raises(ValueError, match="`negative_prompt_2` without `negative_prompt`.*zeros"):
        cond.pipeline_kwargs(PROMPTS, negative_prompt_2="ugly")


SD3_CASES = {
    "every-encoder": dict(
        prompt_2=SECOND, prompt_3=THIRD, negative_prompt="blurry", negative_prompt_2="ugly", negative_prompt_3="dark"
    ),
    "t5-only": dict(prompt_3=THIRD),
    "negative-3-only": dict(prompt_2=SECOND, negative_prompt_3=["dark", "grainy"]),
}


@pytest.mark.parametrize("case", SD3_CASES)
def test_sd3_prompt_2_and_3_are_read_as_in_diffusers(sd3_pipe, case):
    arguments = SD3_CASES[case]
    cond = TextConditioner.from_pipeline(sd3_pipe)
    listed = {name: _listify(value) for name, value in arguments.items()}
    expected = sd3_pipe.encode_prompt(
        prompt=PROMPTS,
        prompt_2=listed.pop("prompt_2", None),
        prompt_3=listed.pop("prompt_3", None),
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        **listed,
    )
    kwargs = cond.pipeline_kwargs(PROMPTS, **arguments)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, value in zip(names, expected):
        close(kwargs[name], value)
    plain = cond.pipeline_kwargs(PROMPTS)
    # prompt_embeds: 77 CLIP rows (CLIP-L's channels, CLIP-G's, zeros up to the T5 width), then
    # the T5's rows. prompt_2 shows in CLIP-G's channels and the pooled vector, prompt_3 in the
    # T5 rows; CLIP-L reads `prompt` alone.
    tokens, plain_tokens = kwargs["prompt_embeds"], plain["prompt_embeds"]
    clip_l, clip_g = slice(0, tiny_pipelines.WIDTH), slice(tiny_pipelines.WIDTH, cond.clip_width)
    assert not differs(tokens[:, :77, clip_l], plain_tokens[:, :77, clip_l])
    assert differs(tokens[:, :77, clip_g], plain_tokens[:, :77, clip_g]) == ("prompt_2" in arguments)
    assert differs(tokens[:, 77:], plain_tokens[:, 77:]) == ("prompt_3" in arguments)
    assert differs(kwargs["pooled_prompt_embeds"], plain["pooled_prompt_embeds"]) == ("prompt_2" in arguments)


def test_flux_prompt_2_is_read_by_t5_as_in_diffusers(flux_pipe):
    cond = TextConditioner.from_pipeline(flux_pipe)
    tokens, pooled, _ = flux_pipe.encode_prompt(prompt=PROMPTS, prompt_2=SECOND, device="cpu")
    negative_tokens, negative_pooled, _ = flux_pipe.encode_prompt(
        prompt=["blurry"] * 2, prompt_2=["ugly", "dark"], device="cpu"
    )
    kwargs = cond.pipeline_kwargs(PROMPTS, "blurry", prompt_2=SECOND, negative_prompt_2=["ugly", "dark"])
    close(kwargs["prompt_embeds"], tokens)
    close(kwargs["pooled_prompt_embeds"], pooled)
    close(kwargs["negative_prompt_embeds"], negative_tokens)
    close(kwargs["negative_pooled_prompt_embeds"], negative_pooled)
    plain = cond.pipeline_kwargs(PROMPTS)
    assert differs(kwargs["prompt_embeds"], plain["prompt_embeds"])
    close(kwargs["pooled_prompt_embeds"], plain["pooled_prompt_embeds"])  # the CLIP still reads `prompt`
    with pytest.raises(ValueError, match="`negative_prompt_2` without `negative_prompt`.*none"):
        cond.pipeline_kwargs(PROMPTS, negative_prompt_2="ugly")


@pytest.mark.parametrize("left_out", [None, "", []])
def test_a_left_out_prompt_2_is_the_first_prompt(sd3_pipe, left_out):
    """diffusers' `prompt_2 or prompt`: None, "" and an empty list all mean `prompt`."""
    cond = TextConditioner.from_pipeline(sd3_pipe, cache_size=0)
    plain = cond.encode(PROMPTS)
    for name in ("prompt_2", "prompt_3"):
        assert torch.equal(cond.encode(PROMPTS, **{name: left_out}).tokens, plain.tokens)
        assert torch.equal(cond.encode(PROMPTS, **{name: PROMPTS}).tokens, plain.tokens)
    with_third = cond.encode(PROMPTS, prompt_3=THIRD)
    left_out_second = cond.encode(PROMPTS, prompt_2=left_out, prompt_3=THIRD)  # beside a given prompt_3
    assert torch.equal(left_out_second.pooled, with_third.pooled)
    assert torch.equal(left_out_second.pooled, cond.encode(PROMPTS, prompt_2=PROMPTS, prompt_3=THIRD).pooled)


REFUSED = [
    ("sd_pipe", "prompt_2"),
    ("sd_pipe", "negative_prompt_2"),
    ("pixart_pipe", "prompt_2"),
    ("sdxl_pipe", "prompt_3"),
    ("sdxl_pipe", "negative_prompt_3"),
    ("flux_pipe", "prompt_3"),
]


@pytest.mark.parametrize(("family", "argument"), REFUSED)
def test_an_argument_no_encoder_reads_is_refused(family, argument, request):
    cond = TextConditioner.from_pipeline(request.getfixturevalue(family))
    with pytest.raises(ValueError, match=f"`{argument}` has no encoder to read it"):
        cond.pipeline_kwargs(PROMPTS, "blurry", **{argument: "a cat"})
    with pytest.raises(ValueError, match=f"`{argument}` has no encoder to read it"):
        cond.schedule(PROMPTS, 4, "blurry", **{argument: "a cat"})
    if not argument.startswith("negative_"):
        with pytest.raises(ValueError, match=f"`{argument}` has no encoder to read it"):
            cond.encode(PROMPTS, **{argument: "a cat"})


def test_the_refiner_s_only_clip_reads_prompt_and_refuses_prompt_2(sdxl_pipe):
    """A pipeline without its first CLIP (SDXL's refiner): diffusers pairs `prompt` with the
    encoder it has, so `prompt_2` has no reader."""
    refiner = TextConditioner("sdxl", clip=[(sdxl_pipe.text_encoder_2, sdxl_pipe.tokenizer_2)])
    assert refiner.prompt_readers == ("prompt",)
    with pytest.raises(ValueError, match="`prompt_2` has no encoder to read it"):
        refiner.encode("a cat", prompt_2="a dog")


def test_bad_per_encoder_prompts_are_named(sdxl_pipe):
    cond = TextConditioner.from_pipeline(sdxl_pipe)
    with pytest.raises(ValueError, match="`prompt_2` has 3 entries but the batch has 2 prompts"):
        cond.encode(PROMPTS, prompt_2=["a", "b", "c"])
    with pytest.raises(TypeError, match="`prompt_2` must be a string or a list of strings, got int"):
        cond.encode(PROMPTS, prompt_2=5)
    with pytest.raises(TypeError, match="`negative_prompt_2` must contain only strings, but item 1 is int"):
        cond.pipeline_kwargs(PROMPTS, "blurry", negative_prompt_2=["ugly", 3])


@pytest.mark.parametrize(
    "value", [0, {}, torch.zeros(1), torch.zeros(2), np.zeros(1), 0.0], ids=["0", "dict", "t1", "t2", "np", "float"]
)
@pytest.mark.parametrize("name", ["prompt_2", "negative_prompt_2"])
def test_a_per_encoder_argument_that_is_no_text_is_refused_even_when_falsy(sdxl_pipe, name, value, request):
    """A falsy non-text is not taken as "left out" (which would encode `prompt` silently), nor
    is a tensor asked for its truth value; each method names the argument, as the pipeline does."""
    cond = TextConditioner.from_pipeline(sdxl_pipe)
    expected = f"^`{name}` must be a string or a list of strings, got {type(value).__name__}$"
    calls = []
    hook = sdxl_pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append(1))  # a shared fixture
    request.addfinalizer(hook.remove)
    attempts = [
        lambda: cond.pipeline_kwargs(PROMPTS, "blurry", **{name: value}),
        lambda: cond.schedule(PROMPTS, 4, "blurry", **{name: value}),
    ]
    if not name.startswith("negative_"):
        attempts.append(lambda: cond.encode(PROMPTS, **{name: value}))
    for attempt in attempts:
        with pytest.raises(TypeError, match=expected):
            attempt()
    assert not calls
    pipe = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    with pytest.raises(TypeError, match=expected):
        pipe(prompt=PROMPTS, negative_prompt="blurry", num_inference_steps=2, **{name: value})
    assert not calls


def _one_clip(pipe, index, emphasis):
    encoder = [(pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)][index]
    return TextConditioner("sdxl", clip=[encoder], emphasis=emphasis, cache_size=0)


@pytest.mark.parametrize("emphasis", ["multiply", "compel"])
def test_each_clip_reads_its_own_weighted_long_text(sdxl_pipe, emphasis):
    """Weights, BREAK and long prompts in `prompt` and `prompt_2`: each CLIP's channels are
    that CLIP's alone on its text; the shorter text is padded with its encoder's empty window."""
    first = "a (red:1.3) circle BREAK a [blue] square"  # two windows
    second = f"({LONG}:0.8), a (tiny:1.2) cat"  # three windows or more
    cond = TextConditioner.from_pipeline(sdxl_pipe, emphasis=emphasis, cache_size=0)
    joined = cond.encode(first, prompt_2=second)
    alone_1 = _one_clip(sdxl_pipe, 0, emphasis)
    alone_2 = _one_clip(sdxl_pipe, 1, emphasis).encode(second)
    tokens_1 = alone_1.encode(first).tokens
    assert joined.tokens.shape[1] == alone_2.tokens.shape[1] > tokens_1.shape[1] == 2 * 77
    close(joined.tokens[..., 32:], alone_2.tokens)
    close(joined.tokens[:, : 2 * 77, :32], tokens_1)
    for start in range(2 * 77, joined.tokens.shape[1], 77):
        close(joined.tokens[:, start : start + 77, :32], alone_1.encode("").tokens)
    close(joined.pooled, alone_2.pooled)


def test_reading_keys_name_the_text_of_each_encoder():
    (same,) = reading_keys("w", "s", [("a cat", "a cat")])
    assert same == prompt_keys("w", "s", ["a cat"])[0]  # files cached before stay valid
    readings = [("a cat", "a dog"), ("a dog", "a cat"), ("a ca", "ta dog"), ("a cat", "a dog", "")]
    keys = reading_keys("w", "s", readings)
    singles = prompt_keys("w", "s", ["a cata dog", "a cat|a dog", "a cat a dog", "a cat", "a dog"])
    assert len(set(keys) | set(singles)) == len(keys) + len(singles)
    assert reading_keys("v", "s", readings[:1]) != keys[:1] and reading_keys("w", "t", readings[:1]) != keys[:1]


def test_the_cache_tells_second_prompts_apart_in_memory_and_on_disk(sdxl_pipe, tmp_path):
    uncached = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0)
    want_x = uncached.encode("a red circle", prompt_2="a cat").tokens
    want_y = uncached.encode("a red circle", prompt_2="a dog").tokens
    assert differs(want_x, want_y)

    memory = TextConditioner.from_pipeline(sdxl_pipe)
    assert torch.equal(memory.encode("a red circle", prompt_2="a cat").tokens, want_x)
    assert torch.equal(memory.encode("a red circle", prompt_2="a dog").tokens, want_y)
    swapped = memory.encode("a cat", prompt_2="a red circle").tokens
    assert torch.equal(swapped, uncached.encode("a cat", prompt_2="a red circle").tokens)

    writer = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0, cache_dir=str(tmp_path))
    writer.encode("a red circle", prompt_2="a cat")
    reader = TextConditioner.from_pipeline(sdxl_pipe, cache_dir=str(tmp_path))
    assert torch.equal(reader.encode("a red circle", prompt_2="a dog").tokens, want_y)
    assert reader.cache.hits == 0  # the file of prompt_2="a cat" was not taken for it
    assert torch.equal(reader.encode("a red circle", prompt_2="a cat").tokens, want_x)
    assert reader.cache.hits == 1  # but it is read for its own texts
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_prompt_editing_in_each_encoder_s_text(sdxl_pipe):
    """`[from:to:when]` in `prompt` and alternation in `prompt_2` are scheduled each on its own;
    step 0's embeddings and the callback's swaps equal the plain texts of each step."""
    cond = TextConditioner.from_pipeline(sdxl_pipe)
    schedule = cond.schedule("a [red:blue:0.5] circle", 4, prompt_2="a [cat|dog]")
    # each text as its own schedule reads it: red, red, red, blue and cat, cat, dog, cat
    assert schedule.segments() == [
        (0, 2, ("a red circle", "a cat")),
        (2, 3, ("a red circle", "a dog")),
        (3, 4, ("a blue circle", "a cat")),
    ]
    kwargs = cond.pipeline_kwargs("a [red:blue:0.5] circle", num_inference_steps=4, prompt_2="a [cat|dog]")
    close(kwargs["prompt_embeds"], cond.encode("a red circle", prompt_2="a cat").tokens)
    swap = kwargs["callback_on_step_end"]
    tensors = {"prompt_embeds": kwargs["prompt_embeds"], "add_text_embeds": kwargs["pooled_prompt_embeds"]}
    replaced = swap(SimpleNamespace(do_classifier_free_guidance=False), 2, None, tensors)
    step_3 = cond.encode("a blue circle", prompt_2="a cat")
    close(replaced["prompt_embeds"], step_3.tokens)
    close(replaced["add_text_embeds"], step_3.pooled)
