"""Cache keys of encoded prompts: everything an `EncodedPrompt` depends on, hashed.

A key covers the encoders' weights (a `WeightsWatch` state in memory, a content hash on
disk), the active recipe (clip-skip included), whether weights are parsed, each encoder's
class, window length and mask use, and the prompt text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from clipcond.encoders import TextEncoder
from clipcond.recipes import Recipe

# Bump when the meaning of cached records changes, so old files on disk are never read.
CACHE_KEY_VERSION = "clipcond-embeds-v1"


def settings_key(recipe: Recipe, parse_weights: bool, encoders: Sequence[TextEncoder]) -> str:
    """The part of every key that the conditioner's settings decide."""
    parts = [
        CACHE_KEY_VERSION,
        repr(recipe),
        f"parse={parse_weights}",
        *(f"{type(e.model).__name__}:{e.window_length}:{e.uses_attention_mask}" for e in encoders),
    ]
    return "|".join(parts)


def prompt_keys(weights_id: str, settings: str, texts: Sequence[str]) -> list[str]:
    """One hex key (sha256) per text, under the given weights identity and settings."""
    prefix = f"{weights_id}|{settings}|"
    return [hashlib.sha256((prefix + text).encode("utf-8")).hexdigest() for text in texts]
