"""The parts of `training/diffusion/setup.py` one at a time, without a training run: the
denoiser's inputs, the latents a batch becomes, the VAE, the schedules and the coordinate
setting an `init_from` run inherits, what each `train` mode sets trainable, the pipeline a run
saves and the copy it ships. References are built from diffusers' own classes and the saved
folders, not from the functions under test."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny_pipelines
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from test_train_diffusion import tiny_config
from torch import nn

from clipcond.pipelines.coordinates import coordinate_grid
from clipcond.projection import TextProjection
from clipcond.training.data import SampleGenerators
from clipcond.training.diffusion import setup
from clipcond.training.loop import RunSetupError


def _config(text_encoder: Path, output_dir: Path, **overrides):
    """`test_train_diffusion.tiny_config`; with `init_from`, without a UNet of its own."""
    if overrides.get("init_from") is not None:
        overrides.setdefault("unet", None)
    return tiny_config(text_encoder, output_dir, **overrides)


def _t5_config(text_encoder: Path, t5_encoder: Path, output_dir: Path, **overrides):
    """`_config` of a CLIP and a T5 (widths 32 and 24) projected to 24 channels unless `overrides` say."""
    return _config(text_encoder, output_dir, **{"t5_encoder": str(t5_encoder), "projection_dim": 24, **overrides})


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """A tiny diffusers SD folder: DDIMScheduler (epsilon), a VAE of one block (no downsampling)."""
    folder = tmp_path_factory.mktemp("setup_parts") / "sd"
    tiny_pipelines.build_sd().save_pretrained(folder)
    return folder


def _assert_same_weights(module: nn.Module, reference: nn.Module) -> None:
    reference_state = reference.state_dict()
    assert module.state_dict().keys() == reference_state.keys()
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, reference_state[name], rtol=0, atol=0, msg=name)


class _RecordingUNet(nn.Module):
    """Returns its input plus one and keeps what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.calls: list[tuple] = []

    def forward(self, sample, timestep, encoder_hidden_states=None):
        self.calls.append((sample, timestep, encoder_hidden_states))
        return SimpleNamespace(sample=sample + 1)


def test_the_denoiser_gives_the_unet_its_inputs_and_returns_the_prediction() -> None:
    unet = _RecordingUNet()
    noisy, timesteps, context = torch.randn(2, 3, 4, 5), torch.tensor([3, 7]), torch.randn(2, 6, 8)
    prediction = setup.Denoiser(unet)(noisy, timesteps, context)
    sample, timestep, hidden = unet.calls[0]
    assert sample is noisy and timestep is timesteps and hidden is context
    torch.testing.assert_close(prediction, noisy + 1, rtol=0, atol=0)
    plain = setup.Denoiser(unet)
    assert plain.projection is None and plain.coordinate_channels is False


def test_a_denoiser_with_coordinate_channels_appends_x_and_y_in_minus_one_to_one() -> None:
    unet = _RecordingUNet()
    noisy = torch.randn(2, 3, 4, 5)
    setup.Denoiser(unet, coordinate_channels=True)(noisy, torch.tensor([1, 2]), torch.randn(2, 6, 8))
    sample = unet.calls[0][0]
    assert sample.shape == (2, 5, 4, 5)
    torch.testing.assert_close(sample[:, :3], noisy, rtol=0, atol=0)
    # the pipeline's grid (tested with the pipeline), the same for each image of the batch
    grid = coordinate_grid(4, 5, dtype=noisy.dtype, device=noisy.device)
    torch.testing.assert_close(sample[:, 3:], grid.expand(2, -1, -1, -1), rtol=0, atol=0)
    assert not torch.equal(sample[:, 3], sample[:, 4])


def test_the_denoiser_holds_the_projection_as_a_submodule() -> None:
    projection = nn.Linear(4, 4)
    denoiser = setup.Denoiser(_RecordingUNet(), projection)
    assert denoiser.projection is projection
    assert {name.split(".")[0] for name, _ in denoiser.named_parameters()} == {"unet", "projection"}


def _models(vae=None, projection=None) -> setup.DiffusionModels:
    """A DiffusionModels holding only what `to_model_space` and `projection_trains` read."""
    denoiser = setup.Denoiser(_RecordingUNet(), projection)
    return setup.DiffusionModels(denoiser, None, None, None, None, None, "sd", None, vae, None, None)


def test_in_pixel_space_the_model_space_is_the_pixels_themselves() -> None:
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    assert _models().to_model_space(pixels, SampleGenerators(0, [0, 1])) is pixels


@pytest.mark.parametrize("shift", [None, 0.25])
def test_latents_are_drawn_from_the_vaes_distribution_with_each_images_generator_then_scaled(shift) -> None:
    vae = tiny_pipelines._small_vae(  # two blocks: latents at half the size
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.5,
        shift_factor=shift,
    ).eval()
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    latents = _models(vae).to_model_space(pixels, SampleGenerators(5, [11, 12]))
    with torch.no_grad():
        distribution = vae.encode(pixels).latent_dist
    # each row drawn by its own sample's generator, as the loop seeds them
    noise = torch.stack([SampleGenerators(5, [index]).normal((1, 4, 4, 4))[0] for index in (11, 12)])
    expected = (distribution.mean + distribution.std * noise - (shift or 0.0)) * 0.5
    assert latents.shape == (2, 4, 4, 4)
    torch.testing.assert_close(latents, expected)
    assert not latents.requires_grad


