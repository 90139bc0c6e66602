"""img2img and inpainting where their mutation run (benchmarks/results/mutation.md) found them
unguarded: other dtypes, SDXL's given latents, custom sigmas after `denoising_start`, a PNDM refiner
from the first timestep, `padding_mask_crop`'s type and fill, the early checks, and a source given
as latents of another size than the output. diffusers' pipelines on the same tiny components are
the reference, as in tests/test_img2img_inpaint.py."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from tiny_pipelines import build_sdxl, sd_components, sdxl_refiner_components

from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline

SIDE = 32


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _source() -> torch.Tensor:
    return torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))


def _mask() -> torch.Tensor:
    mask = torch.zeros(1, 1, SIDE, SIDE)
    mask[..., 8:24, 4:20] = 1
    return mask


def _run(pipe, **kwargs):
    settings = dict(num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0))
    settings.update(kwargs)
    return pipe(**settings).images


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
@pytest.mark.parametrize(
    "task, unet_in_channels",
    [("img2img", 4), ("inpaint", 9), ("inpaint", 4)],
    ids=["img2img", "inpainting_unet", "plain_unet_blend"],
)
def test_a_pipeline_in_another_dtype_draws_and_casts_as_diffusers(task, unet_in_channels, dtype) -> None:
    """The noise is drawn in the pipeline's dtype (float64 draws are other numbers than
    float32 ones), the source, mask and masked source are cast to it (a float32 mask beside
    bfloat16 latents would promote the UNet's input): images equal diffusers' in that dtype."""
    peer_class, our_class = {
        "img2img": (StableDiffusionImg2ImgPipeline, CLIPConditionedImg2ImgPipeline),
        "inpaint": (StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline),
    }[task]
    peer = _quiet(
        peer_class(
            **sd_components(unet_in_channels),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    )
    ours = _quiet(our_class.from_pipe(peer))
    peer.to(dtype=dtype)  # from_pipe casts the shared modules to float32
    extra = dict(mask_image=_mask(), strength=0.75) if task == "inpaint" else {}
    expected = _run(peer, prompt="a red circle", image=_source(), **extra)
    got = _run(ours, prompt="a red circle", image=_source(), **extra)
    assert got.dtype == dtype and torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
def test_an_sdxl_inpainting_refiner_in_another_dtype_draws_its_blend_noise_as_diffusers(dtype) -> None:
    """After `denoising_start` the call starts from the first model's latents, and a plain UNet
    blends the source back in with noise drawn in the pipeline's dtype (float64 draws are other
    numbers than float32 ones): images equal diffusers' in that dtype."""
    from diffusers import StableDiffusionXLInpaintPipeline

    peer = _quiet(StableDiffusionXLInpaintPipeline(**build_sdxl().components))
    ours = _quiet(CLIPConditionedInpaintPipeline.from_pipe(peer))
    peer.to(dtype=dtype)  # from_pipe casts the shared modules to float32
    latents = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(4), dtype=dtype)
    settings = dict(prompt="a red circle", image=latents, mask_image=_mask(), denoising_start=0.5)
    expected = _run(peer, **settings)
    got = _run(ours, **settings)
    assert got.dtype == dtype and torch.equal(got, expected)


def test_sdxl_img2img_casts_given_latents_to_the_pipelines_dtype() -> None:
    """SDXL img2img's `latents=` are used as they are but in the pipeline's dtype: float64
    latents give diffusers' image for the same latents in float32 (diffusers itself would pass
    float64 to the float32 UNet and fail)."""
    peer = _quiet(StableDiffusionXLImg2ImgPipeline(**build_sdxl().components, add_watermarker=False))
    ours = _quiet(CLIPConditionedImg2ImgPipeline.from_pipe(peer))
    latents = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    settings = dict(prompt="a red circle", image=_source(), strength=0.6, output_type="latent")
    expected = _run(peer, latents=latents.float(), **settings)
    assert torch.equal(_run(ours, latents=latents, **settings), expected)


