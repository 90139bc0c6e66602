"""The call arguments of `CLIPConditionedPipeline` and its img2img / inpaint siblings under values
diffusers takes or fails on deep inside (probe11_api): numpy numbers and 0-d tensors read as
the Python numbers they stand for (images equal diffusers' with the same numpy values),
`clip_skip` checked whatever was called before and wherever it is given (the constructor,
`from_pipe`, `from_pretrained`), given embeddings of the wrong width or length, a generator
that is not one, `encode_prompt`'s checks, a step callback's return and tensor names, and a
pipeline without a UNet: each a clear error before any work. Tiny components, no downloads."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from forward_counter import ForwardCounter
from tiny_pipelines import build_sd, build_sdxl, sd_components, sdxl_refiner_components

from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline, CLIPConditionedPipeline


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd():
    """(diffusers' StableDiffusionPipeline, ours from it: the same modules)."""
    peer = quiet(build_sd())
    return peer, quiet(CLIPConditionedPipeline.from_pipe(peer))


@pytest.fixture(scope="module")
def sdxl():
    peer = quiet(build_sdxl())
    return peer, quiet(CLIPConditionedPipeline.from_pipe(peer))


def images(pipe, **kwargs) -> np.ndarray:
    settings = dict(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    settings.update(kwargs)
    return pipe(**settings).images


def work_counters(pipe) -> list[ForwardCounter]:
    return [ForwardCounter(getattr(pipe, name)) for name in ("text_encoder", "unet") if getattr(pipe, name, None)]


def no_work(counters: list[ForwardCounter]) -> bool:
    return all(counter.calls == 0 for counter in counters)


# ---------------------------------------------------------------------------- numpy numbers


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_images_per_prompt=np.int64(2)),
        dict(num_inference_steps=np.int64(3)),
        dict(num_inference_steps=np.int32(3)),
        dict(guidance_scale=np.float32(6.3)),
        dict(guidance_scale=np.int64(6)),
        dict(guidance_scale=torch.tensor(6.0)),
        dict(guidance_rescale=np.float32(0.3)),
        dict(height=np.int64(40), width=np.int64(32)),
        dict(eta=np.float32(0.6)),  # DDIM's
        dict(eta=torch.tensor(0.6)),
    ],
    ids=lambda kwargs: ",".join(f"{name}={type(value).__name__}" for name, value in kwargs.items()),
)
def test_numpy_numbers_give_diffusers_images(sd, kwargs) -> None:
    peer, ours = sd
    expected = images(peer, prompt="a red fox", negative_prompt="blurry", **kwargs)
    assert np.array_equal(images(ours, prompt="a red fox", negative_prompt="blurry", **kwargs), expected)


def test_numpy_denoising_end_stops_where_the_float_it_holds_does(sdxl) -> None:
    """diffusers' SDXL reads `denoising_end` only when `isinstance(denoising_end, float)`, so it
    runs the whole schedule for an np.float32 (silently); the reference is diffusers with the
    same value as a float (np.float64 is one)."""
    peer, ours = sdxl
    settings = dict(prompt="a red fox", num_inference_steps=4, output_type="latent")
    expected = images(peer, denoising_end=np.float64(0.5), **settings)
    assert not torch.equal(expected, images(peer, **settings))  # it stops early
    assert torch.equal(images(ours, denoising_end=np.float32(0.5), **settings), expected)


def test_numpy_denoising_start_starts_where_the_float_it_holds_does() -> None:
    """As `denoising_end`: diffusers' SDXL img2img reads `denoising_start` only as a float."""
    peer = quiet(StableDiffusionXLImg2ImgPipeline(**build_sdxl().components))
    ours = quiet(CLIPConditionedImg2ImgPipeline.from_pipe(peer))
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    settings = dict(prompt="a red fox", image=source, num_inference_steps=4, output_type="latent")
    expected = images(peer, denoising_start=np.float64(0.5), **settings)
    assert torch.equal(images(ours, denoising_start=np.float32(0.5), **settings), expected)


