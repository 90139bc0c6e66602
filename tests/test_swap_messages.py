"""`swap_text_encoder`'s refusals, each message whole, and the cases its equality tests
(test_swap.py, test_offload_hooks.py) do not reach: a swap into an empty slot, the dtype it
casts to when the encoder's and the UNet's differ, the edges of the width and vocabulary checks.
Each expected message is written out here from the wording the docs promise, not built by the
code under test."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.hooks import ModelHook, add_hook_to_module
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers.hooks import apply_group_offloading
from tiny_pipelines import WIDTH, build_sd, build_sdxl, clip_text_model, sdxl_refiner_components, t5_encoder

from clipcond import CLIPConditionedPipeline, TextProjection
from clipcond.pipelines import swap_text_encoder
from clipcond.pipelines.swap import _check_widths, _count
from clipcond.tokenization import clip_tokenizer

CPU = torch.device("cpu")


def refused(error: type[Exception], pipe, tower, **kwargs) -> str:
    """The message of `error` that swapping `tower` into `pipe` raises."""
    with pytest.raises(error) as raised:
        swap_text_encoder(pipe, tower, **kwargs)
    return str(raised.value)


def images(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe("a red circle", num_inference_steps=2, output_type="np", generator=generator).images


def _swap_warnings(caplog) -> list[str]:
    """What swap_text_encoder logged (diffusers' own notices of a `.to()` cast left out)."""
    return [record.getMessage() for record in caplog.records if record.name == "clipcond.pipelines.swap"]


def first_weight(module: torch.nn.Module) -> str:
    return next(iter(module.state_dict()))


# ------------------------------------------------------------------ the slot and the class


@pytest.mark.parametrize(
    ("build", "component", "make", "message"),
    [
        (
            build_sdxl,
            "text_encoder_2",
            lambda: clip_text_model(7),
            "`text_encoder` must be a CLIPTextModelWithProjection for pipe.text_encoder_2 (the UNet's added "
            "embedding reads its projected pooled vector), got CLIPTextModel",
        ),
        (
            lambda: CLIPConditionedPipeline.from_pipe(build_sd()),
            "text_encoder",
            lambda: t5_encoder(3, 400),
            "`text_encoder` must be a CLIPTextModel or CLIPTextModelWithProjection for pipe.text_encoder "
            "(CLIPConditionedPipeline reads the hidden states of either), got T5EncoderModel",
        ),
        (
            build_sd,
            "text_encoder",
            lambda: clip_text_model(7, with_projection=True),
            "`text_encoder` must be a CLIPTextModel for pipe.text_encoder (StableDiffusionPipeline reads output [0] "
            "as the tokens or pooled vector), got CLIPTextModelWithProjection",
        ),
    ],
    ids=["sdxl_second_clip", "clip_conditioned", "sd"],
)
def test_an_encoder_of_the_wrong_class_is_refused_whole(build, component, make, message) -> None:
    assert refused(TypeError, build(), make(), component=component) == message


def test_a_slot_the_pipeline_lacks_is_refused_whole() -> None:
    message = refused(TypeError, build_sd(), clip_text_model(7, with_projection=True), component="text_encoder_2")
    assert message == "StableDiffusionPipeline has no `text_encoder_2` component to swap"


@pytest.mark.parametrize("addition", [None, "image"])
def test_a_second_slot_beside_a_unet_that_reads_none_is_refused_whole(addition) -> None:
    """A UNet without SDXL's text-time embedding (`addition_embed_type` None, or another kind:
    set in its config only, as nothing past the check runs)."""
    sd = build_sd()
    sd.unet.register_to_config(addition_embed_type=addition)
    pipe = CLIPConditionedPipeline(
        **{name: sd.components[name] for name in ("unet", "scheduler", "vae", "text_encoder", "tokenizer")},
        text_encoder_2=None,
        tokenizer_2=None,
    )
    message = refused(ValueError, pipe, clip_text_model(7, with_projection=True), component="text_encoder_2")
    assert message == (
        f"this UNet reads no `text_encoder_2` (it is not SDXL-class: addition_embed_type is {addition!r}); swap "
        "`text_encoder`"
    )


# ------------------------------------------------------------------ an empty slot, the dtype cast


def test_a_swap_into_an_empty_slot_equals_diffusers_built_with_the_encoder() -> None:
    """SDXL without its first CLIP (as a refiner holds none): the swap fills the slot."""
    tower, tokenizer = clip_text_model(7), clip_tokenizer()
    without = {**build_sdxl().components, "text_encoder": None, "tokenizer": None}
    peer = StableDiffusionXLPipeline(**{**without, "text_encoder": copy.deepcopy(tower), "tokenizer": tokenizer})
    pipe = StableDiffusionXLPipeline(**without)
    assert swap_text_encoder(pipe, tower, tokenizer) is pipe
    assert pipe.text_encoder is tower and pipe.tokenizer is tokenizer
    assert np.array_equal(images(pipe), images(peer))


def test_the_encoder_is_cast_to_the_one_it_replaces_or_to_the_unet_in_an_empty_slot(caplog) -> None:
    sd = build_sd()
    sd.text_encoder.to(torch.bfloat16)  # the UNet stays in float32
    with caplog.at_level(logging.WARNING, logger="clipcond.pipelines.swap"):
        swap_text_encoder(sd, clip_text_model(7))
    assert sd.text_encoder.dtype == torch.bfloat16
    assert _swap_warnings(caplog) == [
        "swap_text_encoder: casting `text_encoder` from torch.float32 to torch.bfloat16, the dtype of the "
        "pipe.text_encoder it replaces"
    ]
    caplog.clear()
    empty = StableDiffusionXLPipeline(**{**build_sdxl().components, "text_encoder": None, "tokenizer": None})
    empty.to(torch.float16)
    with caplog.at_level(logging.WARNING, logger="clipcond.pipelines.swap"):
        swap_text_encoder(empty, clip_text_model(7))
    assert empty.text_encoder.dtype == torch.float16
    assert _swap_warnings(caplog) == [
        "swap_text_encoder: casting `text_encoder` from torch.float32 to torch.float16, the dtype of pipe.unet"
    ]


def test_under_model_offload_the_encoder_is_cast_to_the_pipelines_dtype() -> None:
    sd = build_sd().to(torch.bfloat16)
    sd.enable_model_cpu_offload(device=CPU)
    swap_text_encoder(sd, clip_text_model(7))
    assert sd.text_encoder.dtype == torch.bfloat16


# ------------------------------------------------------------------ hooks and weights on meta


def test_an_empty_slot_beside_a_unet_without_weights_is_refused_whole() -> None:
    pipe = StableDiffusionXLPipeline(**{**build_sdxl().components, "text_encoder": None, "tokenizer": None})
    pipe.unet.to_empty(device="meta")
    assert refused(ValueError, pipe, clip_text_model(7)) == (
        f"pipe.unet (the slot is empty) holds no weights (on the meta device: {first_weight(pipe.unet)}), so the new "
        "encoder has no device to go to (the meta device would drop its weights); build the pipeline with it "
        "instead: StableDiffusionXLPipeline.from_pipe(pipe, text_encoder=...)"
    )
    assert pipe.text_encoder is None


def test_an_encoder_without_weights_is_refused_naming_its_first_weight() -> None:
    pipe = build_sd()
    pipe.text_encoder.to_empty(device="meta")
    assert refused(ValueError, pipe, clip_text_model(7)) == (
        f"pipe.text_encoder holds no weights (on the meta device: {first_weight(pipe.text_encoder)}), so the new "
        "encoder has no device to go to (the meta device would drop its weights); build the pipeline with it "
        "instead: StableDiffusionPipeline.from_pipe(pipe, text_encoder=...)"
    )


def test_group_offloading_is_refused_whole() -> None:
    pipe = build_sd()
    apply_group_offloading(pipe.text_encoder, onload_device=CPU, offload_type="leaf_level")
    assert refused(ValueError, pipe, clip_text_model(7)) == (
        "pipe.text_encoder carries diffusers hooks (group offloading): swap_text_encoder cannot put them on the new "
        "encoder; swap before enabling group offloading"
    )


def test_a_hook_on_a_part_of_the_encoder_is_refused_whole() -> None:
    pipe = build_sd()
    part = next(name for name, _ in pipe.text_encoder.named_modules() if name)
    add_hook_to_module(pipe.text_encoder.get_submodule(part), ModelHook())
    assert refused(ValueError, pipe, clip_text_model(7)) == (
        f"pipe.text_encoder is offloaded by accelerate (hooks on 1 of its modules ({part!r}): "
        "enable_sequential_cpu_offload's, or hooks put on by hand); swap_text_encoder cannot give the new encoder "
        "the same hooks. Call pipe.remove_all_hooks() (for hooks put on a part by hand: "
        "accelerate.hooks.remove_hook_from_module(pipe.text_encoder, recurse=True)), swap, then enable offloading "
        "again"
    )


def test_a_hooked_or_empty_tower_is_refused_whole() -> None:
    tower = clip_text_model(7)
    add_hook_to_module(tower, ModelHook())
    assert refused(ValueError, build_sd(), tower) == (
        "`text_encoder` is dispatched or offloaded by accelerate (hooks on the encoder): swap it in without them, "
        "after accelerate.hooks.remove_hook_from_module(text_encoder, recurse=True) (which brings offloaded weights "
        "back), and offload the pipeline after the swap"
    )
    with torch.device("meta"):
        empty = clip_text_model(7)
    assert refused(ValueError, build_sd(), empty) == (
        f"`text_encoder` holds no weights (on the meta device: {first_weight(empty)}); load them before swapping"
    )


def test_hooked_parts_are_counted_and_the_first_two_named() -> None:
    assert _count([""]) == "the encoder"
    assert _count(["a"]) == "1 of its modules ('a')"
    assert _count(["a", "b"]) == "2 of its modules ('a', 'b')"
    assert _count(["", "a", "b", "c"]) == "the encoder and 3 of its modules ('a', 'b', ...)"


# ------------------------------------------------------------------ vocabulary


def test_a_smaller_vocabulary_is_refused_whole() -> None:
    """CLIP's start and end tokens, added tokens at 49406 and 49407, have no row in 1000."""
    assert refused(ValueError, build_sd(), clip_text_model(7, vocab_size=1000)) == (
        "`text_encoder` has 1000 token embeddings but the tokenizer it would read gives 49408 ids (added tokens "
        "without a row: <|startoftext|>, <|endoftext|>): pass the tokenizer of its vocabulary as `tokenizer=`, and load textual inversions into the pipeline again after the "
        "swap"
    )


def test_ids_beyond_the_rows_that_no_added_token_holds_are_refused_without_a_list() -> None:
    tokenizer = clip_tokenizer()

    class LargerVocabulary(type(tokenizer)):  # stands in for a tokenizer of a larger base vocabulary
        def __len__(self) -> int:
            return 50000

    tokenizer.__class__ = LargerVocabulary
    assert refused(ValueError, build_sd(), clip_text_model(7), tokenizer=tokenizer) == (
        "`text_encoder` has 49408 token embeddings but the tokenizer it would read gives 50000 ids: pass the "
        "tokenizer of its vocabulary as `tokenizer=`, and load textual inversions into the pipeline again after the "
        "swap"
    )


@pytest.mark.parametrize(
    ("count", "listed"),
    [(5, "<t0>, <t1>, <t2>, <t3>, <t4>"), (6, "<t0>, <t1>, <t2>, <t3>, <t4> ...")],
)
def test_added_tokens_without_a_row_are_named_five_at_most(count, listed) -> None:
    tokenizer = clip_tokenizer()
    tokenizer.add_tokens([f"<t{index}>" for index in range(count)])
    assert refused(ValueError, build_sd(), clip_text_model(7), tokenizer=tokenizer) == (
        f"`text_encoder` has 49408 token embeddings but the tokenizer it would read gives {49408 + count} ids "
        f"(added tokens without a row: {listed}): pass the tokenizer of its vocabulary as `tokenizer=`, and load "
        "textual inversions into the pipeline again after the swap"
    )


# ------------------------------------------------------------------ widths


def test_a_sd_unet_names_the_width_that_fits_and_the_adapter() -> None:
    assert refused(ValueError, build_sd(), clip_text_model(7, hidden_size=16)) == (
        "`text_encoder` is 16 wide (config.hidden_size) but the UNet reads 32-wide tokens from `text_encoder` "
        "(unet.config.cross_attention_dim 32); use a CLIP text encoder 32 wide, or a learned adapter: "
        "CLIPConditionedPipeline.from_pipe(pipe, text_encoder=..., text_projection=TextProjection(projection_dim=32, "
        "clip_width=16), recipe='custom'), trained with `clipcond train-diffusion` (`train: adapter`)"
    )


def test_a_refiner_names_its_one_clip_and_offers_no_adapter() -> None:
    refiner = StableDiffusionXLImg2ImgPipeline(**sdxl_refiner_components(), requires_aesthetics_score=True)
    assert refused(ValueError, refiner, clip_text_model(7)) == (
        "this UNet reads no tokens from `text_encoder` (unet.config.cross_attention_dim 32 less text_encoder_2's "
        "32): swap text_encoder_2"
    )
    narrow = clip_text_model(8, with_projection=True, hidden_size=16)
    assert refused(ValueError, refiner, narrow, component="text_encoder_2") == (
        "`text_encoder` is 16 wide (config.hidden_size) but the UNet reads 32-wide tokens from `text_encoder_2` "
        "(unet.config.cross_attention_dim 32); use a CLIP text encoder 32 wide"
    )


def test_an_adapted_pipeline_reads_the_width_of_its_text_projection() -> None:
    narrow = clip_text_model(7, hidden_size=16)
    projection = TextProjection(projection_dim=WIDTH, clip_width=16)
    pipe = CLIPConditionedPipeline.from_pipe(
        build_sd(), text_encoder=narrow, text_projection=projection, recipe="custom"
    )
    assert refused(ValueError, pipe, clip_text_model(8)) == (
        "`text_encoder` is 32 wide (config.hidden_size) but the UNet reads 16-wide tokens from `text_encoder` "
        "(text_projection.config.clip_width); use a CLIP text encoder 16 wide"
    )
    other = clip_text_model(9, hidden_size=16)
    assert swap_text_encoder(pipe, other).text_encoder is other


def test_an_adapter_without_a_clip_layer_reads_no_clip() -> None:
    pipe = SimpleNamespace(text_projection=TextProjection(projection_dim=WIDTH, t5_width=8))
    with pytest.raises(ValueError) as raised:
        _check_widths(pipe, clip_text_model(7), "text_encoder")
    assert str(raised.value) == "this pipeline's `text_projection` has no CLIP layer: it reads no CLIP tokens"


def test_a_one_wide_remainder_is_a_width_that_fits() -> None:
    """The first slot of a UNet one channel wider than the second CLIP takes a 1-wide encoder."""
    pipe = SimpleNamespace(
        unet=SimpleNamespace(config=SimpleNamespace(cross_attention_dim=WIDTH + 1)),
        text_encoder_2=clip_text_model(8, with_projection=True),
    )
    assert _check_widths(pipe, SimpleNamespace(config=SimpleNamespace(hidden_size=1)), "text_encoder") is None
