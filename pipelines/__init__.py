"""Diffusers glue for clipcond, installed as ``clipcond.pipelines``.

    CLIPConditionedPipeline     text-to-image DiffusionPipeline whose prompts go through TextConditioner
    swap_text_encoder           put another CLIP text encoder into an existing SD-family pipeline
"""

from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline, swap_text_encoder

__all__ = ["CLIPConditionedPipeline", "swap_text_encoder"]
