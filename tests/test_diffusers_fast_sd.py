"""diffusers' own fast tests of `StableDiffusionPipeline`, run against `CLIPConditionedPipeline`.

Each test re-creates, in our words, one check of diffusers' `StableDiffusionPipelineFastTests`
(tests/pipelines/stable_diffusion/test_stable_diffusion.py) or of the mixins it runs under,
`PipelineTesterMixin`, `PipelineLatentTesterMixin`, `PipelineKarrasSchedulerTesterMixin` and
`IPAdapterTesterMixin` (tests/pipelines/test_pipelines_common.py), whose checks live in
`pipeline_checks` (shared with the SDXL, img2img and inpaint files) and run here in
`TestStableDiffusionPipelineMixins`; its docstring names the upstream test. The components are
upstream's `get_dummy_components` built offline: the tiny UNet, VAE and CLIP text encoder of
`tiny_pipelines.sd_components` (width 32 and OpenAI's tokenizer instead of the hub's
`tiny-random-clip`) with upstream's DDIM scheduler.

Where upstream compares against a stored image slice (numbers of its own hub components), we
compare against `StableDiffusionPipeline` on the same components, which is what those slices
stand for. Tests upstream runs against the hub run here on local folders; tests that need an
accelerator are skipped without one, as upstream skips them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from pipeline_checks import (
    PROMPT,
    IPAdapterChecks,
    KarrasSchedulerChecks,
    LatentChecks,
    PipelineChecks,
    SDFunctionChecks,
    diffusers_pipeline,
    max_diff,
    with_guidance_embedding,
)
from tiny_pipelines import copy_sharing_tokenizers, sd_components, shared_tokenizers_kept

from clipcond import CLIPConditionedPipeline

# ---------------------------------------------------------------- upstream's fixtures


def _dummy_components() -> dict:
    """upstream `get_dummy_components`, offline: every constructor argument of our pipeline
    that is a component, the optional ones None."""
    parts = sd_components()
    parts["scheduler"] = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    for name in CLIPConditionedPipeline._optional_components:
        parts.setdefault(name, None)
    return parts


@pytest.fixture(scope="module")
def built_components() -> dict:
    return _dummy_components()


@pytest.fixture
def components(built_components) -> Iterator[dict]:
    """Fresh copies of the dummy components for each test (building them takes seconds), the
    tokenizer shared; the test fails if it changed it."""
    with shared_tokenizers_kept(built_components):
        yield copy_sharing_tokenizers(built_components)


def dummy_inputs(seed: int = 0) -> dict:
    """upstream `get_dummy_inputs`."""
    return dict(
        prompt=PROMPT,
        generator=torch.Generator("cpu").manual_seed(seed),
        num_inference_steps=2,
        guidance_scale=6.0,
        output_type="np",
    )


def ours(parts: dict) -> CLIPConditionedPipeline:
    pipe = CLIPConditionedPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stable_diffusion(parts: dict) -> StableDiffusionPipeline:
    return diffusers_pipeline(StableDiffusionPipeline, parts)


# ---------------------------------------------------------------- StableDiffusionPipelineFastTests


SCHEDULER_CASES = {
    "test_stable_diffusion_ddim": (lambda config: None, {}),
    "test_stable_diffusion_pndm": (lambda config: PNDMScheduler(skip_prk_steps=True), {}),
    "test_stable_diffusion_k_lms": (LMSDiscreteScheduler.from_config, {}),
    "test_stable_diffusion_k_euler_ancestral": (EulerAncestralDiscreteScheduler.from_config, {}),
    "test_stable_diffusion_k_euler": (EulerDiscreteScheduler.from_config, {}),
    "test_stable_diffusion_ddim_factor_8": (lambda config: None, dict(height=40, width=40)),
    "test_stable_diffusion_negative_prompt": (
        lambda config: PNDMScheduler(skip_prk_steps=True),
        dict(negative_prompt="french fries"),
    ),
}


@pytest.mark.parametrize("upstream", list(SCHEDULER_CASES))
def test_images_equal_stable_diffusion_for_each_upstream_case(components, upstream) -> None:
    """upstream `test_stable_diffusion_ddim`, `_pndm`, `_k_lms`, `_k_euler_ancestral`,
    `_k_euler`, `_ddim_factor_8` (a size that is a multiple of 8 only: 40 here, 136 there) and
    `_negative_prompt`: the stored slice of SD's image becomes SD's image itself, bit for bit."""
    make_scheduler, extra = SCHEDULER_CASES[upstream]
    scheduler = make_scheduler(components["scheduler"].config)
    if scheduler is not None:
        components["scheduler"] = scheduler
    expected = stable_diffusion(components)(**dummy_inputs(), **extra).images
    images = ours(components)(**dummy_inputs(), **extra).images
    size = extra.get("height", 32)
    assert images.shape == (1, size, size, 3)
    assert np.array_equal(images, expected)


@pytest.mark.parametrize("custom_timesteps", [False, True], ids=["lcm", "lcm_custom_timesteps"])
def test_lcm_equals_stable_diffusion(components, custom_timesteps) -> None:
    """upstream `test_stable_diffusion_lcm` and `test_stable_diffusion_lcm_custom_timesteps`:
    a guidance-distilled UNet under LCMScheduler, with the step count or with `timesteps=[999,
    499]` (the same schedule, so the same image)."""
    parts = with_guidance_embedding(components)
    parts["scheduler"] = LCMScheduler.from_config(parts["scheduler"].config)
    inputs = dummy_inputs()
    if custom_timesteps:
        del inputs["num_inference_steps"]
        inputs["timesteps"] = [999, 499]
    images = ours(parts)(**inputs).images
    assert np.array_equal(
        images, stable_diffusion(parts)(**{**inputs, "generator": dummy_inputs()["generator"]}).images
    )
    if custom_timesteps:
        by_count = ours(parts)(**dummy_inputs()).images
        assert np.array_equal(images, by_count)


@pytest.mark.slow  # 30 UNet steps: about 130 s on a loaded 2-core machine
def test_align_your_steps_schedules(components) -> None:
    """upstream `test_stable_diffusion_ays`: AYS timesteps and AYS sigmas (with
    `num_inference_steps=None`) give the same images, and not the 10-step default's."""
    from diffusers.schedulers import AysSchedules

    parts = with_guidance_embedding(components)
    parts["scheduler"] = EulerDiscreteScheduler.from_config(parts["scheduler"].config)
    pipe = ours(parts)
    default = pipe(**{**dummy_inputs(), "num_inference_steps": 10}).images
    by_timesteps = pipe(
        **{**dummy_inputs(), "num_inference_steps": None, "timesteps": AysSchedules["StableDiffusionTimesteps"]}
    ).images
    by_sigmas = pipe(
        **{**dummy_inputs(), "num_inference_steps": None, "sigmas": AysSchedules["StableDiffusionSigmas"]}
    ).images
    assert max_diff(by_sigmas, by_timesteps) < 1e-3
    assert max_diff(default, by_timesteps) > 1e-3 and max_diff(default, by_sigmas) > 1e-3


