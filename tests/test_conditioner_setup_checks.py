"""`clipcond.conditioner_setup`'s checks called directly, with tiny real encoders: each refusal
whole, and the edges of what is taken (the deepest CLIP layer, the largest `clip_skip`, a
projection of width 1, the recipes whose join never reads CLIP token states).

test_conditioner_arguments.py and test_conditioning.py reach these checks through
`TextConditioner`; this file pins the words and the limits they leave loose.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_pipelines import WIDTH, clip_text_model, t5_encoder
from transformers import AutoTokenizer

from clipcond.conditioner_setup import (
    as_encoders,
    build_projection,
    check_cache_dir,
    check_clip_layer,
    check_clip_skip,
)
from clipcond.encoders import TextEncoder
from clipcond.families import custom_recipe, get_recipe
from clipcond.projection import TextProjection
from clipcond.tokenization import clip_tokenizer

LAYERS = 5  # tiny_pipelines' CLIP
T5_WIDTH = 24


@pytest.fixture(scope="module")
def clip() -> TextEncoder:
    return TextEncoder(model=clip_text_model(0), tokenizer=clip_tokenizer())


@pytest.fixture(scope="module")
def t5(t5_tokenizer_path) -> TextEncoder:
    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    return TextEncoder(model=t5_encoder(1, len(tokenizer), width=T5_WIDTH), tokenizer=tokenizer)


def type_error(call) -> str:
    with pytest.raises(TypeError) as refused:
        call()
    return str(refused.value)


def value_error(call) -> str:
    with pytest.raises(ValueError) as refused:
        call()
    return str(refused.value)


# ----------------------------------------------------------------------------- encoders


def test_encoders_not_given_as_a_sequence_are_refused_in_full(clip) -> None:
    expected = "`clip` must be a sequence of encoders, e.g. clip=[(text_encoder, tokenizer)]"
    assert type_error(lambda: as_encoders(clip, None)) == expected
    assert type_error(lambda: as_encoders(clip.model, None)) == expected
    assert type_error(lambda: as_encoders((clip.model, clip.tokenizer), None)) == expected


def test_an_entry_that_is_no_encoder_is_named_briefly(clip) -> None:
    pairs = "must hold TextEncoder objects or (model, tokenizer) pairs, got"
    assert type_error(lambda: as_encoders(["ab"], None)) == f"`clip` {pairs} str 'ab'"
    three = (clip.model, clip.tokenizer, 3)  # a triple is iterated: its model is the first entry
    assert type_error(lambda: as_encoders(three, None)) == f"`clip` {pairs} a CLIPTextModel without its tokenizer"
    assert type_error(lambda: as_encoders([clip], ("x",))) == f"`t5` {pairs} tuple ('x',)"


def test_an_encoder_of_the_other_kind_is_refused_naming_both(clip, t5) -> None:
    assert type_error(lambda: as_encoders([t5], None)) == "`clip` holds a t5 model (T5EncoderModel); pass it as `t5`"
    assert type_error(lambda: as_encoders([clip], clip)) == "`t5` must be a T5 encoder, got CLIPTextModel"
    clip_encoders, t5_encoder_ = as_encoders([(clip.model, clip.tokenizer)], (t5.model, t5.tokenizer))
    assert [encoder.kind for encoder in clip_encoders] == ["clip"] and t5_encoder_.kind == "t5"


def test_a_blank_cache_dir_is_refused_with_the_way_to_the_current_folder() -> None:
    assert value_error(lambda: check_cache_dir("  ")) == (
        "`cache_dir` must be a folder path or None (no disk cache), got '  '; "
        'pass cache_dir="." to cache in the current folder'
    )


# ----------------------------------------------------------------------------- layers and clip_skip


def test_the_clip_layer_read_reaches_the_first_layer_and_no_deeper(clip) -> None:
    sd = get_recipe("sd")
    check_clip_layer(dataclasses.replace(sd, clip_layer_from_end=LAYERS), [clip])
    assert value_error(lambda: check_clip_layer(dataclasses.replace(sd, clip_layer_from_end=LAYERS + 1), [clip])) == (
        f"`clip_layer_from_end` must be between 1 and {LAYERS} for a {LAYERS}-layer CLIP (1 reads the last "
        f"layer's states), got {LAYERS + 1}"
    )
    # recipes that read no CLIP token states are not checked: no CLIP, or CLIP's pooled vector only
    check_clip_layer(dataclasses.replace(sd, clip_layer_from_end=LAYERS + 1), [])
    pooled_only = dataclasses.replace(get_recipe("flux"), clip_layer_from_end=LAYERS + 1)
    check_clip_layer(pooled_only, [clip])


def test_clip_skip_reaches_the_first_layer_and_no_deeper(clip) -> None:
    sdxl = get_recipe("sdxl")  # reads hidden state -2: clip_skip up to LAYERS - 2
    limit = LAYERS - sdxl.clip_layer_from_end
    assert check_clip_skip(sdxl, [clip], limit) == limit
    assert value_error(lambda: check_clip_skip(sdxl, [clip], limit + 1)) == (
        f"`clip_skip` must be between 0 and {limit} for recipe 'sdxl' with a {LAYERS}-layer CLIP (it reads hidden "
        f"state -{sdxl.clip_layer_from_end} - clip_skip), got {limit + 1}"
    )


# ----------------------------------------------------------------------------- the projection


def _custom(combine: str, **settings) -> object:
    return custom_recipe(True, True, combine=combine, **settings)


def test_widths_that_differ_need_a_projection_only_where_tokens_are_joined(clip, t5) -> None:
    assert value_error(lambda: build_projection(_custom("concat_sequence"), WIDTH, T5_WIDTH, None, None, clip)) == (
        f"combine='concat_sequence' joins CLIP tokens (width {WIDTH}) and T5 tokens (width {T5_WIDTH}) on the "
        "sequence axis; their widths differ, so set `projection_dim` to project both to one width"
    )
    padded = _custom("concat_sequence", pad_clip_to_t5_width=True)
    assert build_projection(padded, WIDTH, T5_WIDTH, None, None, clip) is None
    # Flux's join: CLIP's pooled vector and T5's tokens, never side by side on one axis
    assert build_projection(_custom("clip_pooled_t5_tokens"), WIDTH, T5_WIDTH, None, None, clip) is None


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "4"])
def test_a_projection_dim_that_is_no_positive_int_is_refused(clip, bad) -> None:
    recipe = _custom("concat_sequence")
    assert value_error(lambda: build_projection(recipe, WIDTH, T5_WIDTH, bad, None, clip)) == (
        f"`projection_dim` must be a positive int or None, got {bad!r}"
    )


def test_a_built_projection_takes_the_width_asked_and_the_encoders_dtype(clip) -> None:
    recipe = _custom("concat_sequence")
    one = build_projection(recipe, WIDTH, T5_WIDTH, 1, None, clip)
    assert one.config.projection_dim == 1 and one.input_widths() == {"clip": WIDTH, "t5": T5_WIDTH}
    bfloat16 = TextEncoder(model=clip_text_model(0).to(torch.bfloat16), tokenizer=clip.tokenizer)
    built = build_projection(recipe, WIDTH, T5_WIDTH, 8, None, bfloat16)
    assert {parameter.dtype for parameter in built.parameters()} == {torch.bfloat16}


def test_a_given_projection_is_checked_against_projection_dim_and_the_widths(clip) -> None:
    recipe = _custom("concat_sequence")
    given = TextProjection(8, clip_width=WIDTH, t5_width=T5_WIDTH)
    assert build_projection(recipe, WIDTH, T5_WIDTH, 8, given, clip) is given
    assert build_projection(recipe, WIDTH, T5_WIDTH, None, given, clip) is given
    assert value_error(lambda: build_projection(recipe, WIDTH, T5_WIDTH, 4, given, clip)) == (
        "`projection_dim` (4) differs from the given projection's (8); pass one of them"
    )
    assert type_error(lambda: build_projection(recipe, WIDTH, T5_WIDTH, None, "p", clip)) == (
        "`projection` must be a TextProjection, got str"
    )
    assert value_error(lambda: build_projection(recipe, WIDTH, 16, None, given, clip)) == (
        f"the given projection has layers {{'clip': {WIDTH}, 't5': {T5_WIDTH}}} (source: input width) but recipe "
        f"'custom' with these encoders needs {{'clip': {WIDTH}, 't5': 16}}"
    )


def test_clip_skip_zero_is_the_recipes_own_layer_and_below_zero_is_refused(clip) -> None:
    sd = get_recipe("sd")
    assert check_clip_skip(sd, [clip], 0) == 0
    assert check_clip_skip(sd, [clip], None) is None
    assert value_error(lambda: check_clip_skip(sd, [clip], -1)).startswith("`clip_skip` must be between 0 and 4 ")
    for recipe, encoders in ((get_recipe("flux"), [clip]), (sd, [])):
        assert value_error(lambda recipe=recipe, encoders=encoders: check_clip_skip(recipe, encoders, 1)) == (
            f"`clip_skip` has no effect on recipe {recipe.name!r}: it reads no CLIP token states"
        )


def _long(clip: TextEncoder, positions: int) -> TextEncoder:
    return TextEncoder(
        model=clip_text_model(2, with_projection=True, max_position_embeddings=positions),
        tokenizer=clip_tokenizer(model_max_length=positions),
    )


def test_clips_of_two_window_lengths_joined_on_channels_are_refused_naming_each(clip) -> None:
    from clipcond.conditioner_setup import check_clip_windows

    long = _long(clip, 248)
    advice = (
        "so every CLIP must have the same context length; got {}. A long-context CLIP (Long-CLIP, 248 positions) "
        "must replace every CLIP of the pipeline, not only one"
    )
    assert value_error(lambda: check_clip_windows(get_recipe("sdxl"), [clip, long])) == (
        "recipe 'sdxl' joins its CLIP encoders' token states on the channel axis, position by position, "
        + advice.format(
            "clip[0] (CLIPTextModel, the pipeline's `text_encoder`): 77 positions, "
            "clip[1] (CLIPTextModelWithProjection, the pipeline's `text_encoder_2`): 248 positions"
        )
    )
    custom = custom_recipe(True, False)  # no pipeline: no component names
    assert value_error(lambda: check_clip_windows(custom, [long, clip, clip])) == (
        "recipe 'custom' joins its CLIP encoders' token states on the channel axis, position by position, "
        + advice.format(
            "clip[0] (CLIPTextModelWithProjection): 248 positions, clip[1] (CLIPTextModel): 77 positions, "
            "clip[2] (CLIPTextModel): 77 positions"
        )
    )
    check_clip_windows(get_recipe("flux"), [long, clip])  # pooled vectors join whatever the lengths
    check_clip_windows(custom, [long])
    check_clip_windows(custom, [long, _long(clip, 248)])


# ----------------------------------------------------------------------------- encoders a recipe takes


def test_encoders_that_do_not_fit_a_family_are_refused_naming_what_it_takes() -> None:
    from clipcond.conditioner_setup import check_encoders

    assert value_error(lambda: check_encoders(get_recipe("sd3"), 1, True, None)) == (
        "recipe 'sd3' needs two CLIP encoders and a T5 encoder; got 1 CLIP encoder(s) and a T5 encoder"
    )
    assert value_error(lambda: check_encoders(get_recipe("pixart"), 1, False, None)) == (
        "recipe 'pixart' needs a T5 encoder and no CLIP; got 1 CLIP encoder(s) and no T5 encoder"
    )
    assert value_error(lambda: check_encoders(get_recipe("sd"), 1, True, None)) == (
        "recipe 'sd' needs exactly one CLIP encoder and no T5; got 1 CLIP encoder(s) and a T5 encoder"
    )
    check_encoders(get_recipe("sd3"), 2, False, (256, 4096))  # SD3 without T5: its zeros stand in
    check_encoders(custom_recipe(True, False), 3, False, None)  # the custom recipe takes any CLIP count


def test_a_custom_join_that_cannot_take_its_encoders_is_refused_in_full() -> None:
    from clipcond.conditioner_setup import check_encoders
    from clipcond.recipes import Recipe

    assert value_error(lambda: check_encoders(custom_recipe(True, False), 0, False, None)) == (
        "a TextConditioner needs at least one encoder: pass `clip` and/or `t5`"
    )
    assert value_error(lambda: check_encoders(custom_recipe(True, True, combine="concat_channels"), 1, True, None)) == (
        "combine='concat_channels' joins CLIP encoders on channels and cannot take a T5 encoder (their sequence "
        "lengths differ); use 'concat_sequence' or 'clip_pooled_t5_tokens'"
    )
    pooled_t5 = custom_recipe(True, True, combine="clip_pooled_t5_tokens")
    assert value_error(lambda: check_encoders(pooled_t5, 1, False, None)) == (
        "combine='clip_pooled_t5_tokens' needs a `t5` encoder"
    )
    check_encoders(pooled_t5, 1, False, (77, 16))  # T5's zeros stand in
    t5_with_pooled = Recipe(name="custom", combine="concat_sequence", pooled="last")
    assert value_error(lambda: check_encoders(t5_with_pooled, 0, True, None)) == (
        "pooled='last' needs a `clip` encoder; use pooled='none'"
    )


# ----------------------------------------------------------------------------- single arguments


def test_counts_are_python_ints_in_range_and_refused_in_full_otherwise() -> None:
    import numpy as np

    from clipcond.conditioner_setup import check_cache_size, check_max_batch_windows

    assert check_cache_size(0) == 0 and type(check_cache_size(np.int64(3))) is int
    assert (
        value_error(lambda: check_cache_size(-1)) == "`cache_size` must be an int >= 0 (prompts kept in memory), got -1"
    )
    assert type_error(lambda: check_cache_size("3")) == (
        "`cache_size` must be an int >= 0 (prompts kept in memory), got '3'"
    )
    assert check_max_batch_windows(None) is None and check_max_batch_windows(1) == 1
    assert type(check_max_batch_windows(np.int32(2))) is int
    assert value_error(lambda: check_max_batch_windows(0)) == "`max_batch_windows` must be >= 1, got 0"
    assert type_error(lambda: check_max_batch_windows(True)) == (
        "`max_batch_windows` must be a positive int or None, got True"
    )


def test_clip_skip_is_read_as_a_python_int_before_its_range() -> None:
    import numpy as np

    from clipcond.conditioner_setup import clip_skip_as_int

    assert clip_skip_as_int(None) is None and type(clip_skip_as_int(np.int64(2))) is int
    assert clip_skip_as_int(torch.tensor(1)) == 1
    assert type_error(lambda: clip_skip_as_int(True)) == "`clip_skip` must be an int or None, got bool True"
    assert type_error(lambda: clip_skip_as_int(1.0)) == "`clip_skip` must be an int or None, got float 1.0"


def test_to_reads_device_and_dtype_as_torch_does_and_refuses_in_full() -> None:
    from clipcond.conditioner_setup import device_and_dtype

    assert device_and_dtype(torch.float16, None) == (None, torch.float16)
    assert device_and_dtype("cpu", None) == (torch.device("cpu"), None)
    assert device_and_dtype(None, torch.bfloat16) == (None, torch.bfloat16)
    assert type_error(lambda: device_and_dtype(torch.float16, torch.float32)) == (
        "`to` takes one dtype, got torch.float16 and torch.float32"
    )
    for dtype in ("float16", torch.int8):
        assert type_error(lambda dtype=dtype: device_and_dtype(None, dtype)) == (
            f"`dtype` must be a floating torch.dtype such as torch.float16, got {dtype!r}"
        )
    assert value_error(lambda: device_and_dtype("gpu", None)).startswith(
        "`device` must be a torch.device or its name ('cpu', 'cuda', 'cuda:1'), got 'gpu' ("
    )


def test_the_projection_reads_the_sources_each_join_puts_side_by_side() -> None:
    from clipcond.conditioner_setup import projection_widths

    joins = ("concat_channels", "concat_sequence", "clip_pooled_t5_tokens")
    channels, sequence, pooled = (custom_recipe(True, True, combine=join) for join in joins)
    assert projection_widths(channels, 32, 24) == {"clip": 32}
    assert projection_widths(sequence, 32, 24) == {"clip": 32, "t5": 24}
    assert projection_widths(sequence, 32, 0) == {"clip": 32}
    assert projection_widths(sequence, 0, 24) == {"t5": 24}
    assert projection_widths(pooled, 32, 24) == {"t5": 24}


def test_a_recipe_is_taken_by_name_as_given_or_built_for_the_encoders() -> None:
    from clipcond.conditioner_setup import family_of, resolve_recipe
    from clipcond.recipes import Recipe

    mine = Recipe(name="mine")
    assert resolve_recipe(mine, True, False) is mine
    assert resolve_recipe("sdxl", True, False) == get_recipe("sdxl")
    assert resolve_recipe("custom", True, True) == custom_recipe(True, True)
    assert resolve_recipe("custom", False, True).combine == "clip_pooled_t5_tokens"
    assert family_of(mine).name == "custom" and family_of(get_recipe("flux")).name == "flux"
