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


@pytest.fixture(scope="module")
def ancestral_folder(sd_folder: Path, tmp_path_factory) -> Path:
    """The tiny SD folder sampling as the bundled shapes model does: an ancestral Euler
    scheduler with trailing spacing (and SD 1.x's steps_offset 1), on v-prediction."""
    from diffusers import EulerAncestralDiscreteScheduler

    folder = tmp_path_factory.mktemp("ancestral") / "sd"
    shutil.copytree(sd_folder, folder)
    ddim = json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    EulerAncestralDiscreteScheduler.from_config(
        ddim, timestep_spacing="trailing", steps_offset=1, prediction_type="v_prediction"
    ).save_pretrained(folder / "scheduler")
    return folder


def _saved_scheduler(run_pipeline: Path):
    return CLIPConditionedPipeline.from_pretrained(run_pipeline).scheduler


def test_a_fine_tune_samples_with_the_scheduler_of_the_pipeline_it_starts_from(
    ancestral_folder: Path, tiny_clip_text_path, tmp_path: Path
) -> None:
    """The saved pipeline's scheduler is the one diffusers loads from init_from's scheduler/
    (class, spacing, every setting). Before, it was DDIMScheduler with 'leading' spacing, which
    drew other images from the same weights (the bundled model fell from 24/24 to 0/24)."""
    from diffusers import EulerAncestralDiscreteScheduler

    peer = EulerAncestralDiscreteScheduler.from_pretrained(ancestral_folder / "scheduler")
    config = _init_config(tiny_clip_text_path, ancestral_folder, tmp_path / "lora", train="lora", lr=1e-12)
    saved = _saved_scheduler(train_diffusion(config, show_progress=False).pipeline_dir)
    assert type(saved) is type(peer) and dict(saved.config) == dict(peer.config)
    saved.set_timesteps(5)
    peer.set_timesteps(5)
    assert torch.equal(saved.timesteps, peer.timesteps)


@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(timestep_spacing="leading"), ("EulerAncestralDiscreteScheduler", "leading")),
        (dict(sample_scheduler="DDPMScheduler"), ("DDPMScheduler", "trailing")),
        (dict(sample_scheduler="DDIMScheduler", timestep_spacing="linspace"), ("DDIMScheduler", "linspace")),
    ],
)
def test_a_sampler_key_the_config_sets_overrides_only_itself(
    settings: dict, expected: tuple, ancestral_folder: Path, tiny_clip_text_path, tmp_path: Path
) -> None:
    from clipcond.training.diffusion.setup import build_diffusion_models, make_pipeline

    models = build_diffusion_models(_init_config(tiny_clip_text_path, ancestral_folder, tmp_path / "run", **settings))
    scheduler = make_pipeline(models, models.denoiser).scheduler
    assert (type(scheduler).__name__, scheduler.config.timestep_spacing) == expected
    # on init_from's training schedule, with its settings
    assert (scheduler.config.prediction_type, scheduler.config.steps_offset) == ("v_prediction", 1)


def test_from_scratch_the_sampler_is_ddim_with_leading_spacing(tiny_clip_text_path, tmp_path: Path) -> None:
    from clipcond.training.diffusion.setup import build_diffusion_models, make_pipeline

    models = build_diffusion_models(tiny_config(tiny_clip_text_path, tmp_path / "run"))
    scheduler = make_pipeline(models, models.denoiser).scheduler
    assert (type(scheduler).__name__, scheduler.config.timestep_spacing) == ("DDIMScheduler", "leading")


def test_an_init_from_scheduler_that_is_not_a_diffusers_class_needs_sample_scheduler(
    sd_folder: Path, tiny_clip_text_path, tmp_path: Path
) -> None:
    custom = _with_scheduler(sd_folder, tmp_path / "custom", _class_name="MySampler")
    with pytest.raises(
        RunSetupError,
        match=rf"^init_from {custom}: its scheduler/ is a 'MySampler', not a diffusers scheduler class; set "
        r"sample_scheduler \(e.g. DDIMScheduler\)$",
    ):
        train_diffusion(_init_config(tiny_clip_text_path, custom, tmp_path / "run"), show_progress=False)
    assert not (tmp_path / "run").exists()
    models_config = _init_config(tiny_clip_text_path, custom, tmp_path / "run", sample_scheduler="DDIMScheduler")
    from clipcond.training.diffusion.setup import build_diffusion_models

    assert type(build_diffusion_models(models_config).sample_scheduler).__name__ == "DDIMScheduler"
