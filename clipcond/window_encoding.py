"""Weighted fragments -> `EncodedPrompt` records: tokenize into windows, run the encoders, weight.

Every window of every prompt goes through each encoder in one batch. CLIP windows of the
encoders of a multi-CLIP recipe are aligned (the same number per prompt), so their token
states join on channels; T5 reads one sequence per prompt. Token states are multiplied by
their fragment's weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipcond.chunking import TokenWindows, clip_windows, t5_sequence
from clipcond.encoders import TextEncoder, run_clip, run_t5
from clipcond.prompts import Fragment
from clipcond.recipes import Recipe
from clipcond.records import EncodedPrompt


def encode_fragments(
    fragments: Sequence[Sequence[Fragment]],
    clip: Sequence[TextEncoder],
    t5: TextEncoder | None,
    recipe: Recipe,
) -> list[EncodedPrompt]:
    """One record per prompt: its CLIP windows' token states and pooled vector, its T5 tokens.

    Args:
        fragments: one list of weighted fragments per prompt.
        clip: the CLIP encoders, in channel order (may be empty).
        t5: the T5 encoder, or None.
        recipe: which hidden states and pooled vectors to read (clip-skip already applied).
    """
    records = [EncodedPrompt() for _ in fragments]
    if clip:
        _encode_clip(fragments, clip, recipe, records)
    if t5 is not None:
        _encode_t5(fragments, t5, recipe, records)
    return records


def _encode_clip(
    fragments: Sequence[Sequence[Fragment]], clip: Sequence[TextEncoder], recipe: Recipe, records: list[EncodedPrompt]
) -> None:
    want_tokens = recipe.combine != "clip_pooled_t5_tokens"
    per_encoder = [clip_windows(encoder.tokenizer, fragments, encoder.window_length) for encoder in clip]
    if len(clip) > 1:
        _align_window_counts(per_encoder, clip)
    counts = [windows.num_windows for windows in per_encoder[0]]
    tokens_per_encoder, pooled_per_encoder = [], []
    for encoder, windows in zip(clip, per_encoder):
        device = encoder.device
        ids = torch.cat([w.ids for w in windows]).to(device)  # (all windows, window_length)
        mask = torch.cat([w.mask for w in windows]).to(device) if encoder.uses_attention_mask else None
        tokens, pooled = run_clip(encoder, ids, mask, recipe.clip_layer_from_end, recipe.clip_final_norm, want_tokens)
        if tokens is not None and any(w.is_weighted for w in windows):
            weights = torch.cat([w.weights for w in windows]).to(device=device, dtype=tokens.dtype)
            tokens = tokens * weights.unsqueeze(-1)  # (all windows, window_length, width)
        tokens_per_encoder.append(None if tokens is None else tokens.split(counts))
        # The pooled vector of a prompt comes from its first window.
        starts = torch.tensor([0, *counts[:-1]]).cumsum(0).to(pooled.device)
        pooled_per_encoder.append(pooled.index_select(0, starts))  # (prompts, pooled_width)
    for index, record in enumerate(records):
        if want_tokens:
            parts = [tokens[index] for tokens in tokens_per_encoder]
            # (windows, window_length, sum of widths)
            record.clip_tokens = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if recipe.pooled == "last":
            record.pooled = pooled_per_encoder[-1][index]
        elif recipe.pooled == "concat":
            record.pooled = torch.cat([pooled[index] for pooled in pooled_per_encoder], dim=-1)


def _encode_t5(
    fragments: Sequence[Sequence[Fragment]], encoder: TextEncoder, recipe: Recipe, records: list[EncodedPrompt]
) -> None:
    sequences = t5_sequence(encoder.tokenizer, fragments, recipe.t5_max_length)
    device = encoder.device
    ids = torch.cat([s.ids for s in sequences]).to(device)  # (prompts, t5_max_length)
    mask = torch.cat([s.mask for s in sequences]).to(device)
    tokens = run_t5(encoder, ids, mask if recipe.t5_attention_mask else None)  # (prompts, length, width)
    if any(s.is_weighted for s in sequences):
        weights = torch.cat([s.weights for s in sequences]).to(device=device, dtype=tokens.dtype)
        tokens = tokens * weights.unsqueeze(-1)
    for index, record in enumerate(records):
        record.t5_tokens = tokens[index]
        record.t5_mask = mask[index]


def _align_window_counts(per_encoder: list[list[TokenWindows]], encoders: Sequence[TextEncoder]) -> None:
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
