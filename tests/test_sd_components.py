"""pipelines/sd_components.py against diffusers' own constructors: the scheduler-config rewrites
of each Stable Diffusion task (text-to-image, img2img, inpainting) over six schedulers, the
rewrite warning's words and the line it points at, and the safety-checker warning's cases
(written from probe15's mutation run of the module)."""

from __future__ import annotations

import functools
import warnings

import diffusers
import pytest
from diffusers import (
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from tiny_pipelines import sd_components

import clipcond.pipelines.clip_conditioned as clip_conditioned
from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline, CLIPConditionedPipeline
from clipcond.pipelines.sd_components import normalise_scheduler_config

PAIRS = {
    "text": (CLIPConditionedPipeline, StableDiffusionPipeline, 4),
    "img2img": (CLIPConditionedImg2ImgPipeline, StableDiffusionImg2ImgPipeline, 4),
    "inpaint": (CLIPConditionedInpaintPipeline, StableDiffusionInpaintPipeline, 9),
}
SCHEDULERS = [
    ("DDIMScheduler", {}),  # steps_offset 0, clip_sample True
    ("DDIMScheduler", {"steps_offset": 2}),  # an offset other than 0 is rewritten too
    ("DDPMScheduler", {"steps_offset": 1, "clip_sample": True}),  # clip_sample alone
    ("PNDMScheduler", {"steps_offset": 1}),  # skip_prk_steps False alone
    ("EDMEulerScheduler", {}),  # none of the keys (Playground v2.5's family): nothing to rewrite
    ("LCMScheduler", {"steps_offset": 1}),  # clip_sample False: nothing to rewrite
]


@functools.cache
def parts(channels: int) -> dict:
    built = sd_components(channels)
    built.pop("scheduler")
    return built


def public(config) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


@pytest.mark.parametrize("task", sorted(PAIRS))
def test_each_task_rewrites_a_scheduler_config_as_its_stable_diffusion_pipeline_does(task) -> None:
    ours_class, peer_class, channels = PAIRS[task]
    for name, settings in SCHEDULERS:
        made = []
        for cls, extra in ((peer_class, dict(requires_safety_checker=False)), (ours_class, {})):
            scheduler = getattr(diffusers, name)(**settings)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pipe = cls(**parts(channels), scheduler=scheduler, safety_checker=None, feature_extractor=None, **extra)
            made.append((public(pipe.scheduler.config), any(issubclass(w.category, FutureWarning) for w in caught)))
        (peer_config, peer_warned), (ours_config, ours_warned) = made
        assert ours_config == peer_config, (task, name, settings)
        assert ours_warned == peer_warned, (task, name, settings)


def test_the_safety_checker_warning_is_stable_diffusions(monkeypatch) -> None:
    """Ours warns exactly where StableDiffusionPipeline's constructor warns."""
    from test_sd_parity import tiny_safety_checker

    checker, extractor = tiny_safety_checker()
    sd_module = diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion
    said = {"ours": [], "peer": []}
    monkeypatch.setattr(clip_conditioned.logger, "warning", lambda *a, **k: said["ours"].append(a))
    monkeypatch.setattr(sd_module.logger, "warning", lambda *a, **k: said["peer"].append(a))
    for with_checker in (False, True):
        for required in (False, True):
            pair = (
                dict(safety_checker=checker, feature_extractor=extractor)
                if with_checker
                else dict(safety_checker=None, feature_extractor=None)
            )
            for who, cls in (("peer", StableDiffusionPipeline), ("ours", CLIPConditionedPipeline)):
                said[who].clear()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cls(**parts(4), scheduler=diffusers.LCMScheduler(), **pair, requires_safety_checker=required)
            assert bool(said["ours"]) == bool(said["peer"]), (with_checker, required)


def test_a_requires_safety_checker_that_is_not_a_bool_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="`requires_safety_checker` must be a bool, got 'no'"):
        CLIPConditionedPipeline(**parts(4), scheduler=diffusers.LCMScheduler(), requires_safety_checker="no")


def test_the_rewrite_warning_says_what_was_rewritten_and_why() -> None:
    scheduler = DDIMScheduler()
    with pytest.warns(FutureWarning) as warned:
        normalise_scheduler_config(scheduler)
    first, second = (str(w.message) for w in warned)
    assert first.startswith(
        "DDIMScheduler's config has `steps_offset: 0`; using 1 as Stable Diffusion's pipelines do (timesteps"
    )
    assert second.startswith(
        "DDIMScheduler's config has `clip_sample: True`; using False as Stable Diffusion's pipelines do (clipping"
    )


@pytest.mark.parametrize(
    "cls, channels",
    [(CLIPConditionedPipeline, 4), (CLIPConditionedImg2ImgPipeline, 4), (CLIPConditionedInpaintPipeline, 9)],
)
def test_the_rewrite_warning_points_at_the_callers_line(cls, channels) -> None:
    parts = {**sd_components(channels), "scheduler": DDIMScheduler()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls(**parts)
    rewrites = [w for w in caught if "config has `steps_offset" in str(w.message)]
    assert rewrites and all(w.filename == __file__ for w in rewrites), [(w.filename, w.lineno) for w in rewrites]
