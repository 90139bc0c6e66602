"""`CLIPConditionedImg2ImgPipeline`: image + prompt -> image, as `StableDiffusionImg2ImgPipeline`.

A sibling of `CLIPConditionedPipeline` with the same components and config, so `from_pipe`
moves between them (and from diffusers' SD pipelines) without copying a module. It runs the
text-to-image `__call__` and changes two of its steps: the timesteps (only the last
`strength` share runs) and the starting latents (the source image's, noised to the first
timestep kept). Text encoding (weights, long prompts, BREAK, the cache, clip_skip, textual
inversion, LoRA scale), guidance and the callbacks are the text-to-image pipeline's own code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline
from clipcond.pipelines.coordinates import COORDINATE_CHANNELS
from clipcond.pipelines.image_inputs import (
    ImageBatch,
    check_batch_fits,
    check_image,
    check_strength,
    steps_after_strength,
)
from clipcond.pipelines.image_latents import encode_images, start_at_strength


class SourceImageSteps:
    """What img2img and inpainting share, a mixin before `CLIPConditionedPipeline`: only the
    last `strength` share of the schedule runs (diffusers' `get_timesteps`), and the source
    images must divide the outputs. The running call's arguments are `self._source`, with
    `strength` and `batches` ((argument name, ImageBatch) pairs)."""

    def check_inputs(
        self,
        prompt: Any,
        negative_prompt: Any,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        height: int,
        width: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        generator: Any,
        output_type: str,
    ) -> int:
        """The text-to-image checks, then: each source argument's images divide the outputs.
        SDXL-class UNets are refused here (their img2img time ids and `denoising_start` are not
        built yet)."""
        if self.reads_time_ids:
            raise ValueError(
                f"{type(self).__name__} takes SD-class UNets; this UNet reads SDXL's time ids "
                "(addition_embed_type 'text_time'), which it does not support yet: use diffusers' "
                "StableDiffusionXLImg2ImgPipeline / StableDiffusionXLInpaintPipeline with "
                "`TextConditioner.from_pipeline(pipe).pipeline_kwargs(...)`"
            )
        count = super().check_inputs(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            height,
            width,
            guidance_scale,
            num_images_per_prompt,
            generator,
            output_type,
        )
        for name, batch in self._source.batches:
            check_batch_fits(batch, count * num_images_per_prompt, name)
        return count

    def _steps_to_run(self, num_inference_steps: int | None, timesteps: Any, sigmas: Any) -> int:
        return steps_after_strength(
            super()._steps_to_run(num_inference_steps, timesteps, sigmas), self._source.strength
        )

    def _prepare_timesteps(
        self, num_inference_steps: int | None, device: torch.device, timesteps: Any, sigmas: Any
    ) -> tuple[torch.Tensor, int]:
        schedule, steps = super()._prepare_timesteps(num_inference_steps, device, timesteps, sigmas)
        return start_at_strength(self.scheduler, schedule, steps, self._source.strength)

    def _latent_channels(self) -> int:
        """The VAE's latent channels; refuses a pipeline without a VAE (img2img and inpainting
        start from an image encoded by it)."""
        if self.vae is None:
            raise ValueError(f"{type(self).__name__} needs a `vae` to encode `image`; this pipeline has none")
        return self.vae.config.latent_channels

    def _unet_image_channels(self) -> int:
        """The UNet's input channels other than pixel coordinates."""
        coordinates = COORDINATE_CHANNELS if self.config.get("coordinate_channels", False) else 0
        return self.unet.config.in_channels - coordinates


@dataclass
class _Img2ImgCall:
    """The img2img arguments of the running call."""

    image: Any
    strength: float
    batches: list[tuple[str, ImageBatch]]


