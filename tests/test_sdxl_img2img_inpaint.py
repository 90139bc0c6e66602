"""CLIPConditionedImg2ImgPipeline and CLIPConditionedInpaintPipeline on SDXL-class UNets against
diffusers' StableDiffusionXLImg2ImgPipeline and StableDiffusionXLInpaintPipeline on the same
tiny components: images equal to the bit (np, pt and latent outputs) over the SD tests'
argument coverage and SDXL's own (the family's default strengths, `denoising_start` and the
base + refiner hand-over, img2img's time ids, the refiner, `force_zeros_for_empty_prompt`,
the VAE's force_upcast and latent statistics), `from_pipe` without copies, and bad input
refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from test_img2img_inpaint import SYNTAX_PROMPTS, as_equal, box_mask, pil_pair, source_image
from test_sdxl_pipeline import _scale_latents_once, _stop_guidance_after_the_first_step
from tiny_pipelines import build_sdxl, sd_components, sdxl_refiner_components

from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline, CLIPConditionedPipeline

SIDE = 32


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def peer_and_ours(peer_class, our_class, parts: dict, **config):
    """A diffusers SDXL pipeline on `parts`, and ours from it (the same modules)."""
    peer = quiet(peer_class(**parts, add_watermarker=False, **config))
    return peer, quiet(our_class.from_pipe(peer))


def fresh(pair):
    """(peer, ours) with ours made anew from the peer: a fresh embedding cache, since a pooled
    vector cached from a batch of another size differs in the last bit (the bound measured in
    tests/test_sdxl_pipeline.py::test_cached_and_shared_pooled_vectors_are_bit_identical)."""
    peer, ours = pair
    return peer, quiet(type(ours).from_pipe(peer))


def base_parts(unet_in_channels: int = 4, **vae_config) -> dict:
    """A tiny SDXL base's components; `vae_config` changes the VAE's config (same weights)."""
    parts = dict(build_sdxl(unet_in_channels).components)
    if vae_config:
        vae = type(parts["vae"])(**{**parts["vae"].config, **vae_config})
        vae.load_state_dict(parts["vae"].state_dict())
        parts["vae"] = vae
    return parts


@pytest.fixture(scope="module")
def img2img():
    return peer_and_ours(StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline, base_parts())


@pytest.fixture(scope="module", params=[9, 4], ids=["inpainting_unet", "plain_unet_blend"])
def inpaint(request):
    return peer_and_ours(StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline, base_parts(request.param))


def run(pipe, seed: int = 0, **kwargs):
    settings = dict(num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(seed))
    settings.update(kwargs)
    if settings.pop("generators", False):
        settings["generator"] = [torch.Generator().manual_seed(i) for i in range(4)]
    images = pipe(**settings).images
    if settings["output_type"] == "pil":
        return np.stack([np.asarray(image) for image in images])
    return images


def source_for(kind: str | None):
    """The `image` argument a case names: a tensor in [0, 1] by default."""
    if kind == "pil":
        return pil_pair(48, 32)[0]
    if kind == "numpy":
        return source_image().permute(0, 2, 3, 1).numpy()
    if kind == "latents":
        return torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    return source_image()


STOP_GUIDANCE = dict(
    callback_on_step_end=_stop_guidance_after_the_first_step,
    callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"],
)

# ---------------------------------------------------------------- img2img, bit for bit

IMG2IMG_CALLS = {
    # the default strength (0.3) of 7 steps runs 2; zeros for the missing negative
    "default_strength": dict(prompt="a red circle", num_inference_steps=7),
    "negative_strength_pt": dict(prompt="a red circle", negative_prompt="blurry", strength=0.6, output_type="pt"),
    "batch": dict(
        prompt=["a red circle", "two blue squares"],
        negative_prompt=["dark", "ugly"],
        num_images_per_prompt=2,
        strength=0.6,
    ),
    "a_generator_per_image": dict(prompt=["a", "b"], num_images_per_prompt=2, strength=0.6, generators=True),
    "no_guidance_full_strength": dict(prompt="a red circle", guidance_scale=1.0, strength=1.0),
    "latent_output": dict(prompt="a red circle", strength=0.6, output_type="latent"),
    "pil": dict(prompt="a red circle", image="pil", strength=0.6),
    "numpy": dict(prompt="a red circle", image="numpy", strength=0.6),
    "latents_as_image": dict(prompt="a red circle", image="latents", strength=0.6),
    "latents_given": dict(prompt="a red circle", latents=True, output_type="latent"),
    # diffusers' SDXL img2img wants a step count beside custom sigmas (ours takes None too)
    "custom_sigmas": dict(prompt="a red circle", sigmas=[14.6, 6.0, 3.0, 0.8, 0.1], num_inference_steps=5),
    "micro_conditioning": dict(
        prompt="a red circle",
        strength=0.6,
        original_size=(64, 48),
        crops_coords_top_left=(4, 8),
        target_size=(32, 40),
    ),
    # img2img's negative rows: `negative_original_size` alone counts, with the positive crop
    # (text-to-image would read neither)
    "negative_micro_conditioning": dict(
        prompt="a red circle",
        negative_prompt="blurry",
        strength=0.6,
        crops_coords_top_left=(4, 8),
        negative_original_size=(16, 16),
    ),
    # a negative target size of its own (text-to-image would read it only beside the negative original size)
    "negative_target_size": dict(
        prompt="a red circle", negative_prompt="blurry", strength=0.6, negative_target_size=(24, 16)
    ),
    "denoising_end": dict(prompt="a red circle", strength=0.9, num_inference_steps=6, denoising_end=0.7),
    "denoising_start": dict(prompt="a red circle", image="latents", denoising_start=0.6, num_inference_steps=6),
    "guidance_rescale": dict(prompt="a red circle", negative_prompt="blurry", strength=0.6, guidance_rescale=0.7),
    "clip_skip_zero_negative": dict(prompt="a red circle", strength=0.6, clip_skip=1),
    "callback_changes_latents": dict(prompt="a red circle", strength=0.6, callback_on_step_end=_scale_latents_once),
    "callback_stops_guidance": dict(prompt="a red circle", negative_prompt="blurry", strength=0.6, **STOP_GUIDANCE),
    "second_prompts": dict(
        prompt="a red circle", prompt_2="at night", negative_prompt="blurry", negative_prompt_2="dark", strength=0.6
    ),
}


def img2img_arguments(kwargs: dict) -> dict:
    kwargs = dict(kwargs)  # parameters are shared objects: build from a copy
    kwargs["image"] = source_for(kwargs.get("image"))
    if kwargs.pop("latents", False):
        kwargs["latents"] = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(6))
    return kwargs


@pytest.mark.parametrize("name", list(IMG2IMG_CALLS))
def test_img2img_images_equal_stable_diffusion_xl_img2img(img2img, name) -> None:
    peer, ours = fresh(img2img)
    kwargs = img2img_arguments(IMG2IMG_CALLS[name])
    assert as_equal(run(ours, **kwargs), run(peer, **kwargs))


def test_img2img_arguments_change_the_image(img2img) -> None:
    """The cases above are not vacuous: each SDXL argument changes diffusers' image (and so ours)."""
    peer, _ = img2img
    plain = dict(prompt="a red circle", strength=0.6)
    reference = run(peer, image=source_image(), **plain)
    for change in (
        dict(original_size=(64, 48)),
        dict(negative_prompt="blurry", negative_original_size=(16, 16), negative_target_size=(24, 24)),
        dict(strength=0.9),
        dict(latents=torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(6))),
        dict(prompt_2="at night"),
    ):
        assert not as_equal(run(peer, image=source_image(), **{**plain, **change}), reference), change


