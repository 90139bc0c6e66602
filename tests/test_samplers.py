"""A1111's sampler names (`clipcond.pipelines.samplers`, `clipcond generate --sampler`).

The reference is diffusers' own documentation: `DOCUMENTED` below is written from the table of
diffusers' scheduler overview (A1111 / k-diffusion name -> scheduler, init arguments), with
DDIM, PLMS and UniPC by the scheduler of that name, independently of the module's table. Images
are compared with diffusers' `StableDiffusionPipeline` given that scheduler the documented way
(`Scheduler.from_config(pipe.scheduler.config, ...)`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipcond.cli import main
from clipcond.pipelines.samplers import SAMPLER_NAMES, sampler_name, scheduler_for_sampler

DOCUMENTED = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"},
    ),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}


def _documented(name: str, config):
    import diffusers

    class_name, settings = DOCUMENTED[name]
    return getattr(diffusers, class_name).from_config(config, **settings)


def _public(config) -> dict:
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def test_every_documented_name_is_taken_and_no_other() -> None:
    import clipcond.pipelines

    assert sorted(SAMPLER_NAMES) == sorted(DOCUMENTED)
    assert clipcond.pipelines.scheduler_for_sampler is scheduler_for_sampler


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_name_gives_the_documented_scheduler_on_the_models_config(sd_pipe, name: str) -> None:
    ours, documented = scheduler_for_sampler(name, sd_pipe.scheduler), _documented(name, sd_pipe.scheduler.config)
    assert type(ours) is type(documented)
    assert _public(ours.config) == _public(documented.config)
    ours.set_timesteps(5)
    documented.set_timesteps(5)
    assert torch.equal(ours.timesteps, documented.timesteps)


def test_the_models_config_is_kept_and_the_name_decides_the_sigmas() -> None:
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    saved = EulerDiscreteScheduler(
        prediction_type="v_prediction", timestep_spacing="trailing", beta_schedule="scaled_linear", steps_offset=1
    )
    made = scheduler_for_sampler("DPM++ 2M", saved)
    kept = ("prediction_type", "timestep_spacing", "beta_schedule", "steps_offset")
    assert {key: made.config[key] for key in kept} == {key: saved.config[key] for key in kept}
    karras_saved = DPMSolverMultistepScheduler(use_karras_sigmas=True, algorithm_type="sde-dpmsolver++")
    assert not scheduler_for_sampler("DPM++ 2M", karras_saved).config.use_karras_sigmas
    assert scheduler_for_sampler("DPM++ 2M", karras_saved).config.algorithm_type == "dpmsolver++"
    for other in ("use_exponential_sigmas", "use_beta_sigmas"):  # diffusers refuses two kinds of sigmas at once
        made = scheduler_for_sampler("DPM++ 2M Karras", DPMSolverMultistepScheduler(**{other: True}))
        assert made.config.use_karras_sigmas and not made.config[other]
        assert not scheduler_for_sampler("Euler", EulerDiscreteScheduler(**{other: True})).config[other]


def test_a_name_is_read_whatever_its_case_and_spaces() -> None:
    assert sampler_name("euler  A") == "Euler a"
    assert sampler_name(" dpm++ 2m sde karras ") == "DPM++ 2M SDE Karras"
    for unknown in ("DPM++ 2S a", "DPM adaptive", "Euler Karras", "Euler a Karras", ""):
        with pytest.raises(ValueError) as refused:
            sampler_name(unknown)
        assert str(refused.value) == (
            f"no sampler is named {unknown!r}: A1111's names that diffusers has a scheduler for are "
            + ", ".join(SAMPLER_NAMES)
        )
    with pytest.raises(TypeError, match="a sampler name must be a string, got int"):
        sampler_name(3)
    with pytest.raises(TypeError, match="`scheduler` must be a diffusers scheduler with a config, got object"):
        scheduler_for_sampler("Euler", object())


# -- clipcond generate --sampler, on a saved diffusers SD pipeline ------------------------------


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2M SDE Karras", "DPM2 a Karras", "PLMS"])
def test_generate_with_a_sampler_draws_what_diffusers_draws_with_its_scheduler(
    diffusers_sd_folder, tmp_path, name: str
) -> None:
    """An ancestral sampler, an SDE one (noise from the generator at every step), a second-order
    one (two model calls a step) and PLMS's warm-up, each pixel for pixel."""
    from diffusers import StableDiffusionPipeline

    png = tmp_path / "out.png"
    argv = ["generate", "a red circle", "-o", str(png), "--model", str(diffusers_sd_folder), "--sampler", name]
    assert main([*argv, "--steps", "3", "--seed", "4", "--negative", "blurry"]) == 0
    peer = StableDiffusionPipeline.from_pretrained(diffusers_sd_folder)
    peer.set_progress_bar_config(disable=True)
    peer.scheduler = _documented(name, peer.scheduler.config)
    expected = peer(
        "a red circle",
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(4)],
    ).images[0]
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(expected))


