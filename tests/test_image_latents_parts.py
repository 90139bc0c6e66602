"""image_latents' three parts called directly against diffusers' own: `encode_images` against
the pipelines' `_encode_vae_image` (SD inpaint, SDXL inpaint with force_upcast) and SDXL
img2img's standardisation written out, `tile_to` against `torch.cat` copies, and
`start_at_strength` against `StableDiffusionImg2ImgPipeline.get_timesteps`. Tiny VAE: cheap."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
)
from tiny_pipelines import _small_vae

from clipcond.pipelines.image_latents import encode_images, start_at_strength, tile_to


def images(count: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def generators(count: int, seed: int = 5):
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


@pytest.mark.parametrize("per_image", [False, True], ids=["one_generator", "a_generator_per_image"])
def test_encode_images_is_sd_inpaints_encode_vae_image(per_image) -> None:
    vae = _small_vae(scaling_factor=0.5)
    source = images(3)
    expected = StableDiffusionInpaintPipeline._encode_vae_image(
        SimpleNamespace(vae=vae), source, generators(3) if per_image else generators(1)[0]
    )
    got = encode_images(vae, source, generators(3) if per_image else generators(1)[0])
    assert torch.equal(got, expected)
    if per_image:  # image i drawn with generator i: not the draws of one generator
        assert not torch.equal(got, encode_images(vae, source, generators(1)[0]))


def test_encode_images_is_the_posterior_sample_times_the_scaling_factor() -> None:
    vae = _small_vae(scaling_factor=0.25)
    source = images(2)
    expected = 0.25 * vae.encode(source).latent_dist.sample(generators(1)[0])
    assert torch.equal(encode_images(vae, source, generators(1)[0]), expected)


def test_standardise_is_sdxl_img2imgs_mean_and_std_and_only_where_asked() -> None:
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
    vae = _small_vae(scaling_factor=0.5, latents_mean=mean, latents_std=std)
    source = images(2)
    sample = vae.encode(source).latent_dist.sample(generators(1)[0])
    expected = (sample - torch.tensor(mean).view(1, 4, 1, 1)) * 0.5 / torch.tensor(std).view(1, 4, 1, 1)
    assert torch.equal(encode_images(vae, source, generators(1)[0], standardise=True), expected)
    assert torch.equal(encode_images(vae, source, generators(1)[0]), 0.5 * sample)  # SD and SDXL inpaint: plain
    plain = _small_vae(scaling_factor=0.5)  # no statistics: standardise changes nothing
    assert torch.equal(
        encode_images(plain, source, generators(1)[0], standardise=True), encode_images(plain, source, generators(1)[0])
    )


def test_standardise_keeps_a_half_precision_vaes_dtype() -> None:
    """SDXL img2img casts the VAE's mean and std to the latents' dtype before it standardises:
    bfloat16 latents stay bfloat16, rounded as bfloat16 arithmetic rounds them."""
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
    vae = _small_vae(scaling_factor=0.5, latents_mean=mean, latents_std=std).to(torch.bfloat16)
    source = images(2).to(torch.bfloat16)
    sample = vae.encode(source).latent_dist.sample(generators(1)[0])
    half = dict(dtype=torch.bfloat16)
    expected = (sample - torch.tensor(mean, **half).view(1, 4, 1, 1)) * 0.5 / torch.tensor(std, **half).view(1, 4, 1, 1)
    got = encode_images(vae, source, generators(1)[0], standardise=True)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


def test_only_latents_mean_without_std_is_not_standardised() -> None:
    vae = _small_vae(scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 0.0])
    source = images(1)
    assert torch.equal(
        encode_images(vae, source, generators(1)[0], standardise=True), encode_images(vae, source, generators(1)[0])
    )


@pytest.mark.parametrize("per_image", [False, True], ids=["one_generator", "a_generator_per_image"])
def test_a_float16_force_upcast_vae_encodes_as_sdxl_inpaints_encode_vae_image(per_image) -> None:
    """SDXL inpaint: float32 images through the VAE in float32, the VAE back in float16 after,
    the latents in the images' dtype."""
    source = images(2)
    reference_vae = _small_vae(force_upcast=True).to(torch.float16)
    expected = StableDiffusionXLInpaintPipeline._encode_vae_image(
        SimpleNamespace(vae=reference_vae), source, generators(2) if per_image else generators(1)[0]
    )
    vae = _small_vae(force_upcast=True).to(torch.float16)
    got = encode_images(vae, source, generators(2) if per_image else generators(1)[0], upcast=True)
    assert vae.dtype == torch.float16 and got.dtype == torch.float32 and torch.equal(got, expected)


