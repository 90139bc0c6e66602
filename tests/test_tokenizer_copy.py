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
