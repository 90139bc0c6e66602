"""Fingerprints of tokenizers, so cached embeddings follow the tokenizer as well as the weights.

Two tokenizers that split a prompt into different ids (another pad token, an added token,
another vocabulary or length) give different embeddings from the same weights.
`tokenizer_fingerprint` hashes everything that decides the ids; `TokenizerFingerprints`
computes it once per tokenizer object and again only when a cheap summary of the tokenizer
(size, special tokens, lengths) changes, as it does on `add_tokens` or a new pad token.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _summary(tokenizer: Any) -> tuple:
    """A cheap token (a few microseconds) that changes when tokens are added (new ones, or
    existing ones made whole: the size stays, the added tokens grow) or special tokens, lengths
    or padding sides are set."""
    return (
        type(tokenizer).__module__,
        type(tokenizer).__qualname__,
        len(tokenizer) if hasattr(tokenizer, "__len__") else None,
        len(getattr(tokenizer, "added_tokens_decoder", ())),
        repr(getattr(tokenizer, "special_tokens_map", None)),
        getattr(tokenizer, "pad_token_id", None),
        getattr(tokenizer, "model_max_length", None),
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
    )


def _vocabulary_text(tokenizer: Any) -> str:
    """The whole vocabulary as text: a tokenizers backend's own serialisation (vocabulary,
    merges, added tokens, normaliser, pre-tokeniser) where there is one, else token -> id.

    Without the backend's padding and truncation: transformers sets them on the backend for
    each call (`padding="longest"` leaves them so until the next call), and every call names
    its own, so they say nothing about the ids a later call gives."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            return _without_call_settings(backend.to_str())
        except Exception:  # noqa: BLE001 - custom Python components cannot be serialised; the vocabulary below still can
            pass
    vocabulary = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return repr(sorted(vocabulary.items(), key=lambda item: (item[1], item[0])))


_VOCABULARY_START = ',"added_tokens":'  # the key after "padding" in a tokenizers serialisation


def _without_call_settings(serialised: str) -> str:
    """A tokenizers backend's JSON without its "truncation" and "padding" entries. They come
    before "added_tokens", so only that head is parsed (the whole text takes 8x as long)."""
    head, found, rest = serialised.partition(_VOCABULARY_START)
    settings = json.loads(head + "}" if found else serialised)
    if isinstance(settings, dict):
        settings.pop("truncation", None)
        settings.pop("padding", None)
    kept = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    return kept[:-1] + found + rest if found else kept


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hex digest (blake2b, 16 bytes) of a tokenizer's class, vocabulary, added tokens (with
    their flags), special tokens (the pad token included) and `model_max_length`.

    Reads the whole vocabulary (tens of milliseconds for CLIP's 49,408 tokens); any string,
    lone surrogates included, hashes without error.
    """
    digest = hashlib.blake2b(digest_size=16)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    for part in (repr(_summary(tokenizer)), repr(sorted(added.items())), _vocabulary_text(tokenizer)):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class TokenizerFingerprints:
    """`tokenizer_fingerprint` per tokenizer object, recomputed only when its summary changes."""

    def __init__(self) -> None:
        # id -> (tokenizer, summary, fingerprint); the tokenizer is held so its id is never reused.
        self._known: dict[int, tuple[Any, tuple, str]] = {}

    def __call__(self, tokenizer: Any) -> str:
        """The fingerprint of `tokenizer`."""
        summary = _summary(tokenizer)
        known = self._known.get(id(tokenizer))
        if known is not None and known[0] is tokenizer and known[1] == summary:
            return known[2]
        fingerprint = tokenizer_fingerprint(tokenizer)
        self._known[id(tokenizer)] = (tokenizer, summary, fingerprint)
        return fingerprint
