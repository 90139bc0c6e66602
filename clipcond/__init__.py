"""clipcond: CLIP (and T5) text conditioning for diffusers text-to-image pipelines.

Public API:
    TextConditioner, PromptEmbeds   prompts -> embeddings, for every diffusers family
    parse_prompt, Fragment          the prompt weighting syntax
    Recipe, get_recipe              how encoders combine (the built-in ones: rows of clipcond.families)
    clip_tokenizer                  the real CLIP tokenizer, offline
    ConditionerConfig               YAML config of a conditioner (custom recipe)
    TextProjection                  the learned adapter of a custom recipe (a diffusers model)
    CLIPConditionedPipeline         prompt -> image (a diffusers pipeline)
"""

from clipcond.conditioning import TextConditioner
from clipcond.embeds import PromptEmbeds
from clipcond.families import get_recipe
from clipcond.prompts import Fragment, parse_prompt
from clipcond.recipes import Recipe
from clipcond.tokenization import clip_tokenizer

__version__ = "0.1.0"


def __getattr__(name: str):
    # The pipeline and the projection need diffusers; import them only when asked for (the core stays light).
    if name == "CLIPConditionedPipeline":
        from clipcond.pipelines import CLIPConditionedPipeline

        return CLIPConditionedPipeline
    if name == "TextProjection":
        from clipcond.projection import TextProjection

        return TextProjection
    raise AttributeError(f"module 'clipcond' has no attribute {name!r}")


__all__ = [
    "CLIPConditionedPipeline",
    "Fragment",
    "PromptEmbeds",
    "Recipe",
    "TextConditioner",
    "TextProjection",
    "clip_tokenizer",
    "get_recipe",
    "parse_prompt",
]