def test_force_zeros_for_empty_prompt_false_in_img2img_and_inpaint() -> None:
    """`force_zeros_for_empty_prompt=False`: a missing negative is the empty prompt's, in both tasks."""
    for peer_class, our_class, extra in (
        (StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline, dict(strength=0.6)),
        (StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline, dict(mask_image=box_mask())),
    ):
        peer, ours = peer_and_ours(peer_class, our_class, base_parts(), force_zeros_for_empty_prompt=False)
        assert ours.config.force_zeros_for_empty_prompt is False
        settings = dict(prompt="a red circle", image=source_image(), **extra)
        got = run(ours, **settings)
        assert as_equal(got, run(peer, **settings))
        _, zeros = peer_and_ours(peer_class, our_class, base_parts())
        assert not as_equal(got, run(zeros, **settings))


# ---------------------------------------------------------------- inpainting, bit for bit

INPAINT_CALLS = {
    # the default strength (0.9999) of 4 steps runs 3, from the noised source
    "default_strength": dict(prompt="a red circle"),
    "negative_strength_pt": dict(prompt="a red circle", negative_prompt="blurry", strength=0.5, output_type="pt"),
    "full_strength": dict(prompt="a red circle", strength=1.0),
    "batch": dict(prompt=["a red circle", "two blue squares"], num_images_per_prompt=2),
    "no_guidance": dict(prompt="a red circle", guidance_scale=1.0, strength=0.75),
    "latent_output": dict(prompt="a red circle", output_type="latent"),
    "padding_mask_crop": dict(prompt="a red circle", image="pil", padding_mask_crop=2, output_type="pil"),
    "resized_pil": dict(prompt="a red circle", image="pil", height=32, width=48),
    "masked_image_latents": dict(prompt="a red circle", masked_image_latents=True),
    "latents_given": dict(prompt="a red circle", latents=True, strength=0.5),
    "micro_conditioning": dict(
        prompt="a red circle",
        negative_prompt="blurry",
        original_size=(64, 48),
        crops_coords_top_left=(4, 8),
        negative_original_size=(16, 16),
    ),
    "denoising_end": dict(prompt="a red circle", num_inference_steps=6, denoising_end=0.6, output_type="latent"),
    "denoising_start": dict(prompt="a red circle", num_inference_steps=6, denoising_start=0.5),
    "callback_changes_latents": dict(prompt="a red circle", callback_on_step_end=_scale_latents_once),
    "second_prompts": dict(
        prompt=["a red circle", "a"], prompt_2=["at night", "b"], negative_prompt_2="dark", negative_prompt=["x", "y"]
    ),
}