def _text_encoder_states(pipe, prompts: list[str]) -> torch.Tensor:
    """upstream's hand-made `prompt_embeds`: the tokenizer padded to 77 and the encoder's last layer."""
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


@pytest.mark.parametrize("with_negative", [False, True], ids=["prompt_embeds", "negative_prompt_embeds"])
def test_prompt_embeds_give_the_images_of_the_prompt(components, with_negative) -> None:
    """upstream `test_stable_diffusion_prompt_embeds` and
    `test_stable_diffusion_negative_prompt_embeds`: three prompts (and negatives) as text, or as
    embeddings made by hand with the tokenizer and text encoder, give the same images (< 1e-4)."""
    pipe = ours(components)
    negatives = 3 * ["this is a negative prompt"] if with_negative else None
    by_text = pipe(**{**dummy_inputs(), "prompt": 3 * [PROMPT], "negative_prompt": negatives}).images
    inputs = dummy_inputs()
    del inputs["prompt"]
    inputs["prompt_embeds"] = _text_encoder_states(pipe, 3 * [PROMPT])
    if with_negative:
        inputs["negative_prompt_embeds"] = _text_encoder_states(pipe, negatives)
    by_embeds = pipe(**inputs).images
    assert max_diff(by_embeds[0, -3:, -3:, -1], by_text[0, -3:, -3:, -1]) < 1e-4


