"""For plain prompts, TextConditioner equals each diffusers family's own `encode_prompt`.

Tolerance: none (float32, bit for bit). Every reference runs under `torch.no_grad()`, as
inside a pipeline call: with grad enabled PyTorch may pick another attention kernel, and
diffusers' own output then moves by ~6e-6 (measured on the tiny SD3 T5).
"""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch

from clipcond import TextConditioner
from clipcond.encoders import clip_final_layer_norm
from clipcond.families import get_family

PROMPTS = [
    "a photo of an astronaut riding a horse",
    "",
    "Two RED circles to the left of a blue square",
    "a lighthouse on a cliff above a stormy sea at dusk, waves crashing on the rocks, seagulls around "
    "the lantern, a small boat with a red sail, heavy clouds lit from below by the setting sun, rain",
]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


NEGATIVES = [None, "blurry, low quality", ["blurry", "", "ugly", "dark and grainy"]]


def close(actual, expected):
    """Bit for bit: the tensors diffusers' own encode_prompt makes (pooled vectors included)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_long_test_prompt_fits_one_window(sd_pipe):
    assert len(sd_pipe.tokenizer(PROMPTS[3]).input_ids) <= 77


@pytest.mark.parametrize("negative", NEGATIVES)
def test_sd(sd_pipe, negative):
    cond = TextConditioner.from_pipeline(sd_pipe)
    assert cond.recipe.name == "sd"
    expected = sd_pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=_listify(negative))
    kwargs = cond.pipeline_kwargs(PROMPTS, negative)
    assert set(kwargs) == {"prompt_embeds", "negative_prompt_embeds"}
    close(kwargs["prompt_embeds"], expected[0])
    close(kwargs["negative_prompt_embeds"], expected[1])
    embeds = cond.encode(PROMPTS)
    close(embeds.tokens, expected[0])
    assert embeds.pooled is None and embeds.mask is None


@pytest.mark.parametrize("negative", NEGATIVES)
def test_sdxl(sdxl_pipe, negative):
    cond = TextConditioner.from_pipeline(sdxl_pipe)
    assert cond.recipe.name == "sdxl"
    expected = sdxl_pipe.encode_prompt(
        prompt=PROMPTS,
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=_listify(negative),
    )
    kwargs = cond.pipeline_kwargs(PROMPTS, negative)
    assert set(kwargs) == {
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    }
    close(kwargs["prompt_embeds"], expected[0])
    close(kwargs["negative_prompt_embeds"], expected[1])
    close(kwargs["pooled_prompt_embeds"], expected[2])
    close(kwargs["negative_pooled_prompt_embeds"], expected[3])
    if negative is None:
        assert not kwargs["negative_prompt_embeds"].any() and not kwargs["negative_pooled_prompt_embeds"].any()


@pytest.mark.parametrize("negative", NEGATIVES)
def test_sd3(sd3_pipe, negative):
    cond = TextConditioner.from_pipeline(sd3_pipe)
    assert cond.recipe.name == "sd3"
    expected = sd3_pipe.encode_prompt(
        prompt=PROMPTS,
        prompt_2=None,
        prompt_3=None,
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=_listify(negative),
    )
    kwargs = cond.pipeline_kwargs(PROMPTS, negative)
    assert kwargs["prompt_embeds"].shape[1] == 77 + 256
    for key, value in zip(
        ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"], expected
    ):
        close(kwargs[key], value)


# End spaces and a newline (a prompt read from a file): the T5 tokenizer of the tests makes a
# lone "▁" token of them, as hub T5 tokenizers whose pre-tokenizer is Metaspace alone do
PROMPTS_WITH_END_SPACES = ["a red circle ", "a red circle\n", "  two blue squares", " "]


def test_t5_reads_a_plain_prompt_as_diffusers_does_end_spaces_included(sd3_pipe, flux_pipe):
    """A plain prompt goes to the T5 tokenizer as it is, as in diffusers (only the fragments of
    a weighted prompt are trimmed): SD3's and Flux's embeddings bit for bit."""
    tokens = [sd3_pipe.tokenizer_3.tokenize(prompt) for prompt in PROMPTS_WITH_END_SPACES[:2]]
    assert tokens[0] != sd3_pipe.tokenizer_3.tokenize("a red circle") and tokens[0] == tokens[1]
    sd3 = sd3_pipe.encode_prompt(
        prompt=PROMPTS_WITH_END_SPACES, prompt_2=None, prompt_3=None, device="cpu", do_classifier_free_guidance=False
    )
    kwargs = TextConditioner.from_pipeline(sd3_pipe).pipeline_kwargs(PROMPTS_WITH_END_SPACES)
    close(kwargs["prompt_embeds"], sd3[0])
    flux, _, _ = flux_pipe.encode_prompt(prompt=PROMPTS_WITH_END_SPACES, prompt_2=None, device="cpu")
    close(TextConditioner.from_pipeline(flux_pipe).pipeline_kwargs(PROMPTS_WITH_END_SPACES)["prompt_embeds"], flux)


@pytest.mark.parametrize("max_sequence_length", [None, 32])
def test_sd3_without_its_t5(sd3_pipe, max_sequence_length):
    """SD3 without `text_encoder_3`: diffusers feeds zero T5 tokens of `max_sequence_length`
    (256 by default) after the CLIP tokens; so do we."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(**{**sd3_pipe.components, "text_encoder_3": None, "tokenizer_3": None})
    length = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    cond = TextConditioner.from_pipeline(pipe, **length)
    kwargs = cond.pipeline_kwargs(PROMPTS[:2], negative_prompt="blurry")
    expected = pipe.encode_prompt(
        PROMPTS[:2], None, None, device="cpu", negative_prompt="blurry", negative_prompt_2=None,
        negative_prompt_3=None, **length,
    )  # fmt: skip
    assert kwargs["prompt_embeds"].shape[1] == 77 + (max_sequence_length or 256)
    for name, tensor in zip(
        ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"], expected
    ):
        close(kwargs[name], tensor)


