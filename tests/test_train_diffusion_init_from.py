"""What an `init_from` run takes from the pipeline it starts from: the noise schedule and its
prediction type (refused when it is one the loop does not train)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_pipelines
import torch
from test_train_diffusion import tiny_config

from clipcond import CLIPConditionedPipeline
from clipcond.training.diffusion.loop import _denoising_target, train_diffusion
from clipcond.training.loop import RunSetupError


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """A tiny diffusers SD folder (DDIMScheduler, epsilon; a VAE that keeps the image size)."""
    folder = tmp_path_factory.mktemp("init_from") / "sd"
    tiny_pipelines.build_sd().save_pretrained(folder)
    return folder


def _with_scheduler(source: Path, folder: Path, **settings) -> Path:
    """A copy of the pipeline at `source` whose scheduler_config.json has `settings` set."""
    shutil.copytree(source, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    return folder


def _init_config(text_encoder: Path, init_from: Path, output_dir: Path, **overrides):
    settings = dict(unet=None, init_from=str(init_from), steps=1, ema_decay=None, image_size=32, batch_size=2)
    return tiny_config(text_encoder, output_dir, **{**settings, **overrides})


def test_an_inherited_prediction_type_the_loop_does_not_train_is_refused(
    sd_folder: Path, tiny_clip_text_path, tmp_path: Path
) -> None:
    """diffusers' train_text_to_image.py trains epsilon or v_prediction and raises for another
    prediction type; before, a scheduler with prediction_type 'sample' (x0) was trained toward
    the velocity and saved as an x0 model."""
    x0 = _with_scheduler(sd_folder, tmp_path / "x0", prediction_type="sample")
    with pytest.raises(
        RunSetupError,
        match=rf"^init_from {x0}: its scheduler's prediction_type is 'sample'; train-diffusion trains 'epsilon' "
        "or 'v_prediction': set prediction_type to the one to train$",
    ):
        train_diffusion(_init_config(tiny_clip_text_path, x0, tmp_path / "run"), show_progress=False)
    assert not (tmp_path / "run").exists()
    # the config's prediction_type overrides it, and the saved pipeline samples as it was trained
    run = train_diffusion(
        _init_config(tiny_clip_text_path, x0, tmp_path / "eps", prediction_type="epsilon"), show_progress=False
    )
    assert CLIPConditionedPipeline.from_pretrained(run.pipeline_dir).scheduler.config.prediction_type == "epsilon"


def test_the_target_is_the_noise_or_the_velocity_and_nothing_else() -> None:
    """The regression target against diffusers' formulas; a schedule of another prediction type
    is an error, not silently the velocity."""
    from diffusers import DDPMScheduler

    clean, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    timesteps = torch.tensor([10, 900])
    alphas = DDPMScheduler().alphas_cumprod[timesteps].view(2, 1, 1, 1)
    velocity = alphas.sqrt() * noise - (1 - alphas).sqrt() * clean  # Salimans & Ho 2022, eq. in section 4
    assert torch.equal(_denoising_target(DDPMScheduler(), clean, noise, timesteps), noise)
    v = _denoising_target(DDPMScheduler(prediction_type="v_prediction"), clean, noise, timesteps)
    torch.testing.assert_close(v, velocity, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"^prediction_type 'sample': train-diffusion trains one of"):
        _denoising_target(DDPMScheduler(prediction_type="sample"), clean, noise, timesteps)
