"""`CaptionTokenizer`: captions -> a padded batch of token ids, for any tokenizer (CLIP's, T5's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class CaptionTokenizer:
    """Captions -> (batch, seq) int64 ids padded to the longest caption, with a cache (shapes
    captions repeat a lot). Captions longer than the context are truncated and counted."""

    tokenizer: object
    context_length: int
    cache_size: int = 100_000
    truncated: int = 0
    _cache: dict[str, list[int]] = field(default_factory=dict)

    def ids(self, caption: str) -> list[int]:
        """Token ids of one caption, with BOS and EOS, at most `context_length` long."""
        cached = self._cache.get(caption)
        if cached is not None:
            return cached
        ids = self.tokenizer(caption, truncation=False)["input_ids"]
        if len(ids) > self.context_length:
            self.truncated += 1
            ids = ids[: self.context_length - 1] + [ids[-1]]
        if len(self._cache) < self.cache_size:
            self._cache[caption] = ids
        return ids

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        """(len(captions), longest) int64 ids, padded after EOS with the tokenizer's pad id."""
        rows = [self.ids(caption) for caption in captions]
        longest = max(len(row) for row in rows)
        batch = torch.full((len(rows), longest), int(self.tokenizer.pad_token_id), dtype=torch.long)
        for index, row in enumerate(rows):
            batch[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        return batch
