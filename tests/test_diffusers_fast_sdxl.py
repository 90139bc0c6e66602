"""diffusers' own fast tests of `StableDiffusionXLPipeline`, run against `CLIPConditionedPipeline`
on SDXL components.

Each test re-creates, in our words, one check of diffusers' `StableDiffusionXLPipelineFastTests`
(tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py) or of the mixins it runs
under (`pipeline_checks`: `SDFunctionTesterMixin`, `IPAdapterTesterMixin`,
`PipelineLatentTesterMixin`, `PipelineTesterMixin`); its docstring names the upstream test. The
components are upstream's `get_dummy_components`, built offline
(`upstream_components.sdxl_components`): our pipeline reads the UNet's `text_time` embedding and
takes recipe "sdxl".

Where upstream compares against a stored image slice, we compare against
`StableDiffusionXLPipeline` on the same components, bit for bit (each comparison on a fresh
pipeline: a pooled vector from the embedding cache may differ in the last bits,
tests/test_sdxl_pipeline.py). Tests that need an accelerator are skipped without one, as
upstream skips them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    StableDiffusionXLPipeline,
)
from pipeline_checks import (
    PROMPT,
    SHARED_WITH_TEXT_TO_IMAGE,
    IPAdapterChecks,
    LatentChecks,
    PipelineChecks,
    SDFunctionChecks,
    cuda,
    default_attention,
    max_diff,
    with_guidance_embedding,
)
from upstream_components import sdxl_components

from clipcond import CLIPConditionedPipeline
from clipcond.pipelines import CLIPConditionedImg2ImgPipeline


def _lcm(parts: dict) -> dict:
    parts = with_guidance_embedding(parts)
    parts["scheduler"] = LCMScheduler.from_config(parts["scheduler"].config)
    return parts


def _custom_timesteps(inputs: dict) -> dict:
    del inputs["num_inference_steps"]
    return {**inputs, "timesteps": [999, 499]}


# upstream test -> (what it does to the components, what it does to the inputs)
UPSTREAM_CASES = {
    "test_stable_diffusion_xl_euler": (None, None),
    "test_stable_diffusion_xl_euler_lcm": (_lcm, None),
    "test_stable_diffusion_xl_euler_lcm_custom_timesteps": (_lcm, _custom_timesteps),
}
# The mixin checks run on 32-pixel images, a quarter of upstream's work per call (the VAE's
# decode at 64 pixels is most of it), to keep the default run short; the comparisons with
# StableDiffusionXLPipeline, which stand for upstream's stored slices, run at upstream's 64.
MIXIN_SIDE, UPSTREAM_SIDE = 32, 64
NEGATIVE_SIZES = dict(
    negative_original_size=(512, 512), negative_crops_coords_top_left=(0, 0), negative_target_size=(1024, 1024)
)


class TestStableDiffusionXLPipelineFast(SDFunctionChecks, IPAdapterChecks, LatentChecks, PipelineChecks):
    """upstream `StableDiffusionXLPipelineFastTests`."""

    pipeline_class = CLIPConditionedPipeline
    peer_class = StableDiffusionXLPipeline
    attention_slicing_max_diff = 3e-3
    batch_single_max_diff = 3e-3
    needed_optional_components = frozenset({"vae", "text_encoder_2", "tokenizer_2"})
    slow_checks = SHARED_WITH_TEXT_TO_IMAGE

    @pytest.fixture(scope="class")
    def built_components(self) -> dict:
        return sdxl_components()

    def dummy_inputs(self, seed: int = 0, side: int = MIXIN_SIDE) -> dict:
        """upstream `get_dummy_inputs`: 2 steps at SDXL's guidance of 5; images of `side`
        pixels (upstream's are the UNet's 64)."""
        return dict(
            prompt=PROMPT,
            generator=torch.Generator("cpu").manual_seed(seed),
            num_inference_steps=2,
            guidance_scale=5.0,
            output_type="np",
            height=side,
            width=side,
        )

    @pytest.mark.parametrize("upstream", list(UPSTREAM_CASES))
    def test_images_equal_stable_diffusion_xl(self, components, upstream) -> None:
        """upstream `test_stable_diffusion_xl_euler` (whose slice is also this class's
        `test_ip_adapter` reference), `_euler_lcm` and `_euler_lcm_custom_timesteps` (the same
        schedule as 2 steps): the stored slice of StableDiffusionXLPipeline's image becomes that
        pipeline's image itself, bit for bit."""
        change_components, change_inputs = UPSTREAM_CASES[upstream]
        parts = change_components(components) if change_components else components
        inputs = self.dummy_inputs(side=UPSTREAM_SIDE)
        inputs = change_inputs(inputs) if change_inputs else inputs
        expected = self.peer(parts)(**inputs).images
        images = self.make(parts)(**{**inputs, "generator": self.dummy_inputs()["generator"]}).images
        assert images.shape == (1, UPSTREAM_SIDE, UPSTREAM_SIDE, 3)
        assert np.array_equal(images, expected)

    def test_align_your_steps_schedules(self, components) -> None:
        """upstream `test_stable_diffusion_ays`: SDXL's AYS timesteps and AYS sigmas (with
        `num_inference_steps=None`) give the same images (< 1e-3), and not the 10-step default's."""
        from diffusers.schedulers import AysSchedules

        parts = with_guidance_embedding(components)
        parts["scheduler"] = EulerDiscreteScheduler.from_config(parts["scheduler"].config)
        pipe = self.make(parts)
        default = pipe(**{**self.dummy_inputs(), "num_inference_steps": 10}).images
        by_timesteps = pipe(
            **{
                **self.dummy_inputs(),
                "num_inference_steps": None,
                "timesteps": AysSchedules["StableDiffusionXLTimesteps"],
            }
        ).images
        by_sigmas = pipe(
            **{**self.dummy_inputs(), "num_inference_steps": None, "sigmas": AysSchedules["StableDiffusionXLSigmas"]}
        ).images
        assert max_diff(by_sigmas, by_timesteps) < 1e-3
        assert max_diff(default, by_timesteps) > 1e-3 and max_diff(default, by_sigmas) > 1e-3

    @cuda
    def test_offloads(self, components) -> None:
        """upstream `test_stable_diffusion_xl_offloads` (an accelerator test): model and
        sequential CPU offload give the images of the pipeline on the GPU (< 1e-3)."""
        import copy

        slices = []
        for offload in (None, "enable_model_cpu_offload", "enable_sequential_cpu_offload"):
            pipe = default_attention(self.make(copy.deepcopy(components)))
            if offload is None:
                pipe.to("cuda")
            else:
                getattr(pipe, offload)(device="cuda")
            slices.append(pipe(**self.dummy_inputs()).images[0, -3:, -3:, -1])
        assert max_diff(slices[0], slices[1]) < 1e-3 and max_diff(slices[0], slices[2]) < 1e-3

    @pytest.mark.parametrize(
        "scheduler_class",
        [
            EulerDiscreteScheduler,
            # second order: 19 UNet calls per pipeline run, the most expensive test of this file
            pytest.param(HeunDiscreteScheduler, marks=pytest.mark.slow),
        ],
    )
    @pytest.mark.parametrize("split", [300, 700])
    def test_two_pipelines_share_the_schedule_at_denoising_end(self, components, scheduler_class, split) -> None:
        """upstream `test_stable_diffusion_two_xl_mixture_of_denoiser_fast` (10 steps, split at
        timestep 300 or 700, Euler and Heun): our pipeline with `denoising_end` runs the
        timesteps >= the split and returns latents; our img2img pipeline over the same components
        with `denoising_start` runs the rest from them (a second-order scheduler repeats the last
        one), so both together run the whole schedule."""
        steps = 10
        done = []

        class Recording(scheduler_class):
            def step(self, model_output, timestep, *args, **kwargs):
                done.append(float(timestep))
                return super().step(model_output, timestep, *args, **kwargs)

        first = default_attention(self.make(components))
        first.scheduler = Recording.from_config(first.scheduler.config)
        second = CLIPConditionedImg2ImgPipeline.from_pipe(first)
        second.set_progress_bar_config(disable=True)
        second.scheduler = Recording.from_config(first.scheduler.config)
        first.scheduler.set_timesteps(steps)
        schedule = [float(t) for t in first.scheduler.timesteps]
        expected_first = [t for t in schedule if t >= split]
        expected_second = [t for t in schedule if t < split]
        if first.scheduler.order == 2:
            expected_second = expected_first[-1:] + expected_second
        fraction = 1.0 - split / first.scheduler.config.num_train_timesteps
        inputs = {**self.dummy_inputs(), "num_inference_steps": steps}
        latents = first(**{**inputs, "denoising_end": fraction, "output_type": "latent"}).images
        assert done == expected_first
        # what is checked is the timesteps: the second pipeline's latents are not decoded
        inputs = {name: value for name, value in inputs.items() if name not in ("height", "width")}  # from `image`
        second(**{**inputs, "denoising_start": fraction, "image": latents, "output_type": "latent"})
        assert done[len(expected_first) :] == expected_second

    def test_multi_prompts(self, components) -> None:
        """upstream `test_stable_diffusion_xl_multi_prompts`: `prompt_2` equal to `prompt` (and
        `negative_prompt_2` equal to `negative_prompt`) gives the image without it (< 1e-4);
        another text for the second encoder changes it (> 1e-4)."""
        pipe = self.make(components)

        def corner(**extra):
            return pipe(**{**self.dummy_inputs(), **extra}).images[0, -3:, -3:, -1]

        plain = corner()
        assert max_diff(corner(prompt_2=PROMPT), plain) < 1e-4
        assert max_diff(corner(prompt_2="different prompt"), plain) > 1e-4
        negative = corner(negative_prompt="negative prompt")
        same = corner(negative_prompt="negative prompt", negative_prompt_2="negative prompt")
        assert max_diff(same, negative) < 1e-4
        other = corner(negative_prompt="negative prompt", negative_prompt_2="different negative prompt")
        assert max_diff(other, negative) > 1e-4

    def test_negative_conditions(self, components, reference_images) -> None:
        """upstream `test_stable_diffusion_xl_negative_conditions`: negative size and crop
        conditioning changes the image (upstream: > 1e-2 on its hub tokenizer's embeddings;
        measured 4.5e-3 on these, so > 1e-3); here it is also StableDiffusionXLPipeline's image
        with them, bit for bit."""
        pipe = self.make(components)
        images = pipe(**self.dummy_inputs(), **NEGATIVE_SIZES).images
        assert max_diff(images[0, -3:, -3:, -1], reference_images[0, -3:, -3:, -1]) > 1e-3
        assert np.array_equal(images, self.peer(components)(**self.dummy_inputs(), **NEGATIVE_SIZES).images)

    def test_save_from_pretrained(self, components, reference_images, tmp_path) -> None:
        """upstream `test_stable_diffusion_xl_save_from_pretrained`: saved (safetensors) and
        loaded back as CLIPConditionedPipeline, recipe "sdxl", the same images (< 1e-3)."""
        self.make(components).save_pretrained(tmp_path)
        loaded = default_attention(CLIPConditionedPipeline.from_pretrained(tmp_path))
        loaded.set_progress_bar_config(disable=True)
        assert loaded.config.recipe == "sdxl"
        assert max_diff(loaded(**self.dummy_inputs()).images[0, -3:, -3:, -1], reference_images[0, -3:, -3:, -1]) < 1e-3