@pytest.mark.parametrize("negative", NEGATIVES)
def test_flux(flux_pipe, negative):
    cond = TextConditioner.from_pipeline(flux_pipe)
    assert cond.recipe.name == "flux"
    prompt_embeds, pooled, _ = flux_pipe.encode_prompt(
        prompt=PROMPTS, prompt_2=None, device="cpu", num_images_per_prompt=1
    )
    kwargs = cond.pipeline_kwargs(PROMPTS, negative)
    close(kwargs["prompt_embeds"], prompt_embeds)
    close(kwargs["pooled_prompt_embeds"], pooled)
    if negative is None:
        assert set(kwargs) == {"prompt_embeds", "pooled_prompt_embeds"}
    else:
        negatives = [negative] * len(PROMPTS) if isinstance(negative, str) else negative
        neg_embeds, neg_pooled, _ = flux_pipe.encode_prompt(
            prompt=negatives, prompt_2=None, device="cpu", num_images_per_prompt=1
        )
        close(kwargs["negative_prompt_embeds"], neg_embeds)
        close(kwargs["negative_pooled_prompt_embeds"], neg_pooled)


@pytest.mark.parametrize("clean_caption", [False, True])
@pytest.mark.parametrize("negative", NEGATIVES)
def test_pixart(pixart_pipe, negative, clean_caption):
    if clean_caption:
        pytest.importorskip("bs4", reason="PixArt's clean_caption needs beautifulsoup4 (in [dev])")
    cond = TextConditioner.from_pipeline(pixart_pipe, clean_caption=clean_caption)
    assert cond.recipe.name == "pixart"
    expected = pixart_pipe.encode_prompt(
        PROMPTS,
        do_classifier_free_guidance=True,
        negative_prompt=negative if negative is not None else "",
        device="cpu",
        clean_caption=clean_caption,
    )
    kwargs = cond.pipeline_kwargs(PROMPTS, negative)
    assert set(kwargs) == {
        "prompt_embeds",
        "prompt_attention_mask",
        "negative_prompt_embeds",
        "negative_prompt_attention_mask",
        "negative_prompt",
    }
    assert kwargs["negative_prompt"] is None  # PixArt's __call__ defaults it to "" and refuses both
    close(kwargs["prompt_embeds"], expected[0])
    assert torch.equal(kwargs["prompt_attention_mask"], expected[1])
    close(kwargs["negative_prompt_embeds"], expected[2])
    assert torch.equal(kwargs["negative_prompt_attention_mask"], expected[3])
    embeds = cond.encode(PROMPTS)
    assert torch.equal(embeds.mask, expected[1])