def inpaint_arguments(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    image, mask = source_image(), box_mask()
    if kwargs.pop("image", None) == "pil":
        image, mask = pil_pair(48, 32)
    kwargs.update(image=image, mask_image=mask)
    if kwargs.pop("masked_image_latents", False):
        kwargs["masked_image_latents"] = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(5))
    if kwargs.pop("latents", False):
        kwargs["latents"] = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(6))
    return kwargs


@pytest.mark.parametrize("name", list(INPAINT_CALLS))
def test_inpaint_images_equal_stable_diffusion_xl_inpaint(inpaint, name) -> None:
    """Both UNets: the inpainting one (9 channels) and a plain one with the mask blend."""
    peer, ours = fresh(inpaint)
    kwargs = inpaint_arguments(INPAINT_CALLS[name])
    assert as_equal(run(ours, **kwargs), run(peer, **kwargs))


def test_inpaint_callbacks_read_sdxls_tensor_names(inpaint) -> None:
    """SDXL inpaint's callback tensors (`add_text_embeds`, `add_time_ids`, `mask`,
    `masked_image_latents`) are ours too; mask and masked latents per image, as in our SD inpaint."""
    _, ours = inpaint
    seen = {}

    def record(pipe, step, timestep, tensors):
        seen.update({name: tuple(value.shape) for name, value in tensors.items()})
        return {}

    names = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask", "masked_image_latents"]
    run(
        ours,
        **inpaint_arguments(dict(prompt="a")),
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=names,
    )
    assert seen == {
        "latents": (1, 4, SIDE, SIDE),
        "prompt_embeds": (2, 77, 64),
        "add_text_embeds": (2, 32),
        "add_time_ids": (2, 6),
        "mask": (1, 1, SIDE, SIDE),
        "masked_image_latents": (1, 4, SIDE, SIDE),
    }


