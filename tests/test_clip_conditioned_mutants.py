"""`CLIPConditionedPipeline` where the pipeline tests look past it: `encode_prompt`'s device for
both embeddings, a LoRA scale with and without a text-encoder LoRA, a pipeline of text
components only, the constructor's words for SDXL-only settings, a missing safety checker and
`t5_max_length` (also set in the config later) and a too narrow text encoder; given embeddings
(SDXL's zero negatives, dtype with and without a text encoder, `negative_prompt_2`) and latents,
`encode_prompt`'s `clip_skip`, SDXL's `prompt_2` without guidance, a text encoder swapped in
place, the steps of `sigmas` and SDXL's first step; half an encoder pair, `clip_skip` when built,
an inpainting UNet in text to image, `denoising_end` on custom schedules, settings and text
components changed after a first call, guidance's threshold, diffusers' textual-inversion hook,
mixed dtypes in `encode_prompt` and the negative a step callback is handed without guidance.
Tiny SD and SDXL components (the session fixtures). Written against the mutation runs of issue
24 and of session 47 (benchmarks/results/mutation.md)."""

from __future__ import annotations

import copy
import logging
import re

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from test_pipeline import ours_from, run
from tiny_pipelines import build_sd, clip_text_model

from clipcond import CLIPConditionedPipeline


def test_encode_prompt_puts_both_embeddings_on_the_device_asked(sd_pipe) -> None:
    """diffusers' contract: the embeddings come back on `device` (the meta device stands in for
    an accelerator: the encoders stay on the CPU, the result must not)."""
    pipe = ours_from(sd_pipe)
    positive, negative = pipe.encode_prompt("a red circle", "meta", 2, True, "blurry")
    width = sd_pipe.text_encoder.config.hidden_size
    assert positive.shape == negative.shape == (2, 77, width)
    assert positive.device.type == negative.device.type == "meta"
    assert negative.dtype == positive.dtype == torch.float32


def test_a_lora_scale_without_a_lora_changes_nothing(sd_pipe) -> None:
    """As in diffusers, `lora_scale` scales the LoRA layers of the text encoder for the call;
    with none loaded the embeddings are those without it."""
    pipe = ours_from(sd_pipe)
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
    expected = ours_from(sd_pipe).encode_prompt("a red circle", "cpu", 1, True, "blurry")
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


def test_a_text_encoder_swapped_in_place_is_the_one_that_encodes(sd_pipe) -> None:
    """The conditioner is kept between calls (with its cache) and rebuilt when a text encoder is
    assigned to the pipeline."""
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = ours_from(sd_pipe)
    before = pipe.encode_prompt("a red circle", "cpu", 1, False)[0]
    assert pipe.conditioner is pipe.conditioner
    torch.manual_seed(7)  # the fixture's encoder was seeded with 1
    other = CLIPTextModel(CLIPTextConfig(**sd_pipe.text_encoder.config.to_dict())).eval()
    pipe.text_encoder = other
    expected = CLIPConditionedPipeline.from_pipe(sd_pipe, text_encoder=other).encode_prompt(
        "a red circle", "cpu", 1, False
    )
    after = pipe.encode_prompt("a red circle", "cpu", 1, False)[0]
    assert torch.equal(after, expected[0]) and not torch.equal(after, before)


def test_given_latents_are_stable_diffusions_and_a_wrong_shape_is_named(sd_pipe) -> None:
    unet = sd_pipe.unet.config
    latents = torch.randn(
        1, unet.in_channels, unet.sample_size, unet.sample_size, generator=torch.Generator().manual_seed(5)
    )
    settings = dict(prompt="a red circle", num_inference_steps=2, output_type="np", latents=latents)
    pipe = ours_from(sd_pipe)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(**settings).images
    assert np.array_equal(images, sd_pipe(**settings).images)
    # latents of another dtype run in the pipeline's (StableDiffusionPipeline hands float64 ones to the UNet,
    # which fails: "mat1 and mat2 must have the same dtype")
    assert np.array_equal(pipe(**{**settings, "latents": latents.double()}).images, images)
    shape = (1, unet.in_channels, unet.sample_size, unet.sample_size)
    message = (
        f"`latents` must have shape {shape} (one row per image: prompts x num_images_per_prompt), "
        f"got {(1, unet.in_channels, 4, 4)}"
    )
    encoded = []
    hook = pipe.text_encoder.register_forward_pre_hook(lambda *args: encoded.append(1))
    try:
        for wrong in (latents[:, :, :4, :4], "noise"):
            with pytest.raises(ValueError, match="^`latents` must have shape"):
                pipe(**{**settings, "latents": wrong})
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            pipe(**{**settings, "latents": latents[:, :, :4, :4]})
        with pytest.raises(ValueError, match=r"got ndarray$"):  # not a tensor: its type is named
            pipe(**{**settings, "latents": latents.numpy()})
        with pytest.raises(ValueError, match=r"got \(1, 4, 32, 32\)"):  # two images need two rows
            pipe(**{**settings, "num_images_per_prompt": 2})
    finally:
        hook.remove()
    assert not encoded  # refused before any work


def test_given_sdxl_embeddings_without_a_negative_are_sdxls_zeros(sdxl_pipe) -> None:
    """SDXL's encode_prompt with the prompt's embeddings and pooled vector only: they come back
    as given, and the negatives are zeros (force_zeros_for_empty_prompt)."""
    ours = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    with torch.no_grad():
        embeds, _, pooled, _ = sdxl_pipe.encode_prompt("a red circle", device="cpu", negative_prompt="blurry")
        given = dict(prompt=None, device="cpu", prompt_embeds=embeds, pooled_prompt_embeds=pooled)
        expected = sdxl_pipe.encode_prompt(**given)
        got = ours.encode_prompt(**given)
    assert torch.equal(got[2], pooled) and not torch.any(got[1]) and not torch.any(got[3])
    for actual, wanted in zip(got, expected):
        assert torch.equal(actual, wanted)


