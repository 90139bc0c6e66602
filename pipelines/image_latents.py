"""From source images to the latents img2img and inpainting start from, as diffusers does.

Both of diffusers' SD img2img and inpaint pipelines encode the source with the VAE (a sample
of its posterior, drawn with the call's generator), scale it by the VAE's `scaling_factor`,
and run only the last `strength` share of the schedule. One function each here, so that the
two pipelines draw their random numbers in diffusers' order and get its images to the bit.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

from clipcond.pipelines.image_inputs import steps_after_strength


def encode_images(
    vae: Any, images: torch.Tensor, generator: Any, *, upcast: bool = False, standardise: bool = False
) -> torch.Tensor:
    """Latents of `images`: `scaling_factor` x a sample of the VAE posterior.

    Args:
        vae: an `AutoencoderKL`.
        images: (n, 3, H, W) in [-1, 1].
        generator: a `torch.Generator`, None, or a list of them: image i is then sampled with
            generator i (as diffusers' `_encode_vae_image`, image by image).
        upcast: as SDXL's img2img and inpaint pipelines: a VAE whose config says `force_upcast`
            (a float16 VAE overflows) encodes float32 images in float32; the VAE then returns
            to its own dtype (diffusers casts it to the prompt embeddings' dtype, the same one
            unless the pipeline mixes dtypes) and the latents come back in `images`' dtype.
        standardise: as SDXL's img2img pipeline (not its inpaint one): a VAE with
            `latents_mean` and `latents_std` in its config gives (sample - mean) x
            scaling_factor / std instead.

    Returns:
        (n, latent_channels, H / vae factor, W / vae factor).
    """
    dtype, vae_dtype = images.dtype, vae.dtype
    forced = upcast and bool(vae.config.get("force_upcast", False))
    if forced:
        images = images.float()
        vae.to(dtype=torch.float32)
    try:
        if isinstance(generator, list):
            latents = [
                retrieve_latents(vae.encode(images[i : i + 1]), generator=generator[i]) for i in range(len(images))
            ]
            latents = torch.cat(latents)
        else:
            latents = retrieve_latents(vae.encode(images), generator=generator)
    finally:
        if forced:
            vae.to(dtype=vae_dtype)
    if upcast:  # SDXL's pipelines return the latents in the images' dtype, upcast or not
        latents = latents.to(dtype)
    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    if standardise and mean is not None and std is not None:
        shape = (1, latents.shape[1], 1, 1)
        mean = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
        return (latents - mean) * vae.config.scaling_factor / std
    return vae.config.scaling_factor * latents


def tile_to(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """`tensor` (k, ...) repeated whole to (count, ...), `count` a multiple of k; returned as it is
    when k == count. diffusers lays out a batch of source images and masks this way (image 0,
    1, ..., 0, 1, ...), while the prompts' rows repeat each prompt in place; kept, so that
    images equal diffusers'.

    Which copy diffusers makes matters too: a PIL source becomes a channels-last tensor, a
    `repeat` copy is contiguous, a `torch.cat` copy keeps channels-last, and the UNet's
    convolutions take other kernels, with other last bits, on each layout. This is the
    `repeat` of diffusers' masks; the pipelines copy their source latents as diffusers does.
    """
    copies = count // tensor.shape[0]
    return tensor if copies == 1 else tensor.repeat(copies, *([1] * (tensor.ndim - 1)))


def start_at_strength(
    scheduler: Any, schedule: torch.Tensor, num_inference_steps: int, strength: Any
) -> tuple[torch.Tensor, int]:
    """The last `strength` share of a set schedule, as diffusers' `get_timesteps`.

    Args:
        scheduler: the scheduler `schedule` was set on; its begin index moves to the first
            step kept (schedulers that count steps themselves, e.g. Euler, need it).
        schedule: (num_inference_steps x scheduler.order,) timesteps.
        num_inference_steps: the steps of `schedule`.
        strength: in [0, 1]; 1 keeps every step.

    Returns:
        (the timesteps kept, how many steps they are).

    Raises:
        ValueError: no step would run.
    """
    kept = steps_after_strength(num_inference_steps, strength)
    start = (num_inference_steps - kept) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return schedule[start:], kept


__all__ = ["encode_images", "start_at_strength", "tile_to"]
