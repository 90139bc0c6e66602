"""What the refusals tell SD3, Flux and PixArt users: CLIPConditionedPipeline runs UNet pipelines
only, so neither the editing/AND refusals point them to it nor does its `from_pipe` take their
pipelines with diffusers' component-list error; Flux's editing refusal names the route that
runs (the edit in `prompt_2`, the T5 text)."""

from __future__ import annotations

import pytest
import torch

from clipcond import TextConditioner
from clipcond.pipelines import (
    CLIPConditionedImg2ImgPipeline,
    CLIPConditionedInpaintPipeline,
    CLIPConditionedPipeline,
)

TRANSFORMER_FAMILIES = ["sd3_pipe", "flux_pipe", "pixart_pipe"]


@pytest.mark.parametrize("fixture", TRANSFORMER_FAMILIES)
def test_and_on_a_transformer_family_does_not_point_to_the_unet_pipeline(fixture, request) -> None:
    conditioner = TextConditioner.from_pipeline(request.getfixturevalue(fixture), cache_size=0)
    with pytest.raises(ValueError, match="AND") as refusal:
        conditioner.pipeline_kwargs("a cat AND a dog", num_inference_steps=4)
    message = str(refusal.value)
    assert "without AND" in message and "runs UNet pipelines only" in message
    assert "or CLIPConditionedPipeline" not in message


def test_and_on_sd_still_points_to_clip_conditioned_pipeline(sd_pipe) -> None:
    with pytest.raises(ValueError, match="or CLIPConditionedPipeline, which runs AND"):
        TextConditioner.from_pipeline(sd_pipe, cache_size=0).pipeline_kwargs("a cat AND a dog")


def test_pixart_editing_refusal_does_not_point_to_the_unet_pipeline(pixart_pipe) -> None:
    with pytest.raises(ValueError, match="cannot replace") as refusal:
        TextConditioner.from_pipeline(pixart_pipe, cache_size=0).pipeline_kwargs(
            "a [cat:dog:0.5]", num_inference_steps=4
        )
    assert "runs UNet pipelines only" in str(refusal.value)
    assert "or CLIPConditionedPipeline" not in str(refusal.value)


def test_flux_editing_refusal_names_prompt_2_and_that_route_runs(flux_pipe) -> None:
    conditioner = TextConditioner.from_pipeline(flux_pipe, cache_size=0)
    with pytest.raises(ValueError, match=r"the pooled vector .* put the edit in `prompt_2` \(the T5 text\)"):
        conditioner.pipeline_kwargs("a [cat:dog:0.5]", num_inference_steps=4)
    kwargs = conditioner.pipeline_kwargs("a cat", prompt_2="a [cat:dog:0.5]", num_inference_steps=4)
    assert "callback_on_step_end" in kwargs
    generator = torch.Generator().manual_seed(0)
    image = flux_pipe(
        **kwargs, num_inference_steps=4, height=32, width=32, generator=generator, output_type="pt"
    ).images
    assert image.shape[0] == 1 and torch.isfinite(image).all()


@pytest.mark.parametrize(
    "pipeline_class", [CLIPConditionedPipeline, CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline]
)
@pytest.mark.parametrize(("fixture", "family"), [("sd3_pipe", "sd3"), ("flux_pipe", "flux"), ("pixart_pipe", "pixart")])
def test_from_pipe_of_a_pipeline_without_a_unet_names_its_family(pipeline_class, fixture, family, request) -> None:
    pipe = request.getfixturevalue(fixture)
    with pytest.raises(ValueError, match=rf"needs a pipeline with a `unet`.*\(family '{family}'\).*transformer"):
        pipeline_class.from_pipe(pipe)
