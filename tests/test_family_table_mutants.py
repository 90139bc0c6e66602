"""The family table's functions and `Recipe`'s checks on their own, with stand-in pipelines (plain
objects whose class names are diffusers' and whose components are strings) and a recording
stand-in for `TextConditioner`: no model is built. Written against the mutation run of issue 24
(benchmarks/results/mutation.md)."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest
import torch

from clipcond.embeds import PromptEmbeds
from clipcond.families import (
    FAMILIES,
    Family,
    conditioner_from_pipeline,
    custom_recipe,
    encoders_in,
    get_family,
    get_recipe,
    pipeline_family,
)
from clipcond.recipes import Recipe

# ------------------------------------------------------------------ Recipe


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"combine": "concat"},
            "`combine` must be one of ('concat_channels', 'concat_sequence', 'clip_pooled_t5_tokens'), got 'concat'",
        ),
        ({"pooled": "first"}, "`pooled` must be one of ('none', 'last', 'concat'), got 'first'"),
        ({"clip_layer_from_end": 0}, "`clip_layer_from_end` must be an int >= 1, got 0"),
        ({"clip_layer_from_end": 1.0}, "`clip_layer_from_end` must be an int >= 1, got 1.0"),
        ({"t5_max_length": 1}, "`t5_max_length` must be an int >= 2, got 1"),
        ({"t5_max_length": "77"}, "`t5_max_length` must be an int >= 2, got '77'"),
        ({"emphasis": "loud"}, "`emphasis` must be one of ('multiply', 'a1111', 'comfy', 'compel'), got 'loud'"),
    ],
)
def test_a_recipe_names_the_setting_it_refuses(settings, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Recipe(name="custom", **settings)


def test_the_smallest_allowed_settings_are_accepted():
    recipe = Recipe(name="custom", clip_layer_from_end=1, t5_max_length=2)
    assert (recipe.clip_layer_from_end, recipe.t5_max_length) == (1, 2)


@pytest.mark.parametrize("clip_skip", [None, 0])
def test_no_clip_skip_is_the_same_recipe(clip_skip):
    recipe = get_recipe("sdxl")
    assert recipe.with_clip_skip(clip_skip) is recipe


def test_clip_skip_reads_further_up_the_stack():
    skipped = get_recipe("sdxl").with_clip_skip(2)
    assert skipped == dataclasses.replace(get_recipe("sdxl"), clip_layer_from_end=4)


# ------------------------------------------------------------------ lookups


def test_an_unknown_family_names_the_known_ones():
    assert get_family("sd3") is FAMILIES["sd3"]
    with pytest.raises(ValueError) as error:
        get_family("sd4")
    assert str(error.value) == "unknown family 'sd4'; expected one of ('sd', 'sdxl', 'sd3', 'flux', 'pixart', 'custom')"


def test_get_recipe_refuses_non_strings_unknown_names_and_custom():
    with pytest.raises(TypeError) as error:
        get_recipe(3)
    assert str(error.value) == (
        "`recipe` must be a string naming one of ('sd', 'sdxl', 'sd3', 'flux', 'pixart', 'custom'), got int"
    )
    with pytest.raises(ValueError) as error:
        get_recipe("sd4")
    assert (
        str(error.value) == "unknown `recipe` 'sd4'; expected one of ('sd', 'sdxl', 'sd3', 'flux', 'pixart', 'custom')"
    )
    with pytest.raises(ValueError) as error:
        get_recipe("custom")
    assert str(error.value).endswith("'custom') (build a custom recipe with a ConditionerConfig)")


# ------------------------------------------------------------------ custom recipes


@pytest.mark.parametrize(
    ("has_clip", "has_t5", "combine", "pooled"),
    [
        (True, True, "concat_sequence", "last"),
        (False, True, "clip_pooled_t5_tokens", "none"),
        (True, False, "concat_channels", "last"),
    ],
)
def test_a_custom_join_follows_the_encoders_given(has_clip, has_t5, combine, pooled):
    recipe = custom_recipe(has_clip, has_t5)
    assert recipe == dataclasses.replace(FAMILIES["custom"].recipe, combine=combine, pooled=pooled)


def test_custom_settings_apply_and_none_keeps_the_default():
    recipe = custom_recipe(True, True, combine="concat_channels", t5_max_length=77, clip_layer_from_end=None)
    assert recipe.combine == "concat_channels" and recipe.t5_max_length == 77
    assert recipe.clip_layer_from_end == FAMILIES["custom"].recipe.clip_layer_from_end
    assert custom_recipe(False, True, pooled="last").pooled == "none"  # no CLIP, no pooled vector


# ------------------------------------------------------------------ encoders a family takes


def test_encoders_fit_each_family():
    sd, sdxl, sd3, flux, pixart, custom = (FAMILIES[name] for name in ("sd", "sdxl", "sd3", "flux", "pixart", "custom"))
    assert sd.encoders_fit(1, False) and not sd.encoders_fit(2, False) and not sd.encoders_fit(1, True)
    assert sdxl.encoders_fit(1, False) and sdxl.encoders_fit(2, False) and not sdxl.encoders_fit(0, False)
    assert sd3.encoders_fit(2, True) and not sd3.encoders_fit(2, False) and not sd3.encoders_fit(1, True)
    assert sd3.encoders_fit(2, False, has_t5_zeros=True)
    assert not flux.encoders_fit(1, False, has_t5_zeros=True)  # flux has no zeros in T5's place
    assert pixart.encoders_fit(0, True) and not pixart.encoders_fit(1, True)
    assert custom.encoders_fit(0, True) and custom.encoders_fit(3, False) and custom.encoders_fit(1, True)


def test_each_encoder_reads_its_slots_prompt_and_encoders_beyond_the_slots_read_prompt():
    """SD3's encoders read prompt, prompt_2, prompt_3; SDXL's refiner (one CLIP) reads `prompt`;
    CLIPs past a row's slots (a custom join of three CLIPs) and a T5 with no slot of its own read
    `prompt`."""
    assert FAMILIES["sd3"].prompt_readers(2, True) == ("prompt", "prompt_2", "prompt_3")
    assert FAMILIES["sdxl"].prompt_readers(1, False) == ("prompt",)
    assert FAMILIES["flux"].prompt_readers(1, True) == ("prompt", "prompt_2")
    assert FAMILIES["custom"].prompt_readers(3, True) == ("prompt", "prompt", "prompt", "prompt")
    without_t5_slot = dataclasses.replace(FAMILIES["custom"], slots=FAMILIES["custom"].slots[:1])
    assert without_t5_slot.prompt_readers(0, True) == ("prompt",)
    assert without_t5_slot.prompt_readers(2, False) == ("prompt", "prompt")


def test_expected_encoders_in_words():
    words = {name: family.expected_encoders() for name, family in FAMILIES.items()}
    assert words == {
        "sd": "exactly one CLIP encoder and no T5",
        "sdxl": "one or two CLIP encoders and no T5",
        "sd3": "two CLIP encoders and a T5 encoder",
        "flux": "one CLIP encoder and a T5 encoder",
        "pixart": "a T5 encoder and no CLIP",
        "custom": " and an optional T5 encoder",
    }


def test_expected_encoders_of_a_row_that_takes_no_clip_or_one():
    row = Family("either", Recipe(name="custom"), clip_counts=(0, 1), t5="optional")
    assert row.expected_encoders() == "no CLIP or one CLIP encoder and an optional T5 encoder"


def test_call_keywords_name_what_the_embeddings_hold():
    tokens, pooled, mask = torch.zeros(1, 4, 2), torch.zeros(1, 3), torch.ones(1, 4, dtype=torch.int64)
    sdxl, pixart = FAMILIES["sdxl"], FAMILIES["pixart"]
    named = sdxl.call_keywords(PromptEmbeds(tokens=tokens, pooled=pooled))
    assert list(named) == ["prompt_embeds", "pooled_prompt_embeds"]
    assert named["prompt_embeds"] is tokens and named["pooled_prompt_embeds"] is pooled
    named = pixart.call_keywords(PromptEmbeds(tokens=tokens, mask=mask), prefix="negative_")
    assert list(named) == ["negative_prompt_embeds", "negative_prompt_attention_mask"]
    assert named["negative_prompt_embeds"] is tokens and named["negative_prompt_attention_mask"] is mask


# ------------------------------------------------------------------ stand-in pipelines


def _pipeline_class(name: str, base: type = object) -> type:
    return type(name, (base,), {})


def _pipe(class_name: str, base: type = object, config=None, **components):
    pipe = _pipeline_class(class_name, base)()
    pipe.config = SimpleNamespace(**(config or {}))
    for name, value in components.items():
        setattr(pipe, name, value)
    return pipe


@pytest.mark.parametrize(
    ("class_name", "family"),
    [
        ("StableDiffusionPipeline", "sd"),
        ("StableDiffusionImg2ImgPipeline", "sd"),
        ("StableDiffusionXLInpaintPipeline", "sdxl"),
        ("StableDiffusion3Pipeline", "sd3"),
        ("FluxImg2ImgPipeline", "flux"),
        ("PixArtSigmaPipeline", "pixart"),
    ],
)
def test_a_pipeline_is_recognised_by_its_class_name(class_name, family):
    assert pipeline_family(_pipe(class_name)) == (FAMILIES[family], class_name)


def test_a_subclass_is_recognised_by_its_base_and_others_are_refused():
    base = _pipeline_class("FluxPipeline")
    assert pipeline_family(_pipe("MyFlux", base)) == (FAMILIES["flux"], "FluxPipeline")
    with pytest.raises(ValueError) as error:
        pipeline_family(_pipe("CLIPConditionedPipeline"))  # its recipe lives in its own config
    message = str(error.value)
    assert message.startswith(
        "`pipe` of class CLIPConditionedPipeline is not supported by TextConditioner.from_pipeline; "
        "supported classes (and their subclasses): FluxControlImg2ImgPipeline, FluxControlInpaintPipeline, "
        "FluxControlNetImg2ImgPipeline,"
    )
    assert message.endswith(
        "StableDiffusionXLPAGImg2ImgPipeline, StableDiffusionXLPAGInpaintPipeline, StableDiffusionXLPAGPipeline, "
        "StableDiffusionXLPipeline"
    )


def test_encoders_in_reads_the_family_slots_in_order():
    pipe = _pipe(
        "StableDiffusion3Pipeline",
        text_encoder="L",
        tokenizer="tok L",
        text_encoder_2="G",
        tokenizer_2="tok G",
        text_encoder_3="T5",
        tokenizer_3="tok T5",
    )
    assert encoders_in(FAMILIES["sd3"], pipe) == ([("L", "tok L"), ("G", "tok G")], ("T5", "tok T5"))
    pipe.text_encoder_3 = None  # an empty slot is skipped
    assert encoders_in(FAMILIES["sd3"], pipe) == ([("L", "tok L"), ("G", "tok G")], None)
    del pipe.tokenizer_2
    with pytest.raises(ValueError, match=r"^pipeline has `text_encoder_2` but no `tokenizer_2`$"):
        encoders_in(FAMILIES["sd3"], pipe)


def _recorded(recipe, **kwargs):
    """A stand-in for `TextConditioner`: what `conditioner_from_pipeline` builds it with."""
    return {"recipe": recipe, **kwargs}


def test_from_pipeline_passes_the_row_encoders_and_settings():
    pipe = _pipe("StableDiffusionPipeline", text_encoder="L", tokenizer="tok L")
    built = conditioner_from_pipeline(_recorded, pipe, clip_skip=2, cache_size=3)
    assert built == {
        "recipe": get_recipe("sd"),
        "clip": [("L", "tok L")],
        "t5": None,
        "clip_skip": 2,
        "t5_zeros": None,
        "cache_size": 3,
    }


def test_from_pipeline_takes_the_t5_budget_from_the_caller_then_the_class():
    components = dict(text_encoder="T5", tokenizer="tok T5")
    sigma = conditioner_from_pipeline(_recorded, _pipe("PixArtSigmaPipeline", **components))
    assert sigma["recipe"] == dataclasses.replace(get_recipe("pixart"), t5_max_length=300)
    assert sigma["t5"] == ("T5", "tok T5") and sigma["clip"] == []
    alpha = conditioner_from_pipeline(_recorded, _pipe("PixArtAlphaPipeline", **components))
    assert alpha["recipe"] is get_recipe("pixart")
    asked = conditioner_from_pipeline(_recorded, _pipe("PixArtSigmaPipeline", **components), max_sequence_length=64)
    assert asked["recipe"].t5_max_length == 64 and "max_sequence_length" not in asked


@pytest.mark.parametrize(("config", "zeros"), [({}, True), ({"force_zeros_for_empty_prompt": False}, False)])
def test_from_pipeline_reads_sdxls_force_zeros_flag(config, zeros):
    pipe = _pipe("StableDiffusionXLPipeline", config=config, text_encoder_2="G", tokenizer_2="tok G")
    built = conditioner_from_pipeline(_recorded, pipe)
    assert built["recipe"] == dataclasses.replace(get_recipe("sdxl"), zero_negative_when_absent=zeros)
    assert built["clip"] == [("G", "tok G")]


def test_sd3_without_its_t5_gets_zeros_of_the_t5_length_at_the_joint_width():
    transformer = SimpleNamespace(config=SimpleNamespace(joint_attention_dim=48))
    clips = dict(text_encoder="L", tokenizer="tok L", text_encoder_2="G", tokenizer_2="tok G")
    built = conditioner_from_pipeline(_recorded, _pipe("StableDiffusion3Pipeline", transformer=transformer, **clips))
    assert built["t5"] is None and built["t5_zeros"] == (256, 48)  # SD3's default max_sequence_length
    pipe = _pipe("StableDiffusion3Pipeline", transformer=transformer, tokenizer_max_length=20, **clips)
    assert conditioner_from_pipeline(_recorded, pipe, max_sequence_length=40)["t5_zeros"] == (40, 48)


def test_from_pipeline_names_what_is_missing():
    with pytest.raises(ValueError) as error:
        conditioner_from_pipeline(_recorded, _pipe("FluxPipeline", text_encoder="L", tokenizer="tok L"))
    assert str(error.value) == (
        "FluxPipeline is missing a text encoder or tokenizer needed by recipe 'flux' "
        "(it needs one CLIP encoder and a T5 encoder; found 1 CLIP and no T5)"
    )
    pipe = _pipe("StableDiffusionPipeline", text_encoder="L", tokenizer="tok L", text_encoder_2="T5")
    two = _pipe("StableDiffusionPipeline")
    with pytest.raises(ValueError, match=r"found 0 CLIP and no T5\)$"):
        conditioner_from_pipeline(_recorded, two)
    assert conditioner_from_pipeline(_recorded, pipe)["clip"] == [("L", "tok L")]


def test_from_pipeline_names_a_t5_it_found():
    pipe = _pipe("FluxPipeline", text_encoder_2="T5", tokenizer_2="tok T5")
    with pytest.raises(ValueError) as error:
        conditioner_from_pipeline(_recorded, pipe)
    assert str(error.value).endswith("(it needs one CLIP encoder and a T5 encoder; found 0 CLIP and a T5)")


@pytest.mark.parametrize("length", [2, 512])
def test_from_pipeline_takes_a_t5_budget_from_two_tokens_to_the_familys_maximum(length):
    pipe = _pipe("FluxPipeline", text_encoder="L", tokenizer="tok L", text_encoder_2="T5", tokenizer_2="tok T5")
    assert conditioner_from_pipeline(_recorded, pipe, max_sequence_length=length)["recipe"].t5_max_length == length


@pytest.mark.parametrize(
    ("class_name", "length", "message"),
    [
        ("FluxPipeline", 1, "`max_sequence_length` must be an int >= 2 (EOS and one token), got 1"),
        ("FluxPipeline", "77", "`max_sequence_length` must be an int >= 2 (EOS and one token), got '77'"),
        (
            "FluxPipeline",
            513,
            "`max_sequence_length` cannot be greater than 512 for FluxPipeline (as its `__call__` refuses), got 513",
        ),
        (
            "StableDiffusionXLPipeline",
            77,
            "`max_sequence_length` is the T5's token budget; StableDiffusionXLPipeline has no T5",
        ),
    ],
)
def test_from_pipeline_refuses_a_t5_budget_its_pipeline_would_refuse(class_name, length, message):
    pipe = _pipe(class_name, text_encoder="L", tokenizer="tok L", text_encoder_2="T5", tokenizer_2="tok T5")
    with pytest.raises(ValueError) as error:
        conditioner_from_pipeline(_recorded, pipe, max_sequence_length=length)
    assert str(error.value) == message
