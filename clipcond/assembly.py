"""`EncodedPrompt` records of a batch -> one `PromptEmbeds`, as the recipe joins them.

Prompts that need fewer CLIP windows are padded with the empty prompt's window, windows are
joined on the sequence axis, encoders as the recipe says (channels, sequence, or T5 tokens
with CLIP's pooled vector), and the optional learned projection is applied.

Pooled vectors are finished here: records hold each CLIP's pooled state, and an encoder with a
`text_projection` (SDXL's and SD3's second CLIP) projects it now, over each group of rows the
caller names (a call's prompts, then its negatives). That matrix product rounds differently
with its number of rows on the CPU, so running it over the rows diffusers' `encode_prompt`
runs it over gives its pooled vectors bit for bit, whether a record was just encoded, came
from the cache or stands for several rows (one negative for all prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from clipcond.embeds import PromptEmbeds
from clipcond.recipes import Recipe
from clipcond.records import EncodedPrompt


def assemble(
    records: Sequence[EncodedPrompt],
    recipe: Recipe,
    empty_clip_window: Callable[[], torch.Tensor],
    *,
    projection: Any = None,
    t5_zeros: tuple[int, int] | None = None,
    pooled_parts: Sequence[tuple[int, Any]] = (),
    groups: Sequence[int] | None = None,
    dtypes: tuple[torch.dtype, torch.dtype, torch.dtype],
    device: torch.device,
) -> PromptEmbeds:
    """Join a batch of records into `PromptEmbeds`.

    Args:
        records: one per prompt, from `clipcond.window_encoding.encode_fragments` or the cache.
        recipe: how the encoders join.
        empty_clip_window: gives the empty prompt's CLIP tokens, (1, window_length,
            clip_width); called only when some prompt needs padding windows.
        projection: a `TextProjection` (its layers ``"clip"`` / ``"t5"``), or None.
        t5_zeros: (length, width) of zero T5 tokens standing in for a missing T5 encoder.
        pooled_parts: what a record's pooled state is made of, in order: (width, a function
            (rows, width) states -> (rows, pooled_width) vectors, or None to keep the states)
            per CLIP encoder that the recipe pools (`TextEncoder.project_pooled`).
        groups: row counts, summing to the batch, over which each text projection runs
            separately (default: the whole batch at once).
        dtypes: (CLIP tokens, tokens, pooled vector): the CLIP tokens (and zero T5 tokens) are
            cast to the first before they are joined, the tokens to the second, the pooled
            vector to the third (`TextConditioner._output_dtypes`); without a projection, which
            keeps its own.
        device: of the zero T5 tokens.
    """
    clip_dtype, dtype, pooled_dtype = dtypes
    batch = len(records)
    clip_tokens = _joined_clip_windows(records, empty_clip_window)  # (batch, windows * length, clip_width)
    if clip_tokens is not None and projection is None:
        clip_tokens = clip_tokens.to(clip_dtype)
    t5_tokens = t5_mask = None
    if records and records[0].t5_tokens is not None:
        t5_tokens = torch.stack([record.t5_tokens for record in records])  # (batch, t5_length, t5_width)
        t5_mask = torch.stack([record.t5_mask for record in records])  # (batch, t5_length)
    elif t5_zeros is not None:
        length, width = t5_zeros
        t5_tokens = torch.zeros(batch, length, width, device=device, dtype=clip_dtype)
        t5_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    pooled = pooled_vectors(records, pooled_parts, groups) if recipe.pooled != "none" else None

    mask = None
    if recipe.combine == "concat_channels":
        tokens = clip_tokens if projection is None else projection["clip"](clip_tokens)
    elif recipe.combine == "clip_pooled_t5_tokens":
        tokens = t5_tokens if projection is None else projection["t5"](t5_tokens)
        mask = t5_mask
    else:  # concat_sequence: (batch, clip_seq + t5_length, width)
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
        tokens = tokens.to(dtype)
    return PromptEmbeds(
        tokens=tokens,
        pooled=None if pooled is None else pooled.to(device=tokens.device, dtype=pooled_dtype),
        mask=mask.to(tokens.device) if (recipe.return_mask and mask is not None) else None,
    )


def pooled_vectors(
    records: Sequence[EncodedPrompt], pooled_parts: Sequence[tuple[int, Any]], groups: Sequence[int] | None = None
) -> torch.Tensor:
    """(batch, pooled width): the records' pooled states, each part through its text
    projection (see `assemble`'s `pooled_parts`), over each group of rows on its own."""
    pooled = torch.stack([record.pooled for record in records])
    if any(project is not None for _, project in pooled_parts):
        pooled = _projected_pooled(pooled, pooled_parts, groups or [len(records)])
    return pooled


def _projected_pooled(pooled: torch.Tensor, parts: Sequence[tuple[int, Any]], groups: Sequence[int]) -> torch.Tensor:
    """(batch, sum of widths) pooled states -> pooled vectors: each part's columns through its
    projection (if any), each group of rows on its own."""
    widths = [width for width, _ in parts]
    if sum(widths) != pooled.shape[-1] or sum(groups) != pooled.shape[0]:
        raise ValueError(
            f"pooled states of shape {tuple(pooled.shape)} do not split into parts of widths {widths} "
            f"and groups of rows {list(groups)}"
        )
    rows = []
    for group in pooled.split(list(groups)):
        states = group.split(widths, dim=-1)
        columns = [state if project is None else project(state) for state, (_, project) in zip(states, parts)]
        rows.append(torch.cat([column.to(columns[0].device) for column in columns], dim=-1))
    return torch.cat(rows)


def _joined_clip_windows(
    records: Sequence[EncodedPrompt], empty_clip_window: Callable[[], torch.Tensor]
) -> torch.Tensor | None:
    """(batch, windows * window_length, clip_width): each prompt's windows on the sequence
    axis, padded to the batch's most windows with the empty prompt's window."""
    if not records or records[0].clip_tokens is None:
        return None
    windows = max(record.clip_tokens.shape[0] for record in records)
    padded = []
    empty = None
    for record in records:
        tokens = record.clip_tokens  # (own windows, window_length, clip_width)
        if tokens.shape[0] < windows:
            if empty is None:
                empty = empty_clip_window()
            tokens = torch.cat([tokens, empty.expand(windows - tokens.shape[0], -1, -1)])
        padded.append(tokens.reshape(-1, tokens.shape[-1]))
    return torch.stack(padded)
