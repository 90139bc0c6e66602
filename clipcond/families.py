"""The pipeline families: one row of data per family, read by everything that needs to know one.

A `Family` row says which diffusers pipeline classes belong to the family, which of their
components hold the text encoders and which prompt argument each reads (`prompt_2`, ...), which
encoders the family's recipe takes, the keyword names its `__call__` reads, and the family's
defaults (the `Recipe`: layers, T5 budget, T5
attention mask, negatives). `TextConditioner` (validation, `pipeline_kwargs`,
`from_pipeline`), `CLIPConditionedPipeline` and the diffusion training setup all read these
rows; none of them spells a family's knowledge out again.

The core does not import diffusers: a pipeline is recognised by the names of its class and
base classes, so subclasses of a supported pipeline work too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from clipcond.recipes import Combine, Recipe
from clipcond.scalars import as_int


@dataclass(frozen=True)
class EncoderSlot:
    """Where a pipeline keeps one text encoder.

    Attributes:
        kind: "clip" or "t5".
        model: the component holding the model ("text_encoder_2").
        tokenizer: the component holding its tokenizer ("tokenizer_2").
        prompt: the `__call__` argument whose text this encoder reads ("prompt_2"); its
            negative is the same name prefixed with ``negative_``.
    """

    kind: Literal["clip", "t5"]
    model: str
    tokenizer: str
    prompt: str = "prompt"


@dataclass(frozen=True)
class Family:
    """One pipeline family.

    Attributes:
        name: the family's name, also its recipe's name ("sd", "sdxl", ...; "custom").
        recipe: how its encoders combine, with the family's defaults.
        pipeline_classes: diffusers pipeline classes of the family (subclasses match too).
        slots: the pipeline components holding the encoders, CLIPs first in channel order.
        clip_counts: numbers of CLIP encoders the recipe takes.
        t5: "required", "absent" or "optional" (or zeros in its place: `t5_zeros_when_missing`).
        t5_zeros_when_missing: a pipeline without its T5 feeds zero tokens of the T5 length
            (`max_sequence_length`) at the denoiser's joint width (SD3 without `text_encoder_3`).
        t5_length_by_class: the T5 budget of pipeline classes whose `__call__` default differs
            from the recipe's (PixArt-Sigma: 300).
        max_t5_length: the most `max_sequence_length` the family's `__call__` takes (SD3's and
            Flux's `check_inputs` refuse more than 512), or None.
        force_zeros_flag: the pipeline config flag that decides whether a missing negative
            prompt means zeros (SDXL's `force_zeros_for_empty_prompt`).
        embeds_keyword, pooled_keyword, mask_keyword: the `__call__` keyword names of the
            token embeddings, the pooled vector and the attention mask; negatives take the
            prefix ``negative_``.
        step_callback_tensors: what the family's `callback_on_step_end` can replace between
            steps: ("tokens" | "pooled", the tensor input's name) pairs; empty when its
            `__call__` has no such callback.
        step_callback_negatives: under classifier-free guidance those tensors hold the
            negatives' rows, then the prompts' (False: the prompts' alone).
        lora_scaled_kinds: the kinds of encoder ("clip", "t5") whose LoRA layers the family's
            `encode_prompt` runs at its `lora_scale` (diffusers scales `text_encoder` and
            `text_encoder_2`: SD3's T5 is `text_encoder_3`, Flux's is `text_encoder_2`); empty
            where `encode_prompt` takes no scale (PixArt).
        clip_tokens_dtype_of: the CLIP whose dtype the CLIP tokens are cast to when the CLIPs'
            dtypes differ, "first" or "last" (SDXL's `encode_prompt` casts to `text_encoder_2`'s,
            SD3's to `text_encoder`'s); see `TextConditioner.dtype`.
    """

    name: str
    recipe: Recipe
    pipeline_classes: tuple[str, ...] = ()
    slots: tuple[EncoderSlot, ...] = ()
    clip_counts: tuple[int, ...] = ()
    t5: Literal["required", "absent", "optional"] = "optional"
    t5_zeros_when_missing: bool = False
    t5_length_by_class: tuple[tuple[str, int], ...] = ()
    max_t5_length: int | None = None
    force_zeros_flag: str | None = None
    embeds_keyword: str = "prompt_embeds"
    pooled_keyword: str = "pooled_prompt_embeds"
    mask_keyword: str = "prompt_attention_mask"
    step_callback_tensors: tuple[tuple[str, str], ...] = ()
    step_callback_negatives: bool = True
    lora_scaled_kinds: tuple[Literal["clip", "t5"], ...] = ("clip",)
    clip_tokens_dtype_of: Literal["first", "last"] = "first"

    def encoders_fit(self, clip_count: int, has_t5: bool, has_t5_zeros: bool = False) -> bool:
        """Whether `clip_count` CLIP encoders and a T5 (or its zeros) are what the recipe takes."""
        if self.clip_counts and clip_count not in self.clip_counts:
            return False
        if self.t5 == "absent":
            return not has_t5
        if self.t5 == "required":
            return has_t5 or (self.t5_zeros_when_missing and has_t5_zeros)
        return True

    def expected_encoders(self) -> str:
        """The encoders the recipe takes, in words ("two CLIP encoders and a T5 encoder")."""
        words = {0: "no CLIP", 1: "one CLIP encoder", 2: "two CLIP encoders"}
        clips = " or ".join(words[count] for count in self.clip_counts).replace(
            "one CLIP encoder or two CLIP encoders", "one or two CLIP encoders"
        )
        if self.clip_counts == (1,) and self.t5 == "absent":
            clips = "exactly one CLIP encoder"
        t5 = {"required": "a T5 encoder", "absent": "no T5", "optional": "an optional T5 encoder"}[self.t5]
        if self.clip_counts == (0,):
            return f"{t5} and no CLIP"
        return f"{clips} and {t5}"

    def prompt_readers(self, clip_count: int, has_t5: bool) -> tuple[str, ...]:
        """The prompt argument each encoder reads, CLIPs in order then T5 ("prompt", "prompt_2", ...).

        CLIP encoders take the family's CLIP slots in order, so a pipeline without its first
        CLIP (SDXL's refiner) has its only CLIP read `prompt`, as diffusers' `encode_prompt`
        pairs prompts with the encoders it has. CLIPs beyond the family's slots (``custom``)
        read `prompt`.
        """
        clip_slots = [slot for slot in self.slots if slot.kind == "clip"]
        t5_slots = [slot for slot in self.slots if slot.kind == "t5"]
        clips = tuple(clip_slots[index].prompt if index < len(clip_slots) else "prompt" for index in range(clip_count))
        return clips + ((t5_slots[0].prompt if t5_slots else "prompt",) if has_t5 else ())

    def call_keywords(self, embeds: Any, prefix: str = "") -> dict[str, Any]:
        """`PromptEmbeds` -> the family's `__call__` keyword arguments, names prefixed by `prefix`
        ("" or "negative_"); the pooled vector and the mask where the embeddings have them
        (assembly gives a mask only where the recipe returns one)."""
        named = {f"{prefix}{self.embeds_keyword}": embeds.tokens}
        if embeds.pooled is not None:
            named[f"{prefix}{self.pooled_keyword}"] = embeds.pooled
        if embeds.mask is not None:
            named[f"{prefix}{self.mask_keyword}"] = embeds.mask
        return named


_CLIP = EncoderSlot("clip", "text_encoder", "tokenizer")
_CLIP_2 = EncoderSlot("clip", "text_encoder_2", "tokenizer_2", prompt="prompt_2")


def _classes(*stems: str) -> tuple[str, ...]:
    """A text-to-image class and its img2img and inpaint siblings, for each stem (the base
    pipeline, its ControlNet and PAG variants: their `encode_prompt` is the base's)."""
    return tuple(f"{stem}{suffix}" for stem in stems for suffix in ("Pipeline", "Img2ImgPipeline", "InpaintPipeline"))


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "sd",
            Recipe(name="sd", combine="concat_channels", clip_layer_from_end=1, clip_final_norm=True),
            pipeline_classes=_classes("StableDiffusion", "StableDiffusionControlNet", "StableDiffusionPAG")
            + ("StableDiffusionControlNetPAGPipeline", "StableDiffusionControlNetPAGInpaintPipeline"),
            slots=(_CLIP,),
            clip_counts=(1,),
            t5="absent",
            step_callback_tensors=(("tokens", "prompt_embeds"),),
        ),
        Family(
            "sdxl",
            Recipe(
                name="sdxl",
                combine="concat_channels",
                clip_layer_from_end=2,
                clip_final_norm=False,
                pooled="last",
                zero_negative_when_absent=True,
            ),
            pipeline_classes=_classes(
                "StableDiffusionXL",
                "StableDiffusionXLControlNet",
                "StableDiffusionXLControlNetUnion",
                "StableDiffusionXLPAG",
            )
            + ("StableDiffusionXLControlNetPAGPipeline", "StableDiffusionXLControlNetPAGImg2ImgPipeline"),
            slots=(_CLIP, _CLIP_2),
            clip_counts=(1, 2),
            t5="absent",
            force_zeros_flag="force_zeros_for_empty_prompt",
            step_callback_tensors=(("tokens", "prompt_embeds"), ("pooled", "add_text_embeds")),
            clip_tokens_dtype_of="last",
        ),
        Family(
            "sd3",
            Recipe(
                name="sd3",
                combine="concat_sequence",
                clip_layer_from_end=2,
                clip_final_norm=False,
                pooled="concat",
                pad_clip_to_t5_width=True,
                t5_max_length=256,
            ),
            pipeline_classes=_classes("StableDiffusion3")
            + (
                "StableDiffusion3ControlNetPipeline",
                "StableDiffusion3ControlNetInpaintingPipeline",
                "StableDiffusion3PAGPipeline",
                "StableDiffusion3PAGImg2ImgPipeline",
            ),
            slots=(_CLIP, _CLIP_2, EncoderSlot("t5", "text_encoder_3", "tokenizer_3", prompt="prompt_3")),
            clip_counts=(2,),
            t5="required",
            t5_zeros_when_missing=True,
            max_t5_length=512,
            step_callback_tensors=(("tokens", "prompt_embeds"), ("pooled", "pooled_prompt_embeds")),
        ),
        Family(
            "flux",
            # Flux reads only the CLIP's pooled vector, of the first window: cut it as diffusers does
            Recipe(
                name="flux",
                combine="clip_pooled_t5_tokens",
                pooled="last",
                t5_max_length=512,
                negative_optional=True,
                window_split="truncate",
            ),
            pipeline_classes=_classes("Flux", "FluxControl", "FluxControlNet")
            + ("FluxFillPipeline", "FluxKontextPipeline", "FluxKontextInpaintPipeline"),
            slots=(_CLIP, EncoderSlot("t5", "text_encoder_2", "tokenizer_2", prompt="prompt_2")),
            clip_counts=(1,),
            t5="required",
            max_t5_length=512,
            step_callback_tensors=(("tokens", "prompt_embeds"),),
            step_callback_negatives=False,
            lora_scaled_kinds=("clip", "t5"),
        ),
        Family(
            "pixart",
            Recipe(
                name="pixart",
                combine="clip_pooled_t5_tokens",
                t5_max_length=120,
                t5_attention_mask=True,
                return_mask=True,
                caption_cleaning="clean_caption",  # PixArt's __call__ defaults clean_caption=True
                # PixArt's __call__ defaults negative_prompt="", which it refuses next to
                # negative_prompt_embeds: pipeline_kwargs passes an explicit None.
                call_overrides=(("negative_prompt", None),),
            ),
            pipeline_classes=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
            slots=(EncoderSlot("t5", "text_encoder", "tokenizer"),),
            clip_counts=(0,),
            t5="required",
            t5_length_by_class=(("PixArtSigmaPipeline", 300),),
            lora_scaled_kinds=(),
        ),
        # Any CLIPs and/or a T5, joined as configured: clipcond's own pipeline and training.
        # Its recipe holds the defaults of every custom setting (`custom_recipe`).
        Family(
            "custom",
            Recipe(name="custom", pooled="last", t5_max_length=256, t5_attention_mask=False),
            pipeline_classes=("CLIPConditionedPipeline",),
            slots=(_CLIP, EncoderSlot("t5", "text_encoder_2", "tokenizer_2")),
            lora_scaled_kinds=("clip", "t5"),  # CLIPConditionedPipeline: text_encoder, text_encoder_2
        ),
    )
}

RECIPE_NAMES: tuple[str, ...] = tuple(FAMILIES)
BUILTIN_RECIPES: dict[str, Recipe] = {name: family.recipe for name, family in FAMILIES.items() if name != "custom"}


def get_family(name: str) -> Family:
    """The family row called `name`; ValueError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; expected one of {RECIPE_NAMES}")
    return FAMILIES[name]


def get_recipe(name: str) -> Recipe:
    """The built-in recipe called `name` (``custom`` recipes come from `custom_recipe` or a
    `ConditionerConfig`)."""
    if not isinstance(name, str):
        raise TypeError(f"`recipe` must be a string naming one of {RECIPE_NAMES}, got {type(name).__name__}")
    if name not in BUILTIN_RECIPES:
        hint = " (build a custom recipe with a ConditionerConfig)" if name == "custom" else ""
        raise ValueError(f"unknown `recipe` {name!r}; expected one of {RECIPE_NAMES}{hint}")
    return BUILTIN_RECIPES[name]


def custom_recipe(has_clip: bool, has_t5: bool, combine: Combine | None = None, **settings: Any) -> Recipe:
    """A ``custom`` recipe: the custom row's defaults with `settings` applied. Without
    `combine`, the join follows the encoders given: CLIP only -> ``concat_channels``,
    CLIP + T5 -> ``concat_sequence``, T5 only -> ``clip_pooled_t5_tokens``. Without CLIP
    there is no pooled vector. A setting given as None keeps the default."""
    if combine is None:
        if has_clip and has_t5:
            combine = "concat_sequence"
        elif has_t5:
            combine = "clip_pooled_t5_tokens"
        else:
            combine = "concat_channels"
    settings = {name: value for name, value in settings.items() if value is not None}
    if not has_clip:
        settings["pooled"] = "none"
    return dataclasses.replace(FAMILIES["custom"].recipe, combine=combine, **settings)


def pipeline_family(pipe: Any) -> tuple[Family, str]:
    """(family row, matched class name) of a diffusers pipeline; ValueError if unsupported.

    `CLIPConditionedPipeline` is not matched here: its recipe lives in its own config.
    """
    for klass in type(pipe).__mro__:
        for family in FAMILIES.values():
            if family.name != "custom" and klass.__name__ in family.pipeline_classes:
                return family, klass.__name__
    supported = ", ".join(sorted(name for f in FAMILIES.values() if f.name != "custom" for name in f.pipeline_classes))
    raise ValueError(
        f"`pipe` of class {type(pipe).__name__} is not supported by TextConditioner.from_pipeline; "
        f"supported classes (and their subclasses): {supported}"
    )


def encoders_in(family: Family, pipe: Any) -> tuple[list[tuple[Any, Any]], tuple[Any, Any] | None]:
    """The (model, tokenizer) pairs in `pipe`'s components that `family`'s slots name:
    (CLIP pairs in channel order, the T5 pair or None). An empty slot is skipped.

    Raises:
        ValueError: a slot holds a model but its tokenizer component is missing.
    """
    clip, t5 = [], None
    for slot in family.slots:
        model = getattr(pipe, slot.model, None)
        if model is None:
            continue
        tokenizer = getattr(pipe, slot.tokenizer, None)
        if tokenizer is None:
            raise ValueError(f"pipeline has `{slot.model}` but no `{slot.tokenizer}`")
        if slot.kind == "clip":
            clip.append((model, tokenizer))
        else:
            t5 = (model, tokenizer)
    return clip, t5


def _checked_t5_length(length: Any, family: Family, class_name: str) -> int | None:
    """`max_sequence_length` as given to `from_pipeline` (None: the family's default), checked as
    the family's `__call__` checks it: an int >= 2 (EOS and one token), at most its maximum."""
    if length is None:
        return None
    if family.t5 == "absent":
        raise ValueError(f"`max_sequence_length` is the T5's token budget; {class_name} has no T5")
    given, length = length, as_int(length)  # numpy's integers read as the int they hold
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"`max_sequence_length` must be an int >= 2 (EOS and one token), got {given!r}")
    if family.max_t5_length is not None and length > family.max_t5_length:
        raise ValueError(
            f"`max_sequence_length` cannot be greater than {family.max_t5_length} for {class_name} (as its "
            f"`__call__` refuses), got {length}"
        )
    return length


def conditioner_from_pipeline(cls, pipe: Any, clip_skip: int | None = None, **kwargs: Any):
    """Build `cls` (a TextConditioner) from `pipe`'s own encoders and tokenizers; no weights copied."""
    family, class_name = pipeline_family(pipe)
    recipe = family.recipe
    t5_length = _checked_t5_length(kwargs.pop("max_sequence_length", None), family, class_name)
    t5_length = t5_length or dict(family.t5_length_by_class).get(class_name)
    if t5_length is not None:
        recipe = dataclasses.replace(recipe, t5_max_length=t5_length)
    if family.force_zeros_flag is not None:
        force_zeros = bool(getattr(pipe.config, family.force_zeros_flag, True))
        recipe = dataclasses.replace(recipe, zero_negative_when_absent=force_zeros)
    clip, t5 = encoders_in(family, pipe)
    t5_zeros = None
    if t5 is None and family.t5_zeros_when_missing:
        # diffusers then feeds zeros of `max_sequence_length` tokens at the transformer's joint width.
        t5_zeros = (int(recipe.t5_max_length), int(pipe.transformer.config.joint_attention_dim))
    if not family.encoders_fit(len(clip), t5 is not None, t5_zeros is not None):
        raise ValueError(
            f"{class_name} is missing a text encoder or tokenizer needed by recipe {family.name!r} "
            f"(it needs {family.expected_encoders()}; found {len(clip)} CLIP and {'a' if t5 else 'no'} T5)"
        )
    return cls(recipe, clip=clip, t5=t5, clip_skip=clip_skip, t5_zeros=t5_zeros, **kwargs)
