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
