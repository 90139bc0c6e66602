"""`pipelines/sd_components.py` part by part, on bare diffusers schedulers: each rewrite's whole
warning, what is left alone, the in-place change a sharing pipeline sees, and the safety-checker
rules (the four cases and both refusals, whole)."""

from __future__ import annotations

import warnings

import pytest
from diffusers import DDIMScheduler, EDMEulerScheduler, EulerDiscreteScheduler, PNDMScheduler

from clipcond.pipelines.sd_components import (
    INPAINT_REWRITES,
    TEXT_TO_IMAGE_REWRITES,
    check_safety_checker,
    normalise_scheduler_config,
)


def _messages(scheduler, rewrites=TEXT_TO_IMAGE_REWRITES) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        normalise_scheduler_config(scheduler, rewrites)
    assert all(w.category is FutureWarning for w in caught)
    return [str(w.message) for w in caught]


def test_the_task_rewrite_lists() -> None:
    assert TEXT_TO_IMAGE_REWRITES == ("steps_offset", "clip_sample")
    assert INPAINT_REWRITES == ("steps_offset", "skip_prk_steps")


def test_a_fresh_ddim_scheduler_gets_both_text_to_image_rewrites_each_warned_whole() -> None:
    scheduler = DDIMScheduler()
    assert _messages(scheduler) == [
        "DDIMScheduler's config has `steps_offset: 0`; using 1 as Stable Diffusion's pipelines do "
        "(timesteps then fall where Stable Diffusion's were sampled). Update its scheduler_config.json "
        "to silence this.",
        "DDIMScheduler's config has `clip_sample: True`; using False as Stable Diffusion's pipelines do "
        "(clipping the predicted sample to [-1, 1] would clip latents). Update its scheduler_config.json "
        "to silence this.",
    ]
    assert (scheduler.config.steps_offset, scheduler.config.clip_sample) == (1, False)
    assert _messages(scheduler) == []  # rewritten once, then right


def test_the_inpaint_rewrites_leave_clip_sample_and_turn_on_skip_prk_steps() -> None:
    scheduler = PNDMScheduler(steps_offset=3)
    assert _messages(scheduler, INPAINT_REWRITES) == [
        "PNDMScheduler's config has `steps_offset: 3`; using 1 as Stable Diffusion's pipelines do "
        "(timesteps then fall where Stable Diffusion's were sampled). Update its scheduler_config.json "
        "to silence this.",
        "PNDMScheduler's config has `skip_prk_steps: False`; using True as Stable Diffusion's pipelines do "
        "(as Stable Diffusion's inpainting pipeline runs PNDM). Update its scheduler_config.json to "
        "silence this.",
    ]
    assert (scheduler.config.steps_offset, scheduler.config.skip_prk_steps) == (1, True)
    ddim = DDIMScheduler(steps_offset=1)
    assert _messages(ddim, INPAINT_REWRITES) == [] and ddim.config.clip_sample is True


def test_right_values_and_missing_keys_are_left_alone() -> None:
    right = DDIMScheduler(steps_offset=1, clip_sample=False)
    assert _messages(right) == [] and _messages(right, INPAINT_REWRITES) == []
    pndm = PNDMScheduler(steps_offset=1, skip_prk_steps=True)
    assert _messages(pndm, INPAINT_REWRITES) == []
    euler = EulerDiscreteScheduler(steps_offset=1)  # no clip_sample, no skip_prk_steps
    before = dict(euler.config)
    assert _messages(euler) == [] and _messages(euler, INPAINT_REWRITES) == []
    assert dict(euler.config) == before
    edm = EDMEulerScheduler()  # none of the keys at all
    before = dict(edm.config)
    assert _messages(edm) == [] and _messages(edm, INPAINT_REWRITES) == []
    assert dict(edm.config) == before


def test_only_a_clip_sample_of_true_itself_is_rewritten_as_stable_diffusion_checks_it() -> None:
    """StableDiffusionPipeline tests `clip_sample is True`: a truthy 1 from a hand-written JSON stays."""
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=1)
    assert _messages(scheduler) == [] and scheduler.config.clip_sample == 1


def test_only_a_skip_prk_steps_of_false_itself_is_rewritten_as_inpainting_checks_it() -> None:
    """StableDiffusionInpaintPipeline tests `skip_prk_steps is False`: a falsy 0 stays."""
    scheduler = PNDMScheduler(steps_offset=1, skip_prk_steps=0)
    assert _messages(scheduler, INPAINT_REWRITES) == [] and scheduler.config.skip_prk_steps == 0


def test_no_scheduler_is_nothing_to_do() -> None:
    assert _messages(None) == []


def test_the_rewrite_changes_the_schedulers_own_config_keeping_the_rest() -> None:
    scheduler = DDIMScheduler(num_train_timesteps=500, beta_schedule="scaled_linear")
    _messages(scheduler)
    config = scheduler.config
    assert (config.num_train_timesteps, config.beta_schedule, config.steps_offset) == (500, "scaled_linear", 1)
    assert type(config).__name__ == "FrozenDict"


# ---------------------------------------------------------------------------- safety checker


@pytest.mark.parametrize(
    "checker, extractor, required, warn",
    [
        (None, None, True, True),
        (None, None, False, False),
        (None, object(), True, True),
        (object(), object(), True, False),
        (object(), object(), False, False),
    ],
)
def test_the_safety_checker_warning_is_asked_for_only_when_it_is_off_but_required(
    checker, extractor, required, warn
) -> None:
    assert check_safety_checker(checker, extractor, required) is warn


@pytest.mark.parametrize("required", ["no", 1, None])
def test_a_requirement_that_is_not_a_bool_is_refused_whole(required) -> None:
    with pytest.raises(TypeError) as refused:
        check_safety_checker(None, None, required)
    assert str(refused.value) == f"`requires_safety_checker` must be a bool, got {required!r}"


def test_a_safety_checker_without_its_feature_extractor_is_refused_whole() -> None:
    with pytest.raises(ValueError) as refused:
        check_safety_checker(object(), None, False)
    assert str(refused.value) == (
        "a `safety_checker` needs a `feature_extractor` (a CLIPImageProcessor) to prepare its input; "
        "pass one, or pass safety_checker=None"
    )
