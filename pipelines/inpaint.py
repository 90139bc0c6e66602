"""`CLIPConditionedInpaintPipeline`: image + mask + prompt -> image, as
`StableDiffusionInpaintPipeline` and, on an SDXL-class UNet, `StableDiffusionXLInpaintPipeline`.

A sibling of `CLIPConditionedPipeline` (the same components, so `from_pipe` moves between
them without copies) that runs the text-to-image `__call__` with its steps changed: the
timesteps (the last `strength` share, or SDXL's `denoising_start`, as img2img), the starting
latents (noise, or the source noised when strength < 1, or the source as it is after
`denoising_start`), SDXL's negative time ids (img2img's rule), the UNet's input, and the
latents after each step. Two kinds of UNet, told apart by their input channels:

    inpainting UNet (9 = 4 + 1 + 4): reads the latents, the mask and the masked source's
        latents, concatenated on the channel axis;
    plain UNet (4): denoises the whole image; after each step, the latents outside the mask
        are put back to the source's, noised to the next timestep (the mask blend).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline
from clipcond.pipelines.image_inputs import ImageBatch, check_image, check_mask, check_mask_fits, holds_latents
from clipcond.pipelines.image_latents import encode_images, tile_to
from clipcond.pipelines.img2img import SourceImageSteps
from clipcond.pipelines.sd_components import INPAINT_REWRITES
from clipcond.scalars import as_int


@dataclass
class _InpaintCall:
    """The inpainting arguments of the running call, and what its steps derive from them."""

    image: Any
    mask_image: Any
    masked_image_latents: torch.Tensor | None
    strength: Any  # a number in [0, 1] as the caller gave it (numpy's and 0-d tensors kept)
    denoising_start: float | None
    padding_mask_crop: int | None
    batches: list[tuple[str, ImageBatch]]
    crop: tuple[int, int, int, int] | None = None
    start: torch.Tensor | None = None  # (1,): the first timestep kept (SourceImageSteps)
    blend_source: tuple[torch.Tensor, torch.Tensor] | None = None  # (source latents, noise), plain UNet


class CLIPConditionedInpaintPipeline(SourceImageSteps, CLIPConditionedPipeline):
    """Repaint the masked part of an image as the prompt says, with a CLIP-conditioned UNet;
    `CLIPConditionedPipeline`'s components and constructor (see there),
    `StableDiffusionInpaintPipeline`'s call.

    With recipe "sd" on a `StableDiffusionInpaintPipeline`'s components (an inpainting UNet of
    9 input channels, or a plain one of 4), images equal that pipeline's bit for bit for the
    same generator (tests/test_img2img_inpaint.py); on a `StableDiffusionXLInpaintPipeline`'s
    (base, 9 or 4 channels, or refiner), that pipeline's (tests/test_sdxl_img2img_inpaint.py).
    """

    DEFAULT_STRENGTH = (1.0, 0.9999)
    _scheduler_rewrites = INPAINT_REWRITES  # StableDiffusionInpaintPipeline's: it keeps `clip_sample`

    # As in StableDiffusionInpaintPipeline, callbacks may read and replace the mask and the
    # masked source's latents; here both are per image, (n, 1, h, w) and (n, 4, h, w), not
    # doubled for guidance as there, so a callback that turns guidance off needs no change to them.
    @property
    def _callback_tensor_inputs(self) -> list[str]:
        """The text-to-image pipeline's, and the mask and masked-image latents (one row per image)."""
        return [*super()._callback_tensor_inputs, "mask", "masked_image_latents"]

    @property
    def mask_processor(self) -> VaeImageProcessor:
        """StableDiffusionInpaintPipeline's mask processor: one channel, binarised at 0.5, not normalised."""
        return VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        mask_image: Any = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float | None = None,
        num_inference_steps: int | None = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
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
        """Repaint the white part of `mask_image` in `image`.

        The arguments are `StableDiffusionInpaintPipeline`'s (and, for an SDXL UNet,
        `StableDiffusionXLInpaintPipeline`'s), with the same meaning; the others are
        `CLIPConditionedPipeline.__call__`'s (`guidance_rescale` and `non_finite` are ours).

        Args:
            image: the source, as for `CLIPConditionedImg2ImgPipeline`; resized to
                `height` x `width` (default: the UNet's sample size x the VAE factor).
            mask_image: white (>= 0.5 after resizing): repaint; black: keep. PIL (converted to
                one channel), tensor (.., 1, H, W) / (.., H, W) or array (.., H, W, 1) / (.., H,
                W); the size of `image`.
            masked_image_latents: (n, 4, height / 8, width / 8): the masked source already
                encoded (skips encoding it).
            padding_mask_crop: repaint only a crop around the mask, this many pixels wider on
                each side, and paste it back into the source (PIL image and mask, "pil" output).
            strength: in [0, 1]; 1 starts from noise; below 1 only the last
                int(num_inference_steps x strength) steps run, from the noised source. None:
                diffusers' default, 1.0 (SD) or 0.9999 (SDXL, which so runs 49 of 50 steps,
                from the source noised to the first of them).
            latents: (n, 4, height / 8, width / 8) starting noise, used as diffusers uses it
                (it replaces the noised source, whatever the strength).

        SDXL only (refused for other UNets, before any work): `prompt_2` / `negative_prompt_2`, the pooled embeddings, the
        micro-conditioning, `denoising_start` and `denoising_end`, as
        `CLIPConditionedImg2ImgPipeline.__call__` takes them. After `denoising_start`, `image`
        is usually the base pipeline's latents (output_type="latent"); an inpainting UNet
        then needs `masked_image_latents` too.

        Returns:
            As `CLIPConditionedPipeline.__call__`.

        Raises:
            ValueError, TypeError: bad arguments (among them no `mask_image`, a mask of
                another size than the image, a `strength` outside [0, 1], an `image` of
                another type, a UNet of neither 4 nor 9 input channels), all before any work.
        """
        # 1. Check the source, the mask and the UNet; the text-to-image call checks the rest,
        #    all before any work
        strength, denoising_start, denoising_end = self._schedule_arguments(strength, denoising_start, denoising_end)
        padding_mask_crop = as_int(padding_mask_crop)  # numpy's integers, as diffusers takes them
        latent_channels = self._latent_channels()
        unet_channels = self._unet_image_channels()
        if unet_channels not in (latent_channels, 2 * latent_channels + 1):
            raise ValueError(
                f"this UNet reads {unet_channels} channels; inpainting needs {latent_channels} (a plain UNet: the "
                f"mask blend) or {2 * latent_channels + 1} (an inpainting UNet: latents, mask, masked image)"
            )
        if mask_image is None:
            unet = "an inpainting UNet" if unet_channels != latent_channels else "inpainting"
            raise ValueError(f"{unet} needs `mask_image` (white: repaint, black: keep); none was given")
        source = check_image(image, "image", self.vae_scale_factor, latent_channels)
        if unet_channels != latent_channels and masked_image_latents is None and holds_latents(image, latent_channels):
            raise ValueError(
                "an inpainting UNet reads the masked source, which latents cannot be masked into: with `image` as "
                "latents give `masked_image_latents` too"
            )
        if latents is not None and denoising_start is not None:
            raise ValueError(
                "`latents` and `denoising_start` cannot go together: after `denoising_start` the call starts from "
                "`image` (the first model's latents), and diffusers ignores `latents`"
            )
        mask = check_mask(mask_image)
        check_mask_fits(source, mask)
        batches = [("image", source), ("mask_image", mask)]
        if masked_image_latents is not None:
            if not isinstance(masked_image_latents, torch.Tensor) or masked_image_latents.ndim != 4:
                raise TypeError("`masked_image_latents` must be a (batch, latent channels, h, w) tensor")
            count, _, height_cells, width_cells = masked_image_latents.shape
            cells = self.vae_scale_factor
            batches.append(("masked_image_latents", ImageBatch(count, height_cells * cells, width_cells * cells)))
        if padding_mask_crop is not None:
            self._check_padding_mask_crop(padding_mask_crop, image, mask_image, output_type)
        self._source = _InpaintCall(
            image, mask_image, masked_image_latents, strength, denoising_start, padding_mask_crop, batches
        )
        try:
            # 2.-8. The text-to-image call, with this pipeline's timesteps, latents, UNet input
            #    and blend
            output = super().__call__(
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                num_images_per_prompt=num_images_per_prompt,
                generator=generator,
                latents=latents,
                output_type=output_type,
                return_dict=True,
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
            # 9. Paste a cropped repaint back into the source
            if padding_mask_crop is not None:
                output.images = [
                    self.image_processor.apply_overlay(mask_image, image, repainted, self._source.crop)
                    for repainted in output.images
                ]
        finally:
            self._source = None  # no reference to the caller's images after the call
        if return_dict:
            return output
        return (output.images,) if self.reads_time_ids else (output.images, output.nsfw_content_detected)

    @staticmethod
    def _check_padding_mask_crop(padding_mask_crop: Any, image: Any, mask_image: Any, output_type: str) -> None:
        if isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, int) or padding_mask_crop < 0:
            raise ValueError(f"`padding_mask_crop` must be an int >= 0 (pixels) or None, got {padding_mask_crop!r}")
        for name, value in (("image", image), ("mask_image", mask_image)):
            if not isinstance(value, PIL.Image.Image):
                raise TypeError(f"`padding_mask_crop` needs `{name}` as one PIL image, got {type(value).__name__}")
        if output_type != "pil":
            raise ValueError(
                f"`padding_mask_crop` pastes into the PIL source: output_type must be 'pil', got {output_type!r}"
            )
        if mask_image.convert("L").getbbox() is None:  # diffusers' crop region: the non-zero pixels
            raise ValueError(
                "`padding_mask_crop` crops around the pixels to repaint, but `mask_image` has none (it is all "
                "black): give a mask with white pixels, or leave `padding_mask_crop` None"
            )

    @property
    def _inpainting_unet(self) -> bool:
        return self._unet_image_channels() != self.vae.config.latent_channels

    def _source_inputs(self) -> dict[str, Any]:
        """The source image, the mask and, for an inpainting UNet (which alone reads them),
        `masked_image_latents`."""
        inputs = {**super()._source_inputs(), "mask_image": self._source.mask_image}
        if self._inpainting_unet:
            inputs["masked_image_latents"] = self._source.masked_image_latents
        return inputs

    def _check_given_latents(self, latents: Any, images_count: int, height: int, width: int) -> None:
        """The starting latents' check, and `masked_image_latents` and an `image` given as latents
        of the output's size (diffusers takes latents as they are, unlike images and `mask_image`,
        which it resizes: latents of another size fail inside the scheduler, after the prompt is
        encoded)."""
        super()._check_given_latents(latents, images_count, height, width)
        cells = self._latents_shape(images_count, height, width)[1:]
        if holds_latents(self._source.image, self._latent_channels()):
            source = self._source.batches[0][1]
            if (source.height, source.width) != (height, width):
                factor = self.vae_scale_factor
                raise ValueError(
                    f"`image` given as latents is {source.height}x{source.width} pixels (latents of "
                    f"{source.height // factor}x{source.width // factor}), but the output is {height}x{width}: "
                    "pass `height` and `width` of the source's size"
                )
        masked = self._source.masked_image_latents
        if masked is not None and tuple(masked.shape[1:]) != cells:
            raise ValueError(
                f"`masked_image_latents` must have shape (n, {', '.join(map(str, cells))}) (the latents of a "
                f"{height}x{width} image), got {tuple(masked.shape)}"
            )

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
        """The starting latents (images_count, 4, h, w), and the mask (images_count, 1, h, w)
        and masked source latents (images_count, 4, h, w; None for a source given as latents
        without them, which only a plain UNet takes) the loop reads; random draws in
        diffusers' order: the source's VAE sample, the noise, the masked source's VAE sample.
        After SDXL's `denoising_start` the source's latents are the start, as they are."""
        call = self._source
        resize_mode = "default"
        if call.padding_mask_crop is not None:
            call.crop = self.mask_processor.get_crop_region(call.mask_image, width, height, pad=call.padding_mask_crop)
            resize_mode = "fill"
        size = dict(height=height, width=width, crops_coords=call.crop, resize_mode=resize_mode)
        image = self.image_processor.preprocess(call.image, **size).to(dtype=torch.float32)
        # The starting latents: pure noise at strength 1, else the source noised to the first timestep kept
        shape = self._latents_shape(images_count, height, width)
        channels = shape[1]
        full_strength = bool(call.strength == 1.0)
        continued = call.denoising_start is not None  # latents another model left at this point of the schedule
        upcast = self.reads_time_ids  # SDXL's pipelines encode in float32 when the VAE asks for it
        source = None
        if not self._inpainting_unet or (latents is None and not full_strength) or image.shape[1] == channels:
            source = image.to(device=device, dtype=dtype)
            if source.shape[1] != channels:
                source = encode_images(self.vae, source, generator, upcast=upcast)
            # copied with repeat even for one image, as diffusers' inpaint copies (image_latents.tile_to)
            source = source.repeat(images_count // source.shape[0], 1, 1, 1)
        if continued:  # diffusers draws noise here too: the blend's, and the generator's state after it
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = source
        elif latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            if full_strength:
                latents = noise * self.scheduler.init_noise_sigma
            else:
                latents = self.scheduler.add_noise(source, noise, call.start.repeat(images_count))
        else:  # its shape checked before any work
            noise = latents.to(device)
            latents = noise * self.scheduler.init_noise_sigma
        if not self._inpainting_unet:
            call.blend_source = (source, noise)
        # The mask at latent size, and the masked source's latents
        mask = self.mask_processor.preprocess(call.mask_image, **size)  # (n, 1, height, width) in {0, 1}
        masked = call.masked_image_latents
        if masked is None and image.shape[1] != channels:  # latents cannot be masked (a plain UNet needs none)
            masked = image * (mask < 0.5)
        mask = torch.nn.functional.interpolate(mask, size=shape[-2:]).to(device=device, dtype=dtype)
        self._loop_tensors["mask"] = tile_to(mask, images_count)
        self._loop_tensors["masked_image_latents"] = None
        if masked is not None:
            masked = masked.to(device=device, dtype=dtype)
            if masked.shape[1] != channels:
                masked = encode_images(self.vae, masked, generator, upcast=upcast)
            self._loop_tensors["masked_image_latents"] = tile_to(masked, images_count).to(device=device, dtype=dtype)
        return latents

    def _unet_input(self, model_input: torch.Tensor, rows: Any) -> torch.Tensor:
        """An inpainting UNet reads (rows, 4 + 1 + 4, h, w): the latents, the mask, the masked source."""
        if self._inpainting_unet:
            extra = [rows(self._loop_tensors["mask"]), rows(self._loop_tensors["masked_image_latents"])]
            model_input = torch.cat([model_input, *extra], dim=1)
        return super()._unet_input(model_input, rows)

    def _after_step(self, latents: torch.Tensor, index: int, schedule: torch.Tensor) -> torch.Tensor:
        """With a plain UNet, the mask blend: outside the mask, the source's latents noised to
        the next timestep (not noised after the last)."""
        if self._inpainting_unet:
            return latents
        source, noise = self._source.blend_source
        if index < len(schedule) - 1:
            source = self.scheduler.add_noise(source, noise, schedule[index + 1 : index + 2])
        mask = self._loop_tensors["mask"]
        return (1 - mask) * source + mask * latents


__all__ = ["CLIPConditionedInpaintPipeline"]
