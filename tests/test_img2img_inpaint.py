"""CLIPConditionedImg2ImgPipeline and CLIPConditionedInpaintPipeline against diffusers'
StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline on the same tiny components:
images equal to the bit (np and pt outputs), the text-to-image pipeline's prompt features
through them, `from_pipe` without copies, and bad input refused before any work."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from tiny_pipelines import sd_components

from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline, CLIPConditionedPipeline

SIDE = 32


def peer_and_ours(peer_class, our_class, unet_in_channels: int = 4):
    """A diffusers pipeline on fresh tiny components, and ours from it (the same modules)."""
    peer = peer_class(
        **sd_components(unet_in_channels), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ours = our_class.from_pipe(peer)
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
    return peer, ours


@pytest.fixture(scope="module")
def img2img():
    return peer_and_ours(StableDiffusionImg2ImgPipeline, CLIPConditionedImg2ImgPipeline)


@pytest.fixture(scope="module", params=[9, 4], ids=["inpainting_unet", "plain_unet_blend"])
def inpaint(request):
    return peer_and_ours(StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline, request.param)


def source_image(seed: int = 3, count: int = 1) -> torch.Tensor:
    """(count, 3, 32, 32) in [0, 1]."""
    return torch.rand(count, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def box_mask(count: int = 1) -> torch.Tensor:
    """(count, 1, 32, 32): 1 (repaint) in a box, 0 (keep) elsewhere."""
    mask = torch.zeros(count, 1, SIDE, SIDE)
    mask[..., 8:24, 4:20] = 1
    return mask


def pil_pair(height: int = 48, width: int = 40) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A random RGB image and a mask with a white box, as PIL (they become channels-last
    tensors, on which the UNet's convolutions give other last bits than on contiguous ones:
    image_latents.tile_to)."""
    pixels = (np.random.RandomState(0).rand(height, width, 3) * 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[20:30, 10:22] = 255
    return PIL.Image.fromarray(pixels), PIL.Image.fromarray(mask)


def run(pipe, seed: int = 0, **kwargs):
    settings = dict(num_inference_steps=4, guidance_scale=6.0, output_type="np")
    settings.update(kwargs)
    generator = kwargs.pop("generator", None)
    if generator is None:
        settings["generator"] = torch.Generator().manual_seed(seed)
    images = pipe(**settings).images
    if settings["output_type"] == "pil":
        return np.stack([np.asarray(image) for image in images])
    return images


def _barely_red_box(height: int = 48, width: int = 40) -> PIL.Image.Image:
    """An RGB mask whose box is (1, 0, 0): not black in RGB, black in grayscale (L = 0.299)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[20:30, 10:22, 0] = 1
    mask = PIL.Image.fromarray(pixels)
    assert mask.getbbox() is not None and mask.convert("L").getbbox() is None
    return mask


def as_equal(got, expected) -> bool:
    if isinstance(expected, torch.Tensor):
        return torch.equal(got, expected)
    return got.shape == expected.shape and np.array_equal(got, expected)


# ---------------------------------------------------------------- diffusers' images, bit for bit


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt="a red circle", negative_prompt="blurry"),
        dict(prompt=["a red circle", "two blue squares"], num_images_per_prompt=2, negative_prompt=["dark", "ugly"]),
        dict(prompt="a red circle", strength=0.5, num_inference_steps=6, output_type="pt"),
        dict(prompt="a red circle", guidance_scale=1.0, strength=1.0),
        dict(prompt="a red circle", image="pil"),
        dict(prompt=["a red circle", "two blue squares"], image="pil"),
        dict(prompt="a red circle", image="numpy"),
        dict(prompt="a red circle", image="latents"),
    ],
    ids=["plain", "batch", "strength_half_pt", "no_guidance_full_strength", "pil", "pil_batch", "numpy", "latents"],
)
def test_img2img_images_equal_diffusers(img2img, kwargs) -> None:
    peer, ours = img2img
    kwargs = dict(kwargs)  # parameters are shared objects: pop from a copy
    image = kwargs.pop("image", None)
    if image == "pil":
        image = pil_pair()[0]
    elif image == "numpy":
        image = source_image().permute(0, 2, 3, 1).numpy()
    elif image == "latents":
        image = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    else:
        image = source_image()
    expected = run(peer, image=image, **kwargs)
    assert as_equal(run(ours, image=image, **kwargs), expected)


def test_img2img_with_a_generator_per_image_and_custom_sigmas_equal_diffusers() -> None:
    """One generator per output (each encodes its own copy of the image), and an Euler schedule
    of custom sigmas cut by strength (the scheduler's begin index moves)."""
    peer, ours = peer_and_ours(StableDiffusionImg2ImgPipeline, CLIPConditionedImg2ImgPipeline)
    settings = dict(prompt="a red circle", image=source_image(), num_images_per_prompt=2)
    outputs = [
        run(pipe, generator=[torch.Generator().manual_seed(i) for i in range(2)], **settings) for pipe in (peer, ours)
    ]
    assert as_equal(outputs[1], outputs[0]) and not np.array_equal(outputs[0][0], outputs[0][1])
    for pipe in (peer, ours):
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    settings.update(num_inference_steps=None, sigmas=[14.6, 6.0, 3.0, 0.8, 0.1], strength=0.6)
    assert as_equal(run(ours, **settings), run(peer, **settings))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt="a red circle", negative_prompt="blurry"),
        dict(prompt=["a red circle", "two blue squares"], num_images_per_prompt=2),
        dict(prompt="a red circle", strength=0.5, num_inference_steps=6, output_type="pt"),
        dict(prompt="a red circle", guidance_scale=1.0, strength=0.75),
        dict(prompt="a red circle", image="pil", padding_mask_crop=2, output_type="pil"),
        dict(prompt="a red circle", image="pil", padding_mask_crop=0, output_type="pil"),
        dict(prompt="a red circle", image="pil", height=24, width=32),
        dict(prompt=["a red circle", "two blue squares"], image="pil", height=24, width=32),
        dict(prompt="a red circle", masked_image_latents=True),
        dict(prompt="a red circle", latents=True, strength=0.5),
    ],
    ids=[
        "plain",
        "batch",
        "strength_half_pt",
        "no_guidance",
        "padding_mask_crop",
        "padding_mask_crop_0",  # a crop of the mask's own region, no margin
        "resized",
        "resized_pil_batch",
        "masked_image_latents",
        "latents",
    ],
)
def test_inpaint_images_equal_diffusers(inpaint, kwargs) -> None:
    """Both UNets: the inpainting one (9 channels) and a plain one with the mask blend."""
    peer, ours = inpaint
    kwargs = dict(kwargs)  # the parameter is shared by both UNets' runs: pop from a copy
    image, mask = source_image(), box_mask()
    if kwargs.pop("image", None) == "pil":
        image, mask = pil_pair()
    if kwargs.pop("masked_image_latents", None):
        kwargs["masked_image_latents"] = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(5))
    if kwargs.pop("latents", None):
        kwargs["latents"] = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(6))
    expected = run(peer, image=image, mask_image=mask, **kwargs)
    assert as_equal(run(ours, image=image, mask_image=mask, **kwargs), expected)


