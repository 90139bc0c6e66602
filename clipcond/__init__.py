"""clipcond: CLIP (and T5) text conditioning for diffusers text-to-image pipelines.

Public API:
    TextConditioner, PromptEmbeds   prompts -> embeddings, for every diffusers family
    parse_prompt, Fragment          the prompt weighting syntax
    Recipe, get_recipe              how encoders combine (the built-in ones: rows of clipcond.families)
    clip_tokenizer                  the real CLIP tokenizer, offline
    ConditionerConfig               YAML config of a conditioner (custom recipe)
    TextProjection                  the learned adapter of a custom recipe (a diffusers model)
    CLIPConditionedPipeline         prompt -> image (a diffusers pipeline)
    CLIPConditionedImg2ImgPipeline  image + prompt -> image
    CLIPConditionedInpaintPipeline  image + mask + prompt -> image

Each name is imported from its module when first used (`clipcond.lazy_exports`): the parser
needs no torch, the tokenizer only transformers' tokenizer classes, the pipeline diffusers.
"""

from clipcond.lazy_exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "CLIPConditionedImg2ImgPipeline": "clipcond.pipelines",
    "CLIPConditionedInpaintPipeline": "clipcond.pipelines",
    "CLIPConditionedPipeline": "clipcond.pipelines",
    "ConditionerConfig": "clipcond.conditioner_config",
    "Fragment": "clipcond.prompts",
    "PromptEmbeds": "clipcond.embeds",
    "Recipe": "clipcond.recipes",
    "TextConditioner": "clipcond.conditioning",
    "TextProjection": "clipcond.projection",
    "clip_tokenizer": "clipcond.tokenization",
    "get_recipe": "clipcond.families",
    "parse_prompt": "clipcond.prompts",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
