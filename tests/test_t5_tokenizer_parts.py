"""train-t5's tokenizer on a small corpus: its refusals whole, T5's special tokens by name and id,
`</s>` after one text and after each of a pair, an unseen character read as `<unk>`, the size and
length asked for, the appended letters in alphabetical order, and nothing printed.

T5's sentinel order, round trips and the same ids every time are tested on the shapes captions in
test_train_t5.py."""

from __future__ import annotations

import json

import pytest

from clipcond.training.t5.tokenizer import sentinel_ids, sentinel_token, train_t5_tokenizer

CAPTIONS = [
    "a red circle above a blue square",
    "a green triangle",
    "two small purple squares",
    "a quick zebra jumps",
    "xylophone quartz",
] * 5


def _pieces(tokenizer) -> list[tuple[str, float]]:
    return [tuple(item) for item in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]]


def test_no_captions_and_a_vocabulary_of_the_specials_alone_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^no captions to train the tokenizer on$"):
        train_t5_tokenizer([], 100, 4, 16)
    with pytest.raises(ValueError, match=r"^vocab_size must exceed the 3 special tokens, got 3$"):
        train_t5_tokenizer(CAPTIONS, 3, 4, 16)


def test_the_special_tokens_and_the_settings_asked_for(capfd) -> None:
    tokenizer = train_t5_tokenizer(CAPTIONS, 60, 4, 16)
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.model_max_length == 16
    assert len(_pieces(tokenizer)) == 60 and len(tokenizer) == 64  # the pieces asked for, then 4 sentinels
    assert sentinel_ids(tokenizer) == (63, 62, 61, 60)
    assert len(_pieces(train_t5_tokenizer(CAPTIONS, 45, 1, 16))) == 45
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")  # no progress bar


def test_every_encoding_ends_with_eos_and_a_pair_has_one_after_each_text() -> None:
    tokenizer = train_t5_tokenizer(CAPTIONS, 60, 4, 16)
    first = tokenizer("a red circle", add_special_tokens=False).input_ids
    second = tokenizer("a blue square", add_special_tokens=False).input_ids
    assert 1 not in first + second
    assert tokenizer("a red circle").input_ids == [*first, 1]
    assert tokenizer("a red circle", "a blue square").input_ids == [*first, 1, *second, 1]


def test_a_character_never_seen_is_unk_not_dropped() -> None:
    tokenizer = train_t5_tokenizer(CAPTIONS, 60, 4, 16)
    ids = tokenizer("a red \u00e9").input_ids
    assert ids[-2:] == [2, 1]
    assert tokenizer.convert_ids_to_tokens(ids)[-2:] == ["<unk>", "</s>"]


def test_the_appended_letters_take_their_places_in_alphabetical_order() -> None:
    """The trainer appends the letters no piece covers in hash-map order, a different one each call;
    the tokenizer numbers them alphabetically. Over four trainings the hash order differs, so a
    letter left out of the renaming would show out of place."""
    for _ in range(4):
        pieces = _pieces(train_t5_tokenizer(CAPTIONS, 60, 4, 16))
        tail = [piece for piece, _ in pieces[-16:] if len(piece) == 1]
        assert len(tail) >= 10 and tail == sorted(tail), tail
        scores = [score for _, score in pieces[3:]]
        assert scores == sorted(scores, reverse=True)  # numbered by score
        ties = [(a, b) for a, b in zip(pieces[3:], pieces[4:]) if a[1] == b[1]]
        assert all(a[0] < b[0] for a, b in ties)  # equal scores by spelling
        # only the appended letters are renumbered: a learned single-character piece keeps its
        # score, such as the word start "▁", which opens every word of every caption
        assert [piece for piece, _ in pieces].index("▁") < 20


def test_sentinel_ids_stop_at_the_first_missing_one() -> None:
    tokenizer = train_t5_tokenizer(CAPTIONS, 60, 3, 16)
    assert sentinel_ids(tokenizer) == (62, 61, 60)
    tokenizer.add_tokens([sentinel_token(4)], special_tokens=True)  # <extra_id_3> missing
    assert sentinel_ids(tokenizer) == (62, 61, 60)
    assert sentinel_token(12) == "<extra_id_12>"