# Random plain prompts: no weighting syntax (no brackets, backslash, upper-case BREAK or AND), but
# any other character a prompt file or a user may hold: punctuation, colons, tabs, newlines, end
# spaces, accents, CJK, emoji, a zero-width space, no-break and ideographic spaces, curly quotes,
# dashes, and the syntax words in other cases ("Break", "and").
_PLAIN_CHARACTERS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " ,.;:!?'\"-_/&%$#@*+=<>{}|~`^\n\t\u00e9\u00fc\u00f1\u00e7\u00df\u4e2d\u6587\u65e5\u672c"
    "\U0001f600\U0001f3a8\u200b\u00a0\u3000\u2019\u201c\u201d\u2026\u2013\u2014"
)
_PLAIN_WORDS = "a photo of an astronaut riding horse red circle blue square cat Break break and And".split()


def _random_plain_prompts(count: int, seed: int, fits) -> list[str]:
    """`count` random plain prompts (seeded) for which `fits(prompt)` holds."""
    rng = random.Random(seed)
    prompts = []
    while len(prompts) < count:
        if rng.random() < 0.4:
            prompt = "".join(rng.choice(_PLAIN_CHARACTERS) for _ in range(rng.randint(0, 50)))
        else:
            words = [
                rng.choice(_PLAIN_WORDS)
                if rng.random() < 0.7
                else "".join(rng.choice(_PLAIN_CHARACTERS) for _ in range(rng.randint(1, 6)))
                for _ in range(rng.randint(0, 16))
            ]
            prompt = rng.choice([" ", "  ", ", ", "\n"]).join(words)
        if "BREAK" not in prompt and "AND" not in prompt and fits(prompt):
            prompts.append(prompt)
    return prompts


def _diffusers_embeddings(family: str, pipe, prompts: list[str], negatives: list[str]) -> dict:
    """The family's own `encode_prompt` of `prompts` (under guidance, with `negatives`), by the
    names of the pipeline's arguments."""
    if family == "sd":
        positive, negative = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=negatives)
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    if family == "sdxl":
        return dict(zip(names, pipe.encode_prompt(prompts, device="cpu", negative_prompt=negatives)))
    if family == "sd3":
        return dict(zip(names, pipe.encode_prompt(prompts, None, None, device="cpu", negative_prompt=negatives)))
    if family == "flux":  # Flux encodes a negative as a prompt of its own (true CFG)
        (positive, pooled, _), (negative, negative_pooled, _) = (
            pipe.encode_prompt(texts, None, device="cpu") for texts in (prompts, negatives)
        )
        return dict(zip(names, (positive, negative, pooled, negative_pooled)))
    names = ["prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"]
    return dict(
        zip(names, pipe.encode_prompt(prompts, True, negative_prompt=negatives, device="cpu", clean_caption=True))
    )


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "pixart"])
def test_random_plain_prompts_equal_each_familys_encode_prompt(family, request):
    """Bit for bit beyond the hand-picked prompts: 16 random plain prompts and 16 negatives per
    family (within 77 CLIP tokens and the family's T5 length), PixArt with its caption cleaning
    on, as its pipeline calls it."""
    if family == "pixart":
        pytest.importorskip("bs4", reason="PixArt's clean_caption needs beautifulsoup4 (in [dev])")
    pipe = request.getfixturevalue(f"{family}_pipe")
    clip = None if family == "pixart" else pipe.tokenizer
    t5, t5_length = {"sd3": ("tokenizer_3", 256), "flux": ("tokenizer_2", 512), "pixart": ("tokenizer", 120)}.get(
        family, (None, 0)
    )

    def fits(prompt: str) -> bool:
        clip_fits = clip is None or len(clip(prompt).input_ids) <= 77
        return clip_fits and (t5 is None or len(getattr(pipe, t5)(prompt).input_ids) <= t5_length)

    prompts = _random_plain_prompts(16, 0, fits)
    negatives = _random_plain_prompts(16, 1, fits)
    expected = _diffusers_embeddings(family, pipe, prompts, negatives)
    kwargs = TextConditioner.from_pipeline(pipe).pipeline_kwargs(prompts, negatives)
    for name, tensor in expected.items():  # PixArt's attention masks too
        close(kwargs[name], tensor)