def test_numpy_strength_and_padding_give_img2img_and_inpaint_images() -> None:
    """np.float32(0.7) x 10 steps is 7.0 in float32, as diffusers multiplies it, where the float it
    holds (0.699999988) gives 6.99 and one step fewer; tensor(0.9) likewise 9, not 8."""
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    img2img_peer = quiet(
        StableDiffusionImg2ImgPipeline(
            **sd_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    )
    img2img = quiet(CLIPConditionedImg2ImgPipeline.from_pipe(img2img_peer))
    settings = dict(prompt="a red fox", image=source, num_inference_steps=10, strength=np.float32(0.7))
    assert np.array_equal(images(img2img, **settings), images(img2img_peer, **settings))
    inpaint_peer = quiet(StableDiffusionInpaintPipeline(**img2img_peer.components))
    inpaint = quiet(CLIPConditionedInpaintPipeline.from_pipe(inpaint_peer))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1
    settings = dict(settings, mask_image=mask, strength=torch.tensor(0.9))
    assert np.array_equal(images(inpaint, **settings), images(inpaint_peer, **settings))


def test_numpy_aesthetic_scores_give_the_refiners_images() -> None:
    peer = quiet(StableDiffusionXLImg2ImgPipeline(**sdxl_refiner_components(), requires_aesthetics_score=True))
    ours = quiet(CLIPConditionedImg2ImgPipeline.from_pipe(peer))
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    settings = dict(
        prompt="a red fox",
        image=source,
        num_inference_steps=4,
        strength=0.5,
        aesthetic_score=np.float32(7.0),
        negative_aesthetic_score=np.int64(2),
    )
    assert np.array_equal(images(ours, **settings), images(peer, **settings))


def test_encode_prompt_takes_a_numpy_count_as_diffusers_does(sd) -> None:
    peer, ours = sd
    with torch.no_grad():
        expected = peer.encode_prompt("a red fox", "cpu", np.int64(2), True, "blurry")
    for actual, wanted in zip(ours.encode_prompt("a red fox", "cpu", np.int64(2), True, "blurry"), expected):
        assert torch.equal(actual, wanted)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(device=object()), r"^`device` must be a torch.device, a device string"),
        (dict(device="gpu"), r"^`device` must be a torch.device, a device string"),
        (dict(do_classifier_free_guidance="False"), r"^`do_classifier_free_guidance` must be a bool, got str"),
        (dict(do_classifier_free_guidance=torch.ones(2)), r"^`do_classifier_free_guidance` must be a bool, got Tensor"),
    ],
    ids=["object_device", "unknown_device", "string_flag", "tensor_flag"],
)
def test_encode_prompt_refuses_a_device_or_flag_it_cannot_read_before_encoding(sd, kwargs, message) -> None:
    """diffusers encodes first, then fails at `.to(device)` (or reads "False" as true, or asks
    a tensor its truth); ours refuses before the text encoder runs."""
    _, ours = sd
    settings = dict(prompt="a red fox", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    settings.update(kwargs)
    counter = ForwardCounter(ours.text_encoder)
    try:
        with pytest.raises(TypeError, match=message):
            ours.encode_prompt(**settings)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


# ---------------------------------------------------------------------------- clip_skip


@pytest.mark.parametrize("value", [1.0, True])
def test_clip_skip_of_another_type_is_refused_whatever_was_called_before(sd, value) -> None:
    """1.0 and True equal 1 as dict keys: after a call with clip_skip=1 they were taken."""
    _, ours = sd
    ours.encode_prompt("a red fox", "cpu", 1, False, clip_skip=1)
    message = f"`clip_skip` must be an int or None, got {type(value).__name__} {value!r}"
    with pytest.raises(TypeError, match=re.escape(message)):
        ours.encode_prompt("a red fox", "cpu", 1, False, clip_skip=value)
    with pytest.raises(TypeError, match=re.escape(message)):
        images(ours, prompt="a red fox", clip_skip=value)


def test_a_numpy_clip_skip_is_the_int_it_holds(sd) -> None:
    _, ours = sd
    expected = ours.encode_prompt("a cat on a mat", "cpu", 1, False, clip_skip=1)[0]
    assert torch.equal(ours.encode_prompt("a cat on a mat", "cpu", 1, False, clip_skip=np.int64(1))[0], expected)


def test_from_pipe_saves_a_numpy_clip_skip_as_an_int(sd, tmp_path) -> None:
    """A numpy int in the config broke `save_pretrained` (0-byte model_index.json)."""
    peer, _ = sd
    pipe = CLIPConditionedPipeline.from_pipe(peer, clip_skip=np.int64(1))
    assert type(pipe.config.clip_skip) is int and pipe.config.clip_skip == 1
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["clip_skip"] == 1
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "pipe", clip_skip=np.int64(0))
    assert type(loaded.config.clip_skip) is int and loaded.config.clip_skip == 0


@pytest.mark.parametrize(
    "value, error, message",
    [
        ("1", TypeError, "`clip_skip` must be an int or None, got str '1'"),
        (1.0, TypeError, "`clip_skip` must be an int or None, got float 1.0"),
        (99, ValueError, "`clip_skip` must be between 0 and "),
        (-1, ValueError, "`clip_skip` must be between 0 and "),
    ],
)
def test_from_pipe_refuses_a_clip_skip_every_call_would_refuse(sd, value, error, message) -> None:
    peer, _ = sd
    with pytest.raises(error, match=re.escape(message)):
        CLIPConditionedPipeline.from_pipe(peer, clip_skip=value)


