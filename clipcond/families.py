"""Which recipe an existing diffusers pipeline uses, and where its encoders are.

The core does not import diffusers: a pipeline is recognised by the names of its class and
base classes, so subclasses of a supported pipeline work too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clipcond.recipes import BUILTIN_RECIPES, Recipe

PIPELINE_FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3",
    "StableDiffusion3InpaintPipeline": "sd3",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
    "FluxInpaintPipeline": "flux",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
}

# Default T5 budget of each pipeline's __call__ where it differs from the recipe's.
_T5_LENGTH_BY_CLASS = {"PixArtSigmaPipeline": 300}


def pipeline_family(pipe: Any) -> tuple[str, str]:
    """(recipe name, matched class name) for a diffusers pipeline; ValueError if unsupported."""
    for klass in type(pipe).__mro__:
        if klass.__name__ in PIPELINE_FAMILIES:
            return PIPELINE_FAMILIES[klass.__name__], klass.__name__
    supported = ", ".join(sorted(PIPELINE_FAMILIES))
    raise ValueError(
        f"`pipe` of class {type(pipe).__name__} is not supported by TextConditioner.from_pipeline; "
        f"supported classes (and their subclasses): {supported}"
    )


def _pair(pipe: Any, model_name: str, tokenizer_name: str):
    model = getattr(pipe, model_name, None)
    if model is None:
        return None
    tokenizer = getattr(pipe, tokenizer_name, None)
    if tokenizer is None:
        raise ValueError(f"pipeline has `{model_name}` but no `{tokenizer_name}`")
    return (model, tokenizer)


def conditioner_from_pipeline(cls, pipe: Any, clip_skip: int | None = None, **kwargs: Any):
    """Build `cls` (a TextConditioner) from `pipe`'s own encoders and tokenizers; no weights copied."""
    family, class_name = pipeline_family(pipe)
    recipe: Recipe = BUILTIN_RECIPES[family]
    max_sequence_length = kwargs.pop("max_sequence_length", None)
    t5_length = max_sequence_length or _T5_LENGTH_BY_CLASS.get(class_name)
    if t5_length is not None:
        recipe = dataclasses.replace(recipe, t5_max_length=t5_length)
    clip, t5, t5_zeros = [], None, None
    if family == "sd":
        clip = [_pair(pipe, "text_encoder", "tokenizer")]
    elif family == "sdxl":
        clip = [
            p for p in (_pair(pipe, "text_encoder", "tokenizer"), _pair(pipe, "text_encoder_2", "tokenizer_2")) if p
        ]
        force_zeros = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", True))
        recipe = dataclasses.replace(recipe, zero_negative_when_absent=force_zeros)
    elif family == "sd3":
        clip = [_pair(pipe, "text_encoder", "tokenizer"), _pair(pipe, "text_encoder_2", "tokenizer_2")]
        t5 = _pair(pipe, "text_encoder_3", "tokenizer_3")
        if t5 is None:
            # diffusers then feeds zeros of the CLIP length at the transformer's joint width.
            t5_zeros = (
                int(getattr(pipe, "tokenizer_max_length", 77)),
                int(pipe.transformer.config.joint_attention_dim),
            )
    elif family == "flux":
        clip = [_pair(pipe, "text_encoder", "tokenizer")]
        t5 = _pair(pipe, "text_encoder_2", "tokenizer_2")
    elif family == "pixart":
        t5 = _pair(pipe, "text_encoder", "tokenizer")
    if any(item is None for item in clip):
        raise ValueError(f"{class_name} is missing a CLIP text encoder or tokenizer needed by recipe {family!r}")
    return cls(recipe, clip=clip, t5=t5, clip_skip=clip_skip, t5_zeros=t5_zeros, **kwargs)
