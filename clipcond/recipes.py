"""`Recipe`: how a setup of text encoders turns into prompt embeddings, as data.

Every recipe is run by the one mechanism in `clipcond.conditioning`. The built-in recipes
are rows of the family table (`clipcond.families.FAMILIES`), each reproducing the
`encode_prompt` of its diffusers pipeline family exactly for plain prompts:

- ``sd``: one CLIP, last hidden state after the final layer norm (clip-skip moves up the
  stack, still through the norm).
- ``sdxl``: two CLIPs, penultimate hidden state without the norm, concatenated on channels;
  pooled from the projected second CLIP; a missing negative prompt gives zeros when the
  pipeline's ``force_zeros_for_empty_prompt`` is set.
- ``sd3``: CLIP-L + CLIP-G as in sdxl, zero-padded to the T5 width and joined with the T5
  tokens on the sequence axis; pooled is both CLIP pooled vectors concatenated.
- ``flux``: T5 tokens, pooled from the (unprojected) CLIP.
- ``pixart``: T5 tokens with their attention mask; prompts are lower-cased and stripped.
- ``custom``: any CLIP encoders and/or a T5 encoder, combined as configured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from clipcond.caption_cleaning import check_caption_cleaning
from clipcond.emphasis_modes import DEFAULT_EMPHASIS, check_emphasis
from clipcond.window_splits import DEFAULT_WINDOW_SPLIT, check_window_split

Combine = Literal["concat_channels", "concat_sequence", "clip_pooled_t5_tokens"]
Pooled = Literal["none", "last", "concat"]

COMBINE_MODES: tuple[str, ...] = ("concat_channels", "concat_sequence", "clip_pooled_t5_tokens")
POOLED_MODES: tuple[str, ...] = ("none", "last", "concat")


@dataclass(frozen=True)
class Recipe:
    """How encoder outputs combine into `PromptEmbeds`.

    Attributes:
        name: recipe name ("sd", "sdxl", "sd3", "flux", "pixart", "custom").
        combine: ``concat_channels`` joins the CLIP token states on the channel axis;
            ``concat_sequence`` joins CLIP tokens then T5 tokens on the sequence axis;
            ``clip_pooled_t5_tokens`` takes tokens from T5 and the pooled vector from CLIP.
        clip_layer_from_end: which CLIP hidden state to read, counted from the end of
            ``hidden_states`` (1 = last layer, 2 = penultimate); clip-skip adds to it.
        clip_final_norm: pass that hidden state through the CLIP final layer norm.
        pooled: ``none``; ``last`` = the last CLIP's pooled vector; ``concat`` = all CLIP
            pooled vectors concatenated on channels.
        pad_clip_to_t5_width: zero-pad CLIP channels up to the T5 width before a
            ``concat_sequence`` join (SD3).
        t5_max_length: T5 token budget including the end-of-sequence token.
        t5_attention_mask: pass the padding mask to the T5 encoder.
        return_mask: put the (T5) attention mask into `PromptEmbeds.mask`.
        caption_cleaning: what the text goes through before tokenizing: "none",
            "lowercase" or "clean_caption" (PixArt's `clean_caption`; `clipcond.caption_cleaning`).
        zero_negative_when_absent: with no negative prompt, negatives are zeros (SDXL).
        negative_optional: with no negative prompt, give no negative embeddings (Flux).
        emphasis: how prompt weights change token states: "multiply", "a1111", "comfy" or
            "compel" (`clipcond.emphasis`).
        window_split: how a full CLIP window is cut: "word" (at a word end), "a1111" (after
            the last comma, as A1111), "comfy" (before a space-separated word, as ComfyUI) or
            "truncate" (one window, the rest dropped, as diffusers; `clipcond.chunking`).
        call_overrides: extra keyword arguments `pipeline_kwargs` adds for the family's
            `__call__` (PixArt defaults `negative_prompt=""`, which it refuses next to
            `negative_prompt_embeds`, so it gets an explicit None).
    """

    name: str
    combine: Combine = "concat_channels"
    clip_layer_from_end: int = 1
    clip_final_norm: bool = True
    pooled: Pooled = "none"
    pad_clip_to_t5_width: bool = False
    t5_max_length: int = 256
    t5_attention_mask: bool = False
    return_mask: bool = False
    caption_cleaning: str = "none"
    zero_negative_when_absent: bool = False
    negative_optional: bool = False
    emphasis: str = DEFAULT_EMPHASIS
    window_split: str = DEFAULT_WINDOW_SPLIT
    call_overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"`combine` must be one of {COMBINE_MODES}, got {self.combine!r}")
        if self.pooled not in POOLED_MODES:
            raise ValueError(f"`pooled` must be one of {POOLED_MODES}, got {self.pooled!r}")
        if not isinstance(self.clip_layer_from_end, int) or self.clip_layer_from_end < 1:
            raise ValueError(f"`clip_layer_from_end` must be an int >= 1, got {self.clip_layer_from_end!r}")
        if not isinstance(self.t5_max_length, int) or self.t5_max_length < 2:
            raise ValueError(f"`t5_max_length` must be an int >= 2, got {self.t5_max_length!r}")
        check_emphasis(self.emphasis)
        check_window_split(self.window_split)
        check_caption_cleaning(self.caption_cleaning)

    def with_clip_skip(self, clip_skip: int | None) -> Recipe:
        """The recipe reading `clip_skip` layers further up the CLIP stack (None or 0: unchanged)."""
        if not clip_skip:
            return self
        return replace(self, clip_layer_from_end=self.clip_layer_from_end + clip_skip)
