"""diffusers' own fast tests of `StableDiffusionImg2ImgPipeline`, run against
`CLIPConditionedImg2ImgPipeline`.

Each test re-creates, in our words, one check of diffusers' `StableDiffusionImg2ImgPipelineFastTests`
(tests/pipelines/stable_diffusion/test_stable_diffusion_img2img.py, as it stood before
diffusers' test refactor #14339 split it into pytest classes) or of the mixins it runs under
(`pipeline_checks`: `PipelineTesterMixin`, `PipelineLatentTesterMixin`,
`PipelineKarrasSchedulerTesterMixin`, `IPAdapterTesterMixin`); its docstring names the upstream
test. The components are upstream's `get_dummy_components`, built offline
(`upstream_components.sd_image_components`).

Where upstream compares against a stored image slice, we compare against
`StableDiffusionImg2ImgPipeline` on the same components, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, LCMScheduler, LMSDiscreteScheduler, StableDiffusionImg2ImgPipeline
from pipeline_checks import (
    PROMPT,
    REQUIRED_OPTIONAL_PARAMS,
    SHARED_WITH_TEXT_TO_IMAGE,
    IPAdapterChecks,
    KarrasSchedulerChecks,
    LatentChecks,
    PipelineChecks,
    with_guidance_embedding,
)
from upstream_components import random_floats, sd_image_components

from clipcond import CLIPConditionedImg2ImgPipeline


def _lms(parts: dict) -> dict:
    parts["scheduler"] = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return parts


def _lcm(parts: dict) -> dict:
    parts = with_guidance_embedding(parts)
    parts["scheduler"] = LCMScheduler.from_config(parts["scheduler"].config)
    return parts


def _tiny_autoencoder(parts: dict) -> dict:
    """upstream `get_dummy_tiny_autoencoder` (seeded here: upstream draws it from whatever the
    global generator holds)."""
    torch.manual_seed(0)
    parts["vae"] = AutoencoderTiny(in_channels=3, out_channels=3, latent_channels=4)
    return parts


def _custom_timesteps(inputs: dict) -> dict:
    del inputs["num_inference_steps"]
    return {**inputs, "timesteps": [999, 499]}


def _two_images(inputs: dict) -> dict:
    return {**inputs, "prompt": 2 * [inputs["prompt"]], "image": inputs["image"].repeat(2, 1, 1, 1)}


# upstream test -> (what it does to the components, what it does to the inputs)
UPSTREAM_CASES = {
    "test_stable_diffusion_img2img_default_case": (None, None),
    "test_stable_diffusion_img2img_default_case_lcm": (_lcm, None),
    "test_stable_diffusion_img2img_default_case_lcm_custom_timesteps": (_lcm, _custom_timesteps),
    "test_stable_diffusion_img2img_negative_prompt": (
        None,
        lambda inputs: {**inputs, "negative_prompt": "french fries"},
    ),
    "test_stable_diffusion_img2img_multiple_init_images": (None, _two_images),
    "test_stable_diffusion_img2img_k_lms": (_lms, None),
    "test_stable_diffusion_img2img_tiny_autoencoder": (_tiny_autoencoder, None),
}


class TestStableDiffusionImg2ImgPipelineFast(IPAdapterChecks, LatentChecks, KarrasSchedulerChecks, PipelineChecks):
    """upstream `StableDiffusionImg2ImgPipelineFastTests`."""

    pipeline_class = CLIPConditionedImg2ImgPipeline
    peer_class = StableDiffusionImg2ImgPipeline
    # TEXT_GUIDED_IMAGE_VARIATION_PARAMS - {"height", "width"}: the image sets the size
    params = frozenset(
        {"prompt", "image", "guidance_scale", "negative_prompt", "prompt_embeds", "negative_prompt_embeds"}
    )
    required_optional_params = REQUIRED_OPTIONAL_PARAMS - {"latents"}
    batch_params = frozenset({"prompt", "image", "negative_prompt"})  # TEXT_GUIDED_IMAGE_VARIATION_BATCH_PARAMS
    image_params = image_latents_params = frozenset({"image"})  # IMAGE_TO_IMAGE_IMAGE_PARAMS
    attention_slicing_max_diff = 5e-3
    batch_single_max_diff = 3e-3
    float16_max_diff = 5e-1
    slow_checks = SHARED_WITH_TEXT_TO_IMAGE

    @pytest.fixture(scope="class")
    def built_components(self) -> dict:
        return sd_image_components()

    def dummy_inputs(self, seed: int = 0) -> dict:
        """upstream `get_dummy_inputs`: a (1, 3, 32, 32) image in [0.5, 1), 2 steps of which
        int(2 x 0.8) = 1 runs."""
        return dict(
            prompt=PROMPT,
            image=random_floats((1, 3, 32, 32), seed) / 2 + 0.5,
            generator=torch.Generator("cpu").manual_seed(seed),
            num_inference_steps=2,
            guidance_scale=6.0,
            output_type="np",
        )

    @pytest.mark.parametrize("upstream", list(UPSTREAM_CASES))
    def test_images_equal_stable_diffusion_img2img(self, components, upstream) -> None:
        """upstream `test_stable_diffusion_img2img_default_case`, `_default_case_lcm`,
        `_default_case_lcm_custom_timesteps` (the same schedule as 2 steps), `_negative_prompt`,
        `_multiple_init_images`, `_k_lms` and `_tiny_autoencoder`: the stored slice of
        StableDiffusionImg2ImgPipeline's image becomes that pipeline's image itself, bit for bit."""
        change_components, change_inputs = UPSTREAM_CASES[upstream]
        parts = change_components(components) if change_components else components
        inputs = change_inputs(self.dummy_inputs()) if change_inputs else self.dummy_inputs()
        expected = self.peer(parts)(**inputs).images
        images = self.make(parts)(**{**inputs, "generator": self.dummy_inputs()["generator"]}).images
        assert images.shape == (len(expected), 32, 32, 3)
        assert np.array_equal(images, expected)
