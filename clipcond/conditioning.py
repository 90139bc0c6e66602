"""`TextConditioner`: prompts -> `PromptEmbeds` for any recipe, one mechanism for all.

The path of a batch of prompts (`TextConditioner.encode`):
1. parse each prompt into weighted fragments (`clipcond.prompts`);
2. look each prompt up in the cache (`clipcond.cache_key`, `clipcond.cache`);
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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from clipcond.assembly import assemble
from clipcond.cache import EmbeddingCache
from clipcond.cache_key import prompt_keys, settings_key
from clipcond.conditioner_setup import (
    DEFAULT_MAX_BATCH_WINDOWS,
    EncoderLike,
    as_encoders,
    build_projection,
    check_clip_skip,
    check_encoders,
    check_max_batch_windows,
    family_of,
    resolve_recipe,
)
from clipcond.embeds import PromptEmbeds
from clipcond.emphasis_modes import check_emphasis
from clipcond.encoders import TextEncoder
from clipcond.families import Family
from clipcond.fingerprint import WeightsWatch
from clipcond.prompts import Fragment, parse_prompt
from clipcond.recipes import Recipe
from clipcond.record_spec import expected_record
from clipcond.records import EncodedPrompt
from clipcond.scheduled_embeds import PromptSchedule, StepSwap, build_schedule, check_steps, schedule_for_pipeline
from clipcond.tokenizer_fingerprint import TokenizerFingerprints
from clipcond.window_encoding import encode_fragments

if TYPE_CHECKING:  # the projection module needs diffusers; the conditioner imports it only when used
    from clipcond.projection import TextProjection


def as_prompt_list(prompt: Any, argument: str = "prompt") -> list[str]:
    """Validate a prompt argument (a string or a non-empty list of strings) into a list."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError(f"`{argument}` must be a string or a non-empty list of strings, got an empty list")
        for index, item in enumerate(prompt):
            if not isinstance(item, str):
                raise TypeError(
                    f"`{argument}` must contain only strings, but item {index} is {type(item).__name__}: {item!r}"
                )
        return list(prompt)
    raise TypeError(f"`{argument}` must be a string or a list of strings, got {type(prompt).__name__}")


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
        parse_weights: read the weighting syntax `(word:1.3)`, `[word]`, `BREAK`; False treats
            every prompt as plain text.
        emphasis: how weights change token states, on CLIP and T5 alike (`clipcond.emphasis`):
            "multiply" (A1111's "No norm"), "a1111" (A1111's default, "Original": the window's
            mean kept), "comfy" (ComfyUI: away from the empty prompt's states) or "compel"
            (compel's up-weighting and masked down-weighting). None: the recipe's, "multiply"
            for every family. That default scales each token's states by its weight and
            nothing else, so a weight touches only its own tokens, as it always has here; pick
            the mode of the UI a prompt was written for to get its image.
        cache_size: prompts kept in the in-memory cache (0 turns caching off).
        cache_dir: folder for the on-disk cache (safetensors), or None.
        max_batch_windows: the most CLIP windows (or T5 sequences) one encoder call takes, so
            that a huge prompt or thousands of prompts encode in bounded memory; None: all
            windows of an `encode` call in one batch. Up to this size the result is that of
            one batch.
        t5_zeros: (length, width) of zero T5 tokens to use when a recipe expects T5 but none is
            given (SD3 pipelines loaded without `text_encoder_3`).
        compute_dtype: run every encoder in this dtype (e.g. ``torch.float32`` for a float16
            T5, which overflows into NaN) and return states in the dtype its weights had; the
            weights are cast once (`clipcond.encoders.TextEncoder`, which also takes it per
            encoder). None: each encoder computes in its own dtype.
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
        emphasis: str | None = None,
        cache_size: int = 512,
        cache_dir: str | None = None,
        max_batch_windows: int | None = DEFAULT_MAX_BATCH_WINDOWS,
        t5_zeros: tuple[int, int] | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.clip, self.t5 = as_encoders(clip, t5, compute_dtype)
        self.recipe = resolve_recipe(recipe, bool(self.clip), self.t5 is not None)
        if emphasis is not None:  # part of the recipe, so of the cache key
            self.recipe = dataclasses.replace(self.recipe, emphasis=check_emphasis(emphasis))
        check_encoders(self.recipe, len(self.clip), self.t5 is not None, t5_zeros)
        self.clip_skip = check_clip_skip(self.recipe, self.clip, clip_skip)
        self._active_recipe = self.recipe.with_clip_skip(self.clip_skip)
        if not isinstance(parse_weights, bool):
            raise TypeError(f"`parse_weights` must be a bool, got {parse_weights!r}")
        self.parse_weights = parse_weights
        self.max_batch_windows = check_max_batch_windows(max_batch_windows)
        self.t5_zeros = t5_zeros
        self.projection = build_projection(
            self.recipe, self.clip_width, self.t5_width, projection_dim, projection, self.encoders[0]
        )
        self.cache = EmbeddingCache(cache_size, cache_dir) if (cache_size or cache_dir) else None
        self._watch = WeightsWatch([encoder.model for encoder in self.encoders])
        self._tokenizer_fingerprints = TokenizerFingerprints()
        self._seen_state: tuple | None = None

    # ------------------------------------------------------------------ what it is built from

    @property
    def family(self) -> Family:
        """The family row of this conditioner's recipe (keyword names, accepted encoders)."""
        return family_of(self.recipe)

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

    # ------------------------------------------------------------------ public API

    @property
    def device(self) -> torch.device:
        """Device of the first encoder: where embeddings are returned."""
        return self.encoders[0].device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the first encoder: the dtype of returned embeddings."""
        return self.encoders[0].dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextConditioner:
        """Move (and cast) the encoders and the projection; returns self."""
        for encoder in self.encoders:
            encoder.model.to(device=device, dtype=dtype)
        if self.projection is not None:
            self.projection.to(device=device, dtype=dtype)
        return self

    def encode(self, prompt: str | list[str]) -> PromptEmbeds:
        """Encode a prompt or a batch of prompts.

        Args:
            prompt: a string or a non-empty list of strings; "" is the unconditional prompt.

        Returns:
            `PromptEmbeds` with tokens (batch, seq, width). All prompts of a batch share one
            sequence length: prompts needing fewer CLIP windows are padded with the empty
            prompt's window.
        """
        prompts = as_prompt_list(prompt, "prompt")
        return self._assemble(self._records(prompts))

    def pipeline_kwargs(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for the pipeline family's `__call__`.

        Returns `prompt_embeds` and `negative_prompt_embeds`, plus `pooled_prompt_embeds` /
        `negative_pooled_prompt_embeds` when the recipe has a pooled vector and
        `prompt_attention_mask` / `negative_prompt_attention_mask` when it has a mask. A
        missing negative prompt means "" — or zeros when the recipe says so (SDXL's
        `force_zeros_for_empty_prompt`), or no negative at all for Flux. The encoders run on the
        prompts, then on the negatives, the two batches of diffusers' `encode_prompt` (so that
        the numbers are diffusers' to the bit); both are padded to the same length.

        With `num_inference_steps`, prompt editing and alternation (`clipcond.schedule`) take
        effect: the embeddings are step 0's, and `callback_on_step_end` with
        `callback_on_step_end_tensor_inputs` swap in each later step's where its text changes
        (SD, SDXL, SD3; pass `num_inference_steps` to the pipeline too). A prompt whose text never
        changes gets no callback and exactly the keyword arguments it gets without steps.

        Raises:
            ValueError: `AND` in a prompt (composable prompts need `CLIPConditionedPipeline`),
                editing syntax without `num_inference_steps`, or a schedule the family's
                callback cannot apply (Flux's cannot replace the pooled vector, PixArt has none).
        """
        prompts = as_prompt_list(prompt, "prompt")
        negatives: list[str] | None
        if negative_prompt is None:
            negatives = (
                None
                if (self.recipe.negative_optional or self.recipe.zero_negative_when_absent)
                else [""] * len(prompts)
            )
        elif isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        else:
            negatives = as_prompt_list(negative_prompt, "negative_prompt")
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"`negative_prompt` has {len(negatives)} entries but `prompt` has {len(prompts)}; "
                    "give one negative prompt per prompt, or a single string for all"
                )
        schedule = schedule_for_pipeline(self.encode, self.family, prompts, negatives, num_inference_steps)
        if schedule is not None:
            positive, negative = schedule.embeds_at(0)
        else:
            records = self._records(prompts) + (self._records(negatives) if negatives else [])
            embeds = self._assemble(records)  # prompts, then negatives
            positive, negative = embeds.split(len(prompts))
        family = self.family
        kwargs = family.call_keywords(positive)
        if negatives is not None:
            kwargs.update(family.call_keywords(negative, "negative_"))
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
    ) -> PromptSchedule:
        """Which text (and embeddings) conditions each of `num_inference_steps` denoising steps.

        Prompt editing ``[from:to:when]`` and alternation ``[a|b]`` read as A1111 reads them
        (`clipcond.schedule`); every distinct text is encoded once, all in one batch (repeats
        are cache hits). `schedule.segments(i)` lists prompt `i`'s (first step, end step, text).

        Raises:
            TypeError, ValueError: bad prompts, or `num_inference_steps` not an int >= 1.
        """
        prompts = as_prompt_list(prompt, "prompt")
        negatives = None
        if isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        elif negative_prompt is not None:
            negatives = as_prompt_list(negative_prompt, "negative_prompt")
        check_steps(num_inference_steps)
        return build_schedule(self.encode, prompts, negatives, num_inference_steps)

    # ------------------------------------------------------------------ encoding

    def _fragments(self, text: str) -> list[Fragment]:
        if self.recipe.lowercase:
            text = text.strip()
        fragments = parse_prompt(text) if self.parse_weights else [Fragment(text, 1.0)]
        if self.recipe.lowercase:
            fragments = [Fragment(f.text.lower(), f.weight, f.is_break) for f in fragments]
        return fragments

    def _encoders_need_grad(self) -> bool:
        """True while an encoder is being trained: in train mode with trainable parameters and
        grad enabled. Then outputs keep their graph and bypass the cache; otherwise encoders
        run under no_grad (models from `from_pretrained` are in eval mode)."""
        return torch.is_grad_enabled() and any(
            encoder.model.training and any(p.requires_grad for p in encoder.model.parameters())
            for encoder in self.encoders
        )

    def _records(self, prompts: list[str]) -> list[EncodedPrompt]:
        """Encoder outputs of every prompt, from the cache where possible."""
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
        weights_id = self._watch.content_hash() if self.cache.directory is not None else f"state{state[0]}"
        encoders = self.encoders
        tokenizers = [self._tokenizer_fingerprints(encoder.tokenizer) for encoder in encoders]
        settings = settings_key(self._active_recipe, self.parse_weights, encoders, tokenizers)
        keys = prompt_keys(weights_id, settings, prompts)
        expected = expected_record(self.clip, self.t5, self._active_recipe)  # what a file must hold
        found: dict[str, EncodedPrompt] = {}
        missing: dict[str, str] = {}  # key -> text, each once
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
                self.cache.put(key, record, expected, text=text)
                found[key] = record
        return [found[key] for key in keys]

    def _encode_records(self, prompts: list[str]) -> list[EncodedPrompt]:
        """Run the encoders on `prompts` (no cache). One record per prompt."""
        fragments = [self._fragments(text) for text in prompts]
        context = torch.enable_grad() if self._encoders_need_grad() else torch.no_grad()
        with context:
            recipe = self._active_recipe
            return encode_fragments(fragments, self.clip, self.t5, recipe, recipe.emphasis, self.max_batch_windows)

    def _assemble(self, records: list[EncodedPrompt]) -> PromptEmbeds:
        return assemble(
            records,
            self._active_recipe,
            lambda: self._records([""])[0].clip_tokens,
            projection=self.projection,
            t5_zeros=self.t5_zeros,
            dtype=self.dtype,
            device=self.device,
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pipeline(cls, pipe: Any, clip_skip: int | None = None, **kwargs: Any) -> TextConditioner:
        """Build a conditioner from an existing diffusers pipeline, reusing its encoders.

        Supported: `StableDiffusionPipeline`, `StableDiffusionXLPipeline`,
        `StableDiffusion3Pipeline`, `FluxPipeline`, `PixArtAlphaPipeline`,
        `PixArtSigmaPipeline` and their img2img / inpaint siblings (and subclasses).
        Extra keyword arguments (`max_sequence_length`, `cache_size`, `cache_dir`,
        `parse_weights`) pass through.
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
            config = ConditionerConfig.from_yaml(config)
        dtype = config.torch_dtype
        return cls(
            config.to_recipe(),
            clip=[load_clip_encoder(source, dtype) for source in config.clip],
            t5=load_t5_encoder(config.t5, dtype) if config.t5 is not None else None,
            clip_skip=config.clip_skip,
            projection_dim=config.projection_dim,
            parse_weights=config.parse_weights,
            emphasis=config.emphasis,
            cache_size=config.cache_size,
            cache_dir=config.cache_dir,
            max_batch_windows=config.max_batch_windows,
        )
