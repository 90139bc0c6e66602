"""Diffusers glue for clipcond, installed as ``clipcond.pipelines``.

    CLIPConditionedPipeline     text-to-image DiffusionPipeline whose prompts go through TextConditioner
    CLIPConditionedImg2ImgPipeline   its img2img sibling (StableDiffusionImg2ImgPipeline's call)
    CLIPConditionedInpaintPipeline   its inpainting sibling (StableDiffusionInpaintPipeline's call)
    swap_text_encoder           put another CLIP text encoder into an existing SD-family pipeline
    scheduler_for_sampler       the diffusers scheduler diffusers' documentation maps an A1111 sampler name to

All are imported on first use (`clipcond.lazy_exports`), so that `clipcond.pipelines.generate`'s
argument parser (the CLI) loads neither torch nor diffusers.
"""

import importlib
from typing import Any

from clipcond.lazy_exports import lazy_exports

_EXPORTS = {
    "CLIPConditionedImg2ImgPipeline": "clipcond.pipelines.img2img",
    "CLIPConditionedInpaintPipeline": "clipcond.pipelines.inpaint",
    "CLIPConditionedPipeline": "clipcond.pipelines.clip_conditioned",
    "scheduler_for_sampler": "clipcond.pipelines.samplers",
    "swap_text_encoder": "clipcond.pipelines.swap",
}

_PIPELINES = ("CLIPConditionedPipeline", "CLIPConditionedImg2ImgPipeline", "CLIPConditionedInpaintPipeline")

_export, __dir__ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _PIPELINES:
        # A saved CLIPConditionedPipeline names `clipcond.tokenization` as its tokenizer's library,
        # and diffusers loads components only from modules already imported (`import clipcond`
        # no longer imports it), so `from_pretrained` needs it imported with the class.
        importlib.import_module("clipcond.tokenization")
    return _export(name)


__all__ = sorted(_EXPORTS)