def test_stopping_guidance_in_inpaint_needs_no_change_to_the_mask(inpaint) -> None:
    """diffusers' stop-guidance recipe on ours gives diffusers' images when its callback also
    halves `mask` and `masked_image_latents`, which diffusers doubles for guidance (ours keeps
    them per image, so the recipe works unchanged)."""
    peer, ours = fresh(inpaint)

    def stop_guidance_and_halve_the_mask(pipe, step, timestep, tensors):
        returned = _stop_guidance_after_the_first_step(pipe, step, timestep, tensors)
        if step == 0:
            returned.update({name: tensors[name].chunk(2)[-1] for name in ("mask", "masked_image_latents")})
        return returned

    settings = inpaint_arguments(dict(prompt="a red circle", negative_prompt="blurry"))
    names = [*STOP_GUIDANCE["callback_on_step_end_tensor_inputs"], "mask", "masked_image_latents"]
    expected = run(
        peer,
        callback_on_step_end=stop_guidance_and_halve_the_mask,
        callback_on_step_end_tensor_inputs=names,
        **settings,
    )
    got = run(ours, **STOP_GUIDANCE, **settings)
    assert as_equal(got, expected) and not as_equal(got, run(ours, **settings))


# ---------------------------------------------------------------- the refiner and the hand-over


@pytest.fixture(scope="module")
def refiner_parts() -> dict:
    return sdxl_refiner_components()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(aesthetic_score=9.0, negative_aesthetic_score=1.0, negative_prompt="blurry", strength=0.6),
        dict(original_size=(64, 64), crops_coords_top_left=(8, 0), negative_original_size=(16, 16), strength=0.6),
    ],
    ids=["defaults", "aesthetic_scores", "sizes"],
)
def test_refiner_img2img_and_inpaint_equal_diffusers(refiner_parts, kwargs) -> None:
    """The refiner configuration: no first text encoder, 5 time ids ending in the aesthetic
    score (defaults 6.0 and 2.5; requires_aesthetics_score read from the UNet)."""
    for peer_class, our_class, extra in (
        (StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline, dict(num_inference_steps=7)),
        (StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline, dict(mask_image=box_mask())),
    ):
        peer, ours = peer_and_ours(peer_class, our_class, refiner_parts, requires_aesthetics_score=True)
        assert ours.text_encoder is None and ours.config.requires_aesthetics_score is True
        settings = dict(prompt="a red circle", image=source_image(), **{**extra, **kwargs})
        got = run(ours, **settings)
        assert as_equal(got, run(peer, **settings))
        if kwargs:
            assert not as_equal(
                got, run(ours, prompt="a red circle", image=source_image(), **extra, **kwargs_off(kwargs))
            )


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_a_refiner_without_zeros_skips_layers_for_its_empty_negative(refiner_parts, task) -> None:
    """A documented difference: a refiner with `force_zeros_for_empty_prompt=False` reads "" for
    a missing negative, and `clip_skip` skips layers for it (diffusers does not for negatives):
    our image is diffusers' fed its own `encode_prompt` of "" as a prompt, with that clip_skip."""
    peer_class, our_class, extra = (
        (StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline, {})
        if task == "img2img"
        else (StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline, dict(mask_image=box_mask()))
    )
    peer, ours = peer_and_ours(
        peer_class, our_class, refiner_parts, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False
    )

    def skipped(text: str) -> dict:
        tokens, _, pooled, _ = peer.encode_prompt(
            text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False, clip_skip=1
        )
        return dict(prompt_embeds=tokens, pooled_prompt_embeds=pooled)

    negative = {f"negative_{name}": value for name, value in skipped("").items()}
    settings = dict(image=source_image(), **extra)
    got = run(ours, prompt="a red circle", clip_skip=1, **settings)
    assert as_equal(got, run(peer, **skipped("a red circle"), **negative, **settings))
    assert not as_equal(got, run(peer, prompt="a red circle", clip_skip=1, **settings))


