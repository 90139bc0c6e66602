"""`CLIPConditionedImg2ImgPipeline`: image + prompt -> image, as `StableDiffusionImg2ImgPipeline`
and, on an SDXL-class UNet, as `StableDiffusionXLImg2ImgPipeline` (the refiner included).

A sibling of `CLIPConditionedPipeline` with its components and config (`from_pipe` moves
between them, and from diffusers' SD and SDXL pipelines, copying no module). It runs the
text-to-image `__call__` and changes its steps: where the schedule starts (the last `strength`
share, or SDXL's `denoising_start`), the starting latents (the source image's, noised to the
first timestep kept) and SDXL's negative time ids (img2img's rule, `sdxl_time_ids`). Text
encoding, guidance and the callbacks are text to image's own code. One class for both
families: the UNet's config decides; SDXL adds arguments, changing no step of the SD path.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from clipcond.denoising_steps import warmup_iterations
from clipcond.pipelines.argument_values import custom_schedule_name
from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline, _per_call
from clipcond.pipelines.composable import EditSteps
from clipcond.pipelines.coordinates import COORDINATE_CHANNELS
from clipcond.pipelines.image_inputs import (
    ImageBatch,
    check_batch_fits,
    check_denoising_start,
    check_image,
    check_strength,
    steps_after_strength,
)
from clipcond.pipelines.image_latents import encode_images, start_at_strength
from clipcond.pipelines.sdxl_time_ids import SizeConditioning
from clipcond.scalars import as_float


class SourceImageSteps:
    """What img2img and inpainting share, a mixin before `CLIPConditionedPipeline`: only the last
    `strength` share of the schedule runs (diffusers' `get_timesteps`), or, for SDXL, the part after
    `denoising_start`; the source images must divide the outputs; SDXL's negative time ids follow
    diffusers' img2img rule. The running call's arguments are `self._source`."""

    denoising_start = _per_call("denoising_start", "The schedule's fraction skipped (SDXL; None: strength).")

    def _check_unet_channels(self) -> None:
        """Nothing here: img2img and inpainting check the UNet's channels against their inputs."""

    def _source_inputs(self) -> dict[str, Any]:  # the source image, for the non-finite check
        return {"image": self._source.image}

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
        """The text-to-image checks, then: each source argument's images divide the outputs."""
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

    def _edit_steps(self, num_inference_steps: int | None, timesteps: Any, sigmas: Any) -> EditSteps:
        """The steps prompt editing's `when` counts. By `strength`: the steps that run, from
        the first of them. After `denoising_start`: the whole schedule's steps, from the first
        kept (the timesteps after it, cut as diffusers' `get_timesteps` cuts them), so a
        refiner goes on counting where its base (`denoising_end`) stopped, as one model
        running the whole schedule would.

        Raises:
            ValueError: none would run.
        """
        denoising_start = self._source.denoising_start
        if denoising_start is None:
            steps = self._scheduler_steps(num_inference_steps, timesteps, sigmas)
            custom = custom_schedule_name(timesteps, sigmas)
            return EditSteps(steps_after_strength(steps, self._source.strength, custom))
        # Where `denoising_start` cuts depends on the timesteps themselves: set them here (the
        # call sets them again) and count as diffusers' `get_timesteps` does, in steps (a
        # second-order scheduler's kept timesteps are whole pairs and the last step's one).
        _, steps = retrieve_timesteps(self.scheduler, num_inference_steps, None, timesteps, sigmas)
        _, kept = StableDiffusionXLImg2ImgPipeline.get_timesteps(self, steps, 1.0, None, denoising_start)
        if kept < 1:
            raise ValueError(
                f"`denoising_start` {denoising_start} leaves none of the {steps} steps to run; lower it or raise "
                "`num_inference_steps`"
            )
        order, warmup = self.scheduler.order, warmup_iterations(self.scheduler)
        # steps, rounded up as `_scheduler_steps`; PNDM's warm-up iteration is within step 0,
        # and the kept tail has it only where the cut comes before it
        total = -(-(len(self.scheduler.timesteps) - warmup) // order)
        kept_steps = min(-(-kept // order), total)
        cut = len(self.scheduler.timesteps) - kept
        return EditSteps(total, total - kept_steps, warmup=max(warmup - cut, 0))

    def _start_of_schedule(self, schedule: torch.Tensor, num_inference_steps: int) -> tuple[torch.Tensor, int]:
        """The kept part of the set schedule (`_kept_timesteps`); its first timestep is kept in
        `self._source.start`, the one the source is noised to."""
        kept = super()._start_of_schedule(schedule, num_inference_steps)
        self._source.start = kept[0][:1]  # (1,)
        return kept

    def _kept_timesteps(
        self, scheduler: Any, schedule: torch.Tensor, num_inference_steps: int
    ) -> tuple[torch.Tensor, int]:
        """The last `strength` share of `schedule` (set on `scheduler`), or the steps after
        `denoising_start` (diffusers' SDXL `get_timesteps`, called: a second-order scheduler
        keeps whole pairs), with their number of steps; `scheduler`'s begin index moves to it."""
        denoising_start = self._source.denoising_start
        if denoising_start is None:
            return start_at_strength(scheduler, schedule, num_inference_steps, self._source.strength)
        on = SimpleNamespace(scheduler=scheduler)  # `get_timesteps` reads only its pipeline's scheduler
        return StableDiffusionXLImg2ImgPipeline.get_timesteps(
            on, num_inference_steps, 1.0, schedule.device, denoising_start
        )

    def _time_ids(
        self, sizes: SizeConditioning, height: int, width: int, requires_aesthetics_score: bool, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return sizes.time_ids(height, width, requires_aesthetics_score, dtype, from_image=True)

    def _latents_shape(self, images_count: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The starting latents' shape: (images_count, the VAE's latent channels, height / vae
        factor, width / vae factor), whatever the UNet reads beside them."""
        factor = self.vae_scale_factor
        return (images_count, self._latent_channels(), height // factor, width // factor)

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

    # diffusers' default `strength` of the peer pipelines: (Stable Diffusion's, SDXL's)
    DEFAULT_STRENGTH: tuple[float, float]

    def default_strength(self) -> float:
        """The `strength` a call without one runs at: diffusers' default for this UNet's family."""
        sd, sdxl = self.DEFAULT_STRENGTH
        return sdxl if self.reads_time_ids else sd

    def _schedule_arguments(
        self, strength: Any, denoising_start: Any, denoising_end: Any
    ) -> tuple[Any, float | None, float | None]:
        """(`strength`, `denoising_start`, `denoising_end`) checked, the last two as Python floats
        (as diffusers reads them). A given `strength` is kept as given (None: `default_strength()`):
        diffusers counts steps in its precision, 10 x np.float32(0.7) = 7, not 6. The call's
        first check: a pipeline without a UNet is refused here.

        Raises:
            ValueError: no `unet`; as `check_strength` and `check_denoising_start`.
        """
        self.check_unet()
        given_strength = strength
        strength, denoising_start, denoising_end = map(as_float, (strength, denoising_start, denoising_end))
        check_denoising_start(denoising_start, strength, denoising_end, self.reads_time_ids)
        self._denoising_start = denoising_start  # the `denoising_start` property, as diffusers' SDXL img2img's
        if strength is None:
            return self.default_strength(), denoising_start, denoising_end
        check_strength(strength)
        return given_strength, denoising_start, denoising_end


@dataclass
class _Img2ImgCall:
    """The img2img arguments of the running call."""

    image: Any
    strength: Any  # a number in [0, 1] as the caller gave it (numpy's and 0-d tensors kept)
    denoising_start: float | None
    batches: list[tuple[str, ImageBatch]]
    start: torch.Tensor | None = None  # (1,): the first timestep kept


class CLIPConditionedImg2ImgPipeline(SourceImageSteps, CLIPConditionedPipeline):
    """Image + prompt -> image with a CLIP-conditioned UNet; `CLIPConditionedPipeline`'s
    components and constructor (see there), `StableDiffusionImg2ImgPipeline`'s call and, for an
    SDXL-class UNet, `StableDiffusionXLImg2ImgPipeline`'s.

    On a `StableDiffusionImg2ImgPipeline`'s components (recipe "sd") or a
    `StableDiffusionXLImg2ImgPipeline`'s (base or refiner), images equal that pipeline's bit for
    bit for the same generator (tests/test_img2img_inpaint.py, tests/test_sdxl_img2img_inpaint.py).
    """

    DEFAULT_STRENGTH = (0.8, 0.3)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float | None = None,
        num_inference_steps: int | None = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
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
        latents: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] | None = None,
        negative_target_size: tuple[int, int] | None = None,
        aesthetic_score: float | None = None,
        negative_aesthetic_score: float | None = None,
        prompt_2: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
    ) -> StableDiffusionPipelineOutput | StableDiffusionXLPipelineOutput | tuple:
        """Transform `image` as the prompt says.

        The arguments are `StableDiffusionImg2ImgPipeline`'s (and, for an SDXL UNet,
        `StableDiffusionXLImg2ImgPipeline`'s), with the same meaning; the others are
        `CLIPConditionedPipeline.__call__`'s (`guidance_rescale` and `non_finite` are ours).

        Args:
            image: the source, `PipelineImageInput` (clipcond.pipelines.image_inputs): PIL,
                array (.., H, W, 3) or tensor (.., 3, H, W) in [0, 1] (tensors may be [-1, 1]),
                or latents (.., 4, H / 8, W / 8), not encoded again. The output has its size,
                rounded down to the VAE's factor. One image, or one per output, or a number of
                them that divides the outputs (repeated whole, as in diffusers).
            strength: in [0, 1]: how much noise is added to the source; only the last
                int(num_inference_steps x strength) steps run (at least one must). 1 ignores
                the source. None: diffusers' default, 0.8 (SD) or 0.3 (SDXL). Prompt editing's
                `when` counts the steps that run.
            guidance_scale: None: diffusers' default, 7.5 (SD) or 5.0 (SDXL).

        SDXL only (refused for other UNets, before any work):
            latents: (n, 4, H / 8, W / 8): the starting latents as they are (no noise is added
                and the source is not encoded), as diffusers' SDXL img2img uses them.
            prompt_2, negative_prompt_2: the second CLIP's text, as in text-to-image.
            pooled_prompt_embeds, negative_pooled_prompt_embeds, original_size,
                crops_coords_top_left, target_size, their `negative_` versions,
                aesthetic_score, negative_aesthetic_score: as in text-to-image; the negative
                time ids follow diffusers' img2img rule (`sdxl_time_ids`), and a refiner's
                scores default to 6.0 and 2.5.
            denoising_start: in (0, 1): the fraction of the schedule another model ran (a base
                pipeline called with `denoising_end` and output_type="latent", whose latents are
                `image`): the steps after it run, the source gets no noise. Replaces `strength`
                (both is refused). Prompt editing's `when` counts the whole schedule's steps, on
                from the base's, as in one model running the whole schedule.
            denoising_end: as in text-to-image (any UNet): stop after that fraction.

        Returns:
            As `CLIPConditionedPipeline.__call__`.

        Raises:
            ValueError, TypeError: bad arguments (among them an `image` of another type, a `strength`
                outside [0, 1], an inpainting UNet, `denoising_start` outside (0, 1) or not below
                `denoising_end`, a `denoising_end` that leaves no step), all before any work.
        """
        # 1. Check the source image; the text-to-image call checks the rest, all before any work
        strength, denoising_start, denoising_end = self._schedule_arguments(strength, denoising_start, denoising_end)
        if latents is not None and not self.reads_time_ids:
            raise ValueError(
                "`latents` (the starting latents, used as they are) is SDXL img2img's; this pipeline's UNet is "
                "not SDXL-class, and StableDiffusionImg2ImgPipeline takes no `latents`"
            )
        latent_channels = self._latent_channels()
        if self._unet_image_channels() != latent_channels:
            raise ValueError(
                f"this UNet reads {self._unet_image_channels()} channels, not the VAE's {latent_channels} latent "
                "channels: an inpainting UNet needs `mask_image`; use CLIPConditionedInpaintPipeline"
            )
        batch = check_image(image, "image", self.vae_scale_factor, latent_channels)
        factor = self.vae_scale_factor
        cells = (latent_channels, batch.height // factor, batch.width // factor)
        if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape[1:]) != cells):
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(
                f"`latents` must have shape (n, {', '.join(map(str, cells))}) (the image's size), got {shape}"
            )
        self._source = _Img2ImgCall(image, strength, denoising_start, batches=[("image", batch)])
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
                latents=latents,
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
                pooled_prompt_embeds=pooled_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                denoising_end=denoising_end,
                original_size=original_size,
                crops_coords_top_left=crops_coords_top_left,
                target_size=target_size,
                negative_original_size=negative_original_size,
                negative_crops_coords_top_left=negative_crops_coords_top_left,
                negative_target_size=negative_target_size,
                aesthetic_score=aesthetic_score,
                negative_aesthetic_score=negative_aesthetic_score,
                prompt_2=prompt_2,
                negative_prompt_2=negative_prompt_2,
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
        diffusers' order of random draws: the VAE's sample, then the noise. SDXL: given
        `latents` as they are; after `denoising_start` the source's latents without noise."""
        if latents is not None:  # its shape checked before any work (`_latents_shape`)
            return latents.to(device, dtype)
        image = self.image_processor.preprocess(self._source.image).to(device=device, dtype=dtype)
        if image.shape[1] == self.vae.config.latent_channels:
            source = image
        else:
            if isinstance(generator, list):  # one generator per output: each encodes its own copy
                image = torch.cat([image] * (images_count // image.shape[0]))
            sdxl = self.reads_time_ids
            source = encode_images(self.vae, image, generator, upcast=sdxl, standardise=sdxl)
        # (images_count, 4, h, w), copied with torch.cat as diffusers' img2img copies (image_latents.tile_to)
        source = torch.cat([source] * (images_count // source.shape[0]))
        if self._source.denoising_start is not None:
            return source  # another model's latents, already as noisy as this point of the schedule
        noise = randn_tensor(source.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(source, noise, self._source.start.repeat(images_count))


__all__ = ["CLIPConditionedImg2ImgPipeline", "SourceImageSteps"]
