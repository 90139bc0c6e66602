"""compel's ``.blend()`` over encoded prompts: the records of its parts, summed with its weights.

compel encodes each part of ``("a cat", "a dog").blend(0.7, 0.3)`` on its own, pads the parts
to one length with the empty prompt's encoding, and sums them with the weights, divided by
their sum (`clipcond.compel_syntax.CompelBlend`). Here the parts are records
(`clipcond.records.EncodedPrompt`): their CLIP windows padded with the empty prompt's window and
summed alike; the pooled vector is the parts' pooled vectors summed alike (compel pools the raw
prompt, syntax included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipcond.compel_syntax import CompelBlend
from clipcond.emphasis import compel_blend
from clipcond.records import EncodedPrompt


def blend_records(parts: Sequence[EncodedPrompt], blend: CompelBlend, empty: EncodedPrompt) -> EncodedPrompt:
    """One record: `parts` (one per `blend.parts`, CLIP windows (windows, length, width) each,
    no T5) padded to the most windows with `empty`'s first window and summed with `blend`'s
    weights; pooled vectors (width,) summed with the same weights."""
    if any(part.t5_tokens is not None for part in parts) or any(part.clip_tokens is None for part in parts):
        raise ValueError("a compel blend is read over CLIP windows only: this conditioner has a T5 or no CLIP tokens")
    windows = max(part.clip_tokens.shape[0] for part in parts)
    padding = empty.clip_tokens[:1]
    padded = [
        torch.cat([part.clip_tokens, padding.expand(windows - part.clip_tokens.shape[0], -1, -1)]) for part in parts
    ]
    pooled = None
    if parts[0].pooled is not None:
        pooled = compel_blend([part.pooled for part in parts], blend.weights, blend.normalize)
    return EncodedPrompt(clip_tokens=compel_blend(padded, blend.weights, blend.normalize), pooled=pooled)