def test_sdxl_clip_skip_is_checked_against_both_clips(sdxl) -> None:
    peer, _ = sdxl
    layers = min(peer.text_encoder.config.num_hidden_layers, peer.text_encoder_2.config.num_hidden_layers)
    with pytest.raises(ValueError, match=f"`clip_skip` must be between 0 and {layers - 2} for recipe 'sdxl'"):
        CLIPConditionedPipeline.from_pipe(peer, clip_skip=layers - 1)
    assert CLIPConditionedPipeline.from_pipe(peer, clip_skip=layers - 2).config.clip_skip == layers - 2


def test_a_pipeline_without_text_encoder_keeps_its_clip_skip(sd) -> None:
    """Loaded for given embeddings, it has no CLIP to check `clip_skip` against."""
    peer, _ = sd
    pipe = CLIPConditionedPipeline.from_pipe(peer, text_encoder=None, tokenizer=None, clip_skip=1)
    assert pipe.config.clip_skip == 1


# ---------------------------------------------------------------------------- given embeddings


@pytest.mark.parametrize("with_negative", [True, False])
def test_prompt_embeds_of_another_width_are_refused_before_any_work(sd, with_negative) -> None:
    _, ours = sd
    counters = work_counters(ours)
    embeds = torch.zeros(1, 77, 16)
    negative = dict(negative_prompt_embeds=torch.zeros(1, 77, 16)) if with_negative else {}
    message = "`prompt_embeds` is 16 wide but unet.config.cross_attention_dim is 32"
    with pytest.raises(ValueError, match=re.escape(message)):
        images(ours, prompt_embeds=embeds, **negative)
    assert no_work(counters)


def test_negative_embeds_of_another_width_are_refused_by_name_before_any_work(sd) -> None:
    _, ours = sd
    counters = work_counters(ours)
    message = "`negative_prompt_embeds` is 16 wide but unet.config.cross_attention_dim is 32"
    with pytest.raises(ValueError, match=re.escape(message)):
        images(ours, prompt="a small brown owl", negative_prompt_embeds=torch.zeros(1, 77, 16))
    assert no_work(counters)


