"""`CLIPConditionedPipeline` where the pipeline tests look past it: `encode_prompt`'s device for
both embeddings, a LoRA scale given to a pipeline without a LoRA, a pipeline of text
components only, the constructor's words for SDXL-only settings and a missing safety checker.
Tiny SD components (the session fixture). Written against the mutation run of
issue 24 (benchmarks/results/mutation.md)."""

from __future__ import annotations

import logging
import re

import pytest
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


@pytest.mark.parametrize("name", ["force_zeros_for_empty_prompt", "requires_aesthetics_score"])
def test_sdxl_only_settings_on_an_sd_unet_are_refused_by_name(sd_pipe, name) -> None:
    message = f"`{name}` applies to recipe 'sdxl' (an SDXL-class UNet) only; got recipe 'sd'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CLIPConditionedPipeline(
            unet=sd_pipe.unet,
            scheduler=sd_pipe.scheduler,
            text_encoder=sd_pipe.text_encoder,
            tokenizer=sd_pipe.tokenizer,
            **{name: True},
        )


def test_a_required_but_missing_safety_checker_is_one_warning_that_says_what_to_do(sd_pipe, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="clipcond.pipelines.clip_conditioned"):
        CLIPConditionedPipeline(
            unet=sd_pipe.unet,
            scheduler=sd_pipe.scheduler,
            text_encoder=sd_pipe.text_encoder,
            tokenizer=sd_pipe.tokenizer,
            requires_safety_checker=True,
        )
    warnings = [r.getMessage() for r in caplog.records if r.name == "clipcond.pipelines.clip_conditioned"]
    assert warnings == [
        "CLIPConditionedPipeline has no `safety_checker` but its config says `requires_safety_checker=True` (as a "
        "Stable Diffusion checkpoint's does): images are not filtered. Respect the model's license when you show "
        "them; pass requires_safety_checker=False to silence this."
    ]
