"""`ConditionerConfig` on its own: its defaults, each refusal whole (in the order it is made),
the custom-only keys one by one, the torch dtype, and the recipe it describes for built-in
and custom recipes. Loading YAML through it is tested in tests/test_config.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clipcond.conditioner_config import ConditionerConfig, EncoderSource
from clipcond.families import BUILTIN_RECIPES

CLIP = [EncoderSource(path="clip-folder")]
T5 = EncoderSource(path="t5-folder", subfolder="text_encoder_3", tokenizer="builtin-clip", tokenizer_subfolder="tok")


def test_the_defaults() -> None:
    config = ConditionerConfig(clip=CLIP)
    assert (config.recipe, config.t5, config.combine, config.clip_layer_from_end, config.clip_final_norm) == (
        "custom",
        None,
        None,
        1,
        True,
    )
    assert (config.pooled, config.t5_max_sequence_length, config.t5_attention_mask, config.return_mask) == (
        "last",
        None,
        None,
        False,
    )
    assert (config.projection_dim, config.clip_skip, config.parse_weights, config.emphasis, config.window_split) == (
        None,
        None,
        True,
        None,
        None,
    )
    assert config.syntax == "a1111"
    assert (config.clean_caption, config.cache_size, config.cache_dir, config.max_batch_windows, config.dtype) == (
        None,
        512,
        None,
        256,
        "float32",
    )
    assert EncoderSource(path="p") == EncoderSource(path="p", subfolder=None, tokenizer=None, tokenizer_subfolder=None)
    assert (
        ConditionerConfig(t5=T5).clip == [] and ConditionerConfig(t5=T5).clip is not ConditionerConfig(t5=T5).clip
    )  # a list each


@pytest.mark.parametrize(
    "dtype, torch_dtype", [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_the_torch_dtype(dtype, torch_dtype) -> None:
    assert ConditionerConfig(clip=CLIP, dtype=dtype).torch_dtype is torch_dtype


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (
            dict(recipe="sd2"),
            ValueError,
            "unknown `recipe` 'sd2'; expected one of ('sd', 'sdxl', 'sd3', 'flux', 'pixart', 'custom')",
        ),
        (dict(max_batch_windows=0), ValueError, "`max_batch_windows` must be >= 1, got 0"),
        (dict(max_batch_windows="8"), TypeError, "`max_batch_windows` must be a positive int or None, got '8'"),
        (dict(cache_dir=""), ValueError, "`cache_dir` must be a folder path or null, got an empty string"),
        (dict(cache_dir=" \t"), ValueError, "`cache_dir` must be a folder path or null, got an empty string"),
        (dict(clip=[]), ValueError, "a conditioner config needs at least one encoder under `clip` or `t5`"),
        (
            dict(recipe="sd", clean_caption=True),
            ValueError,
            "`clean_caption` applies to recipe 'pixart' only, not 'sd'",
        ),
        (dict(clean_caption=False), ValueError, "`clean_caption` applies to recipe 'pixart' only, not 'custom'"),
        # the first problem is the one named
        (
            dict(recipe="sd2", max_batch_windows=0, clip=[]),
            ValueError,
            "unknown `recipe` 'sd2'; expected one of ('sd', 'sdxl', 'sd3', 'flux', 'pixart', 'custom')",
        ),
        (dict(max_batch_windows=0, cache_dir="", clip=[]), ValueError, "`max_batch_windows` must be >= 1, got 0"),
        (dict(cache_dir="", clip=[]), ValueError, "`cache_dir` must be a folder path or null, got an empty string"),
        (
            dict(clip=[], recipe="sd", clean_caption=True),
            ValueError,
            "a conditioner config needs at least one encoder under `clip` or `t5`",
        ),
        (
            dict(recipe="sd", clean_caption=True, pooled="none"),
            ValueError,
            "`clean_caption` applies to recipe 'pixart' only, not 'sd'",
        ),
    ],
)
def test_the_refusals_whole(settings, error, message) -> None:
    with pytest.raises(error) as raised:
        ConditionerConfig(**{"clip": CLIP, **settings})
    assert str(raised.value) == message


CUSTOM_ONLY = {
    "combine": "concat_sequence",
    "clip_layer_from_end": 2,
    "clip_final_norm": False,
    "pooled": "none",
    "t5_attention_mask": True,
    "return_mask": True,
    "projection_dim": 8,
}


@pytest.mark.parametrize("key", list(CUSTOM_ONLY))
def test_each_custom_only_key_is_refused_on_a_built_in_recipe(key) -> None:
    with pytest.raises(ValueError) as raised:
        ConditionerConfig(recipe="sdxl", clip=CLIP, **{key: CUSTOM_ONLY[key]})
    assert str(raised.value) == f"keys ['{key}'] apply to recipe 'custom' only, not 'sdxl'"
    ConditionerConfig(recipe="custom", clip=CLIP, t5=T5, **{key: CUSTOM_ONLY[key]})  # taken there


def test_all_custom_only_keys_changed_are_named_in_order_and_their_defaults_taken() -> None:
    with pytest.raises(ValueError) as raised:
        ConditionerConfig(recipe="flux", clip=CLIP, t5=T5, **CUSTOM_ONLY)
    assert str(raised.value) == (
        "keys ['combine', 'clip_layer_from_end', 'clip_final_norm', 'pooled', 't5_attention_mask', 'return_mask', "
        "'projection_dim'] apply to recipe 'custom' only, not 'flux'"
    )
    defaults = dict(
        combine=None,
        clip_layer_from_end=1,
        clip_final_norm=True,
        pooled="last",
        t5_attention_mask=None,
        return_mask=False,
        projection_dim=None,
    )
    ConditionerConfig(recipe="flux", clip=CLIP, t5=T5, **defaults)
    ConditionerConfig(recipe="pixart", t5=T5, clean_caption=False, t5_max_sequence_length=120, clip_skip=1)


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux", "pixart"])
def test_a_built_in_recipe_is_the_tables_with_its_t5_length_if_given(name) -> None:
    assert ConditionerConfig(recipe=name, clip=CLIP).to_recipe() is BUILTIN_RECIPES[name]
    recipe = ConditionerConfig(recipe=name, clip=CLIP, t5_max_sequence_length=77).to_recipe()
    assert recipe == dataclasses.replace(BUILTIN_RECIPES[name], t5_max_length=77)


# the recipe fields a custom config sets
RECIPE_FIELDS = (
    "combine",
    "clip_layer_from_end",
    "clip_final_norm",
    "pooled",
    "t5_max_length",
    "t5_attention_mask",
    "return_mask",
)


def fields_of(recipe, *names) -> tuple:
    return tuple(getattr(recipe, name) for name in names)


def test_a_custom_recipe_takes_each_setting() -> None:
    config = ConditionerConfig(
        clip=CLIP,
        t5=T5,
        combine="concat_channels",
        clip_layer_from_end=3,
        clip_final_norm=False,
        pooled="concat",
        t5_max_sequence_length=64,
        t5_attention_mask=True,
        return_mask=True,
    )
    recipe = config.to_recipe()
    assert recipe.name == "custom"
    assert fields_of(recipe, *RECIPE_FIELDS) == ("concat_channels", 3, False, "concat", 64, True, True)


def test_a_custom_recipe_without_settings_follows_its_encoders() -> None:
    names = RECIPE_FIELDS
    assert fields_of(ConditionerConfig(clip=CLIP).to_recipe(), *names) == (
        "concat_channels",
        1,
        True,
        "last",
        256,
        False,
        False,
    )
    assert fields_of(ConditionerConfig(clip=CLIP, t5=T5).to_recipe(), *names) == (
        "concat_sequence",
        1,
        True,
        "last",
        256,
        False,
        False,
    )
    assert fields_of(ConditionerConfig(t5=T5).to_recipe(), *names) == (
        "clip_pooled_t5_tokens",
        1,
        True,
        "none",
        256,
        False,
        False,
    )
