"""diffusers' own fast tests of `StableDiffusionInpaintPipeline`, run against
`CLIPConditionedInpaintPipeline`.

Each test re-creates, in our words, one check of diffusers' `StableDiffusionInpaintPipelineFastTests`
(an inpainting UNet of 9 input channels) or `StableDiffusionSimpleInpaintPipelineFastTests` (a
plain UNet of 4, with the mask blend) in tests/pipelines/stable_diffusion/test_stable_diffusion_inpaint.py,
as it stood before diffusers' test refactor #14339, or of the mixins they run under
(`pipeline_checks`: `PipelineTesterMixin`, `PipelineLatentTesterMixin`,
`PipelineKarrasSchedulerTesterMixin`, `IPAdapterTesterMixin`); its docstring names the upstream
test. As upstream, the plain-UNet class inherits every test of the inpainting-UNet one. The
components are upstream's `get_dummy_components`, built offline
(`upstream_components.sd_image_components`).

Where upstream compares against a stored image slice, we compare against
`StableDiffusionInpaintPipeline` on the same components, bit for bit.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, LCMScheduler, StableDiffusionInpaintPipeline
from pipeline_checks import (
    PROMPT,
    SHARED_WITH_TEXT_TO_IMAGE,
    IPAdapterChecks,
    KarrasSchedulerChecks,
    LatentChecks,
    PipelineChecks,
    max_diff,
    with_guidance_embedding,
)
from upstream_components import random_floats, sd_image_components

from clipcond import CLIPConditionedInpaintPipeline

# The mixin checks run on 32-pixel images, a quarter of upstream's work per call, to keep the
# default run short; the comparisons with StableDiffusionInpaintPipeline, which stand for
# upstream's stored slices, run at upstream's 64.
MIXIN_SIDE, UPSTREAM_SIDE = 32, 64


def inpaint_inputs(seed: int = 0, img_res: int = UPSTREAM_SIDE, output_pil: bool = True) -> dict:
    """upstream `get_dummy_inputs`: a random 32-pixel image upscaled to `img_res` and an
    all-white mask (repaint everything) as PIL, or, with `output_pil=False`, an `img_res`
    image in [-1, 1] and a white mask as tensors."""
    if output_pil:
        pixels = random_floats((1, 3, 32, 32), seed).permute(0, 2, 3, 1)[0]
        image = PIL.Image.fromarray(np.uint8(255 * pixels)).convert("RGB").resize((img_res, img_res))
        mask = PIL.Image.fromarray(np.uint8(255 * torch.ones_like(pixels))).convert("RGB").resize((img_res, img_res))
    else:
        image = 2.0 * random_floats((1, 3, img_res, img_res), seed) - 1.0
        mask = torch.ones((1, 1, img_res, img_res))
    return dict(
        prompt=PROMPT,
        image=image,
        mask_image=mask,
        height=img_res,  # upstream leaves the UNet's 64 (its `img_res`); the image is resized to it
        width=img_res,
        generator=torch.Generator("cpu").manual_seed(seed),
        num_inference_steps=2,
        guidance_scale=6.0,
        output_type="np",
    )


def _lcm(parts: dict) -> dict:
    parts = with_guidance_embedding(parts)
    parts["scheduler"] = LCMScheduler.from_config(parts["scheduler"].config)
    return parts


def _custom_timesteps(inputs: dict) -> dict:
    del inputs["num_inference_steps"]
    return {**inputs, "timesteps": [999, 499]}


def _euler_ancestral(parts: dict) -> dict:
    parts = with_guidance_embedding(parts)
    parts["scheduler"] = EulerAncestralDiscreteScheduler.from_config(parts["scheduler"].config)
    return parts


def _quarter_kept(inputs: dict) -> dict:
    """upstream `test_stable_diffusion_inpaint_euler`'s inputs: tensors, the mask's top-left
    quarter kept, 4 steps."""
    inputs = inpaint_inputs(img_res=UPSTREAM_SIDE, output_pil=False)
    half = inputs["image"].shape[2] // 2
    inputs["mask_image"][0, 0, :half, :half] = 0
    return {**inputs, "num_inference_steps": 4}


# upstream test -> (what it does to the components, what it does to the inputs); upstream's two
# classes run the first three, each with its own stored slice; the Euler case is the simple class's
UPSTREAM_CASES = {
    "test_stable_diffusion_inpaint": (None, None),
    "test_stable_diffusion_inpaint_lcm": (_lcm, None),
    "test_stable_diffusion_inpaint_lcm_custom_timesteps": (_lcm, _custom_timesteps),
}


class TestStableDiffusionInpaintPipelineFast(IPAdapterChecks, LatentChecks, KarrasSchedulerChecks, PipelineChecks):
    """upstream `StableDiffusionInpaintPipelineFastTests`: an inpainting UNet (9 input channels)."""

    pipeline_class = CLIPConditionedInpaintPipeline
    peer_class = StableDiffusionInpaintPipeline
    # TEXT_GUIDED_IMAGE_INPAINTING_PARAMS and _BATCH_PARAMS
    params = frozenset(
        {
            "prompt",
            "image",
            "mask_image",
            "height",
            "width",
            "guidance_scale",
            "negative_prompt",
            "prompt_embeds",
            "negative_prompt_embeds",
        }
    )
    batch_params = frozenset({"prompt", "image", "mask_image", "negative_prompt"})
    batch_single_max_diff = 3e-3
    encode_prompt_tolerance = 1e-3
    slow_checks = SHARED_WITH_TEXT_TO_IMAGE
    upstream_cases = UPSTREAM_CASES

    @pytest.fixture(scope="class")
    def built_components(self) -> dict:
        return sd_image_components(unet_in_channels=9)

    def dummy_inputs(self, seed: int = 0) -> dict:
        return inpaint_inputs(seed, img_res=MIXIN_SIDE)

    def test_images_equal_stable_diffusion_inpaint(self, components, upstream_case) -> None:
        """upstream `test_stable_diffusion_inpaint`, `_inpaint_lcm`, `_inpaint_lcm_custom_timesteps`
        (the same schedule as 2 steps) and, in the simple class, `_inpaint_euler`: the stored
        slice of StableDiffusionInpaintPipeline's image becomes that pipeline's image itself, bit
        for bit."""
        change_components, change_inputs = self.upstream_cases[upstream_case]
        parts = change_components(components) if change_components else components
        inputs = inpaint_inputs(img_res=UPSTREAM_SIDE)
        inputs = change_inputs(inputs) if change_inputs else inputs
        expected = self.peer(parts)(**inputs).images
        images = self.make(parts)(**{**inputs, "generator": torch.Generator().manual_seed(0)}).images
        assert images.shape == (1, UPSTREAM_SIDE, UPSTREAM_SIDE, 3)
        assert np.array_equal(images, expected)

    @pytest.fixture(params=list(UPSTREAM_CASES))
    def upstream_case(self, request) -> str:
        return request.param

    def test_image_tensor_gives_the_images_of_pil(self, components, reference_images) -> None:
        """upstream `test_stable_diffusion_inpaint_image_tensor`: the PIL image and mask given as
        tensors ([-1, 1] image, [0, 1] mask) give the same images (< 5e-2; here also equal to
        StableDiffusionInpaintPipeline's on the tensors, bit for bit)."""
        inputs = self.dummy_inputs()
        inputs["image"] = torch.tensor(np.array(inputs["image"]) / 127.5 - 1).permute(2, 0, 1).unsqueeze(0)
        inputs["mask_image"] = torch.tensor(np.array(inputs["mask_image"]) / 255).permute(2, 0, 1)[:1].unsqueeze(0)
        images = self.make(components)(**inputs).images
        assert images.shape == reference_images.shape
        assert max_diff(images, reference_images) < 5e-2
        again = {**inputs, "generator": torch.Generator().manual_seed(0)}
        assert np.array_equal(images, self.peer(components)(**again).images)

    def test_strength_that_leaves_no_step_is_refused(self, components) -> None:
        """upstream `test_stable_diffusion_inpaint_strength_zero_test`: `strength=0.01` of 2
        steps leaves none to run: a ValueError."""
        with pytest.raises(ValueError, match="strength"):
            self.make(components)(**{**self.dummy_inputs(), "strength": 0.01})

    def test_mask_and_latents_given_encoded(self, components) -> None:
        """upstream `test_stable_diffusion_inpaint_mask_latents`: the image and the masked image
        given as the VAE's latents (drawn in the pipeline's order: the image's sample, the noise,
        the masked image's sample) and the mask as a tensor give the images of the PIL inputs
        (< 1e-2) at strength 0.9."""
        pipe = self.make(components)
        from_pil = pipe(**{**self.dummy_inputs(), "strength": 0.9}).images
        inputs = self.dummy_inputs()
        image = pipe.image_processor.preprocess(inputs["image"])
        mask = pipe.mask_processor.preprocess(inputs["mask_image"])
        generator = torch.Generator().manual_seed(0)
        scale = pipe.vae.config.scaling_factor
        noise_shape = (1, 4, image.shape[2] // pipe.vae_scale_factor, image.shape[3] // pipe.vae_scale_factor)
        with torch.no_grad():
            image_latents = pipe.vae.encode(image).latent_dist.sample(generator=generator) * scale
            torch.randn(noise_shape, generator=generator)
            masked_latents = pipe.vae.encode(image * (mask < 0.5)).latent_dist.sample(generator=generator) * scale
        generator = torch.Generator().manual_seed(0)
        torch.randn(noise_shape, generator=generator)
        encoded = {
            **inputs,
            "image": image_latents,
            "masked_image_latents": masked_latents,
            "mask_image": mask,
            "strength": 0.9,
            "generator": generator,
        }
        assert max_diff(pipe(**encoded).images, from_pil) < 1e-2


SIMPLE_CASES = {
    **UPSTREAM_CASES,
    "test_stable_diffusion_inpaint_euler": (_euler_ancestral, _quarter_kept),
}


class TestStableDiffusionSimpleInpaintPipelineFast(TestStableDiffusionInpaintPipelineFast):
    """upstream `StableDiffusionSimpleInpaintPipelineFastTests`: the same tests on a plain UNet (4
    input channels: the mask blend), and its own."""

    upstream_cases = SIMPLE_CASES
    # and, with -m slow, the inherited checks whose work does not depend on the UNet's kind
    slow_checks = TestStableDiffusionInpaintPipelineFast.slow_checks | {
        "test_inference_batch_consistent",
        "test_num_images_per_prompt",
        "test_callback_cfg",
        "test_encode_prompt_works_in_isolation",
        "test_dict_tuple_outputs_equivalent",
        "test_image_tensor_gives_the_images_of_pil",
    }

    @pytest.fixture(scope="class")
    def built_components(self) -> dict:
        return sd_image_components(unet_in_channels=4)

    @pytest.fixture(params=list(SIMPLE_CASES))
    def upstream_case(self, request) -> str:
        return request.param

    def test_two_images(self, components) -> None:
        """upstream `test_stable_diffusion_inpaint_2_images`: the same image, mask and seed twice
        give two equal images (< 1e-4); two different images under an all-black mask (keep
        everything) give different ones (> 1e-2)."""
        pipe = self.make(components)
        inputs = self.dummy_inputs()
        for name in ("prompt", "image", "mask_image"):
            inputs[name] = 2 * [inputs[name]]
        inputs["generator"] = [torch.Generator().manual_seed(0) for _ in range(2)]
        images = pipe(**inputs).images
        assert images.shape == (2, MIXIN_SIDE, MIXIN_SIDE, 3)
        assert max_diff(images[0, -3:, -3:, -1], images[1, -3:, -3:, -1]) < 1e-4
        two = {
            **self.dummy_inputs(),
            "prompt": 2 * [PROMPT],
            "image": [2.0 * random_floats((1, 3, MIXIN_SIDE, MIXIN_SIDE), seed) - 1.0 for seed in (0, 22)],
            "mask_image": 2 * [torch.zeros((1, 1, MIXIN_SIDE, MIXIN_SIDE))],
            "generator": [torch.Generator().manual_seed(0) for _ in range(2)],
        }
        images = pipe(**two).images
        assert images.shape == (2, MIXIN_SIDE, MIXIN_SIDE, 3)
        assert max_diff(images[0, -3:, -3:, -1], images[1, -3:, -3:, -1]) > 1e-2
