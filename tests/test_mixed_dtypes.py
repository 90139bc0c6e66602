"""Encoders of different dtypes in one pipeline (one text encoder cast to bfloat16, the rest in
float32): the embeddings come back in the dtype each family's `encode_prompt` gives, with the
same values, bit for bit. SDXL casts the joined CLIP tokens to `text_encoder_2`'s dtype and
keeps its pooled vector; SD3 casts both CLIPs' tokens to `text_encoder`'s and promotes when it
joins them with T5's; Flux keeps T5's tokens and CLIP's pooled vector in their own dtypes."""

from __future__ import annotations

import pytest
import torch
from tiny_pipelines import build_flux, build_pixart, build_sd3, build_sdxl

from clipcond import TextConditioner

PROMPT = ["a red circle above a blue square", "a green triangle"]


def _reference(family: str, pipe) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(tokens, pooled or None) of the family's own `encode_prompt`, without guidance."""
    with torch.no_grad():
        if family == "sdxl":
            out = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
            return out[0], out[2]
        if family == "sd3":
            out = pipe.encode_prompt(PROMPT, None, None, device="cpu", do_classifier_free_guidance=False)
            return out[0], out[2]
        if family == "flux":
            out = pipe.encode_prompt(PROMPT, None, device="cpu")
            return out[0], out[1]
        return pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device="cpu")[0], None


CASES = [
    ("sdxl", "text_encoder"),
    ("sdxl", "text_encoder_2"),
    ("sd3", "text_encoder"),
    ("sd3", "text_encoder_2"),
    ("sd3", "text_encoder_3"),
    ("flux", "text_encoder"),
    ("flux", "text_encoder_2"),
]


@pytest.fixture(scope="module")
def pipes(t5_tokenizer_path):
    built = {
        "sdxl": build_sdxl(),
        "sd3": build_sd3(t5_tokenizer_path),
        "flux": build_flux(t5_tokenizer_path),
        "pixart": build_pixart(t5_tokenizer_path),
    }
    return built


@pytest.mark.parametrize(("family", "cast"), CASES)
def test_one_encoder_in_bfloat16_gives_encode_prompts_dtypes_and_values(pipes, family, cast) -> None:
    pipe = pipes[family]
    getattr(pipe, cast).to(torch.bfloat16)
    try:
        tokens, pooled = _reference(family, pipe)
        got = TextConditioner.from_pipeline(pipe).pipeline_kwargs(PROMPT)
    finally:
        getattr(pipe, cast).to(torch.float32)
    assert got["prompt_embeds"].dtype == tokens.dtype
    assert torch.equal(got["prompt_embeds"], tokens)
    assert got["pooled_prompt_embeds"].dtype == pooled.dtype
    assert torch.equal(got["pooled_prompt_embeds"], pooled)


def test_the_dtypes_differ_by_family_as_diffusers_casts(pipes) -> None:
    """The cases above are not all one dtype: the rule is the family's, not "the first encoder's"."""
    pipe = pipes["sdxl"]
    pipe.text_encoder.to(torch.bfloat16)
    try:
        cond = TextConditioner.from_pipeline(pipe)
        assert cond.dtype == torch.float32  # text_encoder_2's
        assert cond.encode(PROMPT).pooled.dtype == torch.float32
    finally:
        pipe.text_encoder.to(torch.float32)
    flux = pipes["flux"]
    flux.text_encoder.to(torch.bfloat16)
    try:
        cond = TextConditioner.from_pipeline(flux)
        embeds = cond.encode(PROMPT)
        assert (embeds.tokens.dtype, embeds.pooled.dtype) == (torch.float32, torch.bfloat16)
        assert cond.dtype == torch.float32  # the T5's
    finally:
        flux.text_encoder.to(torch.float32)
    sd3 = pipes["sd3"]
    sd3.text_encoder.to(torch.bfloat16)
    try:
        cond = TextConditioner.from_pipeline(sd3)
        assert cond.dtype == cond.encode(PROMPT).tokens.dtype == torch.float32  # CLIP and T5 joined: promoted
    finally:
        sd3.text_encoder.to(torch.float32)


def test_sd3_without_its_t5_gives_zeros_in_the_first_clips_dtype(pipes) -> None:
    pipe = pipes["sd3"]
    t5, pipe.text_encoder_3 = pipe.text_encoder_3, None
    pipe.text_encoder.to(torch.bfloat16)
    try:
        tokens, pooled = _reference("sd3", pipe)
        got = TextConditioner.from_pipeline(pipe).pipeline_kwargs(PROMPT)
    finally:
        pipe.text_encoder.to(torch.float32)
        pipe.text_encoder_3 = t5
    assert (got["prompt_embeds"].dtype, got["pooled_prompt_embeds"].dtype) == (tokens.dtype, pooled.dtype)
    assert torch.equal(got["prompt_embeds"], tokens) and torch.equal(got["pooled_prompt_embeds"], pooled)


def test_an_sdxl_pipeline_with_its_first_clip_in_bfloat16_draws_diffusers_latents(pipes) -> None:
    from clipcond.pipelines import CLIPConditionedPipeline

    pipe = pipes["sdxl"]
    ours = CLIPConditionedPipeline.from_pipe(pipe)  # shares the modules
    ours.set_progress_bar_config(disable=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.text_encoder.to(torch.bfloat16)
    try:
        options = dict(num_inference_steps=2, output_type="latent", height=32, width=32)
        theirs = pipe(PROMPT[0], generator=torch.Generator().manual_seed(0), **options).images
        got = ours(PROMPT[0], generator=torch.Generator().manual_seed(0), **options).images
    finally:
        pipe.text_encoder.to(torch.float32)
    assert torch.equal(got, theirs)