def kwargs_off(kwargs: dict) -> dict:
    """`kwargs` without what the case changes (keeping the strength)."""
    return {key: value for key, value in kwargs.items() if key == "strength"}


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_base_and_refiner_hand_over_as_in_diffusers(refiner_parts, task) -> None:
    """The "ensemble of experts": the base runs the first 70% (`denoising_end`, latent output),
    the refiner the rest from those latents (`denoising_start`); ours on both sides gives
    diffusers' images, and so do the two mixed (our base, diffusers' refiner)."""
    steps, split = 6, 0.7
    base_peer = quiet(StableDiffusionXLPipeline(**base_parts(), add_watermarker=False))
    base_ours = quiet(CLIPConditionedPipeline.from_pipe(base_peer))
    peer_class, our_class = (
        (StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline)
        if task == "img2img"
        else (StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline)
    )
    refiner_peer, refiner_ours = peer_and_ours(peer_class, our_class, refiner_parts, requires_aesthetics_score=True)
    extra = dict(mask_image=box_mask()) if task == "inpaint" else {}
    settings = dict(prompt="a red circle", negative_prompt="blurry", num_inference_steps=steps)
    handed = run(base_peer, denoising_end=split, output_type="latent", **settings)
    assert torch.equal(run(base_ours, denoising_end=split, output_type="latent", **settings), handed)
    expected = run(refiner_peer, image=handed, denoising_start=split, seed=1, **settings, **extra)
    assert as_equal(run(refiner_ours, image=handed, denoising_start=split, seed=1, **settings, **extra), expected)
    assert not as_equal(run(refiner_ours, image=handed, denoising_start=0.4, seed=1, **settings, **extra), expected)


# ---------------------------------------------------------------- the VAE when encoding the source


def test_a_float16_vae_encodes_in_float32_and_keeps_its_dtype() -> None:
    """force_upcast (the VAE's config) as diffusers' SDXL pipelines: the source is encoded in
    float32, so images equal diffusers' fed a float32 copy of the VAE; the VAE is float16
    again after our call (diffusers leaves it in the prompt's dtype)."""
    for peer_class, our_class, extra in (
        (StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline, dict(strength=0.6)),
        (StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline, dict(mask_image=box_mask())),
    ):
        peer, ours = peer_and_ours(peer_class, our_class, base_parts())
        settings = dict(prompt="a red circle", image=source_image(), output_type="latent", **extra)
        ours.vae.to(torch.float16)
        got = run(ours, **settings)
        assert ours.vae.dtype == torch.float16
        expected = run(peer, **settings)  # the shared VAE: diffusers upcasts it and leaves it float32
        assert peer.vae.dtype == torch.float32 and torch.equal(got, expected)
        peer.vae.register_to_config(force_upcast=False)
        peer.vae.to(torch.float16)
        with pytest.raises(RuntimeError):  # without the upcast, float32 images meet a float16 VAE
            run(ours, **settings)


def test_latent_statistics_of_the_vae_as_in_diffusers() -> None:
    """A VAE with `latents_mean` / `latents_std`: diffusers' SDXL img2img standardises the
    source's latents with them, its inpaint does not; both de-standardise before decoding."""
    statistics = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    outputs = []
    for peer_class, our_class, extra in (
        (StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline, dict(strength=0.6)),
        (StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline, dict(mask_image=box_mask())),
    ):
        peer, ours = peer_and_ours(peer_class, our_class, base_parts(**statistics))
        settings = dict(prompt="a red circle", image=source_image(), **extra)
        got = run(ours, **settings)
        assert as_equal(got, run(peer, **settings))
        _, plain = peer_and_ours(peer_class, our_class, base_parts())
        outputs.append(not as_equal(got, run(plain, **settings)))
    assert outputs == [True, True]


def test_latent_statistics_decode_in_the_pipelines_dtype_as_in_diffusers() -> None:
    """SDXL text to image in bfloat16 with a VAE that has `latents_mean` / `latents_std` (and
    no float32 upcast): the statistics are cast to the latents' dtype before the decode, as
    diffusers casts them; left float32 they would make float32 latents for a bfloat16 VAE
    (found by mutation testing: `x_decode_latents__mutmut_23`)."""
    statistics = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0], force_upcast=False)
    peer, ours = peer_and_ours(StableDiffusionXLPipeline, CLIPConditionedPipeline, base_parts(**statistics))
    peer.to(dtype=torch.bfloat16)  # from_pipe casts the shared modules to float32
    settings = dict(prompt="a red circle", output_type="pt", height=32, width=32)
    got = run(ours, **settings)
    assert got.dtype == torch.bfloat16 and torch.equal(got, run(peer, **settings))


