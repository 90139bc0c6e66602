"""`from_pipe` of the clipcond pipelines does not log diffusers' "should be kept in float32: []"
notice (diffusers' own `from_pipe` logs it once per model, also for models that keep no module
in float32); a model that does keep modules in float32 still gets it."""

from __future__ import annotations

import logging

import pytest
import tiny_pipelines

from clipcond.pipelines import (
    CLIPConditionedImg2ImgPipeline,
    CLIPConditionedInpaintPipeline,
    CLIPConditionedPipeline,
)

NOTICE = "should be kept in float32"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _notices(make) -> list[str]:
    logger = logging.getLogger("diffusers.models.modeling_utils")
    records = _Records()
    logger.addHandler(records)
    try:
        make()
    finally:
        logger.removeHandler(records)
    return [message for message in records.messages if NOTICE in message]


@pytest.mark.parametrize(
    "pipeline_class", [CLIPConditionedPipeline, CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline]
)
def test_from_pipe_logs_no_empty_float32_notice(pipeline_class) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    sd = tiny_pipelines.build_sd()
    assert len(_notices(lambda: StableDiffusionImg2ImgPipeline.from_pipe(sd))) == 2  # diffusers: UNet, VAE
    assert _notices(lambda: pipeline_class.from_pipe(sd)) == []


def test_a_model_that_keeps_modules_in_float32_still_gets_the_notice() -> None:
    sd = tiny_pipelines.build_sd()
    sd.unet._keep_in_fp32_modules = ["conv_in"]
    notices = _notices(lambda: CLIPConditionedPipeline.from_pipe(sd))
    assert len(notices) == 1 and "UNet2DConditionModel" in notices[0] and "conv_in" in notices[0]
