"""`EncodedPrompt`: what the encoders made of one prompt, before assembly.

It is the unit the embedding cache stores (in memory as is, on disk as its tensors), and
what assembly joins into `PromptEmbeds`. Token states are already weighted.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class EncodedPrompt:
    """Encoder outputs of one prompt.

    Attributes:
        clip_tokens: (windows, window_length, clip_width) CLIP token states, the encoders
            joined on channels; None without CLIP or when the recipe reads only CLIP's pooled
            vector.
        pooled: (width,) pooled state (of the CLIPs the recipe pools, joined), before any
            `text_projection`, which assembly applies; None when the recipe has none.
        t5_tokens: (t5_length, t5_width) T5 token states, or None without T5.
        t5_mask: (t5_length,) int64, 1 for real tokens and 0 for padding; None without T5.
    """

    clip_tokens: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    t5_tokens: torch.Tensor | None = None
    t5_mask: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that are set, by field name (what the disk cache writes)."""
        return {item.name: getattr(self, item.name) for item in fields(self) if getattr(self, item.name) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> EncodedPrompt:
        """The record `tensors()` gave; ValueError for a name that is no field."""
        names = {item.name for item in fields(cls)}
        unknown = sorted(set(tensors) - names)
        if unknown:
            raise ValueError(f"an encoded prompt has no fields {unknown}; expected some of {sorted(names)}")
        return cls(**tensors)
