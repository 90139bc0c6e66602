"""`copy.deepcopy` of clipcond's CLIP tokenizer: a copy that tokenizes and decodes as the
original and shares nothing mutable with it (tests copy pipeline components all the time,
and so do users who keep a pristine pipeline beside one they change)."""

from __future__ import annotations

import copy

import pytest

from clipcond.tokenization import clip_tokenizer

PROMPTS = ["a photo of a cat", "Hello,  WORLD!! &amp; caf\u00e9", "an astronaut riding a horse on mars, 4k"]


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer(pad_token="!")


def test_a_copy_gives_the_originals_ids_settings_and_serialisation(tokenizer):
    copied = copy.deepcopy(tokenizer)
    assert type(copied) is type(tokenizer)
    for prompt in PROMPTS:
        assert (
            copied(prompt, padding="max_length", truncation=True).input_ids
            == tokenizer(prompt, padding="max_length", truncation=True).input_ids
        )
    assert (copied.pad_token, copied.pad_token_id, copied.model_max_length) == ("!", 0, 77)
    assert copied.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert copied._merges == tokenizer._merges


def test_a_copy_decodes_as_the_original(tokenizer):
    """transformers' CLIP tokenizer turns the end-of-word marker into a space in `decode`;
    a plain deep copy of its backend loses that and keeps `</w>` in the text."""
    copied = copy.deepcopy(tokenizer)
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        assert "</w>" not in tokenizer.decode(ids)
        assert copied.decode(ids) == tokenizer.decode(ids)
        assert copied.batch_decode([ids, ids[:3]]) == tokenizer.batch_decode([ids, ids[:3]])


def test_changing_a_copy_leaves_the_original_as_it_was(tokenizer):
    original_ids = tokenizer(PROMPTS[0]).input_ids
    original_merges = list(tokenizer._merges)
    copied = copy.deepcopy(tokenizer)
    assert copied._merges is not tokenizer._merges
    copied._merges.append(("x", "y"))
    copied.add_tokens(["<cat-toy>"])
    copied.model_max_length = 248
    assert len(copied) == len(tokenizer) + 1
    assert tokenizer._merges == original_merges
    assert (len(tokenizer), tokenizer.model_max_length) == (49408, 77)
    assert tokenizer("<cat-toy>").input_ids != copied("<cat-toy>").input_ids
    assert tokenizer(PROMPTS[0]).input_ids == original_ids


def test_a_tokenizer_held_twice_is_copied_once():
    tokenizer = clip_tokenizer()
    parts = copy.deepcopy({"tokenizer": tokenizer, "tokenizer_2": tokenizer, "merges": tokenizer._merges})
    assert parts["tokenizer"] is parts["tokenizer_2"] is not tokenizer
    assert parts["merges"] is parts["tokenizer"]._merges is not tokenizer._merges


def test_merges_that_are_not_pairs_of_strings_are_copied_all_through():
    tokenizer = clip_tokenizer()
    tokenizer._merges = [list(pair) for pair in tokenizer._merges[:3]]
    copied = copy.deepcopy(tokenizer)
    assert copied._merges == tokenizer._merges
    copied._merges[0].append("z")
    assert tokenizer._merges[0] == list(copied._merges[0][:2])


def test_a_tokenizer_that_refers_to_itself_is_copied_with_a_reference_to_the_copy():
    tokenizer = clip_tokenizer()
    tokenizer.owner = {"tokenizer": tokenizer}
    copied = copy.deepcopy(tokenizer)
    assert copied.owner["tokenizer"] is copied


def test_merges_met_before_the_tokenizer_stay_shared_with_it():
    tokenizer = clip_tokenizer()
    parts = copy.deepcopy({"merges": tokenizer._merges, "tokenizer": tokenizer})
    assert parts["tokenizer"]._merges is parts["merges"] is not tokenizer._merges
    assert parts["merges"] == tokenizer._merges


def test_the_merge_pairs_are_not_visited_one_by_one_and_are_kept_alive_in_the_memo(monkeypatch):
    """The time `deep_copy_clip_tokenizer` saves is `copy.deepcopy`'s visit of each of the
    48,894 pairs: counted here through `copy`'s own table of copiers."""
    tokenizer = clip_tokenizer()
    assert len(tokenizer._merges) == 48894
    visited = []
    copy_tuple = copy._deepcopy_dispatch[tuple]

    def counting(pair, memo):
        visited.append(pair)
        return copy_tuple(pair, memo)

    monkeypatch.setitem(copy._deepcopy_dispatch, tuple, counting)
    memo = {}
    copied = copy.deepcopy(tokenizer, memo)
    assert copied._merges == tokenizer._merges and copied._merges is not tokenizer._merges
    assert len(visited) < 1000  # the tokenizer's few tuples of settings, none of its pairs
    # the original list stays alive while the memo holds its id, as `copy` keeps what it copies
    assert any(kept is tokenizer._merges for kept in memo[id(memo)])


def test_whether_decode_was_replaced_is_read_from_the_backend_itself():
    from types import SimpleNamespace

    from clipcond.tokenizer_copy import _decode_replaced

    class Backend:
        def decode(self, ids):
            return "own"

    own = Backend()
    replaced = Backend()
    replaced.decode = lambda ids: "replaced"
    other = Backend()
    other.decode = Backend().decode  # another backend's method
    assert _decode_replaced(SimpleNamespace(_tokenizer=own)) is False
    assert _decode_replaced(SimpleNamespace(_tokenizer=replaced)) is True
    assert _decode_replaced(SimpleNamespace(_tokenizer=other)) is True
    assert _decode_replaced(SimpleNamespace(_tokenizer=SimpleNamespace())) is False  # no decode
    assert _decode_replaced(SimpleNamespace()) is False  # no backend
    assert _decode_replaced(clip_tokenizer()) is True  # transformers' CLIP tokenizer replaces it
