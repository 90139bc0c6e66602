"""compel's operators over whole encodings, applied to encoded prompts: ``.blend()`` and a
weighted ``.and()``.

compel encodes each part of ``("a cat", "a dog").blend(0.7, 0.3)`` on its own, pads the parts
to one length with the empty prompt's encoding, and sums them with the weights, divided by
their sum (`clipcond.compel_syntax.CompelBlend`). It encodes each part of
``("a cat", "a dog").and(1, 0.5)`` on its own too, moves each part whose weight is not 1
towards the empty prompt's encoding (``empty + (part - empty) * weight``, the empty prompt's
encoding repeated to the part's length) and joins the parts in order
(`clipcond.compel_syntax.CompelConjunction`).

Here the parts are records (`clipcond.records.EncodedPrompt`) and the empty prompt's encoding
is its first CLIP window. A blend's pooled vector is the parts' pooled vectors summed alike; a
conjunction's is its first part's, as an unweighted ``.and()`` (its parts with a BREAK
between) pools its first window (compel pools the raw prompt, syntax included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipcond.compel_syntax import CompelBlend, CompelConjunction
from clipcond.emphasis import compel_blend
from clipcond.records import EncodedPrompt


def _check_clip_only(parts: Sequence[EncodedPrompt]) -> None:
    """A ValueError unless every part holds CLIP windows and no T5 tokens."""
    if any(part.t5_tokens is not None for part in parts) or any(part.clip_tokens is None for part in parts):
        raise ValueError(
            "compel's `blend()` and weighted `and()` are read over CLIP windows only: this conditioner has a T5 "
            "or no CLIP tokens"
        )


def blend_records(parts: Sequence[EncodedPrompt], blend: CompelBlend, empty: EncodedPrompt) -> EncodedPrompt:
    """One record: `parts` (one per `blend.parts`, CLIP windows (windows, length, width) each,
    no T5) padded to the most windows with `empty`'s first window and summed with `blend`'s
    weights; pooled vectors (width,) summed with the same weights."""
    _check_clip_only(parts)
    windows = max(part.clip_tokens.shape[0] for part in parts)
    padding = empty.clip_tokens[:1]
    padded = [
        torch.cat([part.clip_tokens, padding.expand(windows - part.clip_tokens.shape[0], -1, -1)]) for part in parts
    ]
    pooled = None
    if parts[0].pooled is not None:
        pooled = compel_blend([part.pooled for part in parts], blend.weights, blend.normalize)
    return EncodedPrompt(clip_tokens=compel_blend(padded, blend.weights, blend.normalize), pooled=pooled)


def join_records(parts: Sequence[EncodedPrompt], conjunction: CompelConjunction, empty: EncodedPrompt) -> EncodedPrompt:
    """One record: the CLIP windows of `parts` (one per `conjunction.parts`, (windows, length,
    width) each, no T5), each part's moved towards `empty`'s first window by its weight where
    that is not 1, joined in order: (all windows, length, width); the first part's pooled
    vector."""
    _check_clip_only(parts)
    window = empty.clip_tokens[0]  # (length, width)
    joined = [
        part.clip_tokens if weight == 1.0 else window + (part.clip_tokens - window) * weight
        for part, weight in zip(parts, conjunction.weights, strict=True)
    ]
    return EncodedPrompt(clip_tokens=torch.cat(joined), pooled=parts[0].pooled)


def combine_records(
    parts: Sequence[EncodedPrompt], combination: CompelBlend | CompelConjunction, empty: EncodedPrompt
) -> EncodedPrompt:
    """`blend_records` or `join_records`, as `combination` says."""
    if isinstance(combination, CompelBlend):
        return blend_records(parts, combination, empty)
    return join_records(parts, combination, empty)