def test_a_second_negative_prompt_beside_its_embeddings_is_refused(sdxl_pipe) -> None:
    ours = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    embeds = dict(negative_prompt_embeds=torch.zeros(1, 77, 64), negative_pooled_prompt_embeds=torch.zeros(1, 32))
    message = "give at most one of `negative_prompt_2` and `negative_prompt_embeds` (the embeddings are its encoding)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ours.encode_prompt("a red circle", "cpu", negative_prompt_2="dark", **embeds)


def test_given_embeddings_come_back_in_the_text_encoders_dtype(sd_pipe) -> None:
    """As StableDiffusionPipeline.encode_prompt: given bfloat16 embeddings are cast to the
    (float32) text encoder's dtype."""
    embeds = torch.linspace(-1.0, 1.0, 77 * 32).reshape(1, 77, 32).to(torch.bfloat16)
    with torch.no_grad():
        expected = sd_pipe.encode_prompt(None, "cpu", 1, True, prompt_embeds=embeds)
        got = ours_from(sd_pipe).encode_prompt(None, "cpu", 1, True, prompt_embeds=embeds)
    assert got[0].dtype == got[1].dtype == torch.float32
    for actual, wanted in zip(got, expected):
        assert torch.equal(actual, wanted)


def test_a_lora_in_the_text_encoder_runs_at_the_scale_given(sd_pipe) -> None:
    """`lora_scale` scales a text-encoder LoRA for the call, as StableDiffusionPipeline's
    encode_prompt does (peft layers, non-zero from the start)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(1)
    encoder = inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        copy.deepcopy(sd_pipe.text_encoder),
    )
    peer = StableDiffusionPipeline(**{**sd_pipe.components, "text_encoder": encoder})
    ours = CLIPConditionedPipeline(**{**ours_from(sd_pipe).components, "text_encoder": encoder})
    args = ("a red circle", "cpu", 1, True, "blurry")
    with torch.no_grad():
        full = peer.encode_prompt(*args)
        for scale in (0.5, None):
            expected = peer.encode_prompt(*args, lora_scale=scale)
            for actual, wanted in zip(ours.encode_prompt(*args, lora_scale=scale), expected):
                assert torch.equal(actual, wanted)
    assert not torch.equal(expected[0], peer.encode_prompt(*args, lora_scale=0.5)[0])  # the scale shows
    assert torch.equal(expected[0], full[0])


def test_prompt_editing_with_sigmas_switches_where_the_same_steps_do(sd_pipe) -> None:
    """`sigmas` set the steps (diffusers ignores `num_inference_steps` then): Euler's own sigmas
    of four steps (five values, the last one final) switch `[red:blue:0.5]` at the step where
    `num_inference_steps=4` does."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(sd_pipe.scheduler.config)
    scheduler.set_timesteps(4)
    sigmas = scheduler.sigmas.tolist()
    ours = CLIPConditionedPipeline(**{**ours_from(sd_pipe).components, "scheduler": scheduler})
    ours.set_progress_bar_config(disable=True)
    contexts = []
    hook = ours.unet.register_forward_pre_hook(
        lambda module, args, kwargs: contexts.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    settings = dict(prompt="a [red:blue:0.5] circle", height=32, width=32, output_type="latent")
    try:
        ours(num_inference_steps=4, **settings)
        by_count, contexts[:] = list(contexts), []
        ours(sigmas=sigmas, **settings)
    finally:
        hook.remove()
    assert len(sigmas) == 5 and len(contexts) == len(by_count) == 4
    assert not torch.equal(by_count[0], by_count[-1])  # the text changed within the four steps
    for by_sigmas, by_steps in zip(contexts, by_count):
        assert torch.equal(by_sigmas, by_steps)


def test_t5_max_length_needs_the_custom_recipe_with_a_t5(sd_pipe, tiny_t5_encoder_path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    parts = {**ours_from(sd_pipe).components, "recipe": "custom", "t5_max_length": 8}
    message = "`t5_max_length` applies to recipe 'custom' with a T5 `text_encoder_2` only"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CLIPConditionedPipeline(**parts)
    t5 = T5EncoderModel.from_pretrained(tiny_t5_encoder_path)
    tokenizer_2 = AutoTokenizer.from_pretrained(tiny_t5_encoder_path)
    with_t5 = CLIPConditionedPipeline(**{**parts, "text_encoder_2": t5, "tokenizer_2": tokenizer_2})
    assert with_t5.config.t5_max_length == 8


def test_t5_max_length_set_in_the_config_takes_effect(sd_pipe, t5_tokenizer_path) -> None:
    """The conditioner is rebuilt when the pipeline's `t5_max_length` changes (as it is for the
    other settings the conditioner reads from the config)."""
    from tiny_pipelines import t5_encoder
    from transformers import AutoTokenizer

    tokenizer_2 = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    parts = {
        **ours_from(sd_pipe).components,
        "text_encoder_2": t5_encoder(3, len(tokenizer_2)),
        "tokenizer_2": tokenizer_2,
    }
    pipe = CLIPConditionedPipeline(**parts, recipe="custom", t5_max_length=8)
    assert pipe.encode_prompt("a red circle", "cpu", 1, False)[0].shape[1] == 77 + 8
    pipe.register_to_config(t5_max_length=12)
    assert pipe.encode_prompt("a red circle", "cpu", 1, False)[0].shape[1] == 77 + 12


def test_a_long_prompt_beside_short_negative_embeddings_says_how_to_encode_both(sd_pipe) -> None:
    negative = torch.zeros(1, 77, sd_pipe.text_encoder.config.hidden_size)
    message = (
        "the negative prompt's embeddings (1, 77, 32) must have the shape of the prompt's (1, 154, 32) (a prompt "
        "longer than 77 tokens makes more tokens: encode prompt and negative prompt together, with "
        "`pipe.conditioner.pipeline_kwargs`)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ours_from(sd_pipe).encode_prompt("a red circle " * 30, "cpu", 1, True, negative_prompt_embeds=negative)


def test_one_second_negative_prompt_per_given_embedding(sdxl_pipe) -> None:
    """Given embeddings of two prompts take one `negative_prompt_2` each, as in SDXL."""
    ours = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    with torch.no_grad():
        embeds, _, pooled, _ = sdxl_pipe.encode_prompt(["a red circle", "a blue square"], device="cpu")
        settings = dict(
            prompt=None,
            device="cpu",
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            negative_prompt=["blurry", "dark"],
            negative_prompt_2=["grainy", "flat"],
        )
        expected = sdxl_pipe.encode_prompt(**settings)
        got = ours.encode_prompt(**settings)
    for actual, wanted in zip(got, expected):
        assert torch.equal(actual, wanted)


def test_sdxl_starts_at_the_first_step_of_a_schedule_that_repeats_it(sdxl_pipe) -> None:
    """SDXL's pipeline starts its scheduler at index 0 (`set_begin_index(0)`); without it the
    scheduler would look the first timestep up, and take its second place when it repeats."""
    settings = dict(prompt="a red circle", timesteps=[999, 999, 500, 40], num_inference_steps=None)
    settings.update(output_type="latent", generator=torch.Generator().manual_seed(0))
    expected = sdxl_pipe(**settings).images
    settings.update(generator=torch.Generator().manual_seed(0))
    ours = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    ours.set_progress_bar_config(disable=True)
    assert torch.equal(ours(**settings).images, expected)
    assert ours.scheduler.begin_index == 0


def test_a_narrow_text_encoder_is_refused_with_what_to_do(sd_pipe) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = {**sd_pipe.text_encoder.config.to_dict(), "hidden_size": 16, "intermediate_size": 37}
    pipe = CLIPConditionedPipeline(
        **{**ours_from(sd_pipe).components, "text_encoder": CLIPTextModel(CLIPTextConfig(**config))}
    )
    message = (
        "the text encoders give 16-wide tokens but unet.config.cross_attention_dim is 32; use an encoder of that "
        "width, or add a learned adapter: recipe='custom' with text_projection=TextProjection(projection_dim=32, "
        "...) (trained with `clipcond train-diffusion`, `train: adapter`)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        pipe.encode_prompt("a red circle", "cpu", 1, False)


def test_sdxl_without_guidance_reads_prompt_2(sdxl_pipe) -> None:
    ours = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    settings = dict(prompt="a red circle", prompt_2="at night", device="cpu", do_classifier_free_guidance=False)
    with torch.no_grad():
        expected = sdxl_pipe.encode_prompt(**settings)
        got = ours.encode_prompt(**settings)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])


def test_clip_skip_of_encode_prompt_is_the_pipelines_setting(sd_pipe) -> None:
    configured = CLIPConditionedPipeline(**{**ours_from(sd_pipe).components, "clip_skip": 1})
    expected = configured.encode_prompt("a red circle", "cpu", 1, False)[0]
    got = ours_from(sd_pipe).encode_prompt("a red circle", "cpu", 1, False, clip_skip=1)[0]
    assert torch.equal(got, expected) and not torch.equal(
        got, ours_from(sd_pipe).encode_prompt("a red circle", "cpu", 1, False)[0]
    )


@pytest.mark.parametrize(("without_unet", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_given_embeddings_without_a_text_encoder_come_back_in_the_unets_dtype(sd_pipe, without_unet, dtype) -> None:
    """As StableDiffusionPipeline.encode_prompt without a text encoder: the UNet's dtype; without
    a UNet too, the given embeddings' own."""
    from diffusers import StableDiffusionPipeline

    missing = {"text_encoder": None, "tokenizer": None, **({"unet": None} if without_unet else {})}
    embeds = torch.linspace(-1.0, 1.0, 77 * 32).reshape(1, 77, 32).to(torch.bfloat16)
    settings = dict(prompt_embeds=embeds, negative_prompt_embeds=embeds.flip(1))
    expected = StableDiffusionPipeline(**{**sd_pipe.components, **missing}).encode_prompt(
        None, "cpu", 1, True, **settings
    )
    ours = CLIPConditionedPipeline(**{**ours_from(sd_pipe).components, **missing})
    got = ours.encode_prompt(None, "cpu", 1, True, **settings)
    assert got[0].dtype == got[1].dtype == dtype
    for actual, wanted in zip(got, expected):
        assert torch.equal(actual, wanted)


@pytest.mark.parametrize("wrong", [torch.nn.Linear(4, 4), "projection"], ids=["a torch module", "a string"])
def test_a_text_projection_that_is_no_textprojection_is_refused_by_name(sd_pipe, wrong) -> None:
    """Refused before diffusers' `register_modules`, which failed on it with an AttributeError."""
    parts = {name: getattr(sd_pipe, name) for name in ("unet", "scheduler", "text_encoder", "tokenizer", "vae")}
    with pytest.raises(TypeError) as refused:
        CLIPConditionedPipeline(**parts, text_projection=wrong)
    assert str(refused.value) == (
        "`text_projection` must be a clipcond TextProjection (the learned adapter of recipe 'custom') or None, "
        f"got {type(wrong).__name__}"
    )


def test_an_sdxl_pipeline_keeps_its_scheduler_config_as_stable_diffusion_xl_does(sdxl_pipe) -> None:
    """Only Stable Diffusion's constructor rewrites an old scheduler config (`steps_offset: 0`,
    `clip_sample: true`); StableDiffusionXLPipeline keeps it, and so does recipe "sdxl" (timesteps
    [500, 0], not SD's [501, 1])."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    parts = dict(sdxl_pipe.components)
    old = {"steps_offset": 0, "clip_sample": True}
    peer = StableDiffusionXLPipeline(**{**parts, "scheduler": DDIMScheduler(**old)})
    ours = CLIPConditionedPipeline(**{**parts, "scheduler": DDIMScheduler(**old)})
    assert ours.config.recipe == "sdxl"
    for pipe in (peer, ours):
        assert {key: pipe.scheduler.config[key] for key in old} == old
        pipe.scheduler.set_timesteps(2)
        assert pipe.scheduler.timesteps.tolist() == [500, 0]


def test_a_pipeline_built_without_a_safety_checker_requires_none_and_says_nothing(sd_pipe, caplog) -> None:
    """`requires_safety_checker` is False unless given (a saved Stable Diffusion folder's config
    gives True, and then the warning above is logged)."""
    with caplog.at_level(logging.WARNING, logger="clipcond.pipelines.clip_conditioned"):
        pipe = CLIPConditionedPipeline(
            unet=sd_pipe.unet,
            scheduler=sd_pipe.scheduler,
            text_encoder=sd_pipe.text_encoder,
            tokenizer=sd_pipe.tokenizer,
        )
    assert pipe.config.requires_safety_checker is False
    assert not [r for r in caplog.records if r.name == "clipcond.pipelines.clip_conditioned"]


def test_sdxl_text_components_without_a_unet_are_read_as_sdxl(sdxl_pipe) -> None:
    """Without a UNet to tell, a second encoder with a text projection makes the recipe "sdxl":
    the text components alone encode as the whole SDXL pipeline does."""
    parts = {name: getattr(sdxl_pipe, name) for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")}
    text_only = CLIPConditionedPipeline(unet=None, scheduler=sdxl_pipe.scheduler, **parts)
    assert text_only.config.recipe == "sdxl"
    expected = CLIPConditionedPipeline.from_pipe(sdxl_pipe).encode_prompt("a red circle", "cpu", 1, True, "blurry")
    actual = text_only.encode_prompt("a red circle", "cpu", 1, True, "blurry")
    assert len(actual) == len(expected) == 4
    for got, wanted in zip(actual, expected):
        assert torch.equal(got, wanted)


def test_a_learned_projection_beside_a_recipe_other_than_custom_is_refused_when_built(sd_pipe) -> None:
    """Refused by the constructor (`from_pipe` and `from_pretrained` included), not at the first
    call."""
    from clipcond.projection import TextProjection

    width = sd_pipe.text_encoder.config.hidden_size
    with pytest.raises(
        ValueError, match=r"^a `text_projection` needs recipe 'custom', but this pipeline's recipe is 'sd'$"
    ):
        CLIPConditionedPipeline(
            unet=sd_pipe.unet,
            scheduler=sd_pipe.scheduler,
            text_encoder=sd_pipe.text_encoder,
            tokenizer=sd_pipe.tokenizer,
            text_projection=TextProjection(width, clip_width=width),
        )


def test_components_assigned_after_construction_that_the_recipe_cannot_read_are_refused_at_the_call(
    sd_pipe, t5_tokenizer_path
) -> None:
    """An SD-recipe pipeline given a T5 `text_encoder_2`, or a learned projection, by assignment
    (no constructor checks them then) refuses the next encode, naming what to do."""
    import tiny_pipelines
    from transformers import AutoTokenizer

    from clipcond.projection import TextProjection

    pipe = ours_from(sd_pipe)
    pipe.text_encoder_2 = tiny_pipelines.t5_encoder(
        3, vocab_size=AutoTokenizer.from_pretrained(t5_tokenizer_path).vocab_size
    )
    pipe.tokenizer_2 = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    with pytest.raises(ValueError, match=r"^recipe 'sd' reads no `text_encoder_2`; use recipe 'custom' to add it$"):
        pipe.encode_prompt("a red circle", "cpu", 1, False)
    pipe = ours_from(sd_pipe)
    width = sd_pipe.text_encoder.config.hidden_size
    pipe.text_projection = TextProjection(width, clip_width=width)
    with pytest.raises(
        ValueError, match=r"^a `text_projection` needs recipe 'custom', but this pipeline's recipe is 'sd'$"
    ):
        pipe.encode_prompt("a red circle", "cpu", 1, False)


def test_t5_attention_mask_beside_no_t5_is_refused_in_these_words(sd_pipe) -> None:
    with pytest.raises(ValueError) as refused:
        CLIPConditionedPipeline.from_pipe(sd_pipe, t5_attention_mask=True)
    assert str(refused.value) == "`t5_attention_mask` applies to recipe 'custom' with a T5 `text_encoder_2` only"


@pytest.mark.parametrize("missing", ["tokenizer", "text_encoder"])
def test_a_text_encoder_without_its_tokenizer_builds_runs_given_embeddings_and_refuses_text(sd_pipe, missing) -> None:
    """As SD allows a pipeline without text components for given embeddings, half of a pair (an
    encoder without its tokenizer, or the reverse) builds: the construction checks read only
    whole pairs. Given embeddings give SD's image; a text prompt is refused by the name of the
    missing half."""
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe, **{missing: None})
    pipe.set_progress_bar_config(disable=True)
    embeds = ours_from(sd_pipe).encode_prompt("a red circle", "cpu", 1, True, "blurry")
    settings = dict(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], num_inference_steps=2, output_type="np")
    expected = sd_pipe(**settings, generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(pipe(**settings, generator=torch.Generator().manual_seed(0)).images, expected)
    with pytest.raises(ValueError, match=f"^`prompt` is text, but this pipeline has no `{missing}` to encode it"):
        pipe("a red circle", num_inference_steps=1, output_type="latent")
    # encode_prompt makes the same checks of its own: text to encode, the negative under guidance
    prompt_message = (
        f"`prompt` is text, but this pipeline has no `{missing}` to encode it; pass `prompt_embeds` (and "
        "`negative_prompt_embeds` under guidance) instead"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(prompt_message)}$"):
        pipe.encode_prompt("a red circle", "cpu", 1, False)
    negative_message = (
        f"classifier-free guidance needs the negative prompt encoded, but this pipeline has no `{missing}` to "
        "encode it; pass `negative_prompt_embeds`, or guidance_scale <= 1"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(negative_message)}$"):
        pipe.encode_prompt(None, "cpu", 1, True, prompt_embeds=embeds[0])
    given = pipe.encode_prompt(None, "cpu", 1, False, prompt_embeds=embeds[0])
    assert torch.equal(given[0], embeds[0]) and given[1] is None


def test_a_clip_skip_the_clip_cannot_take_is_refused_when_built_not_without_the_clip(sd_pipe) -> None:
    """The constructor checks `clip_skip` against the CLIP it has (every call would refuse it),
    with the conditioner's words; a pipeline without a text encoder has nothing to check it
    against (its embeddings are given) and builds."""
    layers = sd_pipe.text_encoder.config.num_hidden_layers
    assert CLIPConditionedPipeline.from_pipe(sd_pipe, clip_skip=layers - 1).config.clip_skip == layers - 1
    message = (
        f"`clip_skip` must be between 0 and {layers - 1} for recipe 'sd' with a {layers}-layer CLIP "
        f"(it reads hidden state -1 - clip_skip), got {layers}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CLIPConditionedPipeline.from_pipe(sd_pipe, clip_skip=layers)
    assert CLIPConditionedPipeline.from_pipe(sd_pipe, text_encoder=None, clip_skip=layers).config.clip_skip == layers


def test_clip_skip_on_a_custom_pipeline_follows_the_encoders_it_has(sd_pipe, t5_tokenizer_path) -> None:
    """Recipe "custom" is made from the encoders present: CLIP and T5 read CLIP token states, so
    `clip_skip` builds; T5 alone reads none, so it is refused when built, in the conditioner's
    words."""
    from tiny_pipelines import build_clip_t5_custom

    custom = build_clip_t5_custom(sd_pipe, t5_tokenizer_path)
    assert CLIPConditionedPipeline.from_pipe(custom, clip_skip=1).config.clip_skip == 1
    message = "`clip_skip` has no effect on recipe 'custom': it reads no CLIP token states"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CLIPConditionedPipeline.from_pipe(custom, text_encoder=None, tokenizer=None, clip_skip=1)


def test_an_inpainting_unet_is_refused_by_text_to_image_before_any_work() -> None:
    """A 9-channel UNet (latents, mask, masked image) cannot start from noise alone: text to
    image names its channels and the pipeline that runs it, before an encoder or the UNet runs."""
    from forward_counter import ForwardCounter
    from tiny_pipelines import build_sd_inpaint

    pipe = CLIPConditionedPipeline.from_pipe(build_sd_inpaint())
    counters = [ForwardCounter(module) for module in (pipe.text_encoder, pipe.unet)]
    message = (
        "this UNet reads 9 input channels and predicts 4: an inpainting UNet (latents, mask and masked image), "
        "which text to image cannot run; use CLIPConditionedInpaintPipeline.from_pipe(pipe)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        pipe("a red circle", num_inference_steps=1, output_type="latent")
    assert [counter.calls for counter in counters] == [0, 0]


@pytest.mark.parametrize(
    "schedule, first",
    [(dict(timesteps=[999, 500]), "999"), (dict(sigmas=[14.0, 3.0, 1.0]), "721.047")],
    ids=["timesteps", "sigmas"],
)
def test_a_denoising_end_before_a_custom_schedules_first_step_is_refused_in_its_words(
    sdxl_pipe, schedule, first
) -> None:
    """The check sets the call's own schedule (custom `timesteps` or `sigmas`, no step count) on
    a copy of the scheduler and names the cutoff and that schedule's first timestep; a later
    `denoising_end` runs."""
    pipe = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    pipe.set_progress_bar_config(disable=True)
    message = (
        "`denoising_end` 0.0001 leaves none of the 2 steps to run: it stops the schedule at timestep 1000, above "
        f"the first step's, {first}; raise `denoising_end`"
    )
    settings = dict(prompt="a red circle", num_inference_steps=None, output_type="latent", **schedule)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        pipe(**settings, denoising_end=0.0001)
    assert pipe(**settings, denoising_end=0.3).images.shape[0] == 1


def _with_other_pad_token(tokenizer):
    """A copy of `tokenizer` that pads with "!" (SDXL's second tokenizer's pad) or, if it does
    already, with "<|endoftext|>" (the first's): the same ids, other padding states."""
    other = copy.deepcopy(tokenizer)
    other.pad_token = "<|endoftext|>" if tokenizer.pad_token == "!" else "!"
    return other


def _projection(width: int, seed: int):
    """A 16-wide CLIP's learned projection to `width` (seeded)."""
    from clipcond import TextProjection

    torch.manual_seed(seed)
    return TextProjection(projection_dim=width, clip_width=16)


_LONG_PROMPT = ", ".join(["a small red circle next to a large blue square"] * 8)  # two windows


@pytest.mark.parametrize(
    "base, change, prompt",
    [
        ("sd", lambda pipe: {"emphasis": "comfy"}, "a (red:1.5) circle"),
        ("sd", lambda pipe: {"window_split": "truncate"}, _LONG_PROMPT),
        ("sd", lambda pipe: {"tokenizer": _with_other_pad_token(pipe.tokenizer)}, "a red circle"),
        ("sdxl", lambda pipe: {"force_zeros_for_empty_prompt": False}, "a red circle"),
        ("sdxl", lambda pipe: {"tokenizer_2": _with_other_pad_token(pipe.tokenizer_2)}, "a red circle"),
        ("sdxl", lambda pipe: {"text_encoder_2": clip_text_model(5, with_projection=True)}, "a red circle"),
        ("custom", lambda pipe: {"t5_attention_mask": True}, ["a red circle", "a blue square beside a green star"]),
        ("projected", lambda pipe: {"text_projection": _projection(pipe.unet.config.cross_attention_dim, 9)}, "a cat"),
    ],
    ids=[
        "emphasis",
        "window_split",
        "tokenizer",
        "force_zeros",
        "tokenizer_2",
        "text_encoder_2",
        "t5_mask",
        "text_projection",
    ],
)
def test_a_setting_or_component_changed_in_place_takes_effect_at_the_next_call(
    request, t5_tokenizer_path, base, change, prompt
) -> None:
    """The conditioners a pipeline keeps are rebuilt when a setting they read is changed in its
    config (`register_to_config`) or a text component is assigned (`pipe.tokenizer = ...`): the
    next `encode_prompt` equals that of a pipeline made with the change, and differs from the
    first."""
    if base == "custom":
        from tiny_pipelines import build_clip_t5_custom

        base_pipe = build_clip_t5_custom(request.getfixturevalue("sd_pipe"), t5_tokenizer_path)
    elif base == "projected":  # a 16-wide CLIP through a learned projection to the UNet's width
        sd_pipe = request.getfixturevalue("sd_pipe")
        narrow = clip_text_model(3, hidden_size=16)
        projection = _projection(sd_pipe.unet.config.cross_attention_dim, 8)
        base_pipe = CLIPConditionedPipeline.from_pipe(
            sd_pipe, text_encoder=narrow, text_projection=projection, recipe="custom"
        )
    else:
        base_pipe = request.getfixturevalue(f"{base}_pipe")
    changes = change(base_pipe)
    pipe = CLIPConditionedPipeline.from_pipe(base_pipe)
    settings = dict(prompt=prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    before = pipe.encode_prompt(**settings)
    for name, value in changes.items():
        if name in pipe.components:
            setattr(pipe, name, value)  # as `pipe.text_encoder = ...`: no `register_modules`, which drops them
        else:
            pipe.register_to_config(**{name: value})
    after = pipe.encode_prompt(**settings)
    expected = CLIPConditionedPipeline.from_pipe(base_pipe, **changes).encode_prompt(**settings)
    for got, wanted in zip(after, expected, strict=True):
        assert torch.equal(got, wanted)
    assert any(not torch.equal(got, first) for got, first in zip(after, before))


def test_without_guidance_a_step_callback_is_handed_the_given_negative_as_in_stable_diffusion(sd_pipe) -> None:
    """No row reads a given `negative_prompt_embeds` without guidance, but StableDiffusionPipeline
    still hands it, as given, to a step callback that asks for it (ours handed None); the images
    are SD's."""
    pipe = ours_from(sd_pipe)
    positive, negative = pipe.encode_prompt("a red circle", "cpu", 1, True, "blurry")
    handed = {}

    def callback(which: str):
        def record(pipeline, index, timestep, tensors):
            handed.setdefault(which, []).append(tensors["negative_prompt_embeds"])
            return {}

        return record

    settings = dict(prompt_embeds=positive, negative_prompt_embeds=negative, guidance_scale=1.0)
    settings.update(num_inference_steps=2, callback_on_step_end_tensor_inputs=["latents", "negative_prompt_embeds"])
    images = {
        which: run(runner, **settings, callback_on_step_end=callback(which))
        for which, runner in (("ours", pipe), ("sd", sd_pipe))
    }
    assert np.array_equal(images["ours"], images["sd"])
    assert len(handed["ours"]) == len(handed["sd"]) == 2
    assert all(ours is negative and sd is negative for ours, sd in zip(handed["ours"], handed["sd"]))


@pytest.mark.parametrize("guidance_scale", [1.0, 1.5])
def test_guidance_starts_above_one_as_in_stable_diffusion(sd_pipe, guidance_scale) -> None:
    """Classifier-free guidance runs for any scale above 1 (1.5 included), none at 1: SD's
    images either way."""
    settings = dict(prompt="a red circle", negative_prompt="blurry", guidance_scale=guidance_scale)
    images = []
    for runner in (ours_from(sd_pipe), sd_pipe):
        images.append(run(runner, **settings, num_inference_steps=2))
        assert runner.do_classifier_free_guidance == (guidance_scale > 1)
    assert np.array_equal(images[0], images[1])


@pytest.mark.parametrize("recipe", ["sd", "sdxl"])
def test_textual_inversion_goes_through_diffusers_hook_with_each_clips_tokenizer(request, recipe) -> None:
    """As SD's and SDXL's `encode_prompt`, the texts pass `maybe_convert_prompt` (the
    TextualInversionLoaderMixin hook a subclass may override), once per CLIP with its own
    tokenizer: SDXL's second CLIP reads `prompt_2 or prompt`. `lora_scale` is remembered as SD's
    `encode_prompt` keeps it (`pipe._lora_scale`)."""
    base = request.getfixturevalue(f"{recipe}_pipe")
    pipe = CLIPConditionedPipeline.from_pipe(base)
    seen = []
    original = pipe.maybe_convert_prompt

    def recording(prompt, tokenizer):
        seen.append((prompt, tokenizer))
        return original(prompt, tokenizer)

    pipe.maybe_convert_prompt = recording
    pipe.encode_prompt("a red circle", "cpu", 1, False, lora_scale=0.5)
    expected = [("a red circle", pipe.tokenizer)]
    if recipe == "sdxl":
        expected.insert(0, ("a red circle", pipe.tokenizer_2))
    assert [(text, id(tokenizer)) for text, tokenizer in seen] == [(t, id(k)) for t, k in expected]
    assert pipe._lora_scale == 0.5


@pytest.mark.parametrize("recipe", ["sd", "sdxl"])
def test_a_bfloat16_text_encoder_beside_a_float32_unet_gives_diffusers_dtypes_and_values(recipe) -> None:
    """`encode_prompt` returns the token embeddings in the dtype of the text encoder diffusers
    reads it from (SD: `text_encoder`; SDXL: `text_encoder_2`), a given negative's cast to it too,
    and a given pooled vector in its own dtype, as StableDiffusionPipeline's and
    StableDiffusionXLPipeline's own: same dtypes, same values (ours cast a given float32 pooled
    vector to bfloat16). diffusers' pipelines cannot run these components (bfloat16 tokens meet
    the float32 UNet), so only `encode_prompt` is compared."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from tiny_pipelines import build_sd, build_sdxl

    peer_class, build, encoder = {
        "sd": (StableDiffusionPipeline, build_sd, "text_encoder"),
        "sdxl": (StableDiffusionXLPipeline, build_sdxl, "text_encoder_2"),
    }[recipe]
    parts = dict(build().components)
    parts[encoder] = parts[encoder].to(torch.bfloat16)
    peer = peer_class(**parts)
    text_parts = ("unet", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    ours = CLIPConditionedPipeline(**{name: part for name, part in parts.items() if name in text_parts})
    assert ours.unet.dtype == torch.float32
    width = ours.unet.config.cross_attention_dim
    for given in ({}, {"negative_prompt_embeds": torch.randn(1, 77, width)}):
        if given and recipe == "sdxl":  # float32: SDXL casts the token embeddings only, a pooled vector not
            given["negative_pooled_prompt_embeds"] = torch.randn(1, parts["text_encoder_2"].config.projection_dim)
        settings = dict(prompt="a red circle", device="cpu", num_images_per_prompt=2, do_classifier_free_guidance=True)
        expected = peer.encode_prompt(**settings, **given)
        got = ours.encode_prompt(**settings, **given)
        assert [tensor.dtype for tensor in got] == [tensor.dtype for tensor in expected]
        assert got[0].dtype == got[1].dtype == torch.bfloat16
        for actual, wanted in zip(got, expected, strict=True):
            assert torch.equal(actual, wanted)


def test_encode_prompt_returns_a_given_negative_unused_without_guidance_and_checks_prompt_2(sdxl_pipe) -> None:
    """Without guidance a given `negative_prompt_embeds` comes back as it was, as SD's and SDXL's
    `encode_prompt` return it; `prompt_2` beside `prompt_embeds` is refused there as in the call."""
    pipe = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    tokens, negative, pooled, negative_pooled = pipe.encode_prompt("a red circle", "cpu", 1, True, "blurry")
    unguided = pipe.encode_prompt(
        None,
        "cpu",
        1,
        False,
        prompt_embeds=tokens,
        negative_prompt_embeds=negative,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled,
    )
    assert unguided[1] is negative and torch.equal(unguided[0], tokens)
    with pytest.raises(ValueError, match="at most one of `prompt_2` and `prompt_embeds`"):
        pipe.encode_prompt(None, "cpu", 1, False, prompt_embeds=tokens, pooled_prompt_embeds=pooled, prompt_2="b")


def test_from_pipe_of_a_pipeline_without_a_unet_runs_when_one_is_given(sd_pipe, pixart_pipe) -> None:
    """The refusal is for a pipeline without a `unet` *and* none passed: with `unet=` (and the
    text components of a CLIP) a transformer pipeline's VAE is taken as diffusers' `from_pipe`
    takes any component, and the images are those of the pipeline built from the same parts."""
    parts = dict(
        unet=sd_pipe.unet,
        text_encoder=sd_pipe.text_encoder,
        tokenizer=sd_pipe.tokenizer,
        scheduler=copy.deepcopy(sd_pipe.scheduler),  # the constructor may rewrite a scheduler's config
    )
    piped = CLIPConditionedPipeline.from_pipe(pixart_pipe, **parts)
    assert piped.unet is sd_pipe.unet and piped.vae is pixart_pipe.vae
    built = CLIPConditionedPipeline(**parts, vae=pixart_pipe.vae)
    for pipe in (piped, built):
        pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(piped, prompt="a red circle"), run(built, prompt="a red circle"))


class _TransformerStandIn(DiffusionPipeline):
    """A pipeline with components but no `unet`, of no family clipcond knows."""

    def __init__(self, transformer, vae) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae)


@pytest.mark.parametrize(
    ("fixture", "described"),
    [
        (
            "pixart_pipe",
            "a PixArtAlphaPipeline (family 'pixart'), whose components are scheduler, text_encoder, tokenizer, "
            "transformer, vae",
        ),
        (None, "a _TransformerStandIn, whose components are transformer, vae"),
    ],
    ids=["pixart", "no family"],
)
def test_from_pipe_without_a_unet_is_refused_in_these_words(fixture, described, request) -> None:
    pipeline = (
        request.getfixturevalue(fixture) if fixture else _TransformerStandIn(torch.nn.Identity(), torch.nn.Identity())
    )
    expected = (
        "CLIPConditionedPipeline.from_pipe needs a pipeline with a `unet` (Stable Diffusion, SDXL, a clipcond "
        f"pipeline); `pipeline` is {described}. Condition it with "
        "TextConditioner.from_pipeline(pipeline).pipeline_kwargs(prompt) and call that pipeline"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        CLIPConditionedPipeline.from_pipe(pipeline)


@pytest.mark.parametrize("pipeline", [object(), {"unet": None}, "runwayml/stable-diffusion-v1-5"], ids=type)
def test_from_pipe_of_no_pipeline_is_a_type_error_naming_the_argument(pipeline) -> None:
    expected = f"`pipeline` must be a diffusers DiffusionPipeline, got {type(pipeline).__name__}"
    with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
        CLIPConditionedPipeline.from_pipe(pipeline)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((torch.float64,), {}), ((), {"dtype": torch.float64}), (("cpu", torch.float64), {})],
    ids=["dtype by position", "dtype by name", "device and dtype"],
)
def test_to_returns_the_pipeline_with_every_model_moved_as_diffusers_to(args, kwargs) -> None:
    """`to` is diffusers' own (its arguments by position or by name, the pipeline returned for
    chaining), with the conditioners told after it; the encoders then encode in the new dtype."""
    ours, theirs = ours_from(build_sd()), build_sd()
    assert ours.to(*args, **kwargs) is ours
    theirs.to(*args, **kwargs)
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(ours, name).dtype == getattr(theirs, name).dtype == torch.float64, name
    with torch.no_grad():
        expected = theirs.encode_prompt("a red circle", "cpu", 1, False)[0]
    assert torch.equal(ours.encode_prompt("a red circle", "cpu", 1, False)[0], expected)


def test_a_component_registered_again_lets_the_replaced_encoder_go() -> None:
    """`register_modules` (how `swap_text_encoder` sets a component) drops the conditioners built
    over the old encoder: nothing of the pipeline keeps it alive, and the next call encodes with
    the new one, as StableDiffusionPipeline does with it."""
    import gc
    import weakref

    pipe = ours_from(build_sd())
    pipe.encode_prompt("a red circle", "cpu", 1, False)  # builds a conditioner over the first encoder
    replaced = weakref.ref(pipe.text_encoder)
    pipe.register_modules(text_encoder=clip_text_model(1))
    gc.collect()
    assert replaced() is None
    peer = build_sd()
    peer.register_modules(text_encoder=pipe.text_encoder)
    with torch.no_grad():
        expected = peer.encode_prompt("a red circle", "cpu", 1, False)[0]
    assert torch.equal(pipe.encode_prompt("a red circle", "cpu", 1, False)[0], expected)


def test_a_custom_pipeline_with_t5_alone_encodes_and_draws_as_its_conditioner(sd_pipe, t5_tokenizer_path) -> None:
    """Without the CLIP (`text_encoder` and `tokenizer` None) recipe "custom" reads T5 alone: the
    pipeline's `window_split` (a CLIP setting, "word" by default) is not handed to a conditioner
    that has no CLIP window to cut (it refused the text before), and the embeddings are those of
    the conditioner built on the T5 alone, in `encode_prompt` and in the images."""
    from tiny_pipelines import build_clip_t5_custom

    from clipcond import TextConditioner

    custom = build_clip_t5_custom(sd_pipe, t5_tokenizer_path)
    pipe = CLIPConditionedPipeline.from_pipe(custom, text_encoder=None, tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    alone = TextConditioner("custom", t5=(custom.text_encoder_2, custom.tokenizer_2), cache_size=0)
    expected = alone.pipeline_kwargs("a red <toy> circle", "blurry")
    got = pipe.encode_prompt("a red <toy> circle", "cpu", 1, True, "blurry")
    assert torch.equal(got[0], expected["prompt_embeds"]) and torch.equal(got[1], expected["negative_prompt_embeds"])
    np.testing.assert_array_equal(
        run(pipe, prompt="a red <toy> circle", negative_prompt="blurry"),
        run(pipe, prompt_embeds=expected["prompt_embeds"], negative_prompt_embeds=expected["negative_prompt_embeds"]),
    )