class _StoredMoments:
    """Stands in for `LatentShards`: fixed moments, float32, and the arguments it was asked with."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std, self.calls = mean, std, []

    def moments(self, pixels, device=None):
        self.calls.append((pixels, device))
        return self.mean, self.std


def test_stored_moments_replace_the_vae_and_the_latents_take_the_pixels_dtype() -> None:
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=2.0, shift_factor=1.0))  # never called
    pixels = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    mean, std = torch.full((2, 4, 2, 2), 3.0), torch.full((2, 4, 2, 2), 0.5)
    stored = _StoredMoments(mean, std)
    latents = _models(vae).to_model_space(pixels, SampleGenerators(1, [4, 9]), stored)
    assert stored.calls[0][0] is pixels and stored.calls[0][1] == pixels.device
    noise = SampleGenerators(1, [4, 9]).normal((2, 4, 2, 2))
    assert latents.dtype == torch.float64
    torch.testing.assert_close(latents, ((mean + 0.5 * noise - 1.0) * 2.0).double())


def test_the_noise_takes_the_moments_dtype_and_a_config_without_a_shift_shifts_nothing() -> None:
    """A float16 VAE's moments are drawn with float16 noise (as the VAE's own sampling would be), and a
    VAE config that has no `shift_factor` at all (older autoencoders) is read as no shift."""
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=0.5))
    pixels = torch.zeros(2, 3, 8, 8)
    mean = torch.linspace(-2, 2, 2 * 4 * 2 * 2).reshape(2, 4, 2, 2).half()
    std = torch.full((2, 4, 2, 2), 0.3).half()
    latents = _models(vae).to_model_space(pixels, SampleGenerators(2, [0, 1]), _StoredMoments(mean, std))
    noise = SampleGenerators(2, [0, 1]).normal((2, 4, 2, 2))
    expected = ((mean + std * noise.half()) * 0.5).float()
    assert latents.dtype == torch.float32
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    assert not torch.equal(latents, ((mean.float() + std.float() * noise) * 0.5))


def test_the_projection_trains_when_any_of_its_weights_does() -> None:
    assert _models().projection_trains is False
    projection = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).requires_grad_(False)
    assert _models(projection=projection).projection_trains is False
    projection[1].bias.requires_grad_(True)
    assert _models(projection=projection).projection_trains is True


# ---- init_from's projection ----


def _with_projection(sd_folder: Path, folder: Path, dim: int = 12) -> tuple[Path, TextProjection]:
    """A copy of the SD folder with a seeded projection of `dim` from its CLIP's width (32)."""
    shutil.copytree(sd_folder, folder)
    torch.manual_seed(3)
    projection = TextProjection(dim, clip_width=32)
    projection.save_pretrained(folder / setup.PROJECTION_DIR)
    return folder, projection