def test_a_force_upcast_vae_that_fails_is_still_put_back_in_its_dtype() -> None:
    vae = _small_vae(force_upcast=True).to(torch.float16)
    with pytest.raises(RuntimeError, match="to have 3 channels"):
        encode_images(vae, torch.rand(1, 5, 16, 16), None, upcast=True)  # 5 channels: the VAE's conv fails
    assert vae.dtype == torch.float16


def test_upcast_without_force_upcast_keeps_the_vae_and_returns_the_images_dtype() -> None:
    vae = _small_vae(force_upcast=False).to(torch.float64)
    source = images(1).double()
    got = encode_images(vae, source, generators(1)[0], upcast=True)
    assert vae.dtype == torch.float64 and got.dtype == torch.float64
    assert torch.equal(got, vae.config.scaling_factor * vae.encode(source).latent_dist.sample(generators(1)[0]))
    bf16 = encode_images(vae, source, generators(1)[0], upcast=False)
    assert bf16.dtype == torch.float64


@pytest.mark.parametrize("rows, count", [(1, 1), (1, 3), (2, 4), (3, 6)])
def test_tile_to_repeats_the_batch_whole_as_diffusers_cat(rows, count) -> None:
    tensor = torch.arange(rows * 2 * 3 * 5, dtype=torch.float32).view(rows, 2, 3, 5)
    got = tile_to(tensor, count)
    assert torch.equal(got, torch.cat([tensor] * (count // rows)))  # image 0, 1, ..., 0, 1, ...
    assert (got is tensor) == (count == rows) and got.is_contiguous()


def test_tile_to_keeps_the_rank_of_a_mask() -> None:
    mask = torch.rand(2, 1, 4, 4)
    assert tile_to(mask, 6).shape == (6, 1, 4, 4)
    assert tile_to(torch.rand(2, 3), 4).shape == (4, 3)


SCHEDULERS = [DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler]


@pytest.mark.parametrize("scheduler_class", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("steps, strength", [(10, 1.0), (10, 0.5), (10, 0.35), (7, 0.3), (4, 0.26)])
def test_start_at_strength_is_diffusers_get_timesteps(scheduler_class, steps, strength) -> None:
    ours, theirs = scheduler_class(), scheduler_class()
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(steps)
    expected, expected_steps = StableDiffusionImg2ImgPipeline.get_timesteps(
        SimpleNamespace(scheduler=theirs), steps, strength, "cpu"
    )
    got, kept = start_at_strength(ours, ours.timesteps, steps, strength)
    assert torch.equal(got, expected) and kept == expected_steps
    assert ours.begin_index == theirs.begin_index if hasattr(theirs, "begin_index") else True


def test_start_at_strength_that_runs_no_step_is_refused() -> None:
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match=r"`strength` 0.2 runs int\(4 x 0.2\) = 0"):
        start_at_strength(scheduler, scheduler.timesteps, 4, 0.2)


def test_without_upcast_a_force_upcast_vae_encodes_in_its_own_dtype_as_sd_inpaint() -> None:
    """SD's pipelines read no force_upcast: a float64 VAE whose config says force_upcast encodes
    float64 images in float64 (the default, `upcast=False`), as SD inpaint's `_encode_vae_image`."""
    vae = _small_vae(force_upcast=True).to(torch.float64)
    source = images(2).double()
    expected = StableDiffusionInpaintPipeline._encode_vae_image(SimpleNamespace(vae=vae), source, generators(1)[0])
    got = encode_images(vae, source, generators(1)[0])
    assert vae.dtype == torch.float64 and got.dtype == torch.float64 and torch.equal(got, expected)


def test_float16_images_through_a_force_upcast_vae_come_back_in_float16_as_sdxl_inpaint() -> None:
    """The upcast encodes in float32; SDXL's `_encode_vae_image` returns the latents in the
    images' own dtype (float16 here), not float32."""
    source = images(2).half()
    reference_vae = _small_vae(force_upcast=True).to(torch.float16)
    expected = StableDiffusionXLInpaintPipeline._encode_vae_image(
        SimpleNamespace(vae=reference_vae), source, generators(2)
    )
    vae = _small_vae(force_upcast=True).to(torch.float16)
    got = encode_images(vae, source, generators(2), upcast=True)
    assert expected.dtype == torch.float16 and got.dtype == torch.float16 and torch.equal(got, expected)
