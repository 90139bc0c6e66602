"""`PromptEmbeds`: the conditioning a text encoder setup hands to a diffusion model."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PromptEmbeds:
    """Per-token prompt embeddings, an optional pooled vector and an optional mask.

    Attributes:
        tokens: (batch, seq, width) per-token embeddings read by cross-attention.
        pooled: (batch, pooled_width) pooled prompt vector, or None when the recipe has none.
        mask: (batch, seq) int64 attention mask (1 = real token, 0 = padding), or None when
            the recipe does not use one.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"`tokens` must be (batch, seq, width), got shape {tuple(self.tokens.shape)}")
        batch, seq = self.tokens.shape[:2]
        if self.pooled is not None and (self.pooled.ndim != 2 or self.pooled.shape[0] != batch):
            raise ValueError(f"`pooled` must be ({batch}, width), got shape {tuple(self.pooled.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != (batch, seq):
            raise ValueError(f"`mask` must be ({batch}, {seq}), got shape {tuple(self.mask.shape)}")

    @property
    def batch_size(self) -> int:
        """Number of prompts in the batch."""
        return self.tokens.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PromptEmbeds:
        """Move to `device` and cast the floating tensors to `dtype`; the mask keeps its integer dtype."""
        return PromptEmbeds(
            tokens=self.tokens.to(device=device, dtype=dtype),
            pooled=None if self.pooled is None else self.pooled.to(device=device, dtype=dtype),
            mask=None if self.mask is None else self.mask.to(device=device),
        )

    def repeat(self, times: int) -> PromptEmbeds:
        """Repeat every prompt `times` times in place order: [a, b] -> [a, a, b, b]."""
        return PromptEmbeds(
            tokens=self.tokens.repeat_interleave(times, dim=0),
            pooled=None if self.pooled is None else self.pooled.repeat_interleave(times, dim=0),
            mask=None if self.mask is None else self.mask.repeat_interleave(times, dim=0),
        )

    def split(self, count: int) -> tuple[PromptEmbeds, PromptEmbeds | None]:
        """(the first `count` prompts, the rest or None when there is no rest)."""

        def part(rows: slice) -> PromptEmbeds:
            return PromptEmbeds(
                tokens=self.tokens[rows],
                pooled=None if self.pooled is None else self.pooled[rows],
                mask=None if self.mask is None else self.mask[rows],
            )

        rest = part(slice(count, None)) if count < self.batch_size else None
        return part(slice(0, count)), rest

    def select(self, rows: torch.Tensor) -> PromptEmbeds:
        """The prompts at `rows` ((k,) long indices, repeats allowed), in that order."""
        return PromptEmbeds(
            tokens=self.tokens.index_select(0, rows),
            pooled=None if self.pooled is None else self.pooled.index_select(0, rows),
            mask=None if self.mask is None else self.mask.index_select(0, rows),
        )

    @staticmethod
    def cat(parts: list[PromptEmbeds]) -> PromptEmbeds:
        """The prompts of `parts` one after another (all with or all without pooled vectors and masks).

        Raises:
            ValueError: `parts` is empty, or some parts have a pooled vector (or a mask) and
                others do not (naming which).
        """
        if not parts:
            raise ValueError("`parts` must hold at least one PromptEmbeds, got none")
        for name in ("pooled", "mask"):
            missing = [index for index, part in enumerate(parts) if getattr(part, name) is None]
            if missing and len(missing) < len(parts):
                raise ValueError(
                    f"`parts` must be all with or all without `{name}`: parts {missing} have none, "
                    f"the other {len(parts) - len(missing)} have one"
                )
        return PromptEmbeds(
            tokens=torch.cat([part.tokens for part in parts]),
            pooled=None if parts[0].pooled is None else torch.cat([part.pooled for part in parts]),
            mask=None if parts[0].mask is None else torch.cat([part.mask for part in parts]),
        )

    def zeros_like(self) -> PromptEmbeds:
        """Zero tokens and pooled vector of the same shapes (SDXL's empty negative); the mask is kept."""
        return PromptEmbeds(
            tokens=torch.zeros_like(self.tokens),
            pooled=None if self.pooled is None else torch.zeros_like(self.pooled),
            mask=self.mask,
        )
