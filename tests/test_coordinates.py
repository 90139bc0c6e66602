"""Coordinate channels: the grid, the pipeline that appends it at every step, and the training
runs that build (or inherit) a UNet reading it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcond import CLIPConditionedPipeline
from clipcond.pipelines.coordinates import append_coordinates, coordinate_grid
from clipcond.training.diffusion.loop import train_diffusion


def test_grid_holds_pixel_centre_coordinates() -> None:
    grid = coordinate_grid(2, 4)
    assert grid.shape == (2, 2, 4) and grid.dtype == torch.float32
    assert torch.allclose(grid[0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x: left to right
    assert torch.allclose(grid[1, :, 0], torch.tensor([-0.5, 0.5]))  # y: top to bottom
    assert torch.equal(grid[0, 0], grid[0, 1]) and torch.equal(grid[1, :, 0], grid[1, :, 3])


def test_append_keeps_the_sample_and_its_dtype() -> None:
    sample = torch.randn(3, 4, 8, 6, dtype=torch.float64)
    joined = append_coordinates(sample)
    assert joined.shape == (3, 6, 8, 6) and joined.dtype == torch.float64
    assert torch.equal(joined[:, :4], sample)
    assert torch.equal(joined[2, 4:], coordinate_grid(8, 6, dtype=torch.float64))


@pytest.mark.parametrize("height", [0, -1, 2.5, True])
def test_bad_grid_sizes(height) -> None:
    with pytest.raises(ValueError, match="height"):
        coordinate_grid(height, 4)
    with pytest.raises(TypeError, match="sample"):
        append_coordinates(torch.zeros(3, 8, 8))


def test_the_refusals_whole() -> None:
    for arguments, message in [
        ((0, 4), "`height` must be a positive int, got 0"),
        ((True, 4), "`height` must be a positive int, got True"),
        ((4, 1.0), "`width` must be a positive int, got 1.0"),
        ((4, -2), "`width` must be a positive int, got -2"),
        ((0, 0), "`height` must be a positive int, got 0"),  # height first
    ]:
        with pytest.raises(ValueError) as raised:
            coordinate_grid(*arguments)
        assert str(raised.value) == message
    for sample, name in [
        (np.zeros((1, 3, 4, 4)), "ndarray"),
        (torch.zeros(1, 3, 4), "Tensor"),
        (torch.zeros(1, 1, 3, 4, 4), "Tensor"),
    ]:
        with pytest.raises(TypeError) as raised:
            append_coordinates(sample)
        assert str(raised.value) == f"`sample` must be a (batch, channels, height, width) tensor, got {name}"


def test_the_grid_in_another_dtype_and_device_is_the_float32_grid_cast() -> None:
    assert torch.equal(coordinate_grid(1, 1), torch.zeros(2, 1, 1))
    thirds = torch.tensor([-2 / 3, 0.0, 2 / 3])
    grid = coordinate_grid(3, 3, dtype=torch.float16)
    assert (
        grid.dtype == torch.float16
        and torch.equal(grid[0, 1], thirds.half())
        and torch.equal(grid[1, :, 2], thirds.half())
    )
    joined = append_coordinates(torch.zeros(2, 1, 3, 3, dtype=torch.bfloat16))
    assert joined.dtype == torch.bfloat16 and torch.equal(joined[1, 1:], coordinate_grid(3, 3).bfloat16())
    on_meta = append_coordinates(torch.zeros(1, 1, 3, 5, device="meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == (1, 3, 3, 5)
    assert coordinate_grid(2, 2, device="meta").device.type == "meta"


def test_the_grid_is_computed_in_float32_whatever_the_default_dtype() -> None:
    """The same grid for training and sampling: `torch.set_default_dtype(torch.float64)` in a
    user's script does not move its values by a rounding (for width 7, 0.5 / 7 * 2 - 1 rounds
    otherwise in float64 than in float32)."""
    expected = coordinate_grid(7, 13)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        grid = coordinate_grid(7, 13)
    finally:
        torch.set_default_dtype(previous)
    assert grid.dtype == torch.float32 and torch.equal(grid, expected)


def _pixel_pipeline(coordinate_channels: bool, in_channels: int = 5) -> CLIPConditionedPipeline:
    from diffusers import EulerAncestralDiscreteScheduler
    from tiny_pipelines import clip_text_model, pixel_space_unet

    from clipcond import clip_tokenizer

    unet = pixel_space_unet(0, in_channels=in_channels)
    pipe = CLIPConditionedPipeline(
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(),
        text_encoder=clip_text_model(1),
        tokenizer=clip_tokenizer(),
        coordinate_channels=coordinate_channels,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe: CLIPConditionedPipeline) -> np.ndarray:
    return pipe(
        "a red circle left of a blue square",
        num_inference_steps=3,
        guidance_scale=3.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def test_the_pipeline_feeds_the_grid_to_the_unet_at_every_step(tmp_path: Path) -> None:
    pipe = _pixel_pipeline(True)
    seen: list[torch.Tensor] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    images = _images(pipe)
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    assert len(seen) == 3
    for model_input in seen:  # guidance: negative and positive halves, both with the grid
        assert model_input.shape == (2, 5, 16, 16)
        assert torch.equal(model_input[:, 3:], coordinate_grid(16, 16).expand(2, -1, -1, -1))
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["coordinate_channels"] is True
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.coordinate_channels is True
    assert np.abs(_images(loaded) - images).max() == 0.0


def test_the_grid_changes_the_images() -> None:
    # the same UNet weights read the coordinates or zeros in their place: the grid is really read
    with_grid = _images(_pixel_pipeline(True))
    pipe = _pixel_pipeline(True)
    pipe.unet.register_forward_pre_hook(
        lambda module, args: (torch.cat([args[0][:, :3], torch.zeros_like(args[0][:, 3:])], 1), *args[1:])
    )
    assert np.abs(_images(pipe) - with_grid).max() > 1e-3


def test_a_unet_that_does_not_read_two_more_channels_is_refused() -> None:
    with pytest.raises(ValueError, match="in_channels = out_channels \\+ 2"):
        _pixel_pipeline(True, in_channels=3)
    with pytest.raises(TypeError, match="coordinate_channels"):
        _pixel_pipeline("yes", in_channels=3)
    assert _pixel_pipeline(False, in_channels=3).config.coordinate_channels is False


def test_training_builds_and_saves_a_unet_that_reads_the_grid(tiny_clip_text_path, tmp_path: Path) -> None:
    from test_train_diffusion import tiny_config, unet_weights

    run = train_diffusion(
        tiny_config(tiny_clip_text_path, tmp_path / "coords", coordinate_channels=True, steps=2), show_progress=False
    )
    pipe = CLIPConditionedPipeline.from_pretrained(run.pipeline_dir)
    assert pipe.config.coordinate_channels is True
    assert (pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (5, 3)
    images = pipe(
        "a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()

    # fine-tuning it keeps the grid without being told; asking to drop it is an error
    tuned = train_diffusion(
        tiny_config(tiny_clip_text_path, tmp_path / "tuned", unet=None, init_from=str(run.pipeline_dir), steps=1),
        show_progress=False,
    )
    assert CLIPConditionedPipeline.from_pretrained(tuned.pipeline_dir).config.coordinate_channels is True
    assert any(
        not torch.equal(unet_weights(tuned.pipeline_dir)[k], v) for k, v in unet_weights(run.pipeline_dir).items()
    )
    with pytest.raises(ValueError, match="coordinate_channels: False differs from init_from"):
        train_diffusion(
            tiny_config(
                tiny_clip_text_path,
                tmp_path / "dropped",
                unet=None,
                init_from=str(run.pipeline_dir),
                coordinate_channels=False,
            ),
            show_progress=False,
        )
    assert not (tmp_path / "dropped").exists()


def test_runs_without_the_key_keep_three_input_channels(tiny_clip_text_path, tmp_path: Path) -> None:
    from test_train_diffusion import tiny_config

    run = train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "plain", steps=1), show_progress=False)
    pipe = CLIPConditionedPipeline.from_pretrained(run.pipeline_dir)
    assert pipe.config.coordinate_channels is False and pipe.unet.config.in_channels == 3


def test_a_config_that_also_sets_in_channels_is_refused(tiny_clip_text_path, tmp_path: Path) -> None:
    from test_train_diffusion import UNET, tiny_config

    with pytest.raises(ValueError, match="`in_channels` is set by the run with `coordinate_channels`"):
        tiny_config(tiny_clip_text_path, tmp_path / "run", coordinate_channels=True, unet={**UNET, "in_channels": 3})
    assert not (tmp_path / "run").exists()