def test_no_safety_checker_saves_and_loads(components, tmp_path) -> None:
    """upstream `test_stable_diffusion_no_safety_checker` (there on the hub's tiny SD, here on a
    local folder): a pipeline without a safety checker runs, saves with that component None,
    loads back with it None, and runs again."""
    pipe = ours(components)
    assert pipe.safety_checker is None and pipe("example prompt", num_inference_steps=2).images[0] is not None
    pipe.save_pretrained(tmp_path)
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, CLIPConditionedPipeline) and isinstance(loaded.scheduler, DDIMScheduler)
    assert loaded.safety_checker is None
    assert loaded("example prompt", num_inference_steps=2).images[0] is not None


@pytest.mark.skip(reason="intended difference: prompts over 77 tokens are chunked into windows, not truncated")
def test_long_prompt_is_truncated_with_a_warning() -> None:
    """upstream `test_stable_diffusion_long_prompt`: SD truncates a 100-token prompt to 77 with a
    warning naming the dropped tokens; we encode every token (tests/test_windows.py)."""


def test_height_and_width_default_to_the_unets_sample_size(components) -> None:
    """upstream `test_stable_diffusion_height_width_opt`: images are the UNet's `sample_size`
    times the VAE's factor unless `height` / `width` say otherwise, and follow a new UNet."""
    components["scheduler"] = LMSDiscreteScheduler.from_config(components["scheduler"].config)
    pipe = ours(components)
    factor = pipe.vae_scale_factor
    assert pipe("hey", num_inference_steps=1, output_type="np").images[0].shape[:2] == (32 * factor, 32 * factor)
    assert pipe("hey", num_inference_steps=1, height=48, width=48, output_type="np").images[0].shape[:2] == (48, 48)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "sample_size": 48})
    assert pipe("hey", num_inference_steps=1, output_type="np").images[0].shape[:2] == (48 * factor, 48 * factor)


def test_a_unet_with_a_height_and_width_sample_size(components) -> None:
    """upstream `test_pipeline_accept_tuple_type_unet_sample_size` (there SD 1.5 from the hub
    with a full-size UNet): a UNet whose `sample_size` is (height, width) is kept, and sets the
    default image size as in SD."""
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel.from_config({**components["unet"].config, "sample_size": [16, 24]})
    pipe = ours(components)
    assert pipe.unet.config.sample_size == [16, 24]
    images = pipe("hey", num_inference_steps=1, output_type="np").images
    expected = stable_diffusion(components)("hey", num_inference_steps=1, output_type="np").images
    assert images.shape == expected.shape == (1, 16, 24, 3)


# ---------------------------------------------------------------- the mixins upstream's class runs under


class TestStableDiffusionPipelineMixins(
    SDFunctionChecks, IPAdapterChecks, LatentChecks, KarrasSchedulerChecks, PipelineChecks
):
    """upstream `StableDiffusionPipelineFastTests`' mixin checks (`pipeline_checks`), and its own
    `test_stable_diffusion_vae_slicing` / `_vae_tiling`, `test_freeu_enabled` / `_disabled`,
    `test_fused_qkv_projections`, `test_pipeline_interrupt` and
    `test_encode_prompt_works_in_isolation`, which are those checks with SD's settings."""

    pipeline_class = CLIPConditionedPipeline
    peer_class = StableDiffusionPipeline
    attention_slicing_max_diff = 3e-3
    batch_single_max_diff = 3e-3
    vae_slicing_max_diff = 3e-3

    def dummy_inputs(self, seed: int = 0) -> dict:
        return dummy_inputs(seed)