@pytest.mark.parametrize("negative_prompt", ["blurry", None])
def test_prompt_embeds_of_part_of_a_window_beside_a_text_negative_are_refused_before_any_work(
    sd, negative_prompt
) -> None:
    """diffusers encodes the negative to `prompt_embeds.shape[1]` tokens; the conditioner's
    text is whole 77-token windows, so that is refused up front (it was refused after encoding,
    with a message about prompts longer than 77 tokens)."""
    _, ours = sd
    counters = work_counters(ours)
    embeds = torch.zeros(1, 20, 32)
    negative = "the negative prompt" if negative_prompt is not None else 'the missing negative prompt (read as "")'
    message = (
        f"`prompt_embeds` has 20 tokens, not a whole number of 77-token CLIP windows, and {negative} would be "
        "encoded as text, which gives whole windows: its embeddings could not go beside these. Give "
        "`negative_prompt_embeds` of the same shape, or encode both with "
        "`pipe.conditioner.pipeline_kwargs(prompt, negative_prompt)`"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        images(ours, prompt_embeds=embeds, negative_prompt=negative_prompt)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ours.encode_prompt(None, "cpu", 1, True, negative_prompt, prompt_embeds=embeds)
    assert no_work(counters)
    ours.encode_prompt(None, "cpu", 1, False, prompt_embeds=embeds)  # no negative to encode: taken
    # nor with the negative given as embeddings of the same length, under guidance
    taken = ours.encode_prompt(None, "cpu", 1, True, prompt_embeds=embeds, negative_prompt_embeds=embeds + 1)
    assert torch.equal(taken[1], embeds + 1)


def test_sdxl_zero_negative_beside_short_prompt_embeds_is_taken(sdxl) -> None:
    """With `force_zeros_for_empty_prompt` a missing negative is zeros of the given shape, as in SDXL."""
    peer, ours = sdxl
    with torch.no_grad():
        embeds, _, pooled, _ = peer.encode_prompt("a red fox", device="cpu", do_classifier_free_guidance=False)
    settings = dict(prompt_embeds=embeds[:, :20], pooled_prompt_embeds=pooled, output_type="latent")
    assert torch.equal(images(ours, **settings), images(peer, **settings))


def test_prompt_embeds_of_more_windows_than_a_text_negative_say_how_to_encode_both(sd) -> None:
    _, ours = sd
    embeds = ours.conditioner.encode("a red fox " * 30).tokens  # two windows
    assert embeds.shape[1] == 154
    message = (
        "`prompt_embeds` (1, 154, 32) and the negative prompt's embeddings (1, 77, 32), encoded as text by this "
        "pipeline's encoders, differ in shape (a text longer than one CLIP window takes more windows); give "
        "`negative_prompt_embeds` of the same shape, or encode both with "
        "`pipe.conditioner.pipeline_kwargs(prompt, negative_prompt)`, which pads them to one length"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        images(ours, prompt_embeds=embeds, negative_prompt="blurry")


# ---------------------------------------------------------------------------- other arguments


@pytest.mark.parametrize(
    "generator, hint",
    [
        (0, "; for a seed pass torch.Generator().manual_seed(0)"),
        (np.int64(7), "; for a seed pass torch.Generator().manual_seed(7)"),
        ((torch.Generator(),), "; give a list, one torch.Generator per image"),
        (np.random.default_rng(0), ""),
        ([torch.Generator(), 1], ""),
    ],
    ids=["int", "numpy_int", "tuple", "numpy_rng", "list_with_an_int"],
)
def test_a_generator_that_is_not_one_is_refused_before_any_work(sd, generator, hint) -> None:
    _, ours = sd
    counters = work_counters(ours)
    message = f"`generator` must be None, a torch.Generator or a list of them, got {type(generator).__name__}{hint}"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        ours(prompt="a green owl at dusk", num_inference_steps=2, output_type="np", generator=generator)
    assert no_work(counters)


def test_encode_prompt_checks_its_count_and_prompt_as_the_call_does(sd) -> None:
    _, ours = sd
    for count in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=re.escape(f"`num_images_per_prompt` must be an int >= 1, got {count!r}")):
            ours.encode_prompt("a red fox", "cpu", count, True)
    with pytest.raises(ValueError, match="give exactly one of `prompt` and `prompt_embeds`"):
        ours.encode_prompt(None, "cpu", 1, True)
    with pytest.raises(ValueError, match="give exactly one of `prompt` and `prompt_embeds`"):
        ours.encode_prompt("a red fox", "cpu", 1, True, prompt_embeds=torch.zeros(1, 77, 32))


@pytest.mark.parametrize("returned", [None, ["latents"]])
def test_a_callback_that_returns_no_dict_is_named(sd, returned) -> None:
    _, ours = sd
    message = "`callback_on_step_end` must return a dict of the tensors it replaces (by name; {} for none), got "
    with pytest.raises(TypeError, match=re.escape(message + type(returned).__name__)):
        images(ours, prompt="a red fox", callback_on_step_end=lambda *_: returned)


def test_callback_tensor_names_as_a_string_are_refused_before_any_work(sd) -> None:
    _, ours = sd
    counters = work_counters(ours)
    message = "`callback_on_step_end_tensor_inputs` must be a list of tensor names such as ['latents'], got 'latents'"
    with pytest.raises(TypeError, match=re.escape(message)):
        images(
            ours,
            prompt="a blue heron",
            callback_on_step_end=lambda pipe, step, t, tensors: tensors,
            callback_on_step_end_tensor_inputs="latents",
        )
    assert no_work(counters)


@pytest.mark.parametrize(
    "pipeline_class, extra",
    [
        (CLIPConditionedPipeline, {}),
        (CLIPConditionedImg2ImgPipeline, dict(image=torch.rand(1, 3, 32, 32))),
        (CLIPConditionedInpaintPipeline, dict(image=torch.rand(1, 3, 32, 32), mask_image=torch.ones(1, 1, 32, 32))),
    ],
)
def test_a_call_without_a_unet_says_so_before_any_work(sd, pipeline_class, extra) -> None:
    peer, _ = sd
    pipe = quiet(pipeline_class.from_pipe(peer, unet=None))
    counters = work_counters(pipe)
    with pytest.raises(ValueError, match=re.escape("this pipeline has no `unet`, which a call denoises with")):
        images(pipe, prompt="a grey wolf in snow", **extra)
    assert no_work(counters)
    assert pipe.encode_prompt("a red fox", "cpu", 1, False)[0].shape == (1, 77, 32)  # encoding needs no UNet


def test_a_numpy_guidance_scale_gives_sdxl_latents(sdxl) -> None:
    """An SDXL call with an np.float32 guidance scale (and a negative prompt as text) equals diffusers'."""
    peer, ours = sdxl
    assert isinstance(peer, StableDiffusionXLPipeline)
    settings = dict(prompt="a red fox", negative_prompt="blurry", guidance_scale=np.float32(4.5), output_type="latent")
    assert torch.equal(images(ours, **settings), images(peer, **settings))