@pytest.mark.parametrize(
    "scheduler",
    [
        dict(name="DDIMScheduler"),  # steps_offset 0, clip_sample True: only the offset is rewritten
        dict(name="PNDMScheduler", skip_prk_steps=False),  # rewritten to skip the Runge-Kutta warm-up
    ],
    ids=["ddim_clip_sample", "pndm_prk_steps"],
)
def test_inpaint_rewrites_the_scheduler_config_as_stable_diffusion_inpaint(scheduler) -> None:
    """Each on its own fresh components (no shared scheduler that one constructor rewrites for
    both): StableDiffusionInpaintPipeline's constructor rewrites `steps_offset` and
    `skip_prk_steps`, not `clip_sample` as the text-to-image and img2img pipelines do; ours
    follows it, so the configs and the images are its."""
    import diffusers

    settings = dict(scheduler)
    scheduler_class = getattr(diffusers, settings.pop("name"))

    def components() -> dict:
        return {**sd_components(9), "scheduler": scheduler_class(**settings)}

    with pytest.warns(FutureWarning):
        peer = StableDiffusionInpaintPipeline(
            **components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    with pytest.warns(FutureWarning):
        ours = CLIPConditionedInpaintPipeline(**components())
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
    public = [
        {key: value for key, value in pipe.scheduler.config.items() if not key.startswith("_")} for pipe in (ours, peer)
    ]
    assert public[0] == public[1]
    call = dict(prompt="a red circle", image=source_image(), mask_image=box_mask(), strength=1.0)
    assert as_equal(run(ours, **call), run(peer, **call))


def test_the_mask_keeps_the_source_outside_it_with_a_plain_unet() -> None:
    """The blend's meaning, not only diffusers' numbers: outside the mask the final latents are
    the source's, so changing the prompt changes the images inside the mask only (up to what
    the tiny VAE's decoder spreads across a few pixels)."""
    _, ours = peer_and_ours(StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline, 4)
    settings = dict(image=source_image(), mask_image=box_mask(), output_type="latent")
    red, blue = run(ours, prompt="a red circle", **settings), run(ours, prompt="a blue square", **settings)
    inside = box_mask().bool().expand_as(red)
    assert torch.equal(red[~inside], blue[~inside]) and not torch.equal(red[inside], blue[inside])


# ---------------------------------------------------------------- the text-to-image prompt features


def embeds_of(pipe, prompt: str, negative: str = "", **kwargs) -> dict:
    """The prompt and negative embeddings CLIPConditionedPipeline's encode_prompt gives (on the same components)."""
    t2i = CLIPConditionedPipeline.from_pipe(pipe)
    positive, negative = t2i.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative, **kwargs)
    return dict(prompt_embeds=positive, negative_prompt_embeds=negative)