class CLIPConditionedImg2ImgPipeline(SourceImageSteps, CLIPConditionedPipeline):
    """Image + prompt -> image with a CLIP-conditioned UNet; `CLIPConditionedPipeline`'s
    components and constructor (see there), `StableDiffusionImg2ImgPipeline`'s call.

    With recipe "sd" on a `StableDiffusionImg2ImgPipeline`'s components, images equal that
    pipeline's bit for bit for the same generator (tests/test_img2img_inpaint.py).
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float = 0.8,
        num_inference_steps: int | None = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Any = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        guidance_rescale: float = 0.0,
        non_finite: str = "raise",
    ) -> StableDiffusionPipelineOutput | tuple:
        """Transform `image` as the prompt says.

        The arguments are `StableDiffusionImg2ImgPipeline`'s, with the same meaning; the others
        are `CLIPConditionedPipeline.__call__`'s (`guidance_rescale` and `non_finite` are ours).

        Args:
            image: the source, `PipelineImageInput` (clipcond.pipelines.image_inputs): PIL,
                array (.., H, W, 3) or tensor (.., 3, H, W) in [0, 1] (tensors may be [-1, 1]),
                or latents (.., 4, H / 8, W / 8), not encoded again. The output has its size,
                rounded down to the VAE's factor. One image, or one per output, or a number of
                them that divides the outputs (repeated whole, as in diffusers).
            strength: in [0, 1]: how much noise is added to the source; only the last
                int(num_inference_steps x strength) steps run (at least one must). 1 ignores
                the source. Prompt editing's `when` counts the steps that run.

        Returns:
            As `CLIPConditionedPipeline.__call__`.

        Raises:
            ValueError, TypeError: bad arguments (among them an `image` of another type, a
                `strength` outside [0, 1], an inpainting UNet), all before any work.
        """
        # 1. Check the source image; the text-to-image call checks the rest, all before any work
        strength = check_strength(strength)
        latent_channels = self._latent_channels()
        if self._unet_image_channels() != latent_channels:
            raise ValueError(
                f"this UNet reads {self._unet_image_channels()} channels, not the VAE's {latent_channels} latent "
                "channels: an inpainting UNet needs `mask_image`; use CLIPConditionedInpaintPipeline"
            )
        batch = check_image(image, "image", self.vae_scale_factor, latent_channels)
        factor = self.vae_scale_factor
        self._source = _Img2ImgCall(image=image, strength=strength, batches=[("image", batch)])
        try:
            # 2.-8. The text-to-image call, with this pipeline's timesteps and starting latents
            return super().__call__(
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=batch.height - batch.height % factor,
                width=batch.width - batch.width % factor,
                num_images_per_prompt=num_images_per_prompt,
                generator=generator,
                output_type=output_type,
                return_dict=return_dict,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                ip_adapter_image=ip_adapter_image,
                ip_adapter_image_embeds=ip_adapter_image_embeds,
                eta=eta,
                timesteps=timesteps,
                sigmas=sigmas,
                guidance_rescale=guidance_rescale,
                cross_attention_kwargs=cross_attention_kwargs,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                clip_skip=clip_skip,
                non_finite=non_finite,
            )
        finally:
            self._source = None  # no reference to the caller's images after the call

    def _prepare_latents(
        self,
        images_count: int,
        height: int,
        width: int,
        schedule: torch.Tensor,
        generator: Any,
        device: torch.device,
        dtype: torch.dtype,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """The source's latents noised to the first timestep kept (images_count, 4, h, w), in
        diffusers' order of random draws: the VAE's sample, then the noise."""
        image = self.image_processor.preprocess(self._source.image).to(device=device, dtype=dtype)
        if image.shape[1] == self.vae.config.latent_channels:
            source = image
        else:
            if isinstance(generator, list):  # one generator per output: each encodes its own copy
                image = torch.cat([image] * (images_count // image.shape[0]))
            source = encode_images(self.vae, image, generator)
        # (images_count, 4, h, w), copied with torch.cat as diffusers' img2img copies (image_latents.tile_to)
        source = torch.cat([source] * (images_count // source.shape[0]))
        noise = randn_tensor(source.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(source, noise, schedule[:1].repeat(images_count))


__all__ = ["CLIPConditionedImg2ImgPipeline", "SourceImageSteps"]