def test_no_init_from_or_one_without_a_projection_continues_none(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    assert setup._load_init_projection(_config(tiny_clip_text_path, tmp_path / "run")) is None
    assert setup._load_init_projection(_config(tiny_clip_text_path, tmp_path, init_from=str(sd_folder))) is None


def test_init_froms_projection_is_loaded_with_its_weights(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    folder, saved = _with_projection(sd_folder, tmp_path / "with")
    for projection_dim in (None, 12):
        loaded = setup._load_init_projection(
            _config(tiny_clip_text_path, tmp_path / "run", init_from=str(folder), projection_dim=projection_dim)
        )
        assert loaded.config.projection_dim == 12
        _assert_same_weights(loaded, saved)


def test_a_projection_dim_other_than_init_froms_is_refused(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    folder, _ = _with_projection(sd_folder, tmp_path / "with")
    config = _config(tiny_clip_text_path, tmp_path / "run", init_from=str(folder), projection_dim=16)
    message = (
        f"projection_dim: 16 differs from the 12 of init_from {folder}'s text_projection/, which this run "
        "continues; leave projection_dim out (or set it to 12)"
    )
    with pytest.raises(RunSetupError) as caught:
        setup._load_init_projection(config)
    assert str(caught.value) == message


def _damage_message(key: str, source: Path, damaged: Path) -> str:
    """The pattern of the one line a damaged file of the part at `key` gives, found before loading."""
    return (
        rf"^{key} {re.escape(str(source))}: the folder has damaged files \(cut short, or overwritten\?\): "
        rf"{re.escape(str(damaged))} [^;]+; nothing was loaded$"
    )


def test_a_damaged_init_from_projection_names_the_key_and_the_file(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    folder, _ = _with_projection(sd_folder, tmp_path / "with")
    weights = next((folder / setup.PROJECTION_DIR).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(RunSetupError, match=_damage_message("init_from", folder, weights)):
        setup._load_init_projection(_config(tiny_clip_text_path, tmp_path / "run", init_from=str(folder)))


# ---- the VAE ----


def test_without_vae_or_init_from_vae_the_run_is_in_pixel_space(tiny_clip_text_path, tmp_path) -> None:
    assert setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run")) is None
    (tmp_path / "no_vae").mkdir()
    assert setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run", init_from=str(tmp_path / "no_vae"))) is None


def _assert_is_frozen_copy_of(vae, folder: Path) -> None:
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    _assert_same_weights(vae, AutoencoderKL.from_pretrained(folder))


@pytest.mark.parametrize("where", ["pipeline", "vae_folder"])
def test_the_vae_key_takes_a_pipeline_or_the_vaes_own_folder(sd_folder, tiny_clip_text_path, tmp_path, where) -> None:
    source = sd_folder if where == "pipeline" else sd_folder / "vae"
    vae = setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run", vae=str(source)))
    _assert_is_frozen_copy_of(vae, sd_folder / "vae")


def test_init_froms_vae_is_taken_when_the_vae_key_is_unset(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    vae = setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run", init_from=str(sd_folder)))
    _assert_is_frozen_copy_of(vae, sd_folder / "vae")


def test_the_vae_key_wins_over_init_froms_vae(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    other = tmp_path / "other"
    torch.manual_seed(9)
    tiny_pipelines._small_vae().save_pretrained(other)
    vae = setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run", vae=str(other), init_from=str(sd_folder)))
    _assert_is_frozen_copy_of(vae, other)


def test_a_vae_folder_without_a_config_is_not_found(tiny_clip_text_path, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as caught:
        setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run", vae=str(tmp_path / "empty")))
    assert str(caught.value) == f"vae: no AutoencoderKL at {tmp_path / 'empty'} (expected config.json or vae/)"


@pytest.mark.parametrize("key", ["vae", "init_from"])
def test_an_image_size_the_vae_does_not_divide_names_the_factor_and_the_key(
    sd_folder, tiny_clip_text_path, tmp_path, key
) -> None:
    # three blocks: the VAE downsamples by 4
    folder = tmp_path / "sd4"
    shutil.copytree(sd_folder, folder)
    torch.manual_seed(0)
    tiny_pipelines._small_vae(
        block_out_channels=(4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    ).save_pretrained(folder / "vae")
    for size in (16, 20, 36):
        assert setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run", image_size=size, **{key: str(folder)}))
    with pytest.raises(RunSetupError) as caught:
        setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run", image_size=34, **{key: str(folder)}))
    assert str(caught.value) == f"image_size (34) must be a multiple of the VAE's downsampling (4; {key} {folder})"


def test_a_damaged_vae_names_its_key_and_file(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    weights = next((folder / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:64])
    for key in ("vae", "init_from"):
        with pytest.raises(RunSetupError, match=_damage_message(key, folder, weights)):
            setup.load_vae(_config(tiny_clip_text_path, tmp_path / "run", **{key: str(folder)}))


# ---- the schedules ----


def test_a_scheduler_config_is_inherited_only_from_an_init_from_that_has_one(
    sd_folder, tiny_clip_text_path, tmp_path
) -> None:
    assert setup._inherited_scheduler_config(_config(tiny_clip_text_path, tmp_path / "run")) is None
    bare = tmp_path / "bare"
    (bare / "scheduler").mkdir(parents=True)
    assert setup._inherited_scheduler_config(_config(tiny_clip_text_path, tmp_path / "r", init_from=str(bare))) is None
    inherited = setup._inherited_scheduler_config(
        _config(tiny_clip_text_path, tmp_path / "r", init_from=str(sd_folder))
    )
    saved = json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    assert type(inherited) is dict and inherited["_class_name"] == saved["_class_name"] == "DDIMScheduler"
    assert {key: inherited[key] for key in saved if not key.startswith("_")} == {
        key: value for key, value in saved.items() if not key.startswith("_")
    }


def test_a_damaged_scheduler_config_names_init_from(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    damaged = folder / "scheduler" / "scheduler_config.json"
    damaged.write_text('{"_class_name": "DDIMSch')
    with pytest.raises(RunSetupError, match=_damage_message("init_from", folder, damaged)):
        setup._inherited_scheduler_config(_config(tiny_clip_text_path, tmp_path / "r", init_from=str(folder)))


def _as_saved(scheduler) -> dict:
    """`scheduler`'s config as its scheduler_config.json holds it (and `load_config` reads it)."""
    return json.loads(scheduler.to_json_string())


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")),
        (
            dict(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
            dict(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        ),
    ],
)
def test_from_scratch_the_noise_schedule_is_a_fresh_ddpm_of_the_configs_settings(
    tiny_clip_text_path, tmp_path, settings, expected
) -> None:
    schedule = setup._noise_schedule(_config(tiny_clip_text_path, tmp_path, **settings), None)
    reference = DDPMScheduler(**expected)
    assert type(schedule) is DDPMScheduler
    assert dict(schedule.config) == dict(reference.config)


def test_an_inherited_noise_schedule_keeps_its_settings_and_takes_the_configs_prediction_type(
    tiny_clip_text_path, tmp_path
) -> None:
    inherited = _as_saved(DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1))
    config = _config(tiny_clip_text_path, tmp_path, init_from=str(tmp_path), num_train_timesteps=10)
    schedule = setup._noise_schedule(config, dict(inherited))
    assert type(schedule) is DDPMScheduler
    assert schedule.config.beta_schedule == "scaled_linear" and schedule.config.num_train_timesteps == 1000
    assert schedule.config.prediction_type == "epsilon"
    config = _config(
        tiny_clip_text_path, tmp_path, init_from=str(tmp_path), prediction_type="v_prediction", beta_schedule="linear"
    )
    schedule = setup._noise_schedule(config, dict(inherited))
    assert schedule.config.prediction_type == "v_prediction" and schedule.config.beta_schedule == "scaled_linear"


def test_an_inherited_prediction_type_the_loop_does_not_train_is_one_error_naming_both(tiny_clip_text_path, tmp_path):
    inherited = _as_saved(DDPMScheduler(prediction_type="sample"))
    config = _config(tiny_clip_text_path, tmp_path, init_from="/the/sd")
    with pytest.raises(RunSetupError) as caught:
        setup._noise_schedule(config, dict(inherited))
    assert str(caught.value) == (
        "init_from /the/sd: its scheduler's prediction_type is 'sample'; train-diffusion trains 'epsilon' or "
        "'v_prediction': set prediction_type to the one to train"
    )
    config = _config(tiny_clip_text_path, tmp_path, init_from="/the/sd", prediction_type="epsilon")
    assert setup._noise_schedule(config, dict(inherited)).config.prediction_type == "epsilon"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"num_train_timesteps": -3}, "number of steps must be non-negative"),
        ({"num_train_timesteps": "many"}, "linspace() received an invalid combination of arguments"),
        ({"beta_schedule": "cubic"}, "cubic is not implemented for"),
    ],
)
def test_an_inherited_schedule_that_cannot_be_built_is_one_error_naming_init_from(
    tiny_clip_text_path, tmp_path, value, problem
) -> None:
    inherited = {**_as_saved(DDPMScheduler()), **value}
    config = _config(tiny_clip_text_path, tmp_path, init_from="/the/sd")
    with pytest.raises(RunSetupError) as caught:
        setup._noise_schedule(config, inherited)
    assert str(caught.value).startswith(f"init_from /the/sd: {problem}")


def test_from_scratch_the_sampler_is_ddim_with_leading_spacing_on_the_noise_schedule(tiny_clip_text_path, tmp_path):
    config = _config(tiny_clip_text_path, tmp_path, num_train_timesteps=40, beta_schedule="scaled_linear")
    noise = setup._noise_schedule(config, None)
    sampler = setup._sample_scheduler(config, None, noise)
    assert type(sampler) is DDIMScheduler
    assert dict(sampler.config) == dict(DDIMScheduler.from_config(noise.config, timestep_spacing="leading").config)
    assert sampler.config.num_train_timesteps == 40 and sampler.config.beta_schedule == "scaled_linear"
    config = _config(
        tiny_clip_text_path, tmp_path, sample_scheduler="EulerDiscreteScheduler", timestep_spacing="trailing"
    )
    sampler = setup._sample_scheduler(config, None, setup._noise_schedule(config, None))
    assert type(sampler) is EulerDiscreteScheduler and sampler.config.timestep_spacing == "trailing"


def test_an_inherited_sampler_keeps_its_class_and_settings_with_the_trained_prediction_type(
    tiny_clip_text_path, tmp_path
) -> None:
    inherited = _as_saved(EulerDiscreteScheduler(steps_offset=1, timestep_spacing="linspace"))
    config = _config(tiny_clip_text_path, tmp_path, init_from="/sd", prediction_type="v_prediction")
    noise = setup._noise_schedule(config, dict(inherited))
    sampler = setup._sample_scheduler(config, dict(inherited), noise)
    assert type(sampler) is EulerDiscreteScheduler
    assert sampler.config.steps_offset == 1 and sampler.config.timestep_spacing == "linspace"
    assert sampler.config.prediction_type == "v_prediction"
    # each key the config sets replaces only itself
    config = _config(tiny_clip_text_path, tmp_path, init_from="/sd", sample_scheduler="DDIMScheduler")
    sampler = setup._sample_scheduler(config, dict(inherited), setup._noise_schedule(config, dict(inherited)))
    assert type(sampler) is DDIMScheduler and sampler.config.timestep_spacing == "linspace"
    config = _config(tiny_clip_text_path, tmp_path, init_from="/sd", timestep_spacing="trailing")
    sampler = setup._sample_scheduler(config, dict(inherited), setup._noise_schedule(config, dict(inherited)))
    assert type(sampler) is EulerDiscreteScheduler and sampler.config.timestep_spacing == "trailing"
    # a config without a class name samples with DDIM
    unnamed = {key: value for key, value in inherited.items() if key != "_class_name"}
    config = _config(tiny_clip_text_path, tmp_path, init_from="/sd")
    assert type(setup._sample_scheduler(config, unnamed, setup._noise_schedule(config, unnamed))) is DDIMScheduler


def test_an_inherited_class_that_is_not_a_scheduler_needs_sample_scheduler(tiny_clip_text_path, tmp_path) -> None:
    inherited = {**_as_saved(DDIMScheduler()), "_class_name": "MyScheduler"}
    config = _config(tiny_clip_text_path, tmp_path, init_from="/sd")
    with pytest.raises(RunSetupError) as caught:
        setup._sample_scheduler(config, dict(inherited), setup._noise_schedule(config, dict(inherited)))
    assert str(caught.value) == (
        "init_from /sd: its scheduler/ is a 'MyScheduler', not a diffusers scheduler class; "
        "set sample_scheduler (e.g. DDIMScheduler)"
    )
    assert isinstance(caught.value.__cause__, ValueError)
    assert str(caught.value.__cause__) == (
        "`sample_scheduler` must name a diffusers scheduler class (e.g. DDIMScheduler), got 'MyScheduler'"
    )
    config = _config(tiny_clip_text_path, tmp_path, init_from="/sd", sample_scheduler="DDIMScheduler")
    assert type(setup._sample_scheduler(config, dict(inherited), DDPMScheduler())) is DDIMScheduler


# ---- coordinate channels ----


@pytest.mark.parametrize("setting", [None, False, True])
def test_from_scratch_coordinate_channels_are_the_configs(tiny_clip_text_path, tmp_path, setting) -> None:
    config = _config(tiny_clip_text_path, tmp_path, coordinate_channels=setting)
    assert setup.uses_coordinate_channels(config) is bool(setting)


def _index(folder: Path, content) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(content))
    return folder


@pytest.mark.parametrize(
    ("saved", "setting", "expected"),
    [
        ({}, None, False),
        ({}, False, False),
        ({"coordinate_channels": True}, None, True),
        ({"coordinate_channels": True}, True, True),
        ({"coordinate_channels": False}, None, False),
        (None, None, False),  # no model_index.json at all
    ],
)
def test_an_init_from_run_keeps_its_pipelines_coordinate_setting(
    tiny_clip_text_path, tmp_path, saved, setting, expected
) -> None:
    folder = _index(tmp_path / "sd", saved) if saved is not None else tmp_path
    config = _config(tiny_clip_text_path, tmp_path / "run", init_from=str(folder), coordinate_channels=setting)
    assert setup.uses_coordinate_channels(config) is expected


@pytest.mark.parametrize(("saved", "setting"), [({}, True), ({"coordinate_channels": True}, False)])
def test_a_coordinate_setting_other_than_init_froms_is_refused(tiny_clip_text_path, tmp_path, saved, setting) -> None:
    folder = _index(tmp_path / "sd", saved)
    config = _config(tiny_clip_text_path, tmp_path / "run", init_from=str(folder), coordinate_channels=setting)
    with pytest.raises(RunSetupError) as caught:
        setup.uses_coordinate_channels(config)
    assert str(caught.value) == (
        f"coordinate_channels: {setting} differs from init_from's pipeline ({folder}: {not setting}); "
        "a trained UNet keeps its inputs (leave the key out)"
    )


def test_a_model_index_that_is_not_an_object_or_not_json_is_refused(tiny_clip_text_path, tmp_path) -> None:
    folder = _index(tmp_path / "sd", ["coordinate_channels"])
    config = _config(tiny_clip_text_path, tmp_path / "run", init_from=str(folder))
    with pytest.raises(RunSetupError) as caught:
        setup.uses_coordinate_channels(config)
    assert str(caught.value) == f"init_from {folder / 'model_index.json'}: expected a JSON object, got list"
    (folder / "model_index.json").write_text('{"coordinate_')
    with pytest.raises(RunSetupError, match=f"^init_from {folder / 'model_index.json'}"):
        setup.uses_coordinate_channels(config)


# ---- the conditioner ----


def test_adapter_training_without_a_projection_is_refused_before_any_model_is_read(sd_folder, tmp_path) -> None:
    config = _config(tmp_path / "no_such_clip", tmp_path / "run", init_from=str(sd_folder), train="adapter")
    with pytest.raises(RunSetupError) as caught:
        setup.build_conditioner(config)
    assert str(caught.value) == (
        "`train: adapter` trains a projection: set `projection_dim`, or init_from a pipeline that has one "
        f"(init_from {sd_folder} has no text_projection/)"
    )


def test_a_clip_alone_is_the_sd_recipe_over_the_frozen_tower(tiny_clip_text_path, tmp_path) -> None:
    from transformers import CLIPTextModel

    conditioner = setup.build_conditioner(_config(tiny_clip_text_path, tmp_path))
    assert conditioner.recipe.name == "sd" and conditioner.t5 is None and conditioner.projection is None
    assert len(conditioner.clip) == 1
    tower = conditioner.clip[0].model
    _assert_same_weights(tower, CLIPTextModel.from_pretrained(tiny_clip_text_path))
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    # captions: literal text cut at 75 tokens, a cache big enough for a run's captions
    assert conditioner.parse_weights is False and conditioner.recipe.window_split == "truncate"
    assert conditioner.cache is not None and conditioner.cache.max_entries == 100_000


def test_caption_syntax_and_window_split_reach_the_conditioner(tiny_clip_text_path, tmp_path) -> None:
    config = _config(tiny_clip_text_path, tmp_path, caption_syntax=True, caption_window_split="word")
    conditioner = setup.build_conditioner(config)
    assert conditioner.parse_weights is True and conditioner.recipe.window_split == "word"


def test_a_projection_dim_makes_the_custom_recipe_with_a_new_projection(tiny_clip_text_path, tmp_path) -> None:
    conditioner = setup.build_conditioner(_config(tiny_clip_text_path, tmp_path, projection_dim=20))
    recipe = conditioner.recipe
    assert recipe.name == "custom" and recipe.combine == "concat_channels" and recipe.pooled == "last"
    assert conditioner.projection.config.projection_dim == 20 and conditioner.t5 is None


def test_init_froms_projection_makes_the_custom_recipe_and_is_the_conditioners(
    sd_folder, tiny_clip_text_path, tmp_path
) -> None:
    folder, saved = _with_projection(sd_folder, tmp_path / "with")
    conditioner = setup.build_conditioner(_config(tiny_clip_text_path, tmp_path / "run", init_from=str(folder)))
    assert conditioner.recipe.name == "custom" and conditioner.recipe.pooled == "last"
    _assert_same_weights(conditioner.projection, saved)


def test_a_projection_that_reads_another_width_names_init_froms_folder(sd_folder, tiny_clip_text_path, tmp_path):
    shutil.copytree(sd_folder, tmp_path / "wide")
    TextProjection(12, clip_width=48).save_pretrained(tmp_path / "wide" / setup.PROJECTION_DIR)
    config = _config(tiny_clip_text_path, tmp_path / "run", init_from=str(tmp_path / "wide"))
    with pytest.raises(RunSetupError) as caught:
        setup.build_conditioner(config)
    assert str(caught.value).startswith(f"init_from {tmp_path / 'wide'} text_projection/: ")
    assert "48" in str(caught.value) and "32" in str(caught.value)


def test_encoders_of_two_widths_without_a_projection_are_one_setup_error(
    tiny_clip_text_path, tiny_t5_encoder_path, tmp_path
) -> None:
    config = _config(tiny_clip_text_path, tmp_path, t5_encoder=str(tiny_t5_encoder_path))
    with pytest.raises(RunSetupError) as caught:
        setup.build_conditioner(config)
    assert str(caught.value) == (  # no init_from to name: the message is the conditioner's own
        "combine='concat_sequence' joins CLIP tokens (width 32) and T5 tokens (width 24) on the sequence axis; "
        "their widths differ, so set `projection_dim` to project both to one width"
    )


@pytest.mark.parametrize(("budget", "mask"), [(None, False), (16, True)])
def test_a_t5_joins_the_clip_tokens_on_the_sequence_with_its_budget_and_mask(
    tiny_clip_text_path, tiny_t5_encoder_path, tmp_path, budget, mask
) -> None:
    from transformers import T5EncoderModel

    config = _t5_config(
        tiny_clip_text_path,
        tiny_t5_encoder_path,
        tmp_path,
        t5_max_length=budget,
        t5_attention_mask=mask or None,
    )
    conditioner = setup.build_conditioner(config)
    recipe = conditioner.recipe
    assert recipe.name == "custom" and recipe.combine == "concat_sequence" and recipe.pooled == "last"
    assert recipe.t5_max_length == (budget or 256) and recipe.t5_attention_mask is mask
    _assert_same_weights(conditioner.t5.model, T5EncoderModel.from_pretrained(tiny_t5_encoder_path))
    assert not any(p.requires_grad for p in conditioner.t5.model.parameters())


# ---- the models of a run ----


def _trainable(module: nn.Module) -> set[str]:
    return {name for name, parameter in module.named_parameters() if parameter.requires_grad}


def test_train_unet_trains_the_whole_unet_and_the_projection(tiny_clip_text_path, tmp_path) -> None:
    models = setup.build_diffusion_models(_config(tiny_clip_text_path, tmp_path, projection_dim=20))
    denoiser = models.denoiser
    assert denoiser.training and denoiser.projection is models.conditioner.projection
    assert _trainable(denoiser) == {name for name, _ in denoiser.named_parameters()}
    assert denoiser.unet.config.cross_attention_dim == 20
    assert models.recipe == "custom" and models.t5_encoder is None and models.t5_max_length is None
    assert models.text_encoder is models.conditioner.clip[0].model
    assert models.tokenizer is models.conditioner.clip[0].tokenizer
    assert models.vae is None and not denoiser.coordinate_channels


def test_train_lora_trains_only_the_lora_weights(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    models = setup.build_diffusion_models(
        _config(tiny_clip_text_path, tmp_path, init_from=str(sd_folder), train="lora")
    )
    trainable = _trainable(models.denoiser)
    assert trainable and all("lora_" in name for name in trainable)
    assert models.denoiser.unet.config.cross_attention_dim == 32 and models.recipe == "sd"


@pytest.mark.parametrize("adapter_lora", [False, True])
def test_train_adapter_trains_the_projection_and_with_adapter_lora_a_lora(
    sd_folder, tiny_clip_text_path, tmp_path, adapter_lora
) -> None:
    from diffusers import UNet2DConditionModel

    folder, _ = _with_projection(sd_folder, tmp_path / "with")
    # the UNet replaced by one of its shape that reads the projection's 12 channels
    unet_config = dict(UNet2DConditionModel.load_config(folder / "unet"), cross_attention_dim=12)
    shutil.rmtree(folder / "unet")
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(unet_config).save_pretrained(folder / "unet")
    config = _config(
        tiny_clip_text_path, tmp_path / "run", init_from=str(folder), train="adapter", adapter_lora=adapter_lora
    )
    models = setup.build_diffusion_models(config)
    trainable = _trainable(models.denoiser)
    projection = {f"projection.{name}" for name, _ in models.denoiser.projection.named_parameters()}
    assert projection <= trainable
    lora = trainable - projection
    assert all(name.startswith("unet.") and "lora_" in name for name in lora)
    assert bool(lora) is adapter_lora


def test_the_models_carry_the_schedules_the_vae_and_the_coordinate_setting(sd_folder, tiny_clip_text_path, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "coordinate_channels": False}))
    # a scheduler no fresh one resembles: its class, its steps and its betas
    saved = _as_saved(EulerDiscreteScheduler(num_train_timesteps=500, beta_schedule="scaled_linear", steps_offset=1))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(saved))
    config = _config(tiny_clip_text_path, tmp_path / "run", init_from=str(folder), prediction_type="v_prediction")
    models = setup.build_diffusion_models(config)
    noise, sampler = models.noise_schedule, models.sample_scheduler
    assert type(noise) is DDPMScheduler and noise.config.prediction_type == "v_prediction"
    assert (noise.config.num_train_timesteps, noise.config.beta_schedule) == (500, "scaled_linear")
    assert type(sampler) is EulerDiscreteScheduler and sampler.config.prediction_type == "v_prediction"
    assert (sampler.config.num_train_timesteps, sampler.config.steps_offset) == (500, 1)
    _assert_is_frozen_copy_of(models.vae, folder / "vae")
    assert models.denoiser.coordinate_channels is False
    config = _config(tiny_clip_text_path, tmp_path / "run", coordinate_channels=True)
    assert setup.build_diffusion_models(config).denoiser.coordinate_channels is True


def test_a_unet_from_scratch_over_a_vae_denoises_its_latents_and_the_pipeline_decodes_with_it(
    sd_folder, tiny_clip_text_path, tmp_path
) -> None:
    models = setup.build_diffusion_models(_config(tiny_clip_text_path, tmp_path, vae=str(sd_folder)))
    latent_channels = json.loads((sd_folder / "vae" / "config.json").read_text())["latent_channels"]
    assert latent_channels != 3  # the pixels' channels
    assert models.denoiser.unet.config.in_channels == models.denoiser.unet.config.out_channels == latent_channels
    pipe = setup.make_pipeline(models, models.denoiser)
    assert pipe.vae is models.vae is not None
    assert setup.build_diffusion_models(_config(tiny_clip_text_path, tmp_path)).denoiser.unet.config.in_channels == 3


def test_a_run_with_a_t5_carries_its_encoder_tokenizer_and_budget(
    tiny_clip_text_path, tiny_t5_encoder_path, tmp_path
) -> None:
    config = _t5_config(tiny_clip_text_path, tiny_t5_encoder_path, tmp_path, t5_max_length=16)
    models = setup.build_diffusion_models(config)
    assert models.t5_encoder is models.conditioner.t5.model and models.t5_tokenizer is models.conditioner.t5.tokenizer
    assert models.t5_max_length == 16 and models.recipe == "custom"


# ---- the pipeline a run saves, and the copy it ships ----


def test_the_pipeline_shares_the_denoisers_weights_and_samples_with_a_fresh_scheduler(
    tiny_clip_text_path, tiny_t5_encoder_path, tmp_path
) -> None:
    config = _t5_config(
        tiny_clip_text_path,
        tiny_t5_encoder_path,
        tmp_path,
        t5_max_length=16,
        t5_attention_mask=True,
        coordinate_channels=True,
        sample_scheduler="EulerDiscreteScheduler",
    )
    models = setup.build_diffusion_models(config)
    pipe = setup.make_pipeline(models, models.denoiser)
    assert pipe.unet is models.denoiser.unet and pipe.text_projection is models.denoiser.projection
    assert pipe.text_encoder is models.text_encoder and pipe.text_encoder_2 is models.t5_encoder
    assert pipe.tokenizer is models.tokenizer and pipe.tokenizer_2 is models.t5_tokenizer
    assert type(pipe.scheduler) is EulerDiscreteScheduler and pipe.scheduler is not models.sample_scheduler
    assert dict(pipe.scheduler.config) == dict(models.sample_scheduler.config)
    assert pipe.config.recipe == "custom" and pipe.config.t5_max_length == 16
    assert pipe.config.t5_attention_mask is True and pipe.config.coordinate_channels is True
    assert pipe._progress_bar_config == {"disable": True}


def test_a_pipeline_masks_t5_padding_only_when_asked(tiny_clip_text_path, tiny_t5_encoder_path, tmp_path) -> None:
    models = setup.build_diffusion_models(_config(tiny_clip_text_path, tmp_path))
    pipe = setup.make_pipeline(models, models.denoiser)
    assert pipe.config.recipe == "sd" and pipe.config.t5_attention_mask is False and pipe.text_encoder_2 is None
    config = _t5_config(tiny_clip_text_path, tiny_t5_encoder_path, tmp_path)
    models = setup.build_diffusion_models(config)
    pipe = setup.make_pipeline(models, models.denoiser)
    assert pipe.text_encoder_2 is models.t5_encoder and pipe.config.t5_attention_mask is False


class _RecordingEMA:
    """Stands in for the loop's EMA: writes fixed averages into the parameters it is given."""

    def __init__(self) -> None:
        self.given: list[torch.Tensor] = []

    def copy_to(self, parameters) -> None:
        self.given = list(parameters)
        with torch.no_grad():
            for index, parameter in enumerate(self.given):
                parameter.fill_(index + 0.5)


def test_the_shipped_denoiser_is_a_frozen_copy_with_the_ema_weights(tiny_clip_text_path, tmp_path) -> None:
    models = setup.build_diffusion_models(_config(tiny_clip_text_path, tmp_path, projection_dim=20))
    denoiser = models.denoiser
    before = {name: value.clone() for name, value in denoiser.state_dict().items()}
    ema = _RecordingEMA()
    final = setup.final_denoiser(denoiser, ema)
    assert not any(p.requires_grad for p in final.parameters()) and not final.training
    assert [p.data_ptr() for p in ema.given] == [p.data_ptr() for p in final.parameters()]
    for index, parameter in enumerate(final.parameters()):
        assert torch.all(parameter == index + 0.5)
    # the run's own denoiser is untouched and still trains
    assert denoiser.training and all(p.requires_grad for p in denoiser.parameters())
    for name, value in denoiser.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    # without an EMA the copy keeps the weights
    _assert_same_weights(setup.final_denoiser(denoiser, None), denoiser)


def test_the_shipped_denoiser_of_a_lora_run_has_the_lora_merged(sd_folder, tiny_clip_text_path, tmp_path) -> None:
    models = setup.build_diffusion_models(
        _config(tiny_clip_text_path, tmp_path, init_from=str(sd_folder), train="lora")
    )
    denoiser = models.denoiser
    with torch.no_grad():
        for name, parameter in denoiser.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    noisy, timesteps, context = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.randn(2, 77, 32)
    with torch.no_grad():
        expected = denoiser.eval()(noisy, timesteps, context)
    final = setup.final_denoiser(denoiser, None)
    assert not getattr(final.unet, "peft_config", None)
    assert not any("lora_" in name for name, _ in final.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(final(noisy, timesteps, context), expected, rtol=1e-4, atol=1e-4)
    assert any("lora_" in name for name, _ in denoiser.named_parameters())


@pytest.mark.parametrize("use_ema", [True, False, None])
def test_a_checkpoints_pipeline_holds_its_ema_or_its_trained_weights(tiny_clip_text_path, tmp_path, use_ema) -> None:
    """`use_ema` None: left to its default, the EMA (as the run's final save takes it)."""
    from safetensors.torch import load_file

    from clipcond.training.diffusion.loop import train_diffusion

    config = _config(tiny_clip_text_path, tmp_path / "run", steps=2, projection_dim=20)
    train_diffusion(config, show_progress=False)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000000002"
    random.seed(5)
    before = random.getstate()
    pipe = setup.pipeline_from_checkpoint(config, checkpoint, **({} if use_ema is None else {"use_ema": use_ema}))
    assert random.getstate() == before  # the checkpoint's random states stay in it
    use_ema = use_ema is not False
    # the checkpoint's weights, named as the denoiser names them (UNet first, then projection)
    trained = {f"unet.{k}": v for k, v in load_file(str(checkpoint / "unet.safetensors")).items()}
    trained |= {f"projection.{k}": v for k, v in load_file(str(checkpoint / "projection.safetensors")).items()}
    got = {f"unet.{k}": v for k, v in pipe.unet.named_parameters()}
    got |= {f"projection.{k}": v for k, v in pipe.text_projection.named_parameters()}
    assert set(got) == set(trained)
    # the EMA holds one average per trainable parameter, in that order
    ema = load_file(str(checkpoint / "ema.safetensors"))
    averages = [ema[key] for key in sorted(ema, key=int)]
    expected = dict(zip(got, averages)) if use_ema else trained
    assert len(averages) == len(got)
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(trained[name], average) for name, average in zip(got, averages))
    assert not pipe.unet.training and not any(p.requires_grad for p in pipe.unet.parameters())


def test_a_checkpoint_without_an_ema_gives_its_trained_weights(tiny_clip_text_path, tmp_path) -> None:
    from safetensors.torch import load_file

    from clipcond.training.diffusion.loop import train_diffusion

    config = _config(tiny_clip_text_path, tmp_path / "run", steps=2, ema_decay=None)
    train_diffusion(config, show_progress=False)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000000002"
    assert not (checkpoint / "ema.safetensors").exists()
    pipe = setup.pipeline_from_checkpoint(config, checkpoint)
    trained = load_file(str(checkpoint / "unet.safetensors"))
    for name, value in pipe.unet.named_parameters():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