def test_an_unknown_sampler_is_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["generate", "a", "--sampler", "DPM fast"])
    assert stopped.value.code == 2
    assert "argument --sampler: no sampler is named 'DPM fast'" in capsys.readouterr().err


# -- schedule types ----------------------------------------------------------------------------

# diffusers' "Noise schedules and schedule types" table
DOCUMENTED_SCHEDULES = {
    "Karras": {"use_karras_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
    "Exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "Beta": {"timestep_spacing": "linspace", "use_beta_sigmas": True},
}


@pytest.mark.parametrize("schedule", sorted(DOCUMENTED_SCHEDULES))
@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Heun", "UniPC"])
def test_a_schedule_type_gives_the_documented_init_arguments(sd_pipe, sampler: str, schedule: str) -> None:
    import diffusers

    ours = scheduler_for_sampler(sampler, sd_pipe.scheduler, schedule)
    class_name, settings = DOCUMENTED[sampler]
    documented = getattr(diffusers, class_name).from_config(
        sd_pipe.scheduler.config, **settings, **DOCUMENTED_SCHEDULES[schedule]
    )
    assert type(ours) is type(documented) and _public(ours.config) == _public(documented.config)
    ours.set_timesteps(6)
    documented.set_timesteps(6)
    assert torch.equal(ours.timesteps, documented.timesteps) and torch.equal(ours.sigmas, documented.sigmas)


def test_automatic_is_the_samplers_own_and_karras_either_way_is_one_scheduler(sd_pipe) -> None:
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    for schedule in (None, "Automatic", "automatic"):
        made = scheduler_for_sampler("DPM++ 2M Karras", sd_pipe.scheduler, schedule)
        assert _public(made.config) == _public(_documented("DPM++ 2M Karras", sd_pipe.scheduler.config).config)
    both = scheduler_for_sampler("DPM++ 2M Karras", sd_pipe.scheduler, "Karras")
    apart = scheduler_for_sampler("dpm++ 2m", sd_pipe.scheduler, "KARRAS")
    assert _public(both.config) == _public(apart.config)
    # a schedule type alone keeps the model's scheduler class; Automatic alone changes nothing
    saved = EulerDiscreteScheduler(use_karras_sigmas=True, timestep_spacing="leading")
    made = scheduler_for_sampler(None, saved, "Exponential")
    assert type(made) is EulerDiscreteScheduler and made.config.use_exponential_sigmas
    assert not made.config.use_karras_sigmas and made.config.timestep_spacing == "linspace"
    kept = scheduler_for_sampler(None, DPMSolverMultistepScheduler(use_karras_sigmas=True), "Automatic")
    assert kept.config.use_karras_sigmas


@pytest.mark.parametrize(
    ("sampler", "schedule", "message"),
    [
        (
            "DPM++ 2M Karras",
            "Exponential",
            "sampler 'DPM++ 2M Karras' names Karras sigmas and schedule type 'Exponential' others: name the sampler "
            "'DPM++ 2M' with that schedule type",
        ),
        (
            "Euler a",
            "Karras",
            "schedule type 'Karras' needs use_karras_sigmas, which sampler 'Euler a' (EulerAncestralDiscreteScheduler) "
            "does not take",
        ),
        (
            "DPM++ SDE",
            "Beta",
            "schedule type 'Beta' needs timestep_spacing, which sampler 'DPM++ SDE' (DPMSolverSinglestepScheduler) "
            "does not take",
        ),
        (None, "Karras", "schedule type 'Karras' needs use_karras_sigmas, which the model's DDIMScheduler does not"),
        (None, None, "give a sampler, a schedule type or both"),
        ("Euler", "Polyexponential", "no schedule type is named 'Polyexponential': A1111's schedule types that "),
    ],
    ids=["karras-named", "no-karras", "no-spacing", "model-ddim", "neither", "unknown"],
)
def test_a_schedule_type_the_scheduler_cannot_take_is_refused(sd_pipe, sampler, schedule, message) -> None:
    with pytest.raises(ValueError) as refused:
        scheduler_for_sampler(sampler, sd_pipe.scheduler, schedule)
    assert str(refused.value).startswith(message)


def test_generate_with_a_schedule_type(diffusers_sd_folder, tmp_path, capsys) -> None:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    png = tmp_path / "out.png"
    argv = ["generate", "a red circle", "-o", str(png), "--model", str(diffusers_sd_folder), "--steps", "3"]
    assert main([*argv, "--sampler", "DPM++ 2M", "--schedule-type", "karras", "--seed", "2"]) == 0
    peer = StableDiffusionPipeline.from_pretrained(diffusers_sd_folder)
    peer.set_progress_bar_config(disable=True)
    peer.scheduler = DPMSolverMultistepScheduler.from_config(peer.scheduler.config, use_karras_sigmas=True)
    generator = [torch.Generator().manual_seed(2)]
    expected = peer("a red circle", num_inference_steps=3, guidance_scale=3.0, generator=generator).images[0]
    with Image.open(png) as image:
        assert np.array_equal(np.asarray(image), np.asarray(expected))
        assert "Sampler: DPM++ 2M, Schedule type: Karras," in image.text["parameters"]
    assert main([*argv, "--sampler", "Euler a", "--schedule-type", "Karras", "--force"]) == 2
    assert (
        "error: --sampler / --schedule-type: schedule type 'Karras' needs use_karras_sigmas" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main([*argv, "--schedule-type", "Uniform"])
    assert "argument --schedule-type: no schedule type is named 'Uniform'" in capsys.readouterr().err


def test_a_schedule_type_is_spelled_as_a_sampler_is_and_every_missing_setting_is_named() -> None:
    from diffusers import IPNDMScheduler

    from clipcond.pipelines.samplers import SCHEDULE_TYPES, schedule_type_name

    assert schedule_type_name(" sgm   UNIFORM ") == "SGM Uniform"
    with pytest.raises(ValueError) as refused:
        schedule_type_name("Uniform")
    assert str(refused.value) == (
        "no schedule type is named 'Uniform': A1111's schedule types that diffusers documents are "
        + ", ".join(SCHEDULE_TYPES)
    )
    with pytest.raises(TypeError, match="^a schedule type name must be a string, got float$"):
        schedule_type_name(1.5)
    with pytest.raises(ValueError) as refused:
        scheduler_for_sampler(None, IPNDMScheduler(), "Exponential")
    assert str(refused.value) == (
        "schedule type 'Exponential' needs timestep_spacing, use_exponential_sigmas, which the model's IPNDMScheduler "
        "does not take"
    )


def test_generate_refuses_a_schedule_type_the_scheduler_cannot_take_before_loading(
    diffusers_sd_folder, tmp_path, capsys, monkeypatch
) -> None:
    """The sampler's scheduler, or the one the model's folder saved, is known before loading:
    a schedule type it has no setting for is refused then."""
    import clipcond.pipelines.generate as generate

    loads = []
    monkeypatch.setattr(generate, "_load", lambda *given: loads.append(given))
    argv = ["generate", "a red circle", "-o", str(tmp_path / "o.png"), "--model", str(diffusers_sd_folder)]
    assert main([*argv, "--sampler", "Euler a", "--schedule-type", "Karras"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: --sampler / --schedule-type: schedule type 'Karras' needs use_karras_sigmas, which sampler 'Euler a' "
    )
    assert main([*argv, "--schedule-type", "Exponential"]) == 2  # the folder saved a DDIMScheduler
    assert "which the model's DDIMScheduler does not take" in capsys.readouterr().err
    assert loads == [] and not (tmp_path / "o.png").exists()


def test_the_saved_scheduler_class_is_read_from_a_folder_only(tmp_path) -> None:
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from clipcond.pipelines.samplers import saved_scheduler_class

    EulerDiscreteScheduler().save_pretrained(tmp_path / "model" / "scheduler")
    assert saved_scheduler_class(tmp_path / "model") is EulerDiscreteScheduler
    assert saved_scheduler_class(str(tmp_path / "model")) is None  # a hub id: known once loaded
    assert saved_scheduler_class(tmp_path / "elsewhere") is None
    config = tmp_path / "model" / "scheduler" / "scheduler_config.json"
    for written in (
        '{"_class_name": "NoSuchScheduler"}',
        '{"_class_name": "__version__"}',
        '{"_class_name": "UNet2DModel"}',
        "[1]",
        "{",
        "\xff",
    ):
        config.write_text(written, encoding="latin-1")
        assert saved_scheduler_class(tmp_path / "model") is None, written
    config.write_text('{"_class_name": "DDIMScheduler"}')
    assert saved_scheduler_class(tmp_path / "model") is DDIMScheduler


def test_a_scheduler_class_is_named_only_by_a_string_naming_a_diffusers_scheduler(tmp_path) -> None:
    import json

    from diffusers import DDIMScheduler

    from clipcond.pipelines.samplers import saved_scheduler_class, scheduler_class_named

    assert scheduler_class_named("DDIMScheduler") is DDIMScheduler
    for name in (None, 3, "", "DiffusionPipeline", "NoSuchScheduler", ["DDIMScheduler"]):
        assert scheduler_class_named(name) is None, name
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": 3}))
    assert saved_scheduler_class(tmp_path) is None