# PixArt's caption cleaning changes each of these (URL, HTML, @name, #id, size, "+", shop words,
# curly quotes, en dash, percent-encoding); "(red:1.3)" is weight syntax, read before cleaning
CAPTIONS_TO_CLEAN = [
    "A photo of a cat + a dog, https://example.com/cat.jpg",
    "cat_dog 1920x1080 wallpaper <b>HD</b> @artist #42",
    "a cat, free shipping \u2013 \u201cbest\u201d price %20 today",
    "a (red:1.3) circle on a BLUE square",
]


def test_pixart_cleans_captions_as_its_pipeline_by_default(pixart_pipe):
    """PixArt's `__call__` defaults `clean_caption=True`: `from_pipeline` does the same, and
    gives `encode_prompt(clean_caption=True)`'s tensors for text that cleaning changes; the
    weight syntax is read first, so the weight survives the cleaning of brackets."""
    pytest.importorskip("bs4", reason="PixArt's clean_caption needs beautifulsoup4 (in [dev])")
    cond = TextConditioner.from_pipeline(pixart_pipe)
    assert cond.recipe.caption_cleaning == "clean_caption"
    plain = CAPTIONS_TO_CLEAN[:3]
    expected = pixart_pipe.encode_prompt(plain, do_classifier_free_guidance=False, device="cpu", clean_caption=True)
    close(cond.encode(plain).tokens, expected[0])
    lowered = pixart_pipe.encode_prompt(plain, do_classifier_free_guidance=False, device="cpu", clean_caption=False)
    assert not torch.equal(expected[0], lowered[0])  # the cleaning changed what the encoder read
    weighted = TextConditioner.from_pipeline(pixart_pipe, cache_size=0)
    unweighted = TextConditioner.from_pipeline(pixart_pipe, cache_size=0, parse_weights=False)
    assert not torch.equal(weighted.encode(CAPTIONS_TO_CLEAN[3]).tokens, unweighted.encode(CAPTIONS_TO_CLEAN[3]).tokens)


def test_without_beautifulsoup_clean_caption_falls_back_as_diffusers_does(pixart_pipe, monkeypatch, caplog):
    """diffusers' PixArt warns and only lower-cases when beautifulsoup4 is missing; so does the
    conditioner (once, when built), and the tensors are those of diffusers' fallback."""
    import importlib.util

    import diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha as pixart_module

    from clipcond import caption_cleaning

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        caption_cleaning.importlib.util, "find_spec", lambda name: None if name == "bs4" else real_find_spec(name)
    )
    monkeypatch.setattr(pixart_module, "is_bs4_available", lambda: False)
    with caplog.at_level("WARNING", logger="clipcond.caption_cleaning"):
        cond = TextConditioner.from_pipeline(pixart_pipe)
    assert cond.recipe.caption_cleaning == "lowercase" and "needs beautifulsoup4" in caplog.text
    expected = pixart_pipe.encode_prompt(
        CAPTIONS_TO_CLEAN[:3], do_classifier_free_guidance=False, device="cpu", clean_caption=True
    )
    close(cond.encode(CAPTIONS_TO_CLEAN[:3]).tokens, expected[0])


def test_clean_caption_is_pixarts_only(sd_pipe):
    with pytest.raises(ValueError, match="`clean_caption` is PixArt's"):
        TextConditioner.from_pipeline(sd_pipe, clean_caption=True)
    with pytest.raises(TypeError, match="`clean_caption` must be None or a bool, got 'yes'"):
        TextConditioner.from_pipeline(sd_pipe, clean_caption="yes")


# ----------------------------------------------------------------------------- clip_skip


