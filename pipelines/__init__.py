"""Diffusers glue for clipcond, installed as ``clipcond.pipelines``.

    CLIPConditionedPipeline     text-to-image DiffusionPipeline whose prompts go through TextConditioner
    swap_text_encoder           put another CLIP text encoder into an existing SD-family pipeline

Both are imported on first use, so that `clipcond.pipelines.generate`'s argument parser (the
CLI) does not load diffusers.
"""

from typing import Any

__all__ = ["CLIPConditionedPipeline", "swap_text_encoder"]


def __getattr__(name: str) -> Any:
    if name == "CLIPConditionedPipeline":
        from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

        return CLIPConditionedPipeline
    if name == "swap_text_encoder":
        from clipcond.pipelines.swap import swap_text_encoder

        return swap_text_encoder
    raise AttributeError(f"module 'clipcond.pipelines' has no attribute {name!r}")
