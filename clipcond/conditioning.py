"""`TextConditioner`: prompts -> `PromptEmbeds` for any recipe, one mechanism for all.

The path of a batch of prompts (`TextConditioner.encode`):
0. resolve which text each encoder reads (`clipcond.prompt_arguments`: `prompt_2`, `prompt_3`),
   with multi-vector textual-inversion tokens expanded (`clipcond.textual_inversion`);
1. parse each text into weighted fragments (`clipcond.prompts`);
2. look each prompt up in the cache by the texts its encoders read (`clipcond.cache_key`,
   `clipcond.cache`);
3. for the misses, tokenize into windows, run every window of every prompt through each
   encoder in one batch and scale token states by their weights (`clipcond.window_encoding`);
4. assemble: pad prompts to the same number of CLIP windows, join windows and encoders as the
   recipe says, apply the optional learned projection, never cached (`clipcond.assembly`).

`pipeline_kwargs` names the result as the pipeline family's `__call__` expects
(`clipcond.families`). This module keeps the checks of what a conditioner is built from.

Why this module is over 400 lines: `TextConditioner` is the public class users meet, and its
docstrings (each argument, each mode) are most of it; the work is in the modules named above.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch

from clipcond.assembly import assemble, pooled_vectors
from clipcond.cache import EmbeddingCache
from clipcond.cache_key import reading_keys, settings_key
from clipcond.caption_cleaning import CaptionCleaner, cleaning_for
from clipcond.combined_records import combine_records
from clipcond.comfy_syntax import unheld_embeddings
from clipcond.compel_syntax import CompelBlend, CompelConjunction, parse_compel_combination
from clipcond.conditioner_setup import (
    DEFAULT_MAX_BATCH_WINDOWS,
    EncoderLike,
    as_encoders,
    build_projection,
    check_cache_dir,
    check_cache_size,
    check_clip_layer,
    check_clip_skip,
    check_clip_windows,
    check_encoders,
    check_max_batch_windows,
    device_and_dtype,
    family_of,
    resolve_recipe,
)
from clipcond.config_fingerprint import ConfigFingerprints
from clipcond.embeds import PromptEmbeds
from clipcond.emphasis_modes import MODES_FROM_EMPTY, check_emphasis
from clipcond.empty_states import EmptyPromptStates
from clipcond.encoders import TextEncoder, dtype_to_cast
from clipcond.families import Family
from clipcond.fingerprint import WeightsWatch
from clipcond.lora_scale import check_lora_scale, lora_scaled
from clipcond.model_locks import holding, holding_while
from clipcond.network_tags import LORA_TAG_POLICIES, split_network_tags, without_network_tags
from clipcond.prompt_arguments import (
    Reading,
    as_prompt_list,
    check_images_per_prompt,
    check_readers,
    negative_prompt_list,
    readings,
)
from clipcond.prompt_syntaxes import check_syntax, parse_in_syntax
from clipcond.prompts import Fragment
from clipcond.recipes import Recipe
from clipcond.record_spec import RecordSpec, check_record, check_records, expected_record
from clipcond.records import EncodedPrompt
from clipcond.scheduled_embeds import (
    PromptSchedule,
    StepRows,
    StepSwap,
    build_schedule,
    check_steps,
    fixed_prompts,
    schedule_for_pipeline,
)
from clipcond.textual_inversion import (
    add_vectors,
    check_new_tokens,
    expand_tokens,
    multi_vector_tokens,
    offload_lifted,
    placements,
    read_textual_inversion,
    sequential_offload,
    vector_tokens,
)
from clipcond.tokenizer_fingerprint import TokenizerFingerprints
from clipcond.window_encoding import encode_fragments
from clipcond.window_splits import check_window_split

if TYPE_CHECKING:  # the projection module needs diffusers; the conditioner imports it only when used
    from clipcond.projection import TextProjection

__all__ = ["TextConditioner", "as_prompt_list"]  # as_prompt_list lives in clipcond.prompt_arguments


def _trains(module: torch.nn.Module) -> bool:
    """True while `module` is being trained: in train mode, with trainable parameters, and with
    grad enabled."""
    return torch.is_grad_enabled() and module.training and any(p.requires_grad for p in module.parameters())


class TextConditioner:
    """Turns prompts into `PromptEmbeds` with a recipe and its text encoders.

    Args:
        recipe: a built-in recipe name ("sd", "sdxl", "sd3", "flux", "pixart", "custom") or a
            `Recipe`. "custom" as a string picks the join from the encoders given:
            CLIP only -> ``concat_channels``, CLIP + T5 -> ``concat_sequence``, T5 only ->
            ``clip_pooled_t5_tokens``.
        clip: CLIP text encoders in order, as `TextEncoder` or (model, tokenizer) pairs.
        t5: the T5 encoder, or None.
        clip_skip: skip this many final CLIP layers (as in diffusers: 1 = one layer earlier).
            Applied to prompts and negative prompts alike.
        projection_dim: add a learned `torch.nn.Linear` to this width (``custom`` only):
            one on the joined channels (``concat_channels``), one per source
            (``concat_sequence``), or on the T5 tokens (``clip_pooled_t5_tokens``). The layers
            live in a `TextProjection` (`self.projection`).
        projection: an existing `TextProjection` (e.g. a pipeline's trained `text_projection`)
            to use instead of a new one; its layers must fit the recipe and encoders.
        parse_weights: read the weighting syntax `(word:1.3)`, `[word]`, `BREAK`; False reads
            them as plain text (prompt editing in `pipeline_kwargs(..., num_inference_steps=N)`
            still applies, as with A1111's emphasis "None").
        syntax: the weighting syntax prompts are written in: "a1111" (`clipcond.prompts`:
            `(word:1.3)`, `[word]`, `BREAK`, and A1111's prompt editing and `AND` where steps
            are read), "compel" (`clipcond.compel_syntax`: `word+`, `word-`, `(words)1.3`,
            `"words"+`, `("a", "b").and(1, 0.5)`, `("a", "b").blend(0.7, 0.3)`) or "comfy"
            (`clipcond.comfy_syntax`: ComfyUI's `(words)`, `(words:1.3)`, an explicit weight
            replacing the enclosing one, and `embedding:name`); in the last two no text changes
            between steps: `[a:b:0.5]`, `BREAK` and `AND` are text. Pair "compel" with
            `emphasis="compel"` for compel's embeddings, "comfy" with `emphasis="comfy"` and
            `window_split="comfy"` for ComfyUI's. Needs `parse_weights`.
        lora_tags: A1111's ``<lora:name:0.8>`` tags in prompts of syntax "a1111": "refuse"
            (default: a ValueError, since only a pipeline can switch on the adapters a tag
            names; `CLIPConditionedPipeline` reads them) or "strip" (taken out of the text, as
            A1111 takes them out, whatever they hold: for captions, as `train-diffusion` reads
            them with ``caption_syntax: true``).
        emphasis: how weights change token states, on CLIP and T5 alike (`clipcond.emphasis`):
            "multiply" (A1111's "No norm"), "a1111" (A1111's default, "Original": the window's
            mean kept), "comfy" (ComfyUI: away from the empty prompt's states) or "compel"
            (compel's up-weighting and masked down-weighting). None: the recipe's, "multiply"
            for every family. That default scales each token's states by its weight and
            nothing else, so a weight touches only its own tokens, as it always has here; pick
            the mode of the UI a prompt was written for to get its image.
        window_split: how a prompt longer than a CLIP window is cut (`clipcond.chunking`):
            "word" (the partial word moves to the next window), "a1111" (what follows the
            last comma within 20 tokens moves, else the window ends at its 75th token, as
            A1111), "comfy" (a space-separated word of fewer than 8 tokens moves whole, as
            ComfyUI) or "truncate" (one window of the first 75 tokens, the rest dropped, as
            diffusers' `encode_prompt`). None: the recipe's: "truncate" for Flux (it reads only
            the pooled vector of the first window), "word" for the other families.
        cache_size: prompts kept in the in-memory cache (0 turns caching off).
        cache_dir: folder for the on-disk cache (safetensors), or None.
        max_batch_windows: the most CLIP windows (or T5 sequences) one encoder call takes, so
            that a huge prompt or thousands of prompts encode in bounded memory; None: all
            windows of an `encode` call in one batch. Up to this size the result is that of
            one batch.
        t5_zeros: (length, width) of zero T5 tokens to use when a recipe expects T5 but none is
            given (SD3 pipelines loaded without `text_encoder_3`).
        clean_caption: PixArt's switch of that name (its `__call__`'s, default True): clean
            the prompt as diffusers' PixArt pipelines do (URLs, HTML, most punctuation
            removed; needs beautifulsoup4 and ftfy, else lower-cased and stripped, as there), or
            (False) only lower-case and strip it. None: the recipe's (`clipcond.caption_cleaning`);
            for a recipe that reads prompts as they are, an error.
        compute_dtype: run every encoder in this dtype (e.g. ``torch.float32`` for a float16
            T5, which overflows into NaN) and return states in its weights' dtype. The models
            are not cast (a pipeline sharing them keeps its dtype): each encode runs on a copy
            of the weights in this dtype, which exists only while it runs
            (`clipcond.encoders.TextEncoder`, which also takes it per encoder). None: each
            encoder computes in its own dtype.
    """

    def __init__(
        self,
        recipe: str | Recipe,
        clip: Sequence[EncoderLike] = (),
        t5: EncoderLike | None = None,
        *,
        clip_skip: int | None = None,
        projection_dim: int | None = None,
        projection: TextProjection | None = None,
        parse_weights: bool = True,
        syntax: str = "a1111",
        lora_tags: str = "refuse",
        emphasis: str | None = None,
        window_split: str | None = None,
        cache_size: int = 512,
        cache_dir: str | None = None,
        max_batch_windows: int | None = DEFAULT_MAX_BATCH_WINDOWS,
        t5_zeros: tuple[int, int] | None = None,
        compute_dtype: torch.dtype | None = None,
        clean_caption: bool | None = None,
    ) -> None:
        self.clip, self.t5 = as_encoders(clip, t5, compute_dtype)
        self.recipe = resolve_recipe(recipe, bool(self.clip), self.t5 is not None)
        if emphasis is not None:  # part of the recipe, so of the cache key
            self.recipe = dataclasses.replace(self.recipe, emphasis=check_emphasis(emphasis))
        if window_split is not None:  # part of the recipe too
            if not self.clip:
                raise ValueError(
                    f"`window_split` ({window_split!r}) says how CLIP windows are cut, and this conditioner has no CLIP "
                    "encoder: its T5 reads one sequence, cut at its token budget (`max_sequence_length`)"
                )
            self.recipe = dataclasses.replace(self.recipe, window_split=check_window_split(window_split))
        cleaning = cleaning_for(self.recipe.caption_cleaning, clean_caption)  # as used: part of the cache key
        if cleaning != self.recipe.caption_cleaning:
            self.recipe = dataclasses.replace(self.recipe, caption_cleaning=cleaning)
        self._clean = CaptionCleaner(cleaning)
        check_encoders(self.recipe, len(self.clip), self.t5 is not None, t5_zeros)
        check_clip_windows(self.recipe, self.clip)
        check_clip_layer(self.recipe, self.clip)
        self.clip_skip = check_clip_skip(self.recipe, self.clip, clip_skip)
        self._active_recipe = self.recipe.with_clip_skip(self.clip_skip)
        if not isinstance(parse_weights, bool):
            raise TypeError(f"`parse_weights` must be a bool, got {parse_weights!r}")
        self.parse_weights = parse_weights
        self.syntax = check_syntax(syntax)
        if lora_tags not in LORA_TAG_POLICIES:
            raise ValueError(f"`lora_tags` must be one of {list(LORA_TAG_POLICIES)}, got {lora_tags!r:.80}")
        self.lora_tags = lora_tags
        if syntax != "a1111" and not parse_weights:
            raise ValueError(
                f"`syntax={syntax!r}` says how weights are written, and `parse_weights=False` reads none: "
                "leave `syntax` at 'a1111' to read prompts as plain text"
            )
        self.max_batch_windows = check_max_batch_windows(max_batch_windows)
        cache_size, cache_dir = check_cache_size(cache_size), check_cache_dir(cache_dir)
        self.t5_zeros = t5_zeros
        self.projection = build_projection(
            self.recipe, self.clip_width, self.t5_width, projection_dim, projection, self.encoders[0]
        )
        self.cache = EmbeddingCache(cache_size, cache_dir) if (cache_size or cache_dir is not None) else None
        self._watch = WeightsWatch([encoder.model for encoder in self.encoders])
        self._tokenizer_fingerprints = TokenizerFingerprints()
        self._config_fingerprints = ConfigFingerprints()
        self._seen_state: tuple | None = None
        self._empty_states = EmptyPromptStates()

    # ------------------------------------------------------------------ what it is built from

    @property
    def family(self) -> Family:
        """The family row of this conditioner's recipe (keyword names, accepted encoders)."""
        return family_of(self.recipe)

    @property
    def prompt_readers(self) -> tuple[str, ...]:
        """The prompt argument each encoder reads, CLIPs in order then T5: ("prompt",
        "prompt_2") for SDXL, ("prompt", "prompt_2", "prompt_3") for SD3, ("prompt",
        "prompt_2") for Flux (its T5 reads `prompt_2`), ("prompt",) for SD and PixArt."""
        return self.family.prompt_readers(len(self.clip), self.t5 is not None)

    @property
    def encoders(self) -> list[TextEncoder]:
        """Every encoder, CLIPs first, then T5."""
        return [*self.clip, *([self.t5] if self.t5 is not None else [])]

    @property
    def clip_width(self) -> int:
        """Channels of the joined CLIP token states (0 without CLIP)."""
        return sum(encoder.width for encoder in self.clip)

    @property
    def t5_width(self) -> int:
        """Channels of the T5 token states (0 without T5)."""
        if self.t5 is not None:
            return self.t5.width
        return self.t5_zeros[1] if self.t5_zeros is not None else 0

    @property
    def token_width(self) -> int:
        """Channels of the returned token embeddings."""
        if self.projection is not None:
            return self.projection.config.projection_dim
        combine = self.recipe.combine
        if combine == "concat_channels":
            return self.clip_width
        if combine == "clip_pooled_t5_tokens":
            return self.t5_width
        # concat_sequence: the widths are equal, or CLIP is padded to the T5 width
        return self.t5_width or self.clip_width

    def __repr__(self) -> str:
        """One line: the recipe, each encoder (its class and width), the settings that shape the
        embeddings, the cache, and where and in what dtype the embeddings come back."""

        def described(encoder: TextEncoder) -> str:
            return f"{type(encoder.model).__name__}(width={encoder.width})"

        recipe = self._active_recipe
        cache = "off"
        if self.cache is not None:
            cache = f"{self.cache.max_entries} in memory"
            if self.cache.directory is not None:
                cache += f" and {str(self.cache.directory)!r}"
        # clip_skip and window_split are CLIP settings: T5 reads one sequence from its last layer
        clip_settings = f"clip_skip={self.clip_skip}, window_split={recipe.window_split!r}, " if self.clip else ""
        tags = f"lora_tags={self.lora_tags!r}, " if self.lora_tags != "refuse" else ""  # shown where not the default
        return (
            f"TextConditioner(recipe={recipe.name!r}, clip=[{', '.join(described(e) for e in self.clip)}], "
            f"t5={described(self.t5) if self.t5 is not None else None}, token_width={self.token_width}, "
            f"{clip_settings}emphasis={recipe.emphasis!r}, parse_weights={self.parse_weights}, "
            f"syntax={self.syntax!r}, {tags}cache={cache}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ public API

    @property
    def device(self) -> torch.device:
        """Device of the first encoder: where embeddings are returned."""
        return self.encoders[0].device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the returned token embeddings: the encoders' when they share one; else as
        the family's `encode_prompt` casts them (`_output_dtypes`)."""
        return self._output_dtypes()[1]

    def _output_dtypes(self) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
        """(CLIP tokens, tokens, pooled vector): the dtypes of the returned embeddings when the
        encoders' dtypes differ, as the family's `encode_prompt` gives them. The CLIP tokens take
        the dtype of the CLIP `Family.clip_tokens_dtype_of` names (SDXL: `text_encoder_2`'s; SD3:
        `text_encoder`'s); T5 tokens keep the T5's (zeros in its place: the CLIP tokens'); tokens
        joined on the sequence axis promote (SD3: float32 if either part is); the pooled vector
        promotes over the CLIPs it is made of (SDXL: the last; Flux: its one CLIP). Without a
        learned projection, which keeps its own dtype."""
        clip_dtype = self.encoders[0].dtype
        if self.clip:
            clip_dtype = (self.clip[-1] if self.family.clip_tokens_dtype_of == "last" else self.clip[0]).dtype
        t5_dtype = self.t5.dtype if self.t5 is not None else clip_dtype
        combine = self._active_recipe.combine
        if combine == "concat_channels":
            tokens_dtype = clip_dtype
        elif combine == "clip_pooled_t5_tokens":
            tokens_dtype = t5_dtype
        else:
            tokens_dtype = torch.promote_types(clip_dtype, t5_dtype)
        pooling = self.clip if self._active_recipe.pooled == "concat" else self.clip[-1:]
        pooled_dtype = tokens_dtype
        if pooling:
            pooled_dtype = pooling[0].dtype
            for encoder in pooling[1:]:
                pooled_dtype = torch.promote_types(pooled_dtype, encoder.dtype)
        return clip_dtype, tokens_dtype, pooled_dtype

    def to(
        self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> TextConditioner:
        """Move (and cast) the encoders and the projection; returns self. Takes what
        `torch.nn.Module.to` and `DiffusionPipeline.to` take: ``to("cuda")``,
        ``to(torch.float16)``, ``to("cuda", torch.float16)``, ``to(device=..., dtype=...)``.
        An encoder whose floating weights are all in `dtype` already is only moved.

        Raises:
            TypeError: a `dtype` that is not a floating `torch.dtype` (a string such as
                "float16" included, as `torch.nn.Module.to` refuses it), or two dtypes.
            ValueError: a `device` torch cannot name, or a `dtype` for an encoder quantized
                with bitsandbytes (or GPTQ, Quark), whose models transformers will not cast
                (`DiffusionPipeline.to` skips such a module with a warning and casts the
                rest; here the embeddings would then not be in `dtype`: SDXL's follow
                `text_encoder_2`). Nothing has moved then.
        """
        device, dtype = device_and_dtype(device, dtype)
        names = [f"clip[{index}]" for index in range(len(self.clip))] + (["t5"] if self.t5 is not None else [])
        # Every encoder is checked before any moves: a refusal leaves all of them as they were.
        casts = [dtype_to_cast(encoder.model, dtype, name) for encoder, name in zip(self.encoders, names)]
        for encoder, cast in zip(self.encoders, casts):
            # Only what is given: transformers refuses any `dtype` keyword (None too) on a
            # bitsandbytes model, and moves it when given a device alone.
            given = {key: value for key, value in (("device", device), ("dtype", cast)) if value is not None}
            encoder.model.to(**given)
        if self.projection is not None:
            self.projection.to(device=device, dtype=dtype)
        return self

    def encode(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        *,
        lora_scale: float | None = None,
    ) -> PromptEmbeds:
        """Encode a prompt or a batch of prompts.

        Args:
            prompt: a string or a non-empty list of strings; "" is the unconditional prompt.
            prompt_2, prompt_3: the text of the other encoders, as in diffusers (see
                `prompt_readers`): SDXL's second CLIP and SD3's CLIP-G read `prompt_2`, Flux's
                T5 reads `prompt_2`, SD3's T5 reads `prompt_3`. Left out (None or ""), they are
                `prompt`. A string is used for every prompt of the batch, a list gives one text
                per prompt. Weights, ``BREAK`` and long prompts work in each text; the CLIP
                windows of one prompt are padded to the same count across encoders.
            lora_scale: the scale of a LoRA in the text encoders for this call, as diffusers'
                `encode_prompt(lora_scale=...)` (`lora_scaled`); None leaves it as it is.

        Returns:
            `PromptEmbeds` with tokens (batch, seq, width). All prompts of a batch share one
            sequence length: prompts needing fewer CLIP windows are padded with the empty
            prompt's window. No steps are read: the brackets of prompt editing and alternation
            are emphasis here (``a [cat:dog:0.5]`` is the text "cat:dog:0.5" at 1/1.1) and
            ``AND`` is a word; `schedule` and `pipeline_kwargs(num_inference_steps=...)` read
            them per step, as A1111 does.

        Raises:
            ValueError: `prompt_2` / `prompt_3` given where no encoder reads it (SD, PixArt,
                `prompt_3` on SDXL or Flux).
        """
        prompts = as_prompt_list(prompt, "prompt")
        items = self._prompt_items(prompts, {"prompt_2": prompt_2, "prompt_3": prompt_3})
        with self.lora_scaled(lora_scale):
            return self._assemble(self._records(items))

    def check_prompt(
        self, prompt: str | list[str], prompt_2: str | list[str] | None = None, prompt_3: str | list[str] | None = None
    ) -> None:
        """Raise what `encode` would raise for these texts, without running an encoder or
        reading the cache: to refuse a bad prompt before other work (a queue of requests, a
        model still to load). The arguments are `encode`'s.

        Raises:
            TypeError, ValueError: as `encode` for the same arguments and conditioner: no
                prompt, `prompt_2` / `prompt_3` where no encoder reads it, a LoRA tag (with
                ``lora_tags="refuse"``), a ComfyUI ``embedding:name`` no tokenizer holds,
                compel's refused operators and a combination this conditioner cannot read.
        """
        prompts = as_prompt_list(prompt, "prompt")
        items = self._prompt_items(prompts, {"prompt_2": prompt_2, "prompt_3": prompt_3})
        for reading in dict.fromkeys(self._readings(items)):  # what `_encode_records` reads, each once
            combination = self._combination_of(reading)
            for text in dict.fromkeys(combination.parts if combination else reading):
                self._fragments(text)

    def lora_scaled(self, lora_scale: float | None) -> AbstractContextManager[None]:
        """``with cond.lora_scaled(0.5):``: inside the block, encodes run a LoRA in the text
        encoders at `lora_scale` times its scale, as diffusers' `encode_prompt(lora_scale=...)`
        of the family runs it (the encoders it scales: `Family.lora_scaled_kinds`), and the
        cache keys see the scale. None leaves the LoRA as it is. While a scaled block runs,
        other threads' encodes over the same models wait for it (`clipcond.model_locks`).

        Raises:
            TypeError, ValueError: `lora_scale` not a finite number, or given to a family whose
                `encode_prompt` takes no scale (PixArt).
        """
        scale = check_lora_scale(lora_scale)
        kinds = self.family.lora_scaled_kinds
        if scale is not None and not kinds:
            raise ValueError(
                f"`lora_scale`: {self.recipe.name!r} pipelines' encode_prompt takes no LoRA scale for its text encoder"
            )
        scaled = lora_scaled([encoder.model for encoder in self.encoders if encoder.kind in kinds], scale)
        if scale is None:
            return scaled
        # Other threads' encodes over these models wait until the scale is undone (model_locks).
        return holding_while([encoder.model for encoder in self.encoders], scaled)

    def pipeline_kwargs(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        *,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        lora_scale: float | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for the pipeline family's `__call__`.

        Returns `prompt_embeds` and `negative_prompt_embeds`, plus `pooled_prompt_embeds` /
        `negative_pooled_prompt_embeds` when the recipe has a pooled vector and
        `prompt_attention_mask` / `negative_prompt_attention_mask` when it has a mask. A
        missing negative prompt means "" — or zeros when the recipe says so (SDXL's
        `force_zeros_for_empty_prompt`), or no negative at all for Flux. The encoders run on the
        prompts, then on the negatives, the two batches of diffusers' `encode_prompt` (so that
        the numbers are diffusers' to the bit); both are padded to the same length.

        `prompt_2`, `prompt_3` and their negatives are read as in the family's `encode_prompt`
        (see `encode`); `negative_prompt_2` defaults to `negative_prompt`.

        `num_images_per_prompt` repeats each prompt's rows (and its negative's) that many times,
        as `encode_prompt` does: then leave the pipeline's `num_images_per_prompt` at 1 (SD3 and
        Flux do not repeat given embeddings; SD, SDXL and PixArt would repeat them again).
        `lora_scale` runs a LoRA in the text encoders at that scale, as `encode_prompt` does
        (`lora_scaled`); the pipeline still needs its own (`cross_attention_kwargs={"scale": s}`
        for SD and SDXL, `joint_attention_kwargs` for SD3 and Flux) for its UNet or transformer.

        With `num_inference_steps`, prompt editing and alternation (`clipcond.schedule`) take
        effect: the embeddings are step 0's, and `callback_on_step_end` with
        `callback_on_step_end_tensor_inputs` swap in each later step's where its text changes
        (SD, SDXL, SD3; pass `num_inference_steps` to the pipeline too). PNDM's warm-up call counts
        within step 0, as diffusers counts it; with SD3's `skip_guidance_layers` the callback also
        gives the skip-layer pass each step's prompts (a forward pre-hook on the transformer,
        removed after the last step). A prompt whose text never
        changes gets no callback and exactly the keyword arguments of the one text it reads (an
        edit that takes no effect over the steps, ``[cat:dog:0]`` or ``[a:b:30]`` at 20 steps,
        reads as A1111 reads it: "dog", "a"). With `syntax="compel"` or `"comfy"` no text changes
        between steps: `num_inference_steps` is only checked, and brackets and `AND` read as compel
        or ComfyUI reads them.

        Raises:
            ValueError: `AND` in a prompt (composable prompts need `CLIPConditionedPipeline`;
                in a negative prompt, read whole as in A1111, it is text),
                editing syntax without `num_inference_steps`, a schedule the family's
                callback cannot apply (Flux's replaces the T5 tokens only: an edit in `prompt_2`
                runs, one in `prompt` or a negative is refused; PixArt has none),
                a per-encoder argument no encoder reads, or `negative_prompt_2` /
                `negative_prompt_3` without `negative_prompt` where the missing negative means
                zeros (SDXL) or none (Flux): diffusers ignores them there.
        """
        prompts = as_prompt_list(prompt, "prompt")
        num_images_per_prompt = check_images_per_prompt(num_images_per_prompt)
        scaled = self.lora_scaled(lora_scale)
        extra = {"prompt_2": prompt_2, "prompt_3": prompt_3}
        negative_extra = {"prompt_2": negative_prompt_2, "prompt_3": negative_prompt_3}
        check_readers(
            self.prompt_readers, {f"negative_{name}": value for name, value in negative_extra.items()}, self.recipe.name
        )
        negatives = negative_prompt_list(negative_prompt, len(prompts))
        if negatives is None and not (self.recipe.negative_optional or self.recipe.zero_negative_when_absent):
            negatives = [""] * len(prompts)
        items = self._prompt_items(prompts, extra)
        negative_items = None
        if negatives is not None:
            negative_items = self._prompt_items(negatives, negative_extra, "negative_")
        else:
            self._check_unread_negatives(negative_extra)
        if num_inference_steps is not None:
            num_inference_steps = check_steps(num_inference_steps)
        stepwise = self.syntax == "a1111"  # compel's and ComfyUI's syntaxes have no editing, alternation or AND
        if stepwise and num_inference_steps is not None:  # an edit that never changes reads its one text
            items = fixed_prompts(items, num_inference_steps)
            if negative_items is not None:
                negative_items = fixed_prompts(negative_items, num_inference_steps, negative=True)
        with scaled:
            schedule = None
            if stepwise:
                schedule = schedule_for_pipeline(
                    self._scheduled_embeds, self.family, items, negative_items, num_inference_steps
                )
            if schedule is not None:
                positive, negative = schedule.embeds_at(0)
            else:
                records = self._records(items) + (self._records(negative_items) if negative_items else [])
                groups = [len(items)] + ([len(negative_items)] if negative_items else [])
                embeds = self._assemble(records, groups=groups)  # prompts, then negatives
                positive, negative = embeds.split(len(prompts))
        positive = positive.repeat(num_images_per_prompt)
        family = self.family
        kwargs = family.call_keywords(positive)
        if negatives is not None:
            kwargs.update(family.call_keywords(negative.repeat(num_images_per_prompt), "negative_"))
        elif self.recipe.zero_negative_when_absent:
            kwargs.update(family.call_keywords(positive.zeros_like(), "negative_"))
        kwargs.update(dict(self.recipe.call_overrides))
        if schedule is not None:
            swap = StepSwap(schedule, family)
            kwargs.update(callback_on_step_end=swap, callback_on_step_end_tensor_inputs=swap.tensor_inputs)
        return kwargs

    def schedule(
        self,
        prompt: str | list[str],
        num_inference_steps: int,
        negative_prompt: str | list[str] | None = None,
        *,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        lora_scale: float | None = None,
    ) -> PromptSchedule:
        """Which text (and embeddings) conditions each of `num_inference_steps` denoising steps.

        Prompt editing ``[from:to:when]`` and alternation ``[a|b]`` read as A1111 reads them
        (`clipcond.schedule`); every distinct text is encoded once, all in one batch (repeats
        are cache hits). `schedule.segments(i)` lists prompt `i`'s (first step, end step, text).
        A string `negative_prompt` is every prompt's; a list may have another length than
        `prompt` (its rows are `negative_rows`: `CLIPConditionedPipeline` schedules the `AND`
        parts of its prompts against one negative per prompt), so pair them before handing
        `embeds_at` to a pipeline, as `pipeline_kwargs` does.
        With per-encoder prompts (`prompt_2`, ...; see `encode`) each encoder's text is
        scheduled on its own and a segment's text is the tuple of texts the encoders read.
        `lora_scale`: as in `encode`.

        Raises:
            TypeError, ValueError: bad prompts, a per-encoder argument no encoder reads,
                `num_inference_steps` not an int >= 1, or a conditioner of a syntax other than
                "a1111" (no text changes between steps there: use `encode` or `pipeline_kwargs`).
        """
        if self.syntax != "a1111":
            raise ValueError(
                f"`schedule` reads A1111's prompt editing, and this conditioner reads syntax {self.syntax!r}, "
                "where no text changes between steps: use `encode` or `pipeline_kwargs`"
            )
        prompts = as_prompt_list(prompt, "prompt")
        negative_extra = {"prompt_2": negative_prompt_2, "prompt_3": negative_prompt_3}
        check_readers(
            self.prompt_readers, {f"negative_{name}": value for name, value in negative_extra.items()}, self.recipe.name
        )
        items = self._prompt_items(prompts, {"prompt_2": prompt_2, "prompt_3": prompt_3})
        negatives = None  # not paired with the prompts: AND parts share their prompt's negative
        if isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        elif negative_prompt is not None:
            negatives = as_prompt_list(negative_prompt, "negative_prompt")
        negative_items = None
        if negatives is not None:
            negative_items = self._prompt_items(negatives, negative_extra, "negative_")
        elif any(negative_extra.values()):
            raise ValueError("`negative_prompt_2` / `negative_prompt_3` need `negative_prompt` (their default)")
        num_inference_steps = check_steps(num_inference_steps)
        with self.lora_scaled(lora_scale):
            return build_schedule(self._scheduled_embeds, items, negative_items, num_inference_steps)

    def load_textual_inversion(self, path_or_state_dict: Any, token: str | None = None) -> None:
        """Load a textual-inversion embedding into this conditioner's CLIP encoders.

        Reads diffusers' files (`learned_embeds.safetensors` / `.bin`, or their folder),
        A1111's `.pt` (`string_to_param`) and `.safetensors` (`emb_params`), and SDXL / SD3
        `clip_l` + `clip_g` pairs (`clipcond.textual_inversion`). A pair goes into the two
        CLIPs (`clip_l` the first), a single set into the CLIP of its width. A token of several
        vectors becomes ``token``, ``token_1``, ... and a prompt naming it reads all of them,
        as in diffusers (for tokens diffusers' loader added too; a prompt a pipeline already
        expanded is read as it is). The tokenizer and encoder change in place: when they are a pipeline's
        (`from_pipeline`), the pipeline sees the token too, as after its own
        `load_textual_inversion`. Cached embeddings of the encoders before the change are not
        reused. An encoder under sequential offload (`enable_sequential_cpu_offload`, accelerate's
        `cpu_offload`) has its hooks taken off for the change and put back with the same
        arguments, as diffusers' loader does.

        Args:
            path_or_state_dict: a file or folder path, a state dict, or a tensor of vectors.
            token: the token that names the embedding in prompts; None: the one the source
                names (required for a tensor or a state dict that names none).

        Raises:
            ValueError: vectors of a width no encoder has (naming the source, the encoder and
                both widths), a token already in the tokenizer, a file that needs full
                unpickling, an unknown layout, or an encoder offloaded other than by
                `cpu_offload` (to disk, or by a device map); nothing has changed then.
            FileNotFoundError: no such file.
        """
        embedding = read_textual_inversion(path_or_state_dict, token)
        placed = placements(embedding, self.clip)
        names = [vector_tokens(embedding.token, vectors.shape[0]) for _, vectors in placed]
        for (index, _), tokens in zip(placed, names):
            check_new_tokens(self.clip[index], index, tokens, embedding.source)
        offloads = [sequential_offload(self.clip[index], index) for index, _ in placed]
        for (index, vectors), tokens, offload in zip(placed, names, offloads):
            with offload_lifted(self.clip[index], offload):  # as diffusers' loader: hooks off, then on again
                add_vectors(self.clip[index], tokens, vectors)

    def weights_written(self) -> None:
        """Tell the conditioner that its encoders' weights were written where it cannot see:
        through `.data`, which bumps no tensor version counter. Cached embeddings made before
        are not reused (in memory or on disk). Call it after such a write: peft's merge and
        unmerge write so, which diffusers' `fuse_lora` and `unfuse_lora` run, and an
        `unload_lora_weights` after `fuse_lora` puts the merged weights back as the same tensors.
        (`CLIPConditionedPipeline`'s LoRA methods call it themselves; a conditioner built with
        `from_pipeline` over a diffusers pipeline needs it after those calls.) Other writes (an
        optimizer step, `load_state_dict`, `copy_`, a replaced tensor) are seen without it.
        """
        self._watch.mark_written()

    # ------------------------------------------------------------------ what each encoder reads

    def _prompt_items(self, prompts: list[str], extra: dict[str, Any], prefix: str = "") -> list[str | Reading]:
        """The texts of a batch: `prompts` itself when every encoder reads them, else one
        reading per prompt (the text of each encoder). ValueError for an argument in `extra`
        (name without `prefix` -> value) that no encoder reads."""
        readers = self.prompt_readers
        check_readers(readers, {prefix + name: value for name, value in extra.items()}, self.recipe.name)
        if not any(extra.values()):
            return prompts
        return readings(readers, prompts, extra, prefix)

    def _check_unread_negatives(self, negative_extra: dict[str, Any]) -> None:
        """Per-encoder negatives with no negative prompt, where that means zeros or none."""
        for name, value in negative_extra.items():
            if value:
                meaning = "zeros (force_zeros_for_empty_prompt)" if self.recipe.zero_negative_when_absent else "none"
                raise ValueError(
                    f"`negative_{name}` without `negative_prompt`: recipe {self.recipe.name!r} then has {meaning} "
                    f"for the negatives and diffusers ignores `negative_{name}`; pass `negative_prompt` too "
                    '(negative_prompt="" encodes the empty prompt)'
                )

    def _readings(self, items: Sequence[str | Reading]) -> list[Reading]:
        """The text each encoder reads of each item, with A1111's LoRA tags refused or taken out
        (`_without_lora_tags`) and the multi-vector textual-inversion tokens of each CLIP's
        tokenizer expanded (`clipcond.textual_inversion.expand_tokens`)."""
        count = len(self.encoders)
        texts = [(item,) * count if isinstance(item, str) else tuple(item) for item in items]
        if self.syntax == "a1111" and self.parse_weights:
            texts = [tuple(self._without_lora_tags(text) for text in reading) for reading in texts]
        multi_vector = [multi_vector_tokens(encoder.tokenizer) for encoder in self.clip]
        if not any(multi_vector):
            return texts
        return [
            tuple(
                expand_tokens(text, self.clip[index].tokenizer, multi_vector[index]) if index < len(self.clip) else text
                for index, text in enumerate(reading)
            )
            for reading in texts
        ]

    def _scheduled_embeds(
        self, items: list[str | Reading], steps: list[StepRows]
    ) -> tuple[PromptEmbeds, list[torch.Tensor] | None]:
        """What a schedule encodes (`clipcond.scheduled_embeds.ScheduleEncoder`): `PromptEmbeds`
        of a batch of texts or readings, and, where a text projection finishes the pooled
        vectors, each step's (its prompt rows, negative rows) pooled vectors, projected over
        the prompts and then the negatives as `encode_prompt` runs them."""
        records = self._records(items)
        embeds = self._assemble(records)
        parts = self._pooled_parts()
        if embeds.pooled is None or all(project is None for _, project in parts):
            return embeds, None
        pooled = []
        with torch.enable_grad() if self._assembly_keeps_graph() else torch.no_grad():
            for prompt_rows, negative_rows in steps:
                rows = [*prompt_rows, *(negative_rows or ())]
                groups = [len(prompt_rows)] + ([len(negative_rows)] if negative_rows else [])
                vectors = pooled_vectors([records[row] for row in rows], parts, groups)
                pooled.append(vectors.to(device=embeds.pooled.device, dtype=embeds.pooled.dtype))
        return embeds, pooled

    # ------------------------------------------------------------------ records, for pre-encoding

    def identity(self) -> tuple[str, str]:
        """(weights fingerprint, settings): what decides the record an encoder makes of a prompt.

        The fingerprint is the content hash of every encoder's weights (`clipcond.fingerprint`,
        stable across processes); the settings are the settings part of the cache key (the
        recipe with clip-skip, weight parsing, each encoder's class, window, mask use,
        tokenizer and config, `clipcond.config_fingerprint`). Records made under equal identities are interchangeable; the projection is
        not part of it (records are taken before it).
        """
        return self._watch.content_hash(), self._settings_key(by_content=True)

    def _settings_key(self, by_content: bool) -> str:
        """`clipcond.cache_key.settings_key` of the active recipe, tokenizers and configs. The
        tokenizers by their content fingerprints (`by_content`: for keys that outlive this
        object, written to disk or compared across processes) or by their versions in this
        object, which change when a fingerprint would and cost no read of the vocabulary."""
        encoders = self.encoders
        name = self._tokenizer_fingerprints if by_content else self._tokenizer_fingerprints.version
        tokenizers = [name(encoder.tokenizer) for encoder in encoders]
        configs = [self._config_fingerprints(encoder.model) for encoder in encoders]
        return settings_key(self._active_recipe, self.parse_weights, encoders, tokenizers, configs, self.syntax)

    @property
    def record_spec(self) -> RecordSpec:
        """The tensors (names, shapes, dtypes) every record of this conditioner holds."""
        return expected_record(self.clip, self.t5, self._active_recipe)

    def encode_records(self, prompt: str | list[str]) -> list[EncodedPrompt]:
        """What the encoders make of each prompt, before assembly: one `EncodedPrompt` per
        prompt (through the cache, like `encode`). `assemble` turns them into embeddings."""
        return self._records(as_prompt_list(prompt, "prompt"))

    def assemble(self, records: Sequence[EncodedPrompt], empty_prompt: EncodedPrompt | None = None) -> PromptEmbeds:
        """Records of a batch (from `encode_records`, possibly stored and read back) ->
        `PromptEmbeds` exactly as `encode` makes them: windows padded with the empty prompt's,
        encoders joined, the projection applied (with its graph when it trains).

        Args:
            records: one per prompt, all of this conditioner's `record_spec`.
            empty_prompt: the record of "" for padding; None: encoded (or cached) here.

        Raises:
            TypeError, ValueError: `records` empty, or a record (or `empty_prompt`) that is no
                `EncodedPrompt` or differs from `record_spec` (tensor names, shapes, dtypes), naming
                its index and what differs; checked before any work.
        """
        spec = self.record_spec
        records = check_records(records, spec)
        if not records:
            raise ValueError("`records` must hold at least one EncodedPrompt")
        if empty_prompt is not None:
            empty_prompt = check_record(empty_prompt, spec, "empty_prompt")
        return self._assemble(records, empty_prompt)

    # ------------------------------------------------------------------ encoding

    def _fragments(self, text: str) -> list[Fragment]:
        """The weighted fragments of a prompt, each fragment's text cleaned as the recipe says
        (after parsing, so that PixArt's cleaning, which drops brackets, keeps the weights)."""
        if self.recipe.caption_cleaning == "none":
            return self._parsed(text)
        fragments = self._parsed(text.strip())
        return [Fragment(self._clean(f.text), f.weight, f.is_break) for f in fragments]

    def _without_lora_tags(self, text: str) -> str:
        """`text` (in A1111's syntax) as this conditioner reads it: with ``lora_tags="strip"``
        its extra-network tags taken out, as A1111 takes them out; with "refuse", `text`.

        Raises:
            ValueError: with "refuse", a LoRA tag in `text` (only a pipeline can switch on the
                adapters it names), before the cache is looked up.
        """
        if "<" not in text:
            return text
        if self.lora_tags == "strip":
            return without_network_tags(text)
        if split_network_tags(text)[1]:
            raise ValueError(
                f"prompt {text[:80]!r}: A1111's LoRA tags activate adapters in the text encoder and the UNet for a "
                "call: `CLIPConditionedPipeline` reads them in a call's `prompt` (not in a negative, `prompt_2` or "
                "`encode_prompt`); for another pipeline, take the tag out and call its `set_adapters`"
            )
        return text

    def _parsed(self, text: str) -> list[Fragment]:
        """`text` read in this conditioner's syntax (as plain text without `parse_weights`).

        Raises:
            ValueError: in ComfyUI's syntax, an ``embedding:name`` whose name is a token of none
                of this conditioner's CLIP tokenizers (ComfyUI drops it with a warning).
        """
        if not self.parse_weights:
            return [Fragment(text, 1.0)]
        if self.syntax == "comfy":
            missing = unheld_embeddings(text, [encoder.tokenizer for encoder in self.clip])
            if missing:
                raise ValueError(
                    f"prompt {text[:80]!r}: `embedding:{missing[0]}` names no textual inversion this conditioner "
                    f"holds: load it first with `load_textual_inversion(path, token={missing[0]!r})`"
                )
        return parse_in_syntax(text, self.syntax)

    def _encoders_need_grad(self) -> bool:
        """True while an encoder is being trained (`_trains`). Then outputs keep their graph
        and bypass the cache; otherwise encoders run under no_grad (models from
        `from_pretrained` are in eval mode)."""
        return any(_trains(encoder.model) for encoder in self.encoders)

    def _records(self, items: Sequence[str | Reading]) -> list[EncodedPrompt]:
        """Encoder outputs of every prompt (a text all encoders read, or a reading), from the
        cache where possible."""
        # In turn with other threads' encodes and scaled blocks over the same models (model_locks).
        with holding(encoder.model for encoder in self.encoders):
            return self._records_in_turn(items)

    def _records_in_turn(self, items: Sequence[str | Reading]) -> list[EncodedPrompt]:
        """`_records`, with the locks of the encoders' models held."""
        prompts = self._readings(items)
        if self.cache is None or self._encoders_need_grad():
            # Identical prompts in a batch (a negative prompt repeated per image) run once.
            unique = list(dict.fromkeys(prompts))
            by_text = dict(zip(unique, self._encode_records(unique)))
            return [by_text[text] for text in prompts]
        state = self._watch.state()
        if state != self._seen_state:
            # Weights were written or replaced: every in-memory record is stale.
            self.cache.clear_memory()
            self._seen_state = state
        on_disk = self.cache.directory is not None
        weights_id = self._watch.content_hash() if on_disk else f"state{state[0]}"
        keys = reading_keys(weights_id, self._settings_key(by_content=on_disk), prompts)
        expected = expected_record(self.clip, self.t5, self._active_recipe)  # what a file must hold
        found: dict[str, EncodedPrompt] = {}
        missing: dict[str, Reading] = {}  # key -> reading, each once
        for key, text in zip(keys, prompts):
            if key in found or key in missing:
                continue
            record = self.cache.get(key, expected, device=self.device)
            if record is None:
                missing[key] = text
            else:
                found[key] = record
        if missing:
            for (key, text), record in zip(missing.items(), self._encode_records(list(missing.values()))):
                self.cache.put(key, record, expected, text=" | ".join(dict.fromkeys(text)))
                found[key] = record
        return [found[key] for key in keys]

    def _encode_records(self, texts: Sequence[Reading]) -> list[EncodedPrompt]:
        """Run the encoders on `texts`, one reading per prompt (the text each encoder reads, as
        `_readings` makes them; no cache, no token expansion). One record per prompt; that of
        compel's `.blend()` or weighted `.and()` is its parts' records combined
        (`clipcond.combined_records`), all encoded in the same batch."""
        combined = {index: found for index, reading in enumerate(texts) if (found := self._combination_of(reading))}
        if not combined:
            return self._encode_plain(texts)
        count = len(self.encoders)
        batch = [("",) * count]  # the empty prompt first: the parts' padding
        for index, reading in enumerate(texts):
            batch.extend([(part,) * count for part in combined[index].parts] if index in combined else [reading])
        records = iter(self._encode_plain(batch))
        empty = next(records)
        return [
            combine_records([next(records) for _ in combined[index].parts], combined[index], empty)
            if index in combined
            else next(records)
            for index in range(len(texts))
        ]

    def _combination_of(self, reading: Reading) -> CompelBlend | CompelConjunction | None:
        """compel's `.blend()` or weighted `.and()` that a reading is (None for any other
        prompt), checked: every encoder reads the same one, and this conditioner has CLIP
        windows and no T5."""
        if self.syntax != "compel":
            return None
        combinations = [parse_compel_combination(text) for text in reading]
        if not any(combinations):
            return None
        operator = "blend()" if isinstance(next(filter(None, combinations)), CompelBlend) else "and()"
        if len(set(reading)) > 1:
            raise ValueError(
                f"prompt {reading[0][:80]!r}: compel's `{operator}` must be every encoder's text (`prompt_2` / "
                "`prompt_3` left out or the same)"
            )
        if self.t5 is not None or self._active_recipe.combine == "clip_pooled_t5_tokens":
            raise ValueError(
                f"prompt {reading[0][:80]!r}: compel's `{operator}` is read over CLIP windows, and this conditioner "
                f"({self.recipe.name!r}) has a T5 encoder"
            )
        return combinations[0]

    def _encode_plain(self, texts: Sequence[Reading]) -> list[EncodedPrompt]:
        """`_encode_records` of readings that hold no blend or weighted conjunction."""
        count = len(self.encoders)
        parsed: dict[str, list[Fragment]] = {}
        for reading in texts:
            for text in reading:
                if text not in parsed:
                    parsed[text] = self._fragments(text)
        # (encoders, prompts, fragments): what each encoder reads of each prompt
        fragments = [[parsed[reading[index]] for reading in texts] for index in range(count)]
        context = torch.enable_grad() if self._encoders_need_grad() else torch.no_grad()
        with context:
            recipe = self._active_recipe
            return encode_fragments(
                fragments,
                self.clip,
                self.t5,
                recipe,
                recipe.emphasis,
                self.max_batch_windows,
                empty_states=self._empty_states_now(),
            )

    def _empty_states_now(self):
        """The memo of the empty prompt's states, keyed by everything they depend on; None
        (computed on each call, with their graph) while an encoder is being trained, and for the
        modes that never read them (no key to build on every call)."""
        if self._active_recipe.emphasis not in MODES_FROM_EMPTY or self._encoders_need_grad():
            return None
        tokenizers = tuple(self._tokenizer_fingerprints.version(encoder.tokenizer) for encoder in self.encoders)
        key = (self._watch.state(), tokenizers, self._active_recipe)
        return lambda slot, compute: self._empty_states.get(key, slot, compute)

    def _assemble(
        self, records: list[EncodedPrompt], empty_prompt: EncodedPrompt | None = None, groups: list[int] | None = None
    ) -> PromptEmbeds:
        """`assemble` with this conditioner's settings; `groups`: the row counts over which
        text projections run apart (a call's prompts, then its negatives, as diffusers runs them)."""
        with torch.enable_grad() if self._assembly_keeps_graph() else torch.no_grad():
            return assemble(
                records,
                self._active_recipe,
                lambda: (empty_prompt or self._records([""])[0]).clip_tokens,
                projection=self.projection,
                t5_zeros=self.t5_zeros,
                pooled_parts=self._pooled_parts(),
                groups=groups,
                dtypes=self._output_dtypes(),
                device=self.device,
            )

    def _assembly_keeps_graph(self) -> bool:
        """No graph into frozen weights: the learned projection keeps its graph only while it
        trains, the encoders' text projections only while an encoder trains (their records
        were made so: `_encode_records`), and the records' own graph is kept either way."""
        return self._encoders_need_grad() or (self.projection is not None and _trains(self.projection))

    def _pooled_parts(self) -> list[tuple[int, Any]]:
        """`assemble`'s `pooled_parts`: (width, text projection or None) per pooling CLIP."""
        pooling = self.clip if self._active_recipe.pooled == "concat" else self.clip[-1:]
        encoders_train = self._encoders_need_grad()

        def projector(encoder: TextEncoder):
            if encoder.pooled_projection is None:
                return None
            return encoder.project_pooled if encoders_train else torch.no_grad()(encoder.project_pooled)

        return [(encoder.width, projector(encoder)) for encoder in pooling]

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pipeline(cls, pipe: Any, clip_skip: int | None = None, **kwargs: Any) -> TextConditioner:
        """Build a conditioner from an existing diffusers pipeline, reusing its encoders.

        Supported: `StableDiffusionPipeline`, `StableDiffusionXLPipeline`,
        `StableDiffusion3Pipeline`, `FluxPipeline`, `PixArtAlphaPipeline`,
        `PixArtSigmaPipeline` and their img2img / inpaint siblings (and subclasses).
        Extra keyword arguments (`max_sequence_length`, `cache_size`, `cache_dir`,
        `parse_weights`, `emphasis`, `window_split`, `clean_caption`, ...) pass through.
        """
        from clipcond.families import conditioner_from_pipeline

        return conditioner_from_pipeline(cls, pipe, clip_skip=clip_skip, **kwargs)

    @classmethod
    def from_config(cls, config: Any) -> TextConditioner:
        """Build a conditioner from a `ConditionerConfig` or the path of its YAML file.

        Encoders load through transformers' `from_pretrained`, from a local folder or a hub id
        (`clipcond.encoder_loading`).
        """
        from clipcond.conditioner_config import ConditionerConfig
        from clipcond.encoder_loading import load_clip_encoder, load_t5_encoder

        if not isinstance(config, ConditionerConfig):
            if not isinstance(config, (str, os.PathLike)):
                raise TypeError(
                    f"`config` must be a ConditionerConfig or the path of its YAML file, got {type(config).__name__}"
                )
            config = ConditionerConfig.from_yaml(config)
        dtype = config.torch_dtype
        return cls(
            config.to_recipe(),
            clip=[load_clip_encoder(source, dtype) for source in config.clip],
            t5=load_t5_encoder(config.t5, dtype) if config.t5 is not None else None,
            clip_skip=config.clip_skip,
            projection_dim=config.projection_dim,
            parse_weights=config.parse_weights,
            syntax=config.syntax,
            emphasis=config.emphasis,
            window_split=config.window_split,
            clean_caption=config.clean_caption,
            cache_size=config.cache_size,
            cache_dir=config.cache_dir,
            max_batch_windows=config.max_batch_windows,
        )
