"""Diffusers glue for clipcond, installed as ``clipcond.pipelines``.

    CLIPConditionedPipeline     text-to-image DiffusionPipeline whose prompts go through TextConditioner
    swap_text_encoder           put another CLIP text encoder into an existing SD-family pipeline

Both are imported on first use, so that `clipcond.pipelines.generate`'s argument parser (the
CLI) does not load diffusers.
"""

from typing import Any

__all__ = ["CLIPConditionedPipeline", "swap_text_encoder"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from clipcond.pipelines import clip_conditioned

        return getattr(clip_conditioned, name)
    raise AttributeError(f"module 'clipcond.pipelines' has no attribute {name!r}")