# weights, BREAK and a long prompt (3 windows): what img2img and inpaint must encode as text-to-image does
SYNTAX_PROMPTS = pytest.mark.parametrize(
    "prompt",
    [
        "a (red:1.4) circle, [blurry]",
        "a red circle BREAK two blue squares",
        ", ".join(["a red circle on a green square next to a yellow star"] * 8),
    ],
    ids=["weights", "break", "long"],
)


@SYNTAX_PROMPTS
def test_prompt_syntax_goes_through_the_text_to_image_encoding(img2img, inpaint, prompt) -> None:
    """Weights, BREAK and long prompts: img2img and inpaint give diffusers' images for the
    embeddings CLIPConditionedPipeline makes of the prompt (one encoding path), and those
    differ from the plain prompt's."""
    for (peer, ours), extra in ((img2img, {}), (inpaint, dict(mask_image=box_mask()))):
        settings = dict(image=source_image(), **extra)
        expected = run(peer, **embeds_of(ours, prompt, "ugly"), **settings)
        got = run(ours, prompt=prompt, negative_prompt="ugly", **settings)
        assert as_equal(got, expected)
        assert not np.array_equal(got, run(ours, prompt="a red circle", negative_prompt="ugly", **settings))


def test_clip_skip_and_the_cache_in_img2img(img2img) -> None:
    """`clip_skip` as in text-to-image; a second call with the same prompts runs no text encoder
    (the conditioner's cache) and gives the same images."""
    peer, ours = img2img
    settings = dict(image=source_image())
    skipped = run(ours, prompt="a red circle", negative_prompt="blurry", clip_skip=1, **settings)
    assert as_equal(skipped, run(peer, **embeds_of(ours, "a red circle", "blurry", clip_skip=1), **settings))
    assert not np.array_equal(skipped, run(ours, prompt="a red circle", negative_prompt="blurry", **settings))
    calls = []
    hook = ours.text_encoder.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        again = run(ours, prompt="a red circle", negative_prompt="blurry", clip_skip=1, **settings)
    finally:
        hook.remove()
    assert not calls and as_equal(again, skipped)


