"""Fingerprints of tokenizers, so cached embeddings follow the tokenizer as well as the weights.

Two tokenizers that split a prompt into different ids (another pad token, an added token,
another vocabulary or length) give different embeddings from the same weights.
`tokenizer_fingerprint` hashes everything that decides the ids; `TokenizerFingerprints`
computes it once per tokenizer object and again only when a cheap summary of the tokenizer
(size, special tokens, lengths) changes, as it does on `add_tokens` or a new pad token. Keys
that live only as long as their conditioner (its in-memory cache, its memo of the empty
prompt's states) need no fingerprint:
`TokenizerFingerprints.version` names the same object-and-summary state without reading the
vocabulary (the fingerprint of CLIP's 49,408 tokens takes about 24 ms here).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
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
        # id -> (tokenizer, summary, version), as `_known` but for `version`; versions issued so far
        self._versions: dict[int, tuple[Any, tuple, str]] = {}
        self._issued = 0

    def __setstate__(self, state: dict) -> None:
        # A copy's tokenizers are other objects with other ids: key the entries by theirs (each
        # entry holds its tokenizer, copied with it).
        self.__dict__.update(state)
        for name in ("_known", "_versions"):
            setattr(self, name, {id(entry[0]): entry for entry in getattr(self, name).values()})

    def __call__(self, tokenizer: Any) -> str:
        """The fingerprint of `tokenizer`."""
        return _memoised(self._known, tokenizer, tokenizer_fingerprint)

    def version(self, tokenizer: Any) -> str:
        """A name for the state of `tokenizer` that changes whenever `self(tokenizer)` is
        recomputed (another object, or a changed summary), without reading its vocabulary: for
        keys that only this object's lifetime sees. Two equal tokenizers have different versions;
        a summary that changes back gives a new one. Unique among this object's versions."""
        return _memoised(self._versions, tokenizer, self._next_version)

    def _next_version(self, tokenizer: Any) -> str:
        self._issued += 1
        return f"version-{self._issued}"


def _memoised(known: dict[int, tuple[Any, tuple, str]], tokenizer: Any, compute: Callable[[Any], str]) -> str:
    """`known`'s value for `tokenizer` while its entry holds this object with its current
    summary; else `compute(tokenizer)`, stored there."""
    summary = _summary(tokenizer)
    entry = known.get(id(tokenizer))
    if entry is not None and entry[0] is tokenizer and entry[1] == summary:
        return entry[2]
    value = compute(tokenizer)
    known[id(tokenizer)] = (tokenizer, summary, value)
    return value
