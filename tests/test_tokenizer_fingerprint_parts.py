"""Tokenizer fingerprints on their own: what changes one (each thing that decides the ids),
what does not (copies, the padding a call leaves on the backend), the vocabulary text read
with and without a tokenizers backend, and the per-object memo. The cache keys these feed are
tested in tests/test_cache_key.py."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from clipcond.tokenization import clip_tokenizer
from clipcond.tokenizer_fingerprint import (
    TokenizerFingerprints,
    _vocabulary_text,
    _without_call_settings,
    tokenizer_fingerprint,
)


@pytest.fixture(scope="module")
def base_fingerprint() -> str:
    return tokenizer_fingerprint(clip_tokenizer())


def test_equal_tokenizers_have_one_fingerprint(base_fingerprint) -> None:
    tokenizer = clip_tokenizer()
    assert len(base_fingerprint) == 32 and int(base_fingerprint, 16) >= 0
    assert tokenizer_fingerprint(tokenizer) == base_fingerprint
    assert tokenizer_fingerprint(copy.deepcopy(tokenizer)) == base_fingerprint


def test_the_padding_a_call_leaves_on_the_backend_changes_nothing(base_fingerprint) -> None:
    tokenizer = clip_tokenizer()
    tokenizer(["a cat", "a cat on a red mat"], padding="longest", truncation=True, max_length=8)
    assert json.loads(tokenizer.backend_tokenizer.to_str())["padding"] is not None  # left there by the call
    assert tokenizer_fingerprint(tokenizer) == base_fingerprint


def _pad(tokenizer):
    tokenizer.pad_token = "!"


def _added(tokenizer):
    tokenizer.add_tokens(["<cat-toy>"])


def _made_whole(tokenizer):
    tokenizer.add_tokens(["cat</w>"])  # in the vocabulary already: the size stays, the added tokens grow


def _length(tokenizer):
    tokenizer.model_max_length = 248


def _padding_side(tokenizer):
    tokenizer.padding_side = "left"


def _truncation_side(tokenizer):
    tokenizer.truncation_side = "left"


def _bos(tokenizer):
    tokenizer.bos_token = "<|endoftext|>"


@pytest.mark.parametrize("change", [_pad, _added, _made_whole, _length, _padding_side, _truncation_side, _bos])
def test_each_setting_that_decides_the_ids_changes_the_fingerprint(change, base_fingerprint) -> None:
    tokenizer = clip_tokenizer()
    change(tokenizer)
    assert tokenizer_fingerprint(tokenizer) != base_fingerprint


def test_another_vocabulary_changes_the_fingerprint() -> None:
    from transformers import CLIPTokenizer

    from clipcond.tokenization import load_clip_bpe

    vocab, merges = load_clip_bpe()
    whole = CLIPTokenizer(vocab=vocab, merges=list(merges))
    fewer = CLIPTokenizer(vocab=vocab, merges=list(merges)[:-1])
    assert tokenizer_fingerprint(whole) != tokenizer_fingerprint(fewer)
    assert tokenizer_fingerprint(whole) != tokenizer_fingerprint(clip_tokenizer())  # another class


class VocabularyOnly:
    """A tokenizer with a vocabulary and nothing else."""

    def __init__(self, vocabulary: dict[str, int]) -> None:
        self.vocabulary = vocabulary

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocabulary)


def test_the_digest_is_blake2b_of_three_length_prefixed_parts() -> None:
    """The format every disk cache's keys rest on, written out for a tokenizer with a
    vocabulary only."""
    summary = (__name__, "VocabularyOnly", None, 0, "None", None, None, None, None)
    parts = (repr(summary), repr([]), repr([("b", 0), ("a", 1), ("c", 1)]))
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part.encode()).to_bytes(8, "little") + part.encode())
    assert tokenizer_fingerprint(VocabularyOnly({"c": 1, "a": 1, "b": 0})) == digest.hexdigest()


class SerialisedAs:
    """A tokenizers backend that serialises as the text given."""

    def __init__(self, text: str) -> None:
        self.text = text

    def to_str(self) -> str:
        return self.text


def test_any_string_hashes_lone_surrogates_included() -> None:
    lone = tokenizer_fingerprint(VocabularyOnly({"\ud800": 0}))
    assert lone != tokenizer_fingerprint(VocabularyOnly({"\ud801": 0}))
    assert lone != tokenizer_fingerprint(VocabularyOnly({"a": 0}))
    # a backend's JSON may escape a lone surrogate, which the settings read back hold as one
    fingerprints = []
    for escaped in ("\\ud800", "\\ud801"):
        tokenizer = VocabularyOnly({})
        tokenizer.backend_tokenizer = SerialisedAs('{"normalizer":{"content":"' + escaped + '"},"added_tokens":[]}')
        fingerprints.append(tokenizer_fingerprint(tokenizer))
    assert fingerprints[0] != fingerprints[1]


def test_what_only_the_summary_and_the_added_tokens_show_changes_the_fingerprint() -> None:
    """Without a tokenizers backend the vocabulary text has neither the pad token's id nor the
    added tokens' flags (a slow tokenizer's `AddedToken`s)."""
    plain = VocabularyOnly({"a": 0, "b": 1})
    padded = VocabularyOnly({"a": 0, "b": 1})
    padded.pad_token_id = 1
    special = VocabularyOnly({"a": 0, "b": 1})
    special.added_tokens_decoder = {1: "b(special=True)"}
    not_special = VocabularyOnly({"a": 0, "b": 1})
    not_special.added_tokens_decoder = {1: "b(special=False)"}
    fingerprints = [tokenizer_fingerprint(tokenizer) for tokenizer in (plain, padded, special, not_special)]
    assert len(set(fingerprints)) == 4


class SizedVocabulary(VocabularyOnly):
    def __len__(self) -> int:
        return len(self.vocabulary)


def test_the_vocabulary_text_without_a_backend_or_one_that_cannot_be_serialised() -> None:
    assert _vocabulary_text(VocabularyOnly({"b": 2, "a": 2, "z": 0})) == "[('z', 0), ('a', 2), ('b', 2)]"
    assert _vocabulary_text(object()) == "[]"

    class Unserialisable:
        def to_str(self):
            raise RuntimeError("a custom pre-tokenizer")

    tokenizer = VocabularyOnly({"x": 0})
    tokenizer.backend_tokenizer = Unserialisable()
    assert _vocabulary_text(tokenizer) == "[('x', 0)]"


def test_the_call_settings_are_dropped_from_a_serialisation() -> None:
    serialised = (
        '{"version":"1.0","truncation":{"max_length":8},"padding":{"pad_id":0},"added_tokens":[{"id":1}],"model":{}}'
    )
    assert _without_call_settings(serialised) == '{"version": "1.0","added_tokens":[{"id":1}],"model":{}}'
    # without "added_tokens" the whole text is read
    assert _without_call_settings('{"padding":null,"model":{"é":1},"truncation":1}') == '{"model": {"é": 1}}'
    assert _without_call_settings("[1, 2]") == "[1, 2]"  # no settings to drop
    assert _without_call_settings('{"model":{},"added_tokens":[]}') == '{"model": {},"added_tokens":[]}'  # none there
    # the settings' order is not the fingerprint's
    assert _without_call_settings('{"b":1,"a":{"d":2,"c":3},"added_tokens":[]}') == _without_call_settings(
        '{"a":{"c":3,"d":2},"b":1,"added_tokens":[]}'
    )


def test_the_memo_computes_once_per_tokenizer_until_it_changes(monkeypatch) -> None:
    from clipcond import tokenizer_fingerprint as module

    computed = []
    real = module.tokenizer_fingerprint
    monkeypatch.setattr(
        module, "tokenizer_fingerprint", lambda tokenizer: computed.append(tokenizer) or real(tokenizer)
    )
    fingerprints = TokenizerFingerprints()
    tokenizer, other = clip_tokenizer(), clip_tokenizer()
    first = fingerprints(tokenizer)
    assert fingerprints(tokenizer) == first and computed == [tokenizer]
    assert fingerprints(other) == first and computed == [tokenizer, other]
    tokenizer.add_tokens(["<cat-toy>"])
    changed = fingerprints(tokenizer)
    assert changed != first and changed == real(tokenizer) and len(computed) == 3
    assert fingerprints(tokenizer) == changed and len(computed) == 3
    # what the summary shows of a tokenizer without added tokens: its size and its pad token's id
    sized = SizedVocabulary({"a": 0})
    assert fingerprints(sized) == real(sized)
    sized.vocabulary["b"] = 1
    assert fingerprints(sized) == real(sized)
    sized.pad_token_id = 1
    assert fingerprints(sized) == real(sized)
    computed.clear()
    # an entry under the tokenizer's id held for another object is not taken
    summary = fingerprints._known[id(tokenizer)][1]
    fingerprints._known[id(tokenizer)] = (other, summary, "stale")
    assert fingerprints(tokenizer) == changed and computed == [tokenizer]


def test_a_version_changes_exactly_when_the_fingerprint_is_recomputed(monkeypatch) -> None:
    """`version` follows the memo's rule (another object, or a changed summary) and reads no
    vocabulary: no fingerprint is computed for it."""
    from clipcond import tokenizer_fingerprint as module

    def no_read(tokenizer):
        raise AssertionError("a version read the vocabulary")

    monkeypatch.setattr(module, "tokenizer_fingerprint", no_read)
    fingerprints = TokenizerFingerprints()
    tokenizer, equal = clip_tokenizer(), clip_tokenizer()
    first = fingerprints.version(tokenizer)
    assert fingerprints.version(tokenizer) == first
    other = fingerprints.version(equal)  # equal content, another object
    assert other != first and fingerprints.version(equal) == other
    tokenizer.pad_token = "!"
    padded = fingerprints.version(tokenizer)
    assert padded not in (first, other) and fingerprints.version(tokenizer) == padded
    tokenizer.pad_token = "<|endoftext|>"  # the summary changes back: a version of its own
    back = fingerprints.version(tokenizer)
    assert back not in (first, other, padded)
    sized = SizedVocabulary({"a": 0})
    before = fingerprints.version(sized)
    sized.vocabulary["b"] = 1
    assert fingerprints.version(sized) != before
    # an entry under the tokenizer's id held for another object is not taken
    summary = fingerprints._versions[id(tokenizer)][1]
    fingerprints._versions[id(tokenizer)] = (equal, summary, "stale")
    assert fingerprints.version(tokenizer) not in ("stale", first, other, padded, back)
    assert fingerprints._known == {}  # versions and fingerprints are kept apart
