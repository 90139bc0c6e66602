"""Weighted fragments -> `EncodedPrompt` records: tokenize into windows, run the encoders, weight.

Every window of every prompt goes through each encoder in one batch, or in batches of at most
`max_batch_windows` windows (rows) when there are more, so that a huge prompt or thousands of
prompts run in bounded memory. Each encoder reads its own text of a prompt (the same one,
unless per-encoder prompts such as SDXL's `prompt_2` make them differ). CLIP windows of the
encoders of a multi-CLIP recipe are aligned (the same number per prompt, the shorter padded
with empty windows), so their token states join on channels; T5 reads one sequence per prompt.
Weights change the token states of each encoder as the emphasis mode says (`clipcond.emphasis`);
the modes that need the empty prompt's states encode its window alone, once per `EmptyStates`
key when the caller keeps a memo (`clipcond.empty_states`). Each batch's states are checked to
be finite (one reduction): an encoder
that gives NaN or infinity raises `NonFiniteEncoding` instead of handing it on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from clipcond.chunking import TokenWindows, clip_windows, t5_sequence
from clipcond.emphasis import (
    away_from_empty,
    compel_blend,
    compel_blend_weight,
    multiply,
    multiply_keeping_window_means,
)
from clipcond.emphasis_modes import DEFAULT_EMPHASIS, MODES_FROM_EMPTY
from clipcond.encoders import TextEncoder, run_clip, run_t5, weights_quantization
from clipcond.fingerprint import _watched_tensors, offloaded_tensor, stored_tensors
from clipcond.prompts import Fragment
from clipcond.recipes import Recipe
from clipcond.records import EncodedPrompt


class NonFiniteEncoding(FloatingPointError):
    """A text encoder gave NaN or infinite states; the message names the encoder, its dtype and
    whether its weights hold non-finite values."""


def encode_fragments(
    fragments: Sequence[Sequence[Sequence[Fragment]]],
    clip: Sequence[TextEncoder],
    t5: TextEncoder | None,
    recipe: Recipe,
    emphasis: str = DEFAULT_EMPHASIS,
    max_batch_windows: int | None = None,
    empty_states: EmptyStates | None = None,
) -> list[EncodedPrompt]:
    """One record per prompt: its CLIP windows' token states and pooled vector, its T5 tokens.

    Args:
        fragments: per encoder (the CLIPs in order, then T5), one list of weighted fragments
            per prompt: what that encoder reads of each prompt (per-encoder prompts such as
            SDXL's `prompt_2` make them differ).
        clip: the CLIP encoders, in channel order (may be empty).
        t5: the T5 encoder, or None.
        recipe: which hidden states and pooled vectors to read (clip-skip already applied).
        emphasis: how weights change token states (`clipcond.emphasis`), per encoder.
        max_batch_windows: the most windows (CLIP windows or T5 sequences) one encoder call
            takes; None: all of them in one call.
        empty_states: where the empty prompt's states of each encoder come from, for the
            modes that need them: `(slot, compute) -> (length, width)` states, `slot` naming
            the encoder ("clip0", "clip1", "t5"). None: computed on each call.

    Raises:
        NonFiniteEncoding: an encoder gave NaN or infinite states.
    """
    expected = len(clip) + (t5 is not None)
    if len(fragments) != expected:
        raise ValueError(f"`fragments` must hold one list per encoder ({expected}), got {len(fragments)}")
    records = [EncodedPrompt() for _ in fragments[0]]
    empty_states = empty_states or _compute_each_time
    if clip:
        _encode_clip(fragments[: len(clip)], clip, recipe, emphasis, max_batch_windows, empty_states, records)
    if t5 is not None:
        _encode_t5(fragments[-1], t5, recipe, emphasis, max_batch_windows, empty_states, records)
    return records


# (slot, compute) -> the empty prompt's (length, width) states of the encoder in `slot`.
EmptyStates = Callable[[str, Callable[[], torch.Tensor]], torch.Tensor]


def _compute_each_time(slot: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    return compute()


# Runs an encoder: (rows, length) ids and an optional mask -> (states or None, pooled or None).
EncoderRun = Callable[[torch.Tensor, "torch.Tensor | None"], tuple["torch.Tensor | None", "torch.Tensor | None"]]


def _checked_in_batches(run: EncoderRun, encoder: TextEncoder, max_rows: int | None) -> EncoderRun:
    """`run` on at most `max_rows` rows per call (all rows when None), the results joined on
    rows, each call's output checked to be finite."""

    def checked(ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        states, pooled = run(ids, mask)
        for output in (states, pooled):
            if output is not None and not bool(torch.isfinite(output).all()):
                raise NonFiniteEncoding(_non_finite_message(encoder, output.dtype))
        return states, pooled

    def batched(ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if max_rows is None or ids.shape[0] <= max_rows:
            return checked(ids, mask)
        parts = [
            checked(ids[start : start + max_rows], None if mask is None else mask[start : start + max_rows])
            for start in range(0, ids.shape[0], max_rows)
        ]
        states = None if parts[0][0] is None else torch.cat([part[0] for part in parts])
        pooled = None if parts[0][1] is None else torch.cat([part[1] for part in parts])
        return states, pooled

    return batched


def _non_finite_message(encoder: TextEncoder, dtype: torch.dtype) -> str:
    weights, unread = _stored_weights(encoder.model)
    bad_weights = any(not bool(torch.isfinite(part).all()) for part in weights)
    computed = encoder.computes_in  # `compute_dtype` when one is set, else the weights' dtype
    where = f"{dtype}" if computed == dtype else f"{dtype}, computed in {computed}"
    name = f"the {encoder.kind.upper()} encoder {type(encoder.model).__name__} ({where})"
    if bad_weights:
        return f"{name} gave NaN or infinite states: its weights hold NaN or infinite values (a damaged file?)"
    finite = "its weights are finite" if not unread else f"the weights read are finite ({unread} offloaded unread)"
    fix = ""
    if computed == torch.float16:
        quantized = weights_quantization(encoder.model)
        fix = (
            "; in float16 pass compute_dtype=torch.float32 (TextConditioner or TextEncoder), or load it in bfloat16"
            if quantized is None
            # `compute_dtype` is refused for quantized weights: they cannot be cast
            else f"; they are quantized ({quantized}): load it with torch_dtype=torch.float32 or torch.bfloat16"
        )
    return f"{name} gave NaN or infinite states although {finite}{fix}"


def _stored_weights(model: torch.nn.Module) -> tuple[list[torch.Tensor], int]:
    """The floating-point tensors that hold `model`'s weights, as the cache watches them
    (`_watched_tensors`: a quantized weight's plain tensors and scales, a bitsandbytes 8-bit
    layer's `SCB` wherever it is), and how many weights none could be read for. A weight on the
    meta device (accelerate's sequential or disk offload) is read from the hook that keeps its
    values in `weights_map` and brings them in for each forward (`offloaded_tensor`)."""
    found = [
        tensor
        for _, tensor in _watched_tensors(list(model.named_modules()))
        if tensor.device.type != "meta" and tensor.is_floating_point()
    ]
    unread = 0
    modules = None
    for path, weight in model.named_parameters():
        if weight.device.type != "meta":
            continue
        modules = modules or dict(model.named_modules(remove_duplicate=False))
        value = offloaded_tensor(modules, path, weight)
        name = path.rsplit(".", 1)[-1]
        parts = [] if value is None else [part for _, part in stored_tensors(name, value)]
        if not parts or any(part.device.type == "meta" for part in parts):
            unread += 1
            continue
        found.extend(part for part in parts if part.is_floating_point())
    return found, unread


def _encode_clip(
    fragments: Sequence[Sequence[Sequence[Fragment]]],
    clip: Sequence[TextEncoder],
    recipe: Recipe,
    emphasis: str,
    max_batch_windows: int | None,
    empty_states: EmptyStates,
    records: list[EncodedPrompt],
) -> None:
    want_tokens = recipe.combine != "clip_pooled_t5_tokens"
    per_encoder = [
        clip_windows(encoder.tokenizer, read, encoder.window_length, recipe.window_split)
        for encoder, read in zip(clip, fragments)
    ]
    if len(clip) > 1:
        _align_window_counts(per_encoder, clip)
    counts = [windows.num_windows for windows in per_encoder[0]]
    tokens_per_encoder, pooled_per_encoder = [], []
    for slot, (encoder, windows) in enumerate(zip(clip, per_encoder)):

        def run(ids, mask, encoder=encoder):
            return run_clip(encoder, ids, mask, recipe.clip_layer_from_end, recipe.clip_final_norm, want_tokens)

        empty = clip_windows(encoder.tokenizer, [[Fragment("", 1.0)]], encoder.window_length)[0]
        run = _checked_in_batches(run, encoder, max_batch_windows)
        empty_of = _empty_of(run, empty, encoder, encoder.uses_attention_mask, f"clip{slot}", empty_states)
        tokens, pooled = _weighted_states(run, windows, empty_of, encoder, encoder.uses_attention_mask, emphasis)
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
    fragments: Sequence[Sequence[Fragment]],
    encoder: TextEncoder,
    recipe: Recipe,
    emphasis: str,
    max_batch_windows: int | None,
    empty_states: EmptyStates,
    records: list[EncodedPrompt],
) -> None:
    sequences = t5_sequence(encoder.tokenizer, fragments, recipe.t5_max_length)
    empty = t5_sequence(encoder.tokenizer, [[Fragment("", 1.0)]], recipe.t5_max_length)[0]

    def run(ids, mask):
        return run_t5(encoder, ids, mask), None

    run = _checked_in_batches(run, encoder, max_batch_windows)
    empty_of = _empty_of(run, empty, encoder, recipe.t5_attention_mask, "t5", empty_states)
    tokens, _ = _weighted_states(run, sequences, empty_of, encoder, recipe.t5_attention_mask, emphasis)
    mask = torch.cat([s.mask for s in sequences]).to(tokens.device)
    for index, record in enumerate(records):
        record.t5_tokens = tokens[index]  # (t5_max_length, width)
        record.t5_mask = mask[index]


def _empty_of(
    run: EncoderRun, empty: TokenWindows, encoder: TextEncoder, uses_mask: bool, slot: str, empty_states: EmptyStates
) -> Callable[[], torch.Tensor]:
    """The empty prompt's (length, width) states through `run`, from `empty_states`."""

    def compute() -> torch.Tensor:
        device = encoder.device
        states, _ = run(empty.ids.to(device), empty.mask.to(device) if uses_mask else None)
        return states[0]

    return lambda: empty_states(slot, compute)


def _weighted_states(
    run: EncoderRun,
    prompts: Sequence[TokenWindows],
    empty_of: Callable[[], torch.Tensor],
    encoder: TextEncoder,
    uses_mask: bool,
    emphasis: str,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Every window of every prompt through `run` (one batch, or batches of bounded size), weighted by `emphasis`.

    Returns (states (all windows, length, width) or None, pooled (all windows, pooled_width)
    or None). The modes that move tokens away from the empty prompt take its states from
    `empty_of()`: encoded alone, so that they do not depend on the batch they are used in.
    """
    device = encoder.device
    ids = torch.cat([w.ids for w in prompts]).to(device)  # (all windows, length)
    mask = torch.cat([w.mask for w in prompts]).to(device)
    weighted = any(w.is_weighted for w in prompts)
    states, pooled = run(ids, mask if uses_mask else None)
    if states is None or not weighted:
        return states, pooled
    empty_states = empty_of().to(device) if emphasis in MODES_FROM_EMPTY else None
    weights = torch.cat([w.weights for w in prompts]).to(device=device, dtype=states.dtype)
    if emphasis == "multiply":
        return multiply(states, weights), pooled
    if emphasis == "a1111":
        return multiply_keeping_window_means(states, weights), pooled
    if emphasis == "comfy":
        return away_from_empty(states, weights, empty_states), pooled
    base_mask = mask[: states.shape[0]] if uses_mask else torch.ones_like(mask[: states.shape[0]])
    return _compel(run, prompts, ids[: states.shape[0]], base_mask, states, weights, empty_states), pooled


def _compel(
    run: EncoderRun,
    prompts: Sequence[TokenWindows],
    ids: torch.Tensor,
    mask: torch.Tensor,
    states: torch.Tensor,
    weights: torch.Tensor,
    empty: torch.Tensor,
) -> torch.Tensor:
    """compel's weighting of every prompt's windows (see `clipcond.emphasis`): the masked
    versions of all prompts' down-weighted fragments are encoded in one more batch."""
    sources = torch.cat([w.fragments for w in prompts]).to(ids.device)  # (all windows, length)
    result = away_from_empty(states, weights, empty)
    # (prompt's first window, its window count, fragment index, fragment weight) per version
    versions, rows, row_masks = [], [], []
    start = 0
    for prompt in prompts:
        span = slice(start, start + prompt.num_windows)
        down = sorted(set(sources[span][weights[span] < 1].tolist()))
        for fragment in down:
            fragment_weight = float(weights[span][sources[span] == fragment][0])
            versions.append((start, prompt.num_windows, fragment, fragment_weight))
            for window in range(start, start + prompt.num_windows):
                if bool((sources[window] == fragment).any()):
                    rows.append(window)
                    row_masks.append(mask[window] * (sources[window] != fragment))
        start += prompt.num_windows
    if not versions:
        return result
    masked_states, _ = run(ids[rows], torch.stack(row_masks))
    masked_by_row: dict[tuple[int, int], torch.Tensor] = {}
    cursor = 0
    for first, count, fragment, _ in versions:
        for window in range(first, first + count):
            if bool((sources[window] == fragment).any()):
                masked_by_row[(fragment, window)] = masked_states[cursor]
                cursor += 1
    start = 0
    for prompt in prompts:
        span = slice(start, start + prompt.num_windows)
        mine = [version for version in versions if version[0] == start]
        if mine:
            blends, blend_weights = [result[span]], [1.0]
            for first, count, fragment, fragment_weight in mine:
                without = torch.stack(
                    [masked_by_row.get((fragment, window), states[window]) for window in range(first, first + count)]
                )
                blends.append(away_from_empty(without, weights[span], empty))
                blend_weights.append(compel_blend_weight(fragment_weight))
            result[span] = compel_blend(blends, blend_weights)
        start += prompt.num_windows
    return result


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
                    fragments=torch.cat([item.fragments, empty.fragments.expand(missing, -1)]),
                )
