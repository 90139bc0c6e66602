"""Deep copies of transformers' CLIP tokenizers that are faster than `copy.deepcopy`'s and
decode as the original.

Pipelines are copied whole (tests copy their components for every check; users keep a pristine
pipeline beside one they change), and a CLIP tokenizer is most of that copy's time: its merge
list alone is 48,894 pairs, each visited by `copy.deepcopy`.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

Tokenizer = TypeVar("Tokenizer")


def deep_copy_clip_tokenizer(tokenizer: Tokenizer, memo: dict[int, Any]) -> Tokenizer:
    """What `copy.deepcopy(tokenizer, memo)` gives a transformers CLIP tokenizer, with two
    differences.

    - The merge list (`_merges`, pairs of strings) is copied as a new list of the same pairs:
      what `copy.deepcopy` makes of pairs of immutable strings, without visiting each. Merges
      of any other kind are deep-copied. A copy of `clip_tokenizer()` takes 0.58 of the time of
      a copy of transformers' `CLIPTokenizer` built from the same files (2 CPU cores,
      benchmarks/results/tokenizer_copy.md).
    - The copy decodes as the original. transformers' CLIP tokenizer replaces its backend's
      `decode` with one that turns the end-of-word marker `</w>` into a space; a copied backend
      (rebuilt from its serialisation) loses that replacement, so a plain deep copy's `decode`
      keeps `</w>` in the text. The replacement is set again on the copy.

    Args:
        tokenizer: a transformers `CLIPTokenizer` (or a subclass of it).
        memo: `copy.deepcopy`'s memo, so that objects shared with the rest of the copy stay
            shared (a tokenizer held twice is copied once).
    """
    copied = type(tokenizer).__new__(type(tokenizer))
    memo[id(tokenizer)] = copied
    merges = tokenizer.__dict__.get("_merges")
    if isinstance(merges, list) and id(merges) not in memo and _are_string_pairs(merges):
        memo[id(merges)] = list(merges)
        memo.setdefault(id(memo), []).append(merges)  # kept alive while its id is in the memo, as copy does
    copied.__dict__.update(copy.deepcopy(tokenizer.__dict__, memo))
    if _decode_replaced(tokenizer):
        copied._wrap_decode_method_backend_tokenizer()
    return copied


def _are_string_pairs(items: list) -> bool:
    """Whether every item is a tuple of strings (immutable all through, so shared by a deep copy)."""
    return {type(item) for item in items} <= {tuple} and {type(part) for item in items for part in item} <= {str}


def _decode_replaced(tokenizer: Any) -> bool:
    """Whether the backend's `decode` is a replacement set on the instance (transformers'
    CLIP tokenizer sets one), not the backend's own method."""
    backend = tokenizer.__dict__.get("_tokenizer")
    decode = getattr(backend, "decode", None)
    return decode is not None and getattr(decode, "__self__", None) is not backend