# ---------------------------------------------------------------- the text-to-image prompt features


@SYNTAX_PROMPTS
def test_prompt_syntax_goes_through_the_conditioner(img2img, inpaint, prompt) -> None:
    """Weights, BREAK and long prompts: diffusers' images for the conditioner's embeddings
    (diffusers itself would truncate the prompt and read the syntax as text)."""
    for (peer, ours), extra in ((fresh(img2img), dict(strength=0.6)), (fresh(inpaint), dict(mask_image=box_mask()))):
        settings = dict(image=source_image(), **extra)
        embeds = ours.conditioner.pipeline_kwargs(prompt, "ugly")
        got = run(ours, prompt=prompt, negative_prompt="ugly", **settings)
        assert as_equal(got, run(peer, **embeds, **settings))
        assert not as_equal(got, run(ours, prompt="a red circle", negative_prompt="ugly", **settings))


# ---------------------------------------------------------------- switching tasks keeps the components


def test_from_pipe_moves_between_sdxl_tasks_without_copies() -> None:
    """diffusers' SDXL pipeline -> our img2img -> our inpaint -> our text-to-image -> diffusers'
    img2img and inpaint -> our img2img: every step holds the same module objects, and ours from
    diffusers' text-to-image gives the images of diffusers' own switch."""
    start = quiet(StableDiffusionXLPipeline(**base_parts(), add_watermarker=False))
    chain = [start]
    for target in (
        CLIPConditionedImg2ImgPipeline,
        CLIPConditionedInpaintPipeline,
        CLIPConditionedPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        CLIPConditionedImg2ImgPipeline,
    ):
        chain.append(quiet(target.from_pipe(chain[-1])))
        assert type(chain[-1]) is target
    for name in ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"):
        assert all(getattr(pipe, name) is getattr(start, name) for pipe in chain), name
    for our_class, peer_class, extra in (
        (CLIPConditionedImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline, dict(strength=0.6)),
        (CLIPConditionedInpaintPipeline, StableDiffusionXLInpaintPipeline, dict(mask_image=box_mask())),
    ):
        settings = dict(prompt="a red circle", image=source_image(), **extra)
        peer = quiet(peer_class.from_pipe(start))
        assert as_equal(run(quiet(our_class.from_pipe(start)), **settings), run(peer, **settings))


@pytest.mark.parametrize("saved", ["inpainting_unet", "refiner"])
def test_from_pretrained_of_saved_sdxl_folders(refiner_parts, saved, tmp_path) -> None:
    """A saved StableDiffusionXLInpaintPipeline (9-channel UNet) and a saved refiner
    StableDiffusionXLImg2ImgPipeline (no first text encoder) load into ours: the images of
    diffusers' pipeline loaded from the same folder (a loaded text encoder may pick another
    attention kernel than a constructed one, so both sides load)."""
    if saved == "refiner":
        peer_class, our_class, parts = StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline, refiner_parts
        peer = quiet(peer_class(**parts, add_watermarker=False, requires_aesthetics_score=True))
        settings = dict(prompt="a red circle", image=source_image(), strength=0.6)
    else:
        peer_class, our_class = StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline
        peer = quiet(peer_class(**base_parts(9), add_watermarker=False))
        settings = dict(prompt="a red circle", image=source_image(), mask_image=box_mask())
    peer.save_pretrained(tmp_path)
    # a refiner's folder records no first text encoder: loaded as diffusers' SDXL pipelines load it
    loaded = quiet(our_class.from_pretrained(tmp_path))
    assert loaded.config.recipe == "sdxl" and loaded.config.requires_aesthetics_score is (saved == "refiner")
    assert (loaded.text_encoder is None) is (saved == "refiner") and (loaded.tokenizer is None) is (saved == "refiner")
    assert as_equal(run(loaded, **settings), run(quiet(peer_class.from_pretrained(tmp_path)), **settings))
    # and the text-to-image class reads the same folder (the refiner reads `prompt` with its one CLIP)
    text_to_image = quiet(CLIPConditionedPipeline.from_pretrained(tmp_path))
    assert text_to_image.text_encoder_2 is not None and (text_to_image.text_encoder is None) is (saved == "refiner")