def test_sdxl_img2img_after_denoising_start_takes_custom_sigmas_without_a_step_count() -> None:
    """`num_inference_steps=None` beside custom `sigmas` is accepted (docs/pipeline.md), also
    after `denoising_start` (where the steps prompt editing counts are set from the sigmas):
    the image equals diffusers' for the same sigmas with their count as the step count."""
    from diffusers import EulerDiscreteScheduler

    peer = _quiet(StableDiffusionXLImg2ImgPipeline(**build_sdxl().components, add_watermarker=False))
    peer.scheduler = EulerDiscreteScheduler.from_config(peer.scheduler.config)
    ours = _quiet(CLIPConditionedImg2ImgPipeline.from_pipe(peer))
    sigmas = [14.6, 6.0, 3.0, 0.8, 0.1]
    latents = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    settings = dict(
        prompt="a [red:blue:0.6] circle", image=latents, denoising_start=0.5, sigmas=sigmas, output_type="latent"
    )
    got = _run(ours, **{**settings, "num_inference_steps": None})
    ours_with_count = _run(ours, **{**settings, "num_inference_steps": len(sigmas)})
    assert torch.equal(got, ours_with_count)
    plain = dict(settings, prompt="a red circle")
    assert torch.equal(
        _run(ours, **{**plain, "num_inference_steps": None}),
        _run(peer, **{**plain, "num_inference_steps": len(sigmas)}),
    )


def test_denoising_start_that_leaves_no_step_names_both_ways_out() -> None:
    """A `denoising_start` past the schedule's last timestep (trailing spacing: 999, 499 for
    2 steps) is refused before any work, saying what to change."""
    from diffusers import EulerDiscreteScheduler

    peer = _quiet(StableDiffusionXLImg2ImgPipeline(**build_sdxl().components, add_watermarker=False))
    ours = _quiet(CLIPConditionedImg2ImgPipeline.from_pipe(peer))
    ours.scheduler = EulerDiscreteScheduler.from_config(ours.scheduler.config, timestep_spacing="trailing")
    latents = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    with pytest.raises(
        ValueError,
        match=r"^`denoising_start` 0\.6 leaves none of the 2 steps to run; lower it or raise `num_inference_steps`$",
    ):
        ours(prompt="a red circle", image=latents, denoising_start=0.6, num_inference_steps=2, output_type="latent")


