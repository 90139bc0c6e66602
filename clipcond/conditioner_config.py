"""`ConditionerConfig`: a conditioner (usually the ``custom`` recipe) described in YAML.

Example (configs/conditioners/clip-l-t5-sequence.yaml)::

    recipe: custom
    clip:
      - path: openai/clip-vit-large-patch14
    t5:
      path: google/t5-v1_1-base
    combine: concat_sequence
    projection_dim: 768
    t5_max_sequence_length: 128

Encoders load through transformers (`from_pretrained`), from a local folder or a hub id
(`clipcond.encoder_loading`); `TextConditioner.from_config` builds the conditioner. Settings
left unset take the family table's defaults (`clipcond.families`, the ``custom`` row for a
custom recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from clipcond.conditioner_setup import DEFAULT_MAX_BATCH_WINDOWS, check_max_batch_windows
from clipcond.config import load_config
from clipcond.families import BUILTIN_RECIPES, RECIPE_NAMES, custom_recipe
from clipcond.recipes import Recipe

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EncoderSource:
    """Where one text encoder comes from.

    Attributes:
        path: local folder or hub id of the transformers model.
        subfolder: subfolder inside `path` (e.g. "text_encoder" in a diffusers pipeline folder).
        tokenizer: folder or hub id of the tokenizer; default: `path`. ``builtin-clip``:
            OpenAI's CLIP tokenizer shipped with clipcond (pad token "<|endoftext|>").
        tokenizer_subfolder: subfolder of the tokenizer (e.g. "tokenizer").
    """

    path: str
    subfolder: str | None = None
    tokenizer: str | None = None
    tokenizer_subfolder: str | None = None


@dataclass
class ConditionerConfig:
    """Everything needed to build a `TextConditioner` without code.

    Attributes:
        recipe: "custom" or a built-in recipe name (then the encoders must fit it).
        clip: CLIP text encoders, in channel order.
        t5: the T5 encoder, or None.
        combine: custom only: "concat_channels", "concat_sequence" or
            "clip_pooled_t5_tokens"; default picked from the encoders given.
        clip_layer_from_end: custom only: CLIP hidden state to read (1 = last).
        clip_final_norm: custom only: pass it through the CLIP final layer norm.
        pooled: custom only: "none", "last" or "concat" CLIP pooled vectors.
        t5_max_sequence_length: T5 token budget, EOS included; None: the recipe's default
            (custom: 256).
        t5_attention_mask: custom only: mask T5 padding inside the encoder; None: the custom
            recipe's default (False, as the pipelines and training use it).
        return_mask: custom only: return the attention mask with the embeddings.
        projection_dim: custom only: learned linear projection to this width.
        clip_skip: skip this many final CLIP layers.
        parse_weights: read the weighting syntax in prompts.
        syntax: the weighting syntax prompts are written in: "a1111" (`(word:1.3)`, `BREAK`,
            prompt editing), "compel" (`word+`, `(words)1.3`; `clipcond.compel_syntax`) or
            "comfy" (ComfyUI's `(words:1.3)`, `embedding:name`; `clipcond.comfy_syntax`).
        emphasis: how weights change token states ("multiply", "a1111", "comfy", "compel";
            `clipcond.emphasis`); any recipe; None: the recipe's ("multiply").
        window_split: how a long prompt's CLIP windows are cut ("word", "a1111", "comfy",
            "truncate"; `clipcond.chunking`); any recipe; None: the recipe's ("truncate" for
            flux, whose pooled vector reads the first window only; "word" for the others).
        clean_caption: recipe "pixart" only: clean prompts as PixArt's pipelines do (True,
            their default) or only lower-case them (False); None: the recipe's.
        cache_size: prompts kept in memory (0: no cache).
        cache_dir: on-disk cache folder, or None.
        max_batch_windows: the most CLIP windows (or T5 sequences) one encoder call takes;
            None: every window of an `encode` call in one batch.
        dtype: "float32", "float16" or "bfloat16" for the loaded encoders.
    """

    recipe: str = "custom"
    clip: list[EncoderSource] = field(default_factory=list)
    t5: EncoderSource | None = None
    combine: Literal["concat_channels", "concat_sequence", "clip_pooled_t5_tokens"] | None = None
    clip_layer_from_end: int = 1
    clip_final_norm: bool = True
    pooled: Literal["none", "last", "concat"] = "last"
    t5_max_sequence_length: int | None = None
    t5_attention_mask: bool | None = None
    return_mask: bool = False
    projection_dim: int | None = None
    clip_skip: int | None = None
    parse_weights: bool = True
    syntax: Literal["a1111", "compel", "comfy"] = "a1111"
    emphasis: Literal["multiply", "a1111", "comfy", "compel"] | None = None
    window_split: Literal["word", "a1111", "comfy", "truncate"] | None = None
    clean_caption: bool | None = None
    cache_size: int = 512
    cache_dir: str | None = None
    max_batch_windows: int | None = DEFAULT_MAX_BATCH_WINDOWS
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.recipe not in RECIPE_NAMES:
            raise ValueError(f"unknown `recipe` {self.recipe!r}; expected one of {RECIPE_NAMES}")
        check_max_batch_windows(self.max_batch_windows)
        if self.cache_dir is not None and not self.cache_dir.strip():
            raise ValueError("`cache_dir` must be a folder path or null, got an empty string")
        if not self.clip and self.t5 is None:
            raise ValueError("a conditioner config needs at least one encoder under `clip` or `t5`")
        custom_only = {
            "combine": None,
            "clip_layer_from_end": 1,
            "clip_final_norm": True,
            "pooled": "last",
            "t5_attention_mask": None,
            "return_mask": False,
            "projection_dim": None,
        }
        if self.clean_caption is not None and self.recipe != "pixart":
            raise ValueError(f"`clean_caption` applies to recipe 'pixart' only, not {self.recipe!r}")
        if self.recipe != "custom":
            changed = [name for name, default in custom_only.items() if getattr(self, name) != default]
            if changed:
                raise ValueError(f"keys {changed} apply to recipe 'custom' only, not {self.recipe!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The `dtype` setting as a torch dtype."""
        return _DTYPES[self.dtype]

    @classmethod
    def from_yaml(cls, path: str | Path) -> ConditionerConfig:
        """Load and validate a YAML file (an unknown key is an error naming key and file)."""
        return load_config(cls, path)

    def to_recipe(self) -> Recipe:
        """The `Recipe` this config describes."""
        if self.recipe != "custom":
            recipe = BUILTIN_RECIPES[self.recipe]
            if self.t5_max_sequence_length is not None:
                recipe = replace(recipe, t5_max_length=self.t5_max_sequence_length)
            return recipe
        return custom_recipe(
            has_clip=bool(self.clip),
            has_t5=self.t5 is not None,
            combine=self.combine,
            clip_layer_from_end=self.clip_layer_from_end,
            clip_final_norm=self.clip_final_norm,
            pooled=self.pooled,
            t5_max_length=self.t5_max_sequence_length,
            t5_attention_mask=self.t5_attention_mask,
            return_mask=self.return_mask,
        )