def _hidden(model, tokenizer, prompts, index):
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[index]


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sd_clip_skip_matches_diffusers_formula(sd_pipe, clip_skip):
    cond = TextConditioner.from_pipeline(sd_pipe, clip_skip=clip_skip)
    kwargs = cond.pipeline_kwargs(PROMPTS, "blurry")
    norm = clip_final_layer_norm(sd_pipe.text_encoder)
    with torch.no_grad():
        expected = norm(_hidden(sd_pipe.text_encoder, sd_pipe.tokenizer, PROMPTS, -(clip_skip + 1)))
        expected_negative = norm(_hidden(sd_pipe.text_encoder, sd_pipe.tokenizer, ["blurry"] * 4, -(clip_skip + 1)))
    close(kwargs["prompt_embeds"], expected)
    # Our convention: clip_skip applies to the negative prompt too (diffusers skips it there).
    close(kwargs["negative_prompt_embeds"], expected_negative)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sdxl_clip_skip_matches_diffusers(sdxl_pipe, clip_skip):
    cond = TextConditioner.from_pipeline(sdxl_pipe, clip_skip=clip_skip)
    expected = sdxl_pipe.encode_prompt(
        prompt=PROMPTS, device="cpu", do_classifier_free_guidance=False, clip_skip=clip_skip
    )
    embeds = cond.encode(PROMPTS)
    close(embeds.tokens, expected[0])
    close(embeds.pooled, expected[2])
    formula = torch.cat(
        [
            _hidden(sdxl_pipe.text_encoder, sdxl_pipe.tokenizer, PROMPTS, -(clip_skip + 2)),
            _hidden(sdxl_pipe.text_encoder_2, sdxl_pipe.tokenizer_2, PROMPTS, -(clip_skip + 2)),
        ],
        dim=-1,
    )
    close(embeds.tokens, formula)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sd3_clip_skip_matches_diffusers(sd3_pipe, clip_skip):
    cond = TextConditioner.from_pipeline(sd3_pipe, clip_skip=clip_skip)
    expected = sd3_pipe.encode_prompt(
        prompt=PROMPTS,
        prompt_2=None,
        prompt_3=None,
        device="cpu",
        do_classifier_free_guidance=False,
        clip_skip=clip_skip,
    )
    embeds = cond.encode(PROMPTS)
    close(embeds.tokens, expected[0])
    close(embeds.pooled, expected[2])


@pytest.mark.parametrize("family", ["sd_pipe", "sdxl_pipe", "sd3_pipe"])
def test_clip_skip_out_of_range(family, request):
    pipe = request.getfixturevalue(family)
    layers = pipe.text_encoder.config.num_hidden_layers
    for bad in (-1, layers, 100):
        with pytest.raises(ValueError, match="clip_skip"):
            TextConditioner.from_pipeline(pipe, clip_skip=bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="clip_skip"):
            TextConditioner.from_pipeline(pipe, clip_skip=bad)


