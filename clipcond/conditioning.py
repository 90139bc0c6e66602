"""`TextConditioner`: prompts -> `PromptEmbeds` for any recipe, one mechanism for all.

The path of a batch of prompts:
1. parse each prompt into weighted fragments (`clipcond.prompts`);
2. look each prompt up in the cache (key: weights fingerprint, recipe settings, text);
3. for the misses, tokenize into windows (`clipcond.chunking`), run every window of every
   prompt through each encoder in one batch, scale token states by their weights;
4. assemble: pad prompts to the same number of CLIP windows with the empty prompt's window,
   join windows on the sequence axis and encoders as the recipe says, apply the optional
   learned projection (never cached: it may be training).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from clipcond.cache import EmbeddingCache, Record
from clipcond.chunking import TokenWindows, clip_windows, t5_sequence
from clipcond.embeds import PromptEmbeds
from clipcond.encoders import TextEncoder, run_clip, run_t5
from clipcond.fingerprint import WeightsWatch
from clipcond.prompts import Fragment, parse_prompt
from clipcond.recipes import Recipe, custom_recipe, get_recipe

if TYPE_CHECKING:  # the projection module needs diffusers; the conditioner imports it only when used
    from clipcond.projection import TextProjection

EncoderLike = TextEncoder | tuple[nn.Module, Any]

# Bump when the meaning of cached records changes, so old files on disk are never read.
_CACHE_KEY_VERSION = "clipcond-embeds-v1"


def _as_encoder(value: EncoderLike, argument: str) -> TextEncoder:
    if isinstance(value, TextEncoder):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return TextEncoder(model=value[0], tokenizer=value[1])
    raise TypeError(f"`{argument}` must hold TextEncoder objects or (model, tokenizer) pairs, got {value!r}")


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
        cache_size: prompts kept in the in-memory cache (0 turns caching off).
        cache_dir: folder for the on-disk cache (safetensors), or None.
        t5_zeros: (length, width) of zero T5 tokens to use when a recipe expects T5 but none is
            given (SD3 pipelines loaded without `text_encoder_3`).
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
        cache_size: int = 512,
        cache_dir: str | None = None,
        t5_zeros: tuple[int, int] | None = None,
    ) -> None:
        if isinstance(clip, (TextEncoder, nn.Module)) or (
            isinstance(clip, tuple) and len(clip) == 2 and isinstance(clip[0], nn.Module)
        ):
            raise TypeError("`clip` must be a sequence of encoders, e.g. clip=[(text_encoder, tokenizer)]")
        self.clip = [_as_encoder(item, "clip") for item in clip]
        self.t5 = None if t5 is None else _as_encoder(t5, "t5")
        for encoder in self.clip:
            if encoder.kind != "clip":
                raise TypeError(
                    f"`clip` holds a {encoder.kind} model ({type(encoder.model).__name__}); pass it as `t5`"
                )
        if self.t5 is not None and self.t5.kind != "t5":
            raise TypeError(f"`t5` must be a T5 encoder, got {type(self.t5.model).__name__}")
        self.recipe = self._resolve_recipe(recipe)
        self._check_encoders(t5_zeros)
        self.clip_skip = self._check_clip_skip(clip_skip)
        self._active_recipe = self.recipe.with_clip_skip(self.clip_skip)
        if not isinstance(parse_weights, bool):
            raise TypeError(f"`parse_weights` must be a bool, got {parse_weights!r}")
        self.parse_weights = parse_weights
        self.t5_zeros = t5_zeros
        self.projection = self._build_projection(projection_dim, projection)
        self.cache = EmbeddingCache(cache_size, cache_dir) if (cache_size or cache_dir) else None
        self._watch = WeightsWatch([encoder.model for encoder in self.encoders])
        self._seen_state: tuple | None = None

    # ------------------------------------------------------------------ construction checks

    def _resolve_recipe(self, recipe: str | Recipe) -> Recipe:
        if isinstance(recipe, Recipe):
            return recipe
        if recipe == "custom":
            return custom_recipe(bool(self.clip), self.t5 is not None)
        return get_recipe(recipe)

    def _check_encoders(self, t5_zeros: tuple[int, int] | None) -> None:
        recipe, n_clip, has_t5 = self.recipe, len(self.clip), self.t5 is not None
        expected = {
            "sd": (n_clip == 1 and not has_t5, "exactly one CLIP encoder and no T5"),
            "sdxl": (n_clip in (1, 2) and not has_t5, "one or two CLIP encoders and no T5"),
            "sd3": (n_clip == 2 and (has_t5 or t5_zeros is not None), "two CLIP encoders and a T5 encoder"),
            "flux": (n_clip == 1 and has_t5, "one CLIP encoder and a T5 encoder"),
            "pixart": (n_clip == 0 and has_t5, "a T5 encoder and no CLIP"),
        }
        if recipe.name in expected and not expected[recipe.name][0]:
            raise ValueError(
                f"recipe {recipe.name!r} needs {expected[recipe.name][1]}; got {n_clip} CLIP encoder(s) and "
                f"{'a' if has_t5 else 'no'} T5 encoder"
            )
        if n_clip == 0 and not has_t5:
            raise ValueError("a TextConditioner needs at least one encoder: pass `clip` and/or `t5`")
        if recipe.combine == "concat_channels" and has_t5:
            raise ValueError(
                "combine='concat_channels' joins CLIP encoders on channels and cannot take a T5 encoder "
                "(their sequence lengths differ); use 'concat_sequence' or 'clip_pooled_t5_tokens'"
            )
        if recipe.combine == "clip_pooled_t5_tokens" and not has_t5 and t5_zeros is None:
            raise ValueError("combine='clip_pooled_t5_tokens' needs a `t5` encoder")
        if recipe.combine == "concat_channels" and n_clip == 0:
            raise ValueError("combine='concat_channels' needs at least one `clip` encoder")
        if recipe.pooled != "none" and n_clip == 0:
            raise ValueError(f"pooled={recipe.pooled!r} needs a `clip` encoder; use pooled='none'")

    def _check_clip_skip(self, clip_skip: Any) -> int | None:
        if clip_skip is None:
            return None
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int):
            raise TypeError(f"`clip_skip` must be an int or None, got {type(clip_skip).__name__} {clip_skip!r}")
        if not self.clip or self.recipe.combine == "clip_pooled_t5_tokens":
            raise ValueError(f"`clip_skip` has no effect on recipe {self.recipe.name!r}: it reads no CLIP token states")
        deepest = min(encoder.num_layers for encoder in self.clip)
        limit = deepest - self.recipe.clip_layer_from_end
        if clip_skip < 0 or clip_skip > limit:
            raise ValueError(
                f"`clip_skip` must be between 0 and {limit} for recipe {self.recipe.name!r} with a "
                f"{deepest}-layer CLIP (it reads hidden state -{self.recipe.clip_layer_from_end} - clip_skip), "
                f"got {clip_skip}"
            )
        return clip_skip

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

    def _needed_projection_widths(self) -> dict[str, int]:
        """Source -> input width of the projection layers this recipe and these encoders need."""
        combine = self.recipe.combine
        if combine == "concat_channels":
            return {"clip": self.clip_width}
        if combine == "concat_sequence":
            return {
                **({"clip": self.clip_width} if self.clip else {}),
                **({"t5": self.t5_width} if self.t5_width else {}),
            }
        return {"t5": self.t5_width}

    def _check_widths_without_projection(self) -> None:
        recipe = self.recipe
        if recipe.combine == "concat_sequence" and self.clip and self.t5_width:
            if not recipe.pad_clip_to_t5_width and self.clip_width != self.t5_width:
                raise ValueError(
                    f"combine='concat_sequence' joins CLIP tokens (width {self.clip_width}) and T5 tokens "
                    f"(width {self.t5_width}) on the sequence axis; their widths differ, so set "
                    "`projection_dim` to project both to one width"
                )

    def _build_projection(self, projection_dim: int | None, projection: TextProjection | None) -> TextProjection | None:
        recipe = self.recipe
        if projection_dim is None and projection is None:
            self._check_widths_without_projection()
            return None
        from clipcond.projection import TextProjection

        if recipe.name != "custom":
            raise ValueError(f"`projection_dim` / `projection` are for the 'custom' recipe only, not {recipe.name!r}")
        if projection_dim is not None and (
            isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1
        ):
            raise ValueError(f"`projection_dim` must be a positive int or None, got {projection_dim!r}")
        if projection is not None:
            if not isinstance(projection, TextProjection):
                raise TypeError(f"`projection` must be a TextProjection, got {type(projection).__name__}")
            if projection_dim is not None and projection_dim != projection.config.projection_dim:
                raise ValueError(
                    f"`projection_dim` ({projection_dim}) differs from the given projection's "
                    f"({projection.config.projection_dim}); pass one of them"
                )
            projection_dim = projection.config.projection_dim
        needed = self._needed_projection_widths()
        if projection is not None:
            if projection.input_widths() != needed:
                raise ValueError(
                    f"the given projection has layers {projection.input_widths()} (source: input width) but recipe "
                    f"{recipe.name!r} with these encoders needs {needed}"
                )
            return projection
        first = self.encoders[0]
        built = TextProjection(projection_dim, clip_width=needed.get("clip"), t5_width=needed.get("t5"))
        return built.to(device=first.device, dtype=first.dtype)

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
        self, prompt: str | list[str], negative_prompt: str | list[str] | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for the pipeline family's `__call__`.

        Returns `prompt_embeds` and `negative_prompt_embeds`, plus `pooled_prompt_embeds` /
        `negative_pooled_prompt_embeds` when the recipe has a pooled vector and
        `prompt_attention_mask` / `negative_prompt_attention_mask` when it has a mask. A
        missing negative prompt means "" — or zeros when the recipe says so (SDXL's
        `force_zeros_for_empty_prompt`), or no negative at all for Flux. Prompts and negatives
        are encoded in one batch and padded to the same length.
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
        embeds = self._assemble(self._records(prompts + (negatives or [])))
        count = len(prompts)
        positive = PromptEmbeds(
            embeds.tokens[:count],
            None if embeds.pooled is None else embeds.pooled[:count],
            None if embeds.mask is None else embeds.mask[:count],
        )
        kwargs = self._named(positive, "")
        if negatives is not None:
            negative = PromptEmbeds(
                embeds.tokens[count:],
                None if embeds.pooled is None else embeds.pooled[count:],
                None if embeds.mask is None else embeds.mask[count:],
            )
            kwargs.update(self._named(negative, "negative_"))
        elif self.recipe.zero_negative_when_absent:
            zeros = PromptEmbeds(
                torch.zeros_like(positive.tokens),
                None if positive.pooled is None else torch.zeros_like(positive.pooled),
                positive.mask,
            )
            kwargs.update(self._named(zeros, "negative_"))
        kwargs.update(dict(self.recipe.call_overrides))
        return kwargs

    def _named(self, embeds: PromptEmbeds, prefix: str) -> dict[str, torch.Tensor]:
        named = {f"{prefix}prompt_embeds": embeds.tokens}
        if embeds.pooled is not None:
            named[f"{prefix}pooled_prompt_embeds"] = embeds.pooled
        if self.recipe.return_mask and embeds.mask is not None:
            named[f"{prefix}prompt_attention_mask"] = embeds.mask
        return named

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

    def _settings_key(self) -> str:
        recipe = self._active_recipe
        parts = [
            _CACHE_KEY_VERSION,
            repr(recipe),
            f"parse={self.parse_weights}",
            *(f"{type(e.model).__name__}:{e.window_length}:{e.uses_attention_mask}" for e in self.encoders),
        ]
        return "|".join(parts)

    def _records(self, prompts: list[str]) -> list[Record]:
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
        prefix = f"{weights_id}|{self._settings_key()}|"
        keys = [hashlib.sha256((prefix + text).encode("utf-8")).hexdigest() for text in prompts]
        found: dict[str, Record] = {}
        missing: list[str] = []
        for key, text in zip(keys, prompts):
            if key in found or text in missing:
                continue
            record = self.cache.get(key, device=self.device)
            if record is None:
                missing.append(text)
            else:
                found[key] = record
        if missing:
            for text, record in zip(missing, self._encode_records(missing)):
                key = hashlib.sha256((prefix + text).encode("utf-8")).hexdigest()
                self.cache.put(key, record, text=text)
                found[key] = record
        return [found[key] for key in keys]

    def _encode_records(self, prompts: list[str]) -> list[Record]:
        """Run the encoders on `prompts` (no cache). One record per prompt."""
        fragments = [self._fragments(text) for text in prompts]
        records: list[Record] = [{} for _ in prompts]
        context = torch.enable_grad() if self._encoders_need_grad() else torch.no_grad()
        with context:
            if self.clip:
                self._encode_clip(fragments, records)
            if self.t5 is not None:
                self._encode_t5(fragments, records)
        return records

    def _encode_clip(self, fragments: list[list[Fragment]], records: list[Record]) -> None:
        recipe = self._active_recipe
        want_tokens = recipe.combine != "clip_pooled_t5_tokens"
        per_encoder = [clip_windows(e.tokenizer, fragments, e.window_length) for e in self.clip]
        if len(self.clip) > 1:
            _align_window_counts(per_encoder, self.clip)
        counts = [windows.num_windows for windows in per_encoder[0]]
        tokens_per_encoder, pooled_per_encoder = [], []
        for encoder, windows in zip(self.clip, per_encoder):
            device = encoder.device
            ids = torch.cat([w.ids for w in windows]).to(device)
            mask = torch.cat([w.mask for w in windows]).to(device) if encoder.uses_attention_mask else None
            tokens, pooled = run_clip(
                encoder, ids, mask, recipe.clip_layer_from_end, recipe.clip_final_norm, want_tokens
            )
            if tokens is not None and any(w.is_weighted for w in windows):
                weights = torch.cat([w.weights for w in windows]).to(device=device, dtype=tokens.dtype)
                tokens = tokens * weights.unsqueeze(-1)
            tokens_per_encoder.append(None if tokens is None else tokens.split(counts))
            # The pooled vector of a prompt comes from its first window.
            starts = torch.tensor([0, *counts[:-1]]).cumsum(0).to(pooled.device)
            pooled_per_encoder.append(pooled.index_select(0, starts))
        for index, record in enumerate(records):
            if want_tokens:
                parts = [tokens[index] for tokens in tokens_per_encoder]
                record["clip_tokens"] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            if recipe.pooled == "last":
                record["pooled"] = pooled_per_encoder[-1][index]
            elif recipe.pooled == "concat":
                record["pooled"] = torch.cat([pooled[index] for pooled in pooled_per_encoder], dim=-1)

    def _encode_t5(self, fragments: list[list[Fragment]], records: list[Record]) -> None:
        recipe = self._active_recipe
        encoder = self.t5
        sequences = t5_sequence(encoder.tokenizer, fragments, recipe.t5_max_length)
        device = encoder.device
        ids = torch.cat([s.ids for s in sequences]).to(device)
        mask = torch.cat([s.mask for s in sequences]).to(device)
        tokens = run_t5(encoder, ids, mask if recipe.t5_attention_mask else None)
        if any(s.is_weighted for s in sequences):
            weights = torch.cat([s.weights for s in sequences]).to(device=device, dtype=tokens.dtype)
            tokens = tokens * weights.unsqueeze(-1)
        for index, record in enumerate(records):
            record["t5_tokens"] = tokens[index]
            record["t5_mask"] = mask[index]

    # ------------------------------------------------------------------ assembly

    def _assemble(self, records: list[Record]) -> PromptEmbeds:
        recipe = self._active_recipe
        batch = len(records)
        clip_tokens = None
        if records and "clip_tokens" in records[0]:
            windows = max(record["clip_tokens"].shape[0] for record in records)
            padded = []
            empty = None
            for record in records:
                tokens = record["clip_tokens"]
                if tokens.shape[0] < windows:
                    if empty is None:
                        empty = self._records([""])[0]["clip_tokens"]
                    tokens = torch.cat([tokens, empty.expand(windows - tokens.shape[0], -1, -1)])
                padded.append(tokens.reshape(-1, tokens.shape[-1]))
            clip_tokens = torch.stack(padded)
        t5_tokens = t5_mask = None
        if self.t5 is not None:
            t5_tokens = torch.stack([record["t5_tokens"] for record in records])
            t5_mask = torch.stack([record["t5_mask"] for record in records])
        elif self.t5_zeros is not None:
            length, width = self.t5_zeros
            t5_tokens = torch.zeros(batch, length, width, device=self.device, dtype=self.dtype)
            t5_mask = torch.ones(batch, length, dtype=torch.long, device=self.device)
        pooled = torch.stack([record["pooled"] for record in records]) if recipe.pooled != "none" else None
        projection = self.projection

        mask = None
        if recipe.combine == "concat_channels":
            tokens = clip_tokens if projection is None else projection["clip"](clip_tokens)
        elif recipe.combine == "clip_pooled_t5_tokens":
            tokens = t5_tokens if projection is None else projection["t5"](t5_tokens)
            mask = t5_mask
        else:  # concat_sequence
            parts, masks = [], []
            if clip_tokens is not None:
                if projection is not None:
                    clip_tokens = projection["clip"](clip_tokens)
                elif recipe.pad_clip_to_t5_width and t5_tokens is not None:
                    clip_tokens = F.pad(clip_tokens, (0, t5_tokens.shape[-1] - clip_tokens.shape[-1]))
                parts.append(clip_tokens)
                masks.append(torch.ones(clip_tokens.shape[:2], dtype=torch.long, device=clip_tokens.device))
            if t5_tokens is not None:
                parts.append(t5_tokens if projection is None else projection["t5"](t5_tokens))
                masks.append(t5_mask.to(parts[0].device))
            tokens = torch.cat([part.to(parts[0].device) for part in parts], dim=1)
            mask = torch.cat(masks, dim=1)
        if projection is None:
            tokens = tokens.to(self.dtype)
        return PromptEmbeds(
            tokens=tokens,
            pooled=None if pooled is None else pooled.to(device=tokens.device, dtype=self.dtype),
            mask=mask.to(tokens.device) if (recipe.return_mask and mask is not None) else None,
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
        """Build a conditioner from a `ConditionerConfig` or the path of its YAML file."""
        from clipcond.conditioner_config import build_conditioner

        return build_conditioner(config)


def _align_window_counts(per_encoder: list[list[TokenWindows]], encoders: list[TextEncoder]) -> None:
    """Give every encoder the same number of windows per prompt (different tokenizers may split
    a prompt differently); the shorter ones get empty windows (BOS, EOS, padding)."""
    for index in range(len(per_encoder[0])):
        windows = max(encoded[index].num_windows for encoded in per_encoder)
        for encoded, encoder in zip(per_encoder, encoders):
            item = encoded[index]
            missing = windows - item.num_windows
            if missing:
                empty = clip_windows(encoder.tokenizer, [[Fragment("", 1.0)]], encoder.window_length)[0]
                encoded[index] = TokenWindows(
                    ids=torch.cat([item.ids, empty.ids.expand(missing, -1)]),
                    weights=torch.cat([item.weights, empty.weights.expand(missing, -1)]),
                    mask=torch.cat([item.mask, empty.mask.expand(missing, -1)]),
                )
