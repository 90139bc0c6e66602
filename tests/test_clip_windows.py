"""CLIPs joined on the channel axis need one context length (window length).

SDXL, SD3 and a custom recipe joining CLIPs on channels concatenate the CLIPs' token states
position by position, so a Long-CLIP of 248 positions beside a 77-position CLIP cannot be
joined: diffusers' own `encode_prompt` fails with torch's size error after both encoders ran.
A conditioner refuses such encoders when it is built, naming each with its length; CLIPs of
one length (both at 248) are accepted and equal diffusers' `encode_prompt`; a recipe that
reads only the pooled vectors takes any lengths.
"""

from __future__ import annotations

import pytest
import torch
from forward_counter import ForwardCounter
from tiny_pipelines import build_sd3, build_sdxl, clip_text_model, t5_encoder
from transformers import AutoTokenizer

from clipcond import CLIPConditionedPipeline, TextConditioner, clip_tokenizer
from clipcond.families import custom_recipe

LONG = 248


def _long_clip(seed: int, with_projection: bool, width: int) -> dict:
    """A 248-position CLIP with its tokenizer, as (model, tokenizer) keywords of a pipeline slot."""
    model = clip_text_model(
        seed, with_projection=with_projection, max_position_embeddings=LONG, hidden_size=width, projection_dim=width
    )
    return {"model": model, "tokenizer": clip_tokenizer(model_max_length=LONG)}


def _with_long(pipe, *slots: str):
    """`pipe`'s class over its components with each CLIP slot in `slots` ("", "_2") holding a
    248-position CLIP of the same kind and width (the others keep their 77 positions)."""
    components = dict(pipe.components)
    for slot in slots:
        model = components[f"text_encoder{slot}"]
        long = _long_clip(7, hasattr(model, "text_projection"), model.config.hidden_size)
        components[f"text_encoder{slot}"], components[f"tokenizer{slot}"] = long["model"], long["tokenizer"]
    return type(pipe)(**components)


def _message(*lengths: tuple[str, str, int]) -> str:
    """A regex of the refusal naming each (index, component, length)."""
    named = r".*".join(
        rf"clip\[{index}\] \([A-Za-z]+, the pipeline's `{component}`\): {length} positions"
        for index, component, length in lengths
    )
    return rf"recipe '\w+' joins .* channel axis.*same context length.*{named}.*must replace every CLIP"


@pytest.fixture(scope="module")
def sdxl():
    return build_sdxl()


@pytest.fixture(scope="module")
def sd3(t5_tokenizer_path):
    return build_sd3(t5_tokenizer_path)


@pytest.mark.parametrize("long_slot", ["", "_2"], ids=["text_encoder", "text_encoder_2"])
def test_sdxl_refuses_one_long_clip(sdxl, long_slot):
    pipe = _with_long(sdxl, long_slot)
    first, second = (LONG, 77) if long_slot == "" else (77, LONG)
    with pytest.raises(ValueError, match=_message((0, "text_encoder", first), (1, "text_encoder_2", second))):
        TextConditioner.from_pipeline(pipe)


def test_sd3_refuses_one_long_clip(sd3):
    with pytest.raises(ValueError, match=_message((0, "text_encoder", LONG), (1, "text_encoder_2", 77))):
        TextConditioner.from_pipeline(_with_long(sd3, ""))


def test_diffusers_cannot_join_them_either(sdxl):
    """The peer: diffusers' `encode_prompt` runs both encoders, then fails at the join."""
    pipe = _with_long(sdxl, "")
    with torch.no_grad(), pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        pipe.encode_prompt("a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_long_clips_of_one_length_equal_diffusers(request, family):
    """Every CLIP at 248 positions: accepted, and equal to the family's own `encode_prompt`."""
    pipe = _with_long(request.getfixturevalue(family), "", "_2")
    cond = TextConditioner.from_pipeline(pipe)
    assert [encoder.window_length for encoder in cond.clip] == [LONG, LONG]
    prompts = ["a photo of an astronaut riding a horse", "a red cat"]
    with torch.no_grad():
        expected = pipe.encode_prompt(**_encode_prompt_kwargs(family, prompts))
        embeds = cond.encode(prompts)
    # SD3: the T5's 256 tokens (`max_sequence_length`'s default) after the CLIPs' 248
    assert embeds.tokens.shape[1] == LONG + (256 if family == "sd3" else 0)
    torch.testing.assert_close(embeds.tokens, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(embeds.pooled, expected[2], rtol=0, atol=0)


def _encode_prompt_kwargs(family: str, prompts: list[str]) -> dict:
    kwargs = dict(prompt=prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    if family == "sd3":
        kwargs.update(prompt_2=None, prompt_3=None)
    return kwargs


def test_custom_channel_join_refuses_and_pooled_join_takes_any_lengths(t5_tokenizer_path):
    long = _long_clip(7, False, 32)
    encoders = [(long["model"], long["tokenizer"]), (clip_text_model(1), clip_tokenizer())]
    t5_tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    t5 = (t5_encoder(3, len(t5_tokenizer)), t5_tokenizer)
    message = r"recipe 'custom' joins .*clip\[0\] \(CLIPTextModel\): 248 positions, clip\[1\] \(CLIPTextModel\): 77"
    with pytest.raises(ValueError, match=message):
        TextConditioner("custom", clip=encoders)  # concat_channels
    with pytest.raises(ValueError, match=message):
        TextConditioner("custom", clip=encoders, t5=t5)  # concat_sequence: CLIPs on channels, then T5
    pooled_only = custom_recipe(True, True, combine="clip_pooled_t5_tokens", pooled="concat")
    with torch.no_grad():
        pooled = TextConditioner(pooled_only, clip=encoders, t5=t5).encode("a red cat").pooled
        # Each CLIP's own pooled output over its own window length (the peer: transformers).
        expected = torch.cat([_pooler_output(model, tokenizer, "a red cat") for model, tokenizer in encoders], -1)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def _pooler_output(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, padding="max_length", truncation=True, return_tensors="pt").input_ids
    return model(ids).pooler_output


def test_clip_conditioned_pipeline_refuses_before_any_work(sdxl):
    """`CLIPConditionedPipeline` refuses at construction (`from_pipe`) what its conditioner
    would refuse on every call; encoders swapped in after it are refused by the first call,
    before an encoder or the UNet runs."""
    mixed = _with_long(sdxl, "")
    message = _message((0, "text_encoder", LONG), (1, "text_encoder_2", 77))
    with pytest.raises(ValueError, match=message):
        CLIPConditionedPipeline.from_pipe(mixed)
    pipe = CLIPConditionedPipeline.from_pipe(sdxl)
    pipe.register_modules(text_encoder=mixed.text_encoder, tokenizer=mixed.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    counters = [ForwardCounter(module) for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.unet)]
    with pytest.raises(ValueError, match=message):
        pipe("a cat", num_inference_steps=1, output_type="latent")
    assert [counter.calls for counter in counters] == [0, 0, 0]