def test_textual_inversion_in_inpaint(tmp_path) -> None:
    """An embedding loaded with `load_textual_inversion` expands as in diffusers' inpaint pipeline
    (which holds the same tokenizer and text encoder, so it is loaded once, into ours)."""
    from safetensors.torch import save_file

    peer, ours = peer_and_ours(StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline, 9)
    width = peer.text_encoder.get_input_embeddings().weight.shape[1]
    save_file(
        {"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(3))}, tmp_path / "t.safetensors"
    )
    settings = dict(
        prompt="a <toy> circle", negative_prompt="a blurry <toy>", image=source_image(), mask_image=box_mask()
    )
    before = run(ours, **settings)
    ours.load_textual_inversion(tmp_path / "t.safetensors", token="<toy>")  # the peer shares the tokenizer and encoder
    after = run(ours, **settings)
    assert as_equal(after, run(peer, **settings)) and not np.array_equal(after, before)


def _scale_latents_once(pipe, step, timestep, tensors):
    return {"latents": tensors["latents"] * 0.9} if step == 0 else {}


def _interrupt_after_the_first_step(pipe, step, timestep, tensors):
    pipe._interrupt = True
    return {}


@pytest.mark.parametrize("callback", [_scale_latents_once, _interrupt_after_the_first_step])
def test_step_end_callbacks_as_in_diffusers(img2img, inpaint, callback) -> None:
    for (peer, ours), extra in ((img2img, {}), (inpaint, dict(mask_image=box_mask()))):
        settings = dict(prompt="a red circle", image=source_image(), callback_on_step_end=callback, **extra)
        expected = run(peer, **settings)
        assert as_equal(run(ours, **settings), expected)
        assert not np.array_equal(expected, run(ours, prompt="a red circle", image=source_image(), **extra))


def test_a_callback_reads_and_replaces_the_mask_and_can_stop_guidance(inpaint) -> None:
    """`mask` and `masked_image_latents` are callback tensors, per image: replacing the mask
    changes the images, and diffusers' recipe for turning guidance off mid-run (set
    `_guidance_scale` to 0, keep the conditional embeddings) works with them unchanged."""
    _, ours = inpaint
    seen = []

    def clear_the_mask(pipe, step, timestep, tensors):
        seen.append((tuple(tensors["mask"].shape), tuple(tensors["masked_image_latents"].shape)))
        return {"mask": torch.zeros_like(tensors["mask"])}

    def stop_guidance(pipe, step, timestep, tensors):
        pipe._guidance_scale = 0.0
        return {"prompt_embeds": tensors["prompt_embeds"].chunk(2)[-1]}

    settings = dict(prompt="a red circle", image=source_image(), mask_image=box_mask())
    plain = run(ours, **settings)
    cleared = run(
        ours,
        callback_on_step_end=clear_the_mask,
        callback_on_step_end_tensor_inputs=["mask", "masked_image_latents"],
        **settings,
    )
    assert seen[0] == ((1, 1, SIDE, SIDE), (1, 4, SIDE, SIDE)) and not np.array_equal(cleared, plain)
    stopped = run(
        ours, callback_on_step_end=stop_guidance, callback_on_step_end_tensor_inputs=["prompt_embeds"], **settings
    )
    assert np.isfinite(stopped).all() and not np.array_equal(stopped, plain)


def test_prompt_editing_counts_the_steps_that_run(img2img) -> None:
    """At strength 0.5 of 8 steps, 4 run; `[a red circle:two blue squares:0.5]` switches within
    them, after the third (when = 0.5 x 4; counting all 8 would not switch at all): diffusers' img2img with
    the schedule's embeddings (both texts encoded in one batch, as the pipeline encodes them)
    and a callback that swaps them there."""
    peer, ours = img2img
    edited = "[a red circle:two blue squares:0.5]"
    schedule = ours.conditioner.schedule([edited], 4, [""])
    (first, first_negative), (second, second_negative) = schedule.embeds_at(0), schedule.embeds_at(3)
    last_of_first = next(step for step in range(4) if schedule.changes_after(step))
    assert last_of_first == 2 and not torch.equal(first.tokens, second.tokens)

    def switch(pipe, step, timestep, tensors):
        if step != last_of_first:
            return {}
        return {"prompt_embeds": torch.cat([second_negative.tokens, second.tokens])}

    settings = dict(image=source_image(), strength=0.5, num_inference_steps=8)
    expected = run(
        peer,
        prompt_embeds=first.tokens,
        negative_prompt_embeds=first_negative.tokens,
        callback_on_step_end=switch,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
        **settings,
    )
    assert as_equal(run(ours, prompt=edited, **settings), expected)


# ---------------------------------------------------------------- switching tasks keeps the components


def test_from_pipe_moves_between_tasks_without_copies() -> None:
    """diffusers' SD pipeline -> our img2img -> our inpaint -> our text-to-image -> diffusers'
    img2img and inpaint: every step holds the same module objects."""
    start = StableDiffusionPipeline(
        **sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    chain = [start]
    for target in (
        CLIPConditionedImg2ImgPipeline,
        CLIPConditionedInpaintPipeline,
        CLIPConditionedPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        CLIPConditionedImg2ImgPipeline,
    ):
        chain.append(target.from_pipe(chain[-1]))
        assert type(chain[-1]) is target
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert all(getattr(pipe, name) is getattr(start, name) for pipe in chain), name


def test_from_pretrained_of_a_saved_inpainting_pipeline(tmp_path) -> None:
    """A saved StableDiffusionInpaintPipeline folder loads into ours: the same images."""
    peer, _ = peer_and_ours(StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline, 9)
    peer.save_pretrained(tmp_path)
    loaded = CLIPConditionedInpaintPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    settings = dict(prompt="a red circle", image=source_image(), mask_image=box_mask())
    assert loaded.unet.config.in_channels == 9 and as_equal(run(loaded, **settings), run(peer, **settings))


# ---------------------------------------------------------------- bad input, before any work


@pytest.mark.parametrize(
    "task, kwargs, error, message",
    [
        ("img2img", dict(strength=-0.1), ValueError, r"`strength` must be a number in \[0, 1\], got -0.1"),
        ("img2img", dict(strength=1.5), ValueError, "`strength` must be a number in"),
        ("img2img", dict(strength="0.5"), ValueError, "`strength` must be a number in"),
        ("img2img", dict(strength=0.1), ValueError, r"`strength` 0.1 runs int\(4 x 0.1\) = 0"),
        ("img2img", dict(image=None), TypeError, "`image` must be a PIL image, a numpy array, a torch tensor"),
        ("img2img", dict(image="photo.png"), TypeError, "`image` must be .* got str"),
        ("img2img", dict(image=[]), ValueError, "`image` must be .* got an empty list"),
        ("img2img", dict(image=[source_image(), np.zeros((32, 32, 3))]), TypeError, "mixes"),
        ("img2img", dict(image=torch.rand(32, 32)), ValueError, r"`image` must be \(batch, channels, H, W\)"),
        ("img2img", dict(image=source_image(count=3), prompt=["a", "b"]), ValueError, "`image` has 3 images for 2"),
        ("img2img", dict(image=torch.rand(1, 2, 32, 32)), ValueError, r"`image` has 2 channels \(axis -3\); give RGB"),
        ("img2img", dict(image=np.zeros((32, 32, 1))), ValueError, r"`image` has 1 channels \(last axis\)"),
        ("img2img", dict(image=[PIL.Image.new("RGBA", (32, 32))]), ValueError, "PIL image in mode 'RGBA'; give RGB"),
        ("img2img", dict(image=PIL.Image.new("L", (32, 32))), ValueError, "PIL image in mode 'L'"),
        ("inpaint", dict(image=PIL.Image.new("CMYK", (32, 32))), ValueError, "mode 'CMYK'"),
        ("img2img", dict(unet_in_channels=9), ValueError, "an inpainting UNet needs `mask_image`"),
        ("inpaint", dict(mask_image=None), ValueError, "an inpainting UNet needs `mask_image`"),
        (
            "inpaint",
            dict(mask_image=torch.zeros(1, 1, 16, 16)),
            ValueError,
            "`mask_image` is 16x16 pixels but `image` is 32x32",
        ),
        ("inpaint", dict(mask_image=torch.zeros(1, 3, 32, 32)), ValueError, "one-channel mask"),
        ("inpaint", dict(strength=2), ValueError, "`strength` must be a number in"),
        ("inpaint", dict(image=b"png"), TypeError, "`image` must be .* got bytes"),
        ("inpaint", dict(padding_mask_crop=4), TypeError, "`padding_mask_crop` needs `image` as one PIL image"),
        ("inpaint", dict(padding_mask_crop=4, pil=True, output_type="np"), ValueError, "output_type must be 'pil'"),
        ("inpaint", dict(padding_mask_crop=-1), ValueError, "`padding_mask_crop` must be an int >= 0"),
        (
            "inpaint",
            dict(padding_mask_crop=4, pil=True, mask_image=torch.zeros(1, 1, 48, 40)),
            TypeError,
            r"^`padding_mask_crop` needs `mask_image` as one PIL image, got Tensor$",
        ),
        (
            "inpaint",  # its pixels are black once read in grayscale, as diffusers finds the crop region
            dict(padding_mask_crop=4, pil=True, mask_image=_barely_red_box()),
            ValueError,
            r"`padding_mask_crop` crops around the pixels to repaint, but `mask_image` has none \(it is all black\)",
        ),
        (
            "inpaint",
            dict(padding_mask_crop=4, pil=True, mask_image=PIL.Image.new("L", (40, 48))),
            ValueError,
            r"^`padding_mask_crop` crops around the pixels to repaint, but `mask_image` has none \(it is all black\): "
            r"give a mask with white pixels, or leave `padding_mask_crop` None$",
        ),
        (
            "inpaint",
            dict(mask_image=np.zeros((32, 32, 3), np.float32)),
            ValueError,
            r"`mask_image` is a one-channel mask: .* got shape \(32, 32, 3\)",
        ),
        ("inpaint", dict(mask_image=box_mask(3), prompt=["a", "b"]), ValueError, "`mask_image` has 3 images for 2"),
        (
            "inpaint",
            dict(mask_image=np.ones((32, 32)) > 0),
            ValueError,
            "`mask_image` has dtype bool; give a float mask",
        ),
        ("inpaint", dict(mask_image=torch.ones(1, 1, 32, 32).bool()), ValueError, "`mask_image` has dtype torch.bool"),
        ("inpaint", dict(mask_image=torch.ones(1, 32, 32, dtype=torch.long)), ValueError, "dtype torch.int64"),
        ("inpaint", dict(mask_image=[np.ones((32, 32), np.int32)]), ValueError, "`mask_image` has dtype int32"),
        ("inpaint", dict(masked_image_latents=np.zeros((1, 4, 32, 32))), TypeError, "`masked_image_latents` must be"),
        (
            "inpaint",
            dict(masked_image_latents=torch.zeros(1, 4, 16, 16)),
            ValueError,
            r"`masked_image_latents` must have shape \(n, 4, 32, 32\) \(the latents of a 32x32 image\)",
        ),
        ("inpaint", dict(latents=torch.zeros(2, 4, 32, 32)), ValueError, r"`latents` must have shape \(1, 4, 32, 32\)"),
        ("inpaint", dict(unet_in_channels=5), ValueError, "this UNet reads 5 channels; inpainting needs 4"),
        ("inpaint", dict(prompt=None), ValueError, "exactly one of `prompt` and `prompt_embeds`"),
    ],
)
def test_bad_input_fails_before_any_work(task, kwargs, error, message, monkeypatch) -> None:
    """Each refused with an error naming the argument, before the text encoder, the VAE or the
    UNet runs."""
    kwargs = dict(kwargs)  # parameters are shared objects: pop from a copy
    channels = kwargs.pop("unet_in_channels", 9 if task == "inpaint" else 4)
    parts = sd_components(channels)
    pipe = (CLIPConditionedImg2ImgPipeline if task == "img2img" else CLIPConditionedInpaintPipeline)(**parts)
    settings = dict(prompt="a red circle", image=source_image(), num_inference_steps=4)
    if task == "inpaint":
        settings["mask_image"] = box_mask()
    if kwargs.pop("pil", False):
        settings["image"], settings["mask_image"] = pil_pair()
        settings["height"], settings["width"] = settings["image"].height, settings["image"].width
    settings.update(kwargs)
    calls = []
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.register_forward_pre_hook(lambda *args: calls.append(1))
    monkeypatch.setattr(pipe.vae, "encode", lambda *a, **k: calls.append(1))
    with pytest.raises(error, match=message):
        pipe(**settings)
    assert not calls


def _deep_components(unet_in_channels: int) -> dict:
    """SD components whose UNet halves the latents three times under a VAE of factor 2: sizes
    that are multiples of 8 but not of 2 x 2**3 = 16 make up-blocks meet skips of odd sizes."""
    from diffusers import UNet2DConditionModel
    from tiny_pipelines import WIDTH, _small_vae

    parts = sd_components(unet_in_channels)
    torch.manual_seed(0)
    parts["unet"] = UNet2DConditionModel(
        block_out_channels=(4, 8, 8, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH,
        norm_num_groups=2,
    )
    parts["vae"] = _small_vae(  # two blocks: a scale factor of 2
        block_out_channels=(4, 4),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    return parts


@pytest.mark.parametrize(
    "peer_class, our_class, unet_in_channels",
    [
        (StableDiffusionPipeline, CLIPConditionedPipeline, 4),
        (StableDiffusionImg2ImgPipeline, CLIPConditionedImg2ImgPipeline, 4),
        (StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline, 9),
    ],
    ids=["text_to_image", "img2img", "inpaint"],
)
def test_any_multiple_of_8_as_in_diffusers_however_deep_the_unet(peer_class, our_class, unet_in_channels) -> None:
    """diffusers asks a multiple of 8 of the size, not of the UNet's downsampling: 40 x 24
    through a UNet that halves 24 / 2 = 12 latents three times (12, 6, 3, 2) gives its image,
    bit for bit; for img2img the size is the source image's (a photo's, 40 x 24; inpaint, as
    diffusers', takes `height` and `width`, and resizes the photo to them)."""
    parts = _deep_components(unet_in_channels)
    peer = peer_class(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ours = our_class.from_pipe(peer)
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
    photo, mask = pil_pair(height=40, width=24)
    settings = {
        StableDiffusionPipeline: dict(height=40, width=24),
        StableDiffusionImg2ImgPipeline: dict(image=photo, strength=0.75),
        StableDiffusionInpaintPipeline: dict(image=photo, mask_image=mask, strength=0.75, height=40, width=24),
    }[peer_class]
    expected = run(peer, prompt="a red circle", negative_prompt="blurry", **settings)
    assert expected.shape == (1, 40, 24, 3)
    assert np.array_equal(run(ours, prompt="a red circle", negative_prompt="blurry", **settings), expected)
    if peer_class is StableDiffusionPipeline:
        with pytest.raises(ValueError, match=r"`height` must be a positive multiple of 2 \(the VAE's scale factor\)"):
            ours(prompt="a", height=41, width=24)


def test_a_uint8_array_of_a_picture_is_refused_where_diffusers_reads_it_as_another_image(img2img) -> None:
    """`numpy.asarray(pil_image)` is uint8 (0-255): diffusers' image processor rescales no array,
    so it read the numbers as pixels far past 1 and gave another image than the PIL image's,
    without a word. Here it is refused, naming the dtype and the rescaling."""
    peer, ours = img2img
    picture, _ = pil_pair(32, 32)
    settings = dict(prompt="a red circle", strength=0.6, num_inference_steps=4, output_type="np")

    def run(pipe, image):
        return pipe(image=image, generator=torch.Generator().manual_seed(0), **settings).images

    assert not np.array_equal(run(peer, np.asarray(picture)), run(peer, picture))
    assert np.array_equal(run(peer, np.asarray(picture, np.float32) / 255), run(peer, picture))
    with pytest.raises(ValueError, match=r"^`image` has dtype uint8; give floats in \[0, 1\]"):
        run(ours, np.asarray(picture))
    assert np.array_equal(run(ours, np.asarray(picture, np.float32) / 255), run(peer, picture))