@pytest.mark.parametrize("padding_mask_crop", [True, 2.5], ids=["bool", "float"])
def test_padding_mask_crop_that_is_no_int_is_refused_before_any_work(padding_mask_crop) -> None:
    """diffusers reads `padding_mask_crop` as pixels (an int): a bool or a float is refused,
    naming the argument, before the text encoder runs (as -1 is, in tests/test_img2img_inpaint.py)."""
    import numpy as np
    import PIL.Image

    peer = StableDiffusionInpaintPipeline(
        **sd_components(9), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ours = _quiet(CLIPConditionedInpaintPipeline.from_pipe(peer))

    def no_text_encoding(*args, **kwargs):
        raise AssertionError("the prompt was encoded before `padding_mask_crop` was checked")

    ours.text_encoder.forward = no_text_encoding
    image = PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    with pytest.raises(ValueError, match=r"`padding_mask_crop` must be an int >= 0 \(pixels\) or None, got "):
        ours(
            "a red circle",
            image=image,
            mask_image=PIL.Image.fromarray(mask),
            padding_mask_crop=padding_mask_crop,
            num_inference_steps=2,
            output_type="pil",
        )


def test_padding_mask_crop_whose_crop_cannot_take_the_outputs_shape_is_filled_as_diffusers() -> None:
    """With `padding_mask_crop`, diffusers resizes the crop with resize_mode="fill" (fit and
    pad): a crop of another aspect ratio than the output (the mask spans the narrow image's
    height, the output is twice as wide as tall) differs from a plain resize; images equal
    diffusers' (the suite's crop is already of the output's shape, where both modes agree)."""
    import numpy as np
    import PIL.Image

    peer = _quiet(
        StableDiffusionInpaintPipeline(
            **sd_components(9), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    )
    ours = _quiet(CLIPConditionedInpaintPipeline.from_pipe(peer))
    image = PIL.Image.fromarray((np.random.RandomState(0).rand(48, 24, 3) * 255).astype(np.uint8))
    mask = np.zeros((48, 24), np.uint8)
    mask[4:44, 8:16] = 255
    settings = dict(
        prompt="a red circle",
        image=image,
        mask_image=PIL.Image.fromarray(mask),
        padding_mask_crop=4,
        height=16,
        width=32,
        output_type="pil",
        num_inference_steps=2,
    )
    expected = np.asarray(_run(peer, **settings)[0])
    assert np.array_equal(np.asarray(_run(ours, **settings)[0]), expected)


def test_pndm_refiner_that_starts_before_the_first_timestep_counts_the_warm_up_as_one_model() -> None:
    """`denoising_start` below the first timestep's fraction keeps the whole PNDM schedule,
    warm-up iteration included (nothing was cut): prompt editing then reads, iteration by
    iteration, what one model running the whole schedule reads (tests/test_sdxl_handoff_editing.py
    covers cuts after the warm-up and within step 0, not this one)."""
    from diffusers import PNDMScheduler, StableDiffusionXLPipeline
    from test_sdxl_handoff_editing import read

    from clipcond import CLIPConditionedPipeline

    peer = _quiet(StableDiffusionXLPipeline(**dict(build_sdxl().components), add_watermarker=False))
    pndm = PNDMScheduler.from_config(peer.scheduler.config, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    base = _quiet(CLIPConditionedPipeline.from_pipe(peer, scheduler=pndm))
    img2img = _quiet(CLIPConditionedImg2ImgPipeline.from_pipe(base, scheduler=pndm))
    prompt = "a [red:blue:0.5] circle"
    one_model, _ = read(peer, base, prompt)
    latents = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    whole, _ = read(peer, img2img, prompt, image=latents, denoising_start=0.001)
    assert len(whole) == len(one_model) == 9 and whole == one_model


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(negative_prompt=["dark", "ugly"]),
        dict(negative_prompt="dark", negative_prompt_embeds="same_width_zeros"),
        dict(generator=[torch.Generator().manual_seed(i) for i in range(3)]),
    ],
    ids=["two_negatives_for_one_prompt", "a_negative_prompt_and_its_embeddings", "three_generators_for_two_images"],
)
def test_img2img_checks_negatives_and_generators_as_text_to_image_before_any_work(kwargs) -> None:
    """img2img runs text-to-image's checks of `negative_prompt` and a generator list (one per
    output image) before the text encoder runs, as text-to-image does."""
    peer = StableDiffusionImg2ImgPipeline(
        **sd_components(4), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ours = _quiet(CLIPConditionedImg2ImgPipeline.from_pipe(peer))

    def no_text_encoding(*args, **kwargs):
        raise AssertionError("the prompt was encoded before the arguments were checked")

    ours.text_encoder.forward = no_text_encoding
    if kwargs.get("negative_prompt_embeds") == "same_width_zeros":
        kwargs = dict(kwargs, negative_prompt_embeds=torch.zeros(1, 77, ours.text_encoder.config.hidden_size))
    settings = dict(prompt="a red circle", image=_source(), num_images_per_prompt=2, num_inference_steps=2)
    with pytest.raises(ValueError, match="negative_prompt|generator"):
        ours(**{**settings, **kwargs})


@pytest.mark.parametrize("height", [None, 16], ids=["default_size", "another_size"])
def test_a_source_given_as_latents_of_another_size_than_the_output_is_refused_before_any_work(height) -> None:
    """diffusers takes latents as they are: a source given as latents (a refiner's inpainting
    step) of another size than the output (by default the UNet's sample size x the VAE factor)
    fails inside the scheduler's add_noise, after the prompt is encoded; here it is refused first,
    naming `image` and both sizes."""
    peer = StableDiffusionInpaintPipeline(
        **sd_components(4), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ours = CLIPConditionedInpaintPipeline.from_pipe(peer)
    ours.set_progress_bar_config(disable=True)
    factor = ours.vae_scale_factor
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # 8 x factor pixels
    mask = torch.zeros(1, 1, 8 * factor, 8 * factor)
    mask[..., :4, :] = 1

    def no_text_encoding(*args, **kwargs):
        raise AssertionError("the prompt was encoded before the source's size was checked")

    ours.text_encoder.forward = no_text_encoding
    with pytest.raises(ValueError) as refusal:
        ours(
            "a red circle",
            image=latents,
            mask_image=mask,
            strength=0.5,
            num_inference_steps=2,
            height=height,
            width=height,
            output_type="np",
        )
    output = height or ours.unet.config.sample_size * factor
    assert str(refusal.value) == (
        f"`image` given as latents is {8 * factor}x{8 * factor} pixels (latents of 8x8), but the output is "
        f"{output}x{output}: pass `height` and `width` of the source's size"
    )


def test_a_source_given_as_latents_of_the_outputs_size_inpaints_as_diffusers() -> None:
    """The same latents with `height` and `width` of their size: diffusers' image."""
    peer = _quiet(
        StableDiffusionInpaintPipeline(
            **sd_components(4), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    )
    ours = _quiet(CLIPConditionedInpaintPipeline.from_pipe(peer))
    side = 8 * ours.vae_scale_factor
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, side, side)
    mask[..., :4, :] = 1
    settings = dict(prompt="a red circle", image=latents, mask_image=mask, strength=0.5, height=side, width=side)
    assert torch.equal(_run(ours, **settings), _run(peer, **settings))


def test_a_plain_unet_inpaints_a_latent_source_under_a_vae_that_scales_without_masking_it() -> None:
    """A plain UNet (the mask blend) reads no masked source, and latents cannot be masked by a
    mask of pixel size: diffusers multiplies them anyway, which fails under a VAE of factor 2
    (a (1, 1, 32, 32) mask against (1, 4, 16, 16) latents); ours runs, and equals diffusers
    given any `masked_image_latents` (which that UNet does not read), and a step callback is
    handed None for them."""
    from tiny_pipelines import _small_vae

    parts = sd_components(4)
    parts["vae"] = _small_vae(
        block_out_channels=(4, 4),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    peer = _quiet(
        StableDiffusionInpaintPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    )
    ours = _quiet(CLIPConditionedInpaintPipeline.from_pipe(peer))
    assert ours.vae_scale_factor == 2
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :8, :] = 1
    settings = dict(prompt="a red circle", image=latents, mask_image=mask, strength=0.5, height=32, width=32)
    with pytest.raises(RuntimeError):
        _run(peer, **settings)
    expected = _run(peer, **settings, masked_image_latents=torch.zeros(1, 4, 16, 16))
    seen = {}

    def keep(pipe, step, timestep, tensors):
        seen.update(tensors)
        return {}

    got = _run(ours, **settings, callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["masked_image_latents"])
    assert torch.equal(got, expected) and seen["masked_image_latents"] is None


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_a_pipeline_without_a_vae_is_refused_naming_itself_and_the_vae(task) -> None:
    """The source image is encoded by the VAE: without one, the call stops before any work."""
    ours_class = CLIPConditionedImg2ImgPipeline if task == "img2img" else CLIPConditionedInpaintPipeline
    pipe = _quiet(ours_class(**{**sd_components(), "vae": None}))
    extra = {"mask_image": _mask()} if task == "inpaint" else {}
    with pytest.raises(ValueError) as refusal:
        _run(pipe, prompt="a red circle", image=_source(), **extra)
    assert str(refusal.value) == f"{ours_class.__name__} needs a `vae` to encode `image`; this pipeline has none"


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_a_latent_unet_reading_coordinate_channels_runs_as_diffusers_with_the_grid_appended(task) -> None:
    """A latent UNet trained with coordinate channels (in_channels 4 + 2) reads the VAE's 4 latent
    channels as a plain UNet (img2img, and inpainting by the mask blend); the reference is
    diffusers' pipeline on a copy of the UNet that appends the grid itself, its config saying
    4 channels as a plain UNet's does."""
    import copy

    from clipcond.pipelines.coordinates import append_coordinates

    peer_class, our_class = {
        "img2img": (StableDiffusionImg2ImgPipeline, CLIPConditionedImg2ImgPipeline),
        "inpaint": (StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline),
    }[task]
    parts = sd_components(unet_in_channels=6)
    ours = _quiet(our_class(**copy.deepcopy(parts), coordinate_channels=True))
    peer_unet = copy.deepcopy(parts.pop("unet"))
    peer_unet.register_to_config(in_channels=4)
    peer_unet.register_forward_pre_hook(lambda module, args: (append_coordinates(args[0]), *args[1:]))
    peer = _quiet(
        peer_class(unet=peer_unet, **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    )
    extra = dict(mask_image=_mask(), strength=0.75) if task == "inpaint" else {}
    expected = _run(peer, prompt="a red circle", image=_source(), **extra)
    assert torch.equal(_run(ours, prompt="a red circle", image=_source(), **extra), expected)


def _bfloat16_time_ids(parts: dict, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, diffusers') `add_time_ids` as the step callback sees them, in SDXL img2img on
    `parts` in bfloat16, after checking that both images are equal."""
    peer = _quiet(StableDiffusionXLImg2ImgPipeline(**parts))
    ours = _quiet(CLIPConditionedImg2ImgPipeline.from_pipe(peer))
    peer.to(dtype=torch.bfloat16)  # from_pipe casts the shared modules to float32
    seen = {}

    def keep(name):
        def callback(pipe, step, timestep, tensors):
            seen[name] = tensors["add_time_ids"]
            return {}

        return callback

    settings = dict(prompt="a red circle", image=_source(), strength=0.6, **settings)
    settings["callback_on_step_end_tensor_inputs"] = ["add_time_ids"]
    expected = _run(peer, callback_on_step_end=keep("peer"), **settings)
    assert torch.equal(_run(ours, callback_on_step_end=keep("ours"), **settings), expected)
    return seen["ours"], seen["peer"]


def test_sdxl_img2img_in_bfloat16_rounds_its_time_ids_as_diffusers() -> None:
    """The time ids are made in the pipeline's dtype, as diffusers makes them: in bfloat16 a
    size of 513 is 512 (8 bits of mantissa), and float32 ids would give another image. The
    callback's `add_time_ids` are diffusers' tensor, dtype included."""
    ours, peer = _bfloat16_time_ids(
        dict(**build_sdxl().components, add_watermarker=False),
        original_size=(513, 515),
        crops_coords_top_left=(3, 259),
        target_size=(SIDE, SIDE),
    )
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, peer)
    assert ours[0, :4].tolist() == [512.0, 516.0, 3.0, 260.0]  # rounded: the reason this test exists


def test_an_sdxl_refiner_in_bfloat16_rounds_its_aesthetic_scores_as_diffusers() -> None:
    """A refiner's time ids end in the aesthetic scores, floats: made in the pipeline's dtype,
    as diffusers makes them, 6.3 and 2.7 are bfloat16's 6.3125 and 2.703125 in both rows (ids
    made as float32 and joined with bfloat16 ones would stay float32 and unrounded)."""
    parts = dict(**sdxl_refiner_components(), requires_aesthetics_score=True)
    ours, peer = _bfloat16_time_ids(parts, aesthetic_score=6.3, negative_aesthetic_score=2.7)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, peer)
    assert ours[:, -1].tolist() == [2.703125, 6.3125]  # negative row first; rounded


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_given_prompt_embeddings_set_the_batch_the_sources_must_fit_as_diffusers(task) -> None:
    """`prompt_embeds` (2 rows) and `negative_prompt_embeds` instead of text: two source images
    (and masks) give diffusers' two images; three are refused before any work, the count
    read from the embeddings."""
    peer_class, our_class = {
        "img2img": (StableDiffusionImg2ImgPipeline, CLIPConditionedImg2ImgPipeline),
        "inpaint": (StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline),
    }[task]
    peer = _quiet(
        peer_class(**sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    )
    ours = _quiet(our_class.from_pipe(peer))
    embeds, negative = peer.encode_prompt(["a red circle", "two blue squares"], "cpu", 1, True, ["dark", ""])
    images = torch.rand(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(5))
    masks = _mask().repeat(3, 1, 1, 1)

    def sources(count):
        return dict(image=images[:count], **(dict(mask_image=masks[:count]) if task == "inpaint" else {}))

    settings = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, strength=0.75)
    expected = _run(peer, **settings, **sources(2))
    assert expected.shape[0] == 2 and torch.equal(_run(ours, **settings, **sources(2)), expected)
    with pytest.raises(ValueError, match="`image` has 3 images"):
        _run(ours, **settings, **sources(3))


@pytest.mark.parametrize("custom", [dict(timesteps=[999, 600, 300]), dict(sigmas=[14.6, 6.0, 1.0, 0.0])])
def test_a_strength_that_runs_none_of_a_custom_schedule_names_the_schedule_before_any_work(custom) -> None:
    """Three steps at strength 0.3 run none; the refusal counts the schedule's steps and says to
    give more of them (raising `num_inference_steps` would change nothing)."""
    from diffusers import EulerDiscreteScheduler

    parts = sd_components()
    parts["scheduler"] = EulerDiscreteScheduler.from_config(parts["scheduler"].config)
    pipe = _quiet(CLIPConditionedImg2ImgPipeline(**parts))
    calls = []
    pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    (name,) = custom
    expected = (
        f"`strength` 0.3 runs int(3 x 0.3) = 0 of the 3 steps `{name}` sets; raise `strength` or give more `{name}`"
    )
    with pytest.raises(ValueError) as refusal:
        _run(pipe, prompt="a red circle", image=_source(), strength=0.3, num_inference_steps=None, **custom)
    assert str(refusal.value) == expected and not calls
