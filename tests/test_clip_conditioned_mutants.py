"""`CLIPConditionedPipeline` where the pipeline tests look past it: `encode_prompt`'s device for
both embeddings, a LoRA scale given to a pipeline without a LoRA, a pipeline of text
components only. Tiny SD components (the session fixture). Written against the mutation run of
issue 24 (benchmarks/results/mutation.md)."""

from __future__ import annotations

import torch

from clipcond import CLIPConditionedPipeline


def _ours(sd_pipe) -> CLIPConditionedPipeline:
    return CLIPConditionedPipeline(
        unet=sd_pipe.unet,
        scheduler=sd_pipe.scheduler,
        vae=sd_pipe.vae,
        text_encoder=sd_pipe.text_encoder,
        tokenizer=sd_pipe.tokenizer,
    )


def test_encode_prompt_puts_both_embeddings_on_the_device_asked(sd_pipe) -> None:
    """diffusers' contract: the embeddings come back on `device` (the meta device stands in for
    an accelerator: the encoders stay on the CPU, the result must not)."""
    pipe = _ours(sd_pipe)
    positive, negative = pipe.encode_prompt("a red circle", "meta", 2, True, "blurry")
    width = sd_pipe.text_encoder.config.hidden_size
    assert positive.shape == negative.shape == (2, 77, width)
    assert positive.device.type == negative.device.type == "meta"
    assert negative.dtype == positive.dtype == torch.float32


def test_a_lora_scale_without_a_lora_changes_nothing(sd_pipe) -> None:
    """As in diffusers, `lora_scale` scales the LoRA layers of the text encoder for the call;
    with none loaded the embeddings are those without it."""
    pipe = _ours(sd_pipe)
    plain = pipe.encode_prompt("a red circle", "cpu", 1, True, "blurry")
    scaled = pipe.encode_prompt("a red circle", "cpu", 1, True, "blurry", lora_scale=0.5)
    for expected, actual in zip(plain, scaled):
        assert torch.equal(actual, expected)


def test_encode_prompt_needs_no_unet(sd_pipe) -> None:
    """The text components alone encode as the whole pipeline does (diffusers' fast tests build
    such a pipeline for `encode_prompt`)."""
    text_only = CLIPConditionedPipeline(
        unet=None, scheduler=sd_pipe.scheduler, text_encoder=sd_pipe.text_encoder, tokenizer=sd_pipe.tokenizer
    )
    expected = _ours(sd_pipe).encode_prompt("a red circle", "cpu", 1, True, "blurry")
    for actual, wanted in zip(text_only.encode_prompt("a red circle", "cpu", 1, True, "blurry"), expected):
        assert torch.equal(actual, wanted)
