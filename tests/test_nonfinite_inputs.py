"""Given tensors that hold NaN or infinity (prompt embeddings, pooled ones, starting latents,
IP-Adapter image embeddings; img2img's and inpainting's source image, mask and the masked
latents an inpainting UNet reads) are refused before the UNet runs, naming the argument
(pipelines/scheduler_guards.py `check_finite_inputs`); diffusers' pipelines sampled the whole
schedule and returned NaN images. `non_finite="warn"` lets them through, and negatives that
are not read (no guidance) are not looked at."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from test_ip_adapter import adapter_folder, loaded, parts  # noqa: F401 (fixtures)

from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline, CLIPConditionedPipeline
from clipcond.pipelines.scheduler_guards import (
    NonFiniteLatents,
    ancestral_split_is_negative,
    check_finite_inputs,
    check_finite_latents,
    guard_timesteps,
)

NAN = float("nan")


def _with_nan(tensor: torch.Tensor, value: float = NAN) -> torch.Tensor:
    poisoned = tensor.clone()
    poisoned.view(-1)[-1] = value  # one value: the last one, in a padding row for the embeddings
    return poisoned


def _refused_before_the_unet(pipe, monkeypatch, argument: str, **kwargs) -> None:
    calls = []
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: calls.append(1))
    message = rf"^`{argument}` holds NaN or infinite values: every image would come out NaN \(black\); pass "
    with pytest.raises(ValueError, match=message + r"non_finite='warn' to sample anyway$"):
        pipe(num_inference_steps=2, output_type="np", **kwargs)
    assert not calls


def _embeds(pipe, sdxl: bool = False) -> dict:
    encoded = pipe.encode_prompt(
        "a red circle", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    names = ["prompt_embeds", "negative_prompt_embeds"]
    if sdxl:
        names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    return dict(zip(names, encoded, strict=True))


@pytest.mark.parametrize("argument", ["prompt_embeds", "negative_prompt_embeds", "latents"])
def test_nan_in_a_given_tensor_is_refused_where_diffusers_samples_nan_images(sd_pipe, argument, monkeypatch) -> None:
    ours = CLIPConditionedPipeline.from_pipe(sd_pipe)
    given = _embeds(ours)
    given["latents"] = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    given[argument] = _with_nan(given[argument], float("inf") if argument == "latents" else NAN)
    peer = StableDiffusionPipeline(**copy.deepcopy(sd_pipe.components))
    peer.set_progress_bar_config(disable=True)
    with np.errstate(invalid="ignore"):
        assert np.isnan(peer(num_inference_steps=2, output_type="np", **given).images).all()
    _refused_before_the_unet(ours, monkeypatch, argument, **given)


def test_non_finite_warn_lets_them_through_and_unread_negatives_are_not_looked_at(sd_pipe, caplog) -> None:
    ours = CLIPConditionedPipeline.from_pipe(sd_pipe)
    ours.set_progress_bar_config(disable=True)
    given = _embeds(ours)
    bad = {**given, "prompt_embeds": _with_nan(given["prompt_embeds"])}
    with caplog.at_level("WARNING"), np.errstate(invalid="ignore"):
        images = ours(num_inference_steps=2, output_type="np", non_finite="warn", **bad).images
    assert np.isnan(images).all() and "contain NaN or infinite values" in caplog.text
    unread = {**given, "negative_prompt_embeds": _with_nan(given["negative_prompt_embeds"])}
    settings = dict(num_inference_steps=2, output_type="np", guidance_scale=1.0)
    without = ours(generator=torch.Generator().manual_seed(0), prompt_embeds=given["prompt_embeds"], **settings)
    with_unread = ours(generator=torch.Generator().manual_seed(0), **unread, **settings)
    assert np.isfinite(with_unread.images).all() and np.array_equal(with_unread.images, without.images)


@pytest.mark.parametrize("argument", ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"])
def test_nan_in_sdxls_pooled_embeddings_is_refused(sdxl_pipe, argument, monkeypatch) -> None:
    ours = CLIPConditionedPipeline.from_pipe(sdxl_pipe)
    given = _embeds(ours, sdxl=True)
    given[argument] = _with_nan(given[argument])
    peer = StableDiffusionXLPipeline(**copy.deepcopy(sdxl_pipe.components))
    peer.set_progress_bar_config(disable=True)
    with np.errstate(invalid="ignore"):
        assert np.isnan(peer(num_inference_steps=2, output_type="np", **given).images).all()
    _refused_before_the_unet(ours, monkeypatch, argument, **given)


def test_nan_in_ip_adapter_image_embeds_is_refused(parts, adapter_folder, monkeypatch) -> None:  # noqa: F811
    pipe = loaded(CLIPConditionedPipeline, parts, adapter_folder)
    embeds = [_with_nan(torch.zeros(2, 1, 32))]
    _refused_before_the_unet(pipe, monkeypatch, "ip_adapter_image_embeds", prompt="a", ip_adapter_image_embeds=embeds)


def test_check_finite_inputs_reads_tensors_and_lists_and_skips_the_rest() -> None:
    check_finite_inputs({"a": None, "b": torch.zeros(2), "c": [torch.ones(1)], "d": torch.tensor([1, 2])}, "raise")
    check_finite_inputs({"a": torch.tensor([NAN])}, non_finite="warn")
    with pytest.raises(ValueError, match=r"^`c` holds NaN"):
        check_finite_inputs({"b": torch.zeros(2), "c": [torch.ones(1), torch.tensor([float("-inf")])]}, "raise")
    with pytest.raises(ValueError, match=r"^`e` holds NaN"):  # a numpy array (an image)
        check_finite_inputs({"e": [np.zeros((2, 2, 3), np.float32), np.full((2, 2, 3), NAN, np.float32)]}, "raise")
    check_finite_inputs({"e": np.zeros((2, 2), np.uint8)}, "raise")


# ---------------------------------------------------------------- img2img and inpainting


def _source(value: float | None = None) -> torch.Tensor:
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return image if value is None else _with_nan(image, value)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(0, 2, 3, 1).numpy()


def test_a_source_image_with_nan_is_refused_before_the_unet(sd_pipe, monkeypatch) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    ours = CLIPConditionedImg2ImgPipeline.from_pipe(sd_pipe)
    peer = StableDiffusionImg2ImgPipeline(**copy.deepcopy(sd_pipe.components))
    peer.set_progress_bar_config(disable=True)
    with np.errstate(invalid="ignore"):
        assert np.isnan(peer(prompt="a", image=_source(NAN), num_inference_steps=2, output_type="np").images).all()
    _refused_before_the_unet(ours, monkeypatch, "image", prompt="a", image=_source(NAN))
    two = [_hwc(_source()), _hwc(_source(NAN))]  # a list of arrays, one per prompt
    _refused_before_the_unet(ours, monkeypatch, "image", prompt=["a", "b"], image=two)


@pytest.mark.parametrize("unet_channels", [4, 9], ids=["plain_unet", "inpainting_unet"])
def test_a_mask_with_nan_and_masked_latents_an_inpainting_unet_reads_are_refused(unet_channels, monkeypatch) -> None:
    from tiny_pipelines import sd_components

    components = sd_components(unet_in_channels=unet_channels)
    ours = CLIPConditionedInpaintPipeline(**components, safety_checker=None, feature_extractor=None)
    ours.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    _refused_before_the_unet(ours, monkeypatch, "mask_image", prompt="a", image=_source(), mask_image=_with_nan(mask))
    masked = _with_nan(torch.zeros(1, 4, 32, 32))
    settings = dict(prompt="a", image=_source(), mask_image=mask, masked_image_latents=masked)
    if unet_channels == 9:
        _refused_before_the_unet(ours, monkeypatch, "masked_image_latents", **settings)
    else:  # a plain UNet blends with the mask and reads no masked latents
        monkeypatch.undo()  # the UNet runs
        images = ours(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0), **settings)
        assert np.isfinite(images.images).all()


# ---------------------------------------------------------------- the scheduler guards, called directly


def test_the_ancestral_split_is_read_pair_by_pair_in_the_steps_own_arithmetic() -> None:
    """Steps 1.1 -> 1.08 -> 0 split into real parts; 3.0 -> 3.5 (a rise) has no real `sigma_up`."""
    assert not ancestral_split_is_negative(torch.tensor([1.1, 1.08, 0.0], dtype=torch.float64))
    assert ancestral_split_is_negative(torch.tensor([4.0, 3.0, 3.5, 0.0], dtype=torch.float64))


def test_guard_timesteps_names_nan_sigmas_and_says_when_it_samples_in_float64(caplog) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(3)
    scheduler.sigmas[1] = NAN  # its timesteps stay finite
    message = r"^EulerDiscreteScheduler \(linear\) has NaN sigmas at num_inference_steps=3; choose another step count"
    with pytest.raises(ValueError, match=message):
        guard_timesteps(scheduler, 3)
    cosine = EulerAncestralDiscreteScheduler(
        beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", prediction_type="v_prediction"
    )
    cosine.set_timesteps(3)
    with caplog.at_level("WARNING", logger="clipcond.pipelines.scheduler_guards"):
        guard_timesteps(cosine, 3)
    assert [record.getMessage() for record in caplog.records] == [
        "EulerAncestralDiscreteScheduler at num_inference_steps=3: float32 rounding makes sigma_down NaN (diffusers "
        "issue #14213); using float64 sigmas for this call"
    ]
    assert cosine.sigmas.dtype == torch.float64


def test_non_finite_latents_raise_with_the_whole_advice() -> None:
    message = (
        r"^the sampled latents contain NaN or infinite values \(torch\.float32\), so the images would be black; in "
        r"float16 try bfloat16 or float32, or another scheduler or step count; pass non_finite='warn' to get the "
        r"images anyway$"
    )
    with pytest.raises(NonFiniteLatents, match=message):
        check_finite_latents(torch.tensor([0.0, float("inf")]), "raise")
    check_finite_latents(torch.zeros(2), "raise")