def test_a_clip_layer_deeper_than_the_clip_is_refused_when_built(sd_pipe):
    """`clip_layer_from_end` up to the layer count reads hidden_states[-k] (k = layers: the first
    layer's output); beyond it is an error naming the range, before any encode (it was an
    IndexError at the first encode)."""
    import dataclasses

    layers = sd_pipe.text_encoder.config.num_hidden_layers
    encoder = (sd_pipe.text_encoder, sd_pipe.tokenizer)
    deepest = dataclasses.replace(get_family("sd").recipe, clip_layer_from_end=layers)
    ids = sd_pipe.tokenizer("a cat", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        first_layer = sd_pipe.text_encoder(ids, output_hidden_states=True).hidden_states[1]
        expected = clip_final_layer_norm(sd_pipe.text_encoder)(first_layer)  # as diffusers' clip_skip reads it
    close(TextConditioner(deepest, clip=[encoder]).encode("a cat").tokens, expected)
    with pytest.raises(ValueError, match=rf"^`clip_layer_from_end` must be between 1 and {layers} for a"):
        TextConditioner(dataclasses.replace(deepest, clip_layer_from_end=layers + 1), clip=[encoder])


def test_clip_skip_on_t5_recipes_is_an_error(flux_pipe):
    with pytest.raises(ValueError, match="clip_skip"):
        TextConditioner.from_pipeline(flux_pipe, clip_skip=1)


# ----------------------------------------------------------------------------- pipelines run


def _listify(negative):
    if isinstance(negative, str):
        return [negative] * len(PROMPTS)
    return negative


CALLS = {
    "sd_pipe": dict(height=32, width=32),
    "sdxl_pipe": dict(height=32, width=32),
    "sd3_pipe": dict(height=32, width=32),
    "flux_pipe": dict(height=16, width=16, true_cfg_scale=2.0),
    "pixart_pipe": dict(height=16, width=16, use_resolution_binning=False),  # clean_caption: its default
}


@pytest.mark.parametrize("family", list(CALLS))
def test_pipeline_runs_with_our_kwargs_and_gives_the_same_image(family, request):
    pipe = request.getfixturevalue(family)
    cond = TextConditioner.from_pipeline(pipe)
    prompt, negative = "a red circle above a blue square", "blurry"
    if family == "pixart_pipe" and importlib.util.find_spec("bs4") is not None:
        prompt = CAPTIONS_TO_CLEAN[0]  # PixArt cleans it by default: so does the conditioner
    extra = dict(CALLS[family], num_inference_steps=2, output_type="np")
    ours = pipe(**cond.pipeline_kwargs(prompt, negative), generator=torch.Generator().manual_seed(0), **extra).images
    theirs = pipe(prompt=prompt, negative_prompt=negative, generator=torch.Generator().manual_seed(0), **extra).images
    assert ours.shape == theirs.shape and np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- from_pipeline


def test_siblings_map_to_their_family(sd_pipe, sdxl_pipe, sd3_pipe, flux_pipe):
    import diffusers

    siblings = [
        ("StableDiffusionImg2ImgPipeline", sd_pipe, "sd"),
        ("StableDiffusionInpaintPipeline", sd_pipe, "sd"),
        ("StableDiffusionXLImg2ImgPipeline", sdxl_pipe, "sdxl"),
        ("StableDiffusionXLInpaintPipeline", sdxl_pipe, "sdxl"),
        ("StableDiffusion3Img2ImgPipeline", sd3_pipe, "sd3"),
        ("FluxImg2ImgPipeline", flux_pipe, "flux"),
    ]
    for name, base, recipe in siblings:
        pipe = getattr(diffusers, name)(**base.components)
        cond = TextConditioner.from_pipeline(pipe)
        assert cond.recipe.name == recipe, name
        assert cond.clip[0].model is base.text_encoder, name
        close(cond.encode("a cat").tokens, TextConditioner.from_pipeline(base).encode("a cat").tokens)


def test_from_pipeline_reuses_the_encoders(sd3_pipe, pixart_pipe):
    cond = TextConditioner.from_pipeline(sd3_pipe)
    assert cond.clip[0].model is sd3_pipe.text_encoder and cond.clip[1].model is sd3_pipe.text_encoder_2
    assert cond.t5.model is sd3_pipe.text_encoder_3 and cond.t5.tokenizer is sd3_pipe.tokenizer_3
    assert TextConditioner.from_pipeline(pixart_pipe).t5.model is pixart_pipe.text_encoder


def test_sdxl_refiner_without_first_encoder(sdxl_pipe):
    import diffusers

    components = dict(sdxl_pipe.components, text_encoder=None, tokenizer=None)
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline(**components, requires_aesthetics_score=False)
    cond = TextConditioner.from_pipeline(refiner)
    expected = refiner.encode_prompt(prompt=PROMPTS, device="cpu", do_classifier_free_guidance=False)
    embeds = cond.encode(PROMPTS)
    close(embeds.tokens, expected[0])
    close(embeds.pooled, expected[2])


def test_unsupported_pipeline_class_is_named(sd_pipe):
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline(unet=sd_pipe.unet, scheduler=sd_pipe.scheduler)
    with pytest.raises(ValueError, match="DDPMPipeline"):
        TextConditioner.from_pipeline(pipe)
    with pytest.raises(ValueError, match="not supported"):
        TextConditioner.from_pipeline(object())