def test_a_saved_sd_folder_without_its_text_encoder_is_still_refused(tmp_path) -> None:
    """Only a folder that records the first text encoder as absent loads without it: a Stable
    Diffusion folder whose text_encoder/ is missing stays an error (diffusers' own, naming the weights file it did not find)."""
    import shutil

    quiet(CLIPConditionedImg2ImgPipeline(**sd_components())).save_pretrained(tmp_path)
    shutil.rmtree(tmp_path / "text_encoder")
    with pytest.raises(OSError, match="no file named model.safetensors"):
        CLIPConditionedImg2ImgPipeline.from_pretrained(tmp_path)


# ---------------------------------------------------------------- bad input, before any work


def _pipe(task: str, family: str, unet_in_channels: int = 4):
    """Ours for `task` on fresh tiny components of `family` ("sd", "sdxl" or "refiner")."""
    our_class = CLIPConditionedImg2ImgPipeline if task == "img2img" else CLIPConditionedInpaintPipeline
    if family == "sd":
        return our_class(**sd_components(unet_in_channels))
    if family == "refiner":
        return our_class(**sdxl_refiner_components())
    return our_class(**base_parts(unet_in_channels))


@pytest.mark.parametrize(
    "task, family, kwargs, message",
    [
        ("img2img", "sd", dict(denoising_start=0.5), "`denoising_start` is SDXL's"),
        ("inpaint", "sd", dict(denoising_start=0.5), "`denoising_start` is SDXL's"),
        ("img2img", "sd", dict(aesthetic_score=6.0), "`aesthetic_score` is SDXL's micro-conditioning"),
        ("inpaint", "sd", dict(negative_aesthetic_score=2.5), "`negative_aesthetic_score` is SDXL's"),
        ("img2img", "sd", dict(latents=torch.zeros(1, 4, SIDE, SIDE)), "`latents` .* is SDXL img2img's"),
        ("img2img", "sdxl", dict(denoising_start=0.0), r"`denoising_start` must be a fraction .* \(0, 1\), got 0.0"),
        ("img2img", "sdxl", dict(denoising_start=1.0), "`denoising_start` must be a fraction"),
        ("inpaint", "sdxl", dict(denoising_start="0.5"), "`denoising_start` must be a fraction"),
        ("img2img", "sdxl", dict(denoising_start=0.5, strength=0.3), "give `strength` or `denoising_start`"),
        ("inpaint", "sdxl", dict(denoising_start=0.5, strength=1.0), "give `strength` or `denoising_start`"),
        ("img2img", "sdxl", dict(denoising_start=0.6, denoising_end=0.6), "must be below `denoising_end` 0.6"),
        ("inpaint", "sdxl", dict(denoising_start=0.7, denoising_end=0.4), "must be below `denoising_end` 0.4"),
        ("img2img", "sdxl", dict(denoising_start=0.9999), "leaves none of the 4 steps"),
        # 4 Euler steps at 999, 666, 333, 0: the call's first step is below where `denoising_end` stops
        ("img2img", "sdxl", dict(strength=0.5, denoising_end=0.5), "`denoising_end` 0.5 leaves none of the 4 steps"),
        ("inpaint", "sdxl", dict(denoising_start=0.3, denoising_end=0.32), "`denoising_end` 0.32 leaves none"),
        ("img2img", "sdxl", dict(strength=0.1), r"`strength` 0.1 runs int\(4 x 0.1\) = 0"),
        (
            "img2img",
            "sdxl",
            dict(latents=torch.zeros(1, 4, 2, 2)),
            r"`latents` must have shape \(n, 4, 32, 32\) \(the image's size\), got \(1, 4, 2, 2\)",
        ),
        ("img2img", "sdxl", dict(target_size=(32, 32), refiner=True), "`target_size` is read by a base model"),
        ("img2img", "sdxl", dict(aesthetic_score=7.0), "`aesthetic_score` is read by a refiner"),
        (
            "img2img",
            "sdxl",
            dict(aesthetic_score=float("nan"), refiner=True),
            r"^`aesthetic_score` must be a finite number, got nan$",
        ),
        (
            "img2img",
            "sdxl",
            dict(negative_aesthetic_score="2.5", refiner=True),
            r"^`negative_aesthetic_score` must be a finite number, got '2.5'$",
        ),
        (
            "img2img",
            "sd",
            dict(crops_coords_top_left=(0, 0)),
            r"^`crops_coords_top_left` is SDXL's micro-conditioning, but this pipeline's UNet reads no time ids "
            r"\(its addition_embed_type is not 'text_time'\)$",
        ),
        ("inpaint", "sdxl", dict(mask_image=torch.zeros(1, 1, 16, 16)), "`mask_image` is 16x16 pixels but `image`"),
        ("inpaint", "sdxl", dict(mask_image=None), "an inpainting UNet needs `mask_image`"),
        ("img2img", "sdxl", dict(unet_in_channels=9), "an inpainting UNet needs `mask_image`"),
        (
            "inpaint",
            "sdxl",
            dict(image=torch.zeros(1, 4, SIDE, SIDE)),
            "with `image` as latents give `masked_image_latents`",
        ),
        (
            "inpaint",
            "sdxl",
            dict(denoising_start=0.5, latents=torch.zeros(1, 4, SIDE, SIDE)),
            "`latents` and `denoising_start` cannot go together",
        ),
        ("inpaint", "sdxl", dict(padding_mask_crop=2), "`padding_mask_crop` needs `image` as one PIL image"),
        ("img2img", "sdxl", dict(original_size=(32,)), "`original_size` must be a pair of ints"),
        (
            "inpaint",
            "sdxl",
            dict(
                callback_on_step_end=_stop_guidance_after_the_first_step,
                callback_on_step_end_tensor_inputs=["time_ids"],
            ),
            "choose from",
        ),
    ],
)
def test_bad_input_fails_before_any_work(task, family, kwargs, message, monkeypatch) -> None:
    """Each refused with an error naming the argument, before a text encoder, the VAE or the
    UNet runs."""
    kwargs = dict(kwargs)  # parameters are shared objects: pop from a copy
    channels = kwargs.pop("unet_in_channels", 9 if task == "inpaint" else 4)
    pipe = _pipe(task, "refiner" if kwargs.pop("refiner", False) else family, channels)
    settings = dict(prompt="a red circle", image=source_image(), num_inference_steps=4)
    if task == "inpaint":
        settings["mask_image"] = box_mask()
    settings.update(kwargs)
    calls = []
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.register_forward_pre_hook(lambda *args: calls.append(1))
    monkeypatch.setattr(pipe.vae, "encode", lambda *a, **k: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(**settings)
    assert not calls


@pytest.mark.parametrize("task", ["text_to_image", "img2img", "inpaint"])
def test_a_callback_reads_the_calls_settings_as_in_diffusers(img2img, task) -> None:
    """`pipe.clip_skip` inside a step callback is the running call's (diffusers' SDXL pipelines
    set it per call), and SDXL img2img and inpaint also expose `denoising_start`; outside a
    call `clip_skip` is the pipeline's own."""
    if task == "text_to_image":
        pair = peer_and_ours(StableDiffusionXLPipeline, CLIPConditionedPipeline, base_parts())
        arguments = {}
    elif task == "img2img":
        pair, arguments = img2img, dict(image=source_image(), denoising_start=0.5)
    else:
        pair = peer_and_ours(StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline, base_parts())
        arguments = dict(image=source_image(), mask_image=box_mask(), denoising_start=0.5)
    names = ["clip_skip", "denoising_end"] + (["denoising_start"] if arguments else [])

    def settings_seen(pipe) -> dict:
        seen = {}

        def record(pipe, step, timestep, tensors):
            seen.update({name: getattr(pipe, name) for name in names})
            return {}

        run(pipe, prompt="a red circle", clip_skip=1, output_type="latent", callback_on_step_end=record, **arguments)
        return seen

    peer, ours = pair
    assert (
        settings_seen(ours)
        == settings_seen(peer)
        == {
            "clip_skip": 1,
            "denoising_end": None,
            **({"denoising_start": 0.5} if arguments else {}),
        }
    )
    assert quiet(type(ours).from_pipe(peer, clip_skip=2)).clip_skip == 2
