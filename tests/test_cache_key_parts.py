"""The cache key's parts, function by function: every setting `settings_key` covers changes it,
`prompt_keys` gives one key per text that changes with each of its inputs, and `reading_keys`
one per reading (a text per encoder) in the documented layout (through the conditioner, on disk
and in memory: tests/test_cache_key.py)."""

from __future__ import annotations

import hashlib
import re
from types import SimpleNamespace

import pytest

from clipcond.cache_key import prompt_keys, reading_keys, settings_key
from clipcond.recipes import Recipe


class CLIPStandIn:
    pass


class T5StandIn:
    pass


def _encoder(
    model=CLIPStandIn,
    window_length: int = 77,
    uses_attention_mask: bool = False,
    computes_in="float32",
    attention: str | None = "sdpa",
):
    # settings_key reads an encoder's class name, window length, mask use, compute dtype and the
    # attention kernel its model's config names (transformers' `_attn_implementation`), nothing else
    instance = model()
    if attention is not None:
        instance.config = SimpleNamespace(_attn_implementation=attention)
    return SimpleNamespace(
        model=instance, window_length=window_length, uses_attention_mask=uses_attention_mask, computes_in=computes_in
    )


BASE = dict(
    recipe=Recipe(name="sd"),
    parse_weights=True,
    encoders=[_encoder()],
    fingerprints=["tok-a"],
    configs=["cfg"],
    syntax="a1111",
)


def _key(**changes) -> str:
    args = {**BASE, **changes}
    return settings_key(
        args["recipe"], args["parse_weights"], args["encoders"], args["fingerprints"], args["configs"], args["syntax"]
    )


@pytest.mark.parametrize(
    "changes",
    [
        dict(parse_weights=False),
        dict(syntax="compel"),
        dict(syntax="comfy"),
        dict(recipe=Recipe(name="sd", emphasis="a1111")),
        dict(recipe=Recipe(name="sd").with_clip_skip(1)),
        dict(recipe=Recipe(name="sd", caption_cleaning="lowercase")),
        dict(recipe=Recipe(name="custom")),
        dict(encoders=[_encoder(model=T5StandIn)]),
        dict(encoders=[_encoder(window_length=78)]),
        dict(encoders=[_encoder(uses_attention_mask=True)]),
        dict(encoders=[_encoder(computes_in="bfloat16")]),
        dict(encoders=[_encoder(attention="eager")]),
        dict(encoders=[_encoder(attention=None)]),
        dict(fingerprints=["tok-b"]),
        dict(configs=["cfg-b"]),
        dict(encoders=[_encoder(), _encoder()], fingerprints=["tok-a", "tok-a"], configs=["cfg", "cfg"]),
    ],
    ids=lambda changes: ",".join(changes),
)
def test_every_setting_changes_the_settings_key(changes):
    assert _key(**changes) != _key()


def test_equal_settings_give_equal_keys():
    same = dict(recipe=Recipe(name="sd"), encoders=[_encoder()], fingerprints=["tok-a"])
    assert _key(**same) == _key()


def test_encoder_order_is_part_of_the_key():
    clip, t5 = _encoder(), _encoder(model=T5StandIn, window_length=256, uses_attention_mask=True)
    assert _key(encoders=[clip, t5], fingerprints=["c", "t"], configs=["c", "t"]) != _key(
        encoders=[t5, clip], fingerprints=["t", "c"], configs=["t", "c"]
    )


def test_one_fingerprint_per_encoder_or_a_value_error():
    with pytest.raises(
        ValueError, match=re.escape("`tokenizer_fingerprints` must have one entry per encoder (1), got 2")
    ):
        _key(fingerprints=["tok-a", "tok-b"])
    with pytest.raises(ValueError, match=re.escape("`config_fingerprints` must have one entry per encoder (1), got 0")):
        _key(configs=[])


def test_prompt_keys_are_one_sha256_per_text_in_order():
    keys = prompt_keys("w", "s", ["a cat", "a dog", "a cat"])
    assert len(keys) == 3 and keys[0] == keys[2] != keys[1]
    assert all(re.fullmatch("[0-9a-f]{64}", key) for key in keys)
    assert prompt_keys("w", "s", ["a dog"]) == [keys[1]]


def test_prompt_keys_depend_on_weights_settings_and_text():
    key = prompt_keys("w", "s", ["a cat"])
    assert prompt_keys("v", "s", ["a cat"]) != key
    assert prompt_keys("w", "t", ["a cat"]) != key
    assert prompt_keys("w", "s", ["a cot"]) != key


def test_a_lone_surrogate_keys_apart_from_its_replacements():
    # surrogatepass keeps the surrogate's own bytes: "replace" or "ignore" would collide with these
    texts = ["a \ud800 cat", "a ? cat", "a  cat", "a \ufffd cat", "a \udfff cat"]
    assert len(set(prompt_keys("w", "s", texts))) == len(texts)


def test_the_attention_kernel_is_named_in_the_key():
    assert ":sdpa:" in _key() and ":eager:" in _key(encoders=[_encoder(attention="eager")])
    assert ":None:" in _key(encoders=[_encoder(attention=None)])  # a model without a transformers config


def test_a_reading_of_one_text_keys_as_that_text():
    """Files cached before per-encoder prompts keep their keys: every encoder reading the same text."""
    assert reading_keys("w", "s", [("a cat",), ("a cat", "a cat", "a cat")]) == prompt_keys("w", "s", ["a cat"]) * 2


def test_a_reading_of_several_texts_is_the_documented_digest():
    """sha256 of "weights|settings|", a 0xFF byte, then each text as its 8-byte little-endian UTF-8
    length and bytes, written out here by hand from the docstring."""
    digest = hashlib.sha256(b"w|s|\xff")
    for text in ("a cat", "a \u00e9t\u00e9 dog"):
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    assert reading_keys("w", "s", [("a cat", "a \u00e9t\u00e9 dog")]) == [digest.hexdigest()]


def test_readings_that_differ_anywhere_key_apart():
    readings = [
        ("ab", "c"),
        ("a", "bc"),  # the same characters, split elsewhere
        ("c", "ab"),  # the same texts, other encoders
        ("ab", "c", "c"),
        ("ab", "ab"),  # one text: prompt_keys' key
        ("ab\ud800", "c"),  # a lone surrogate keys too
        ("ab\ufffd", "c"),
    ]
    keys = reading_keys("w", "s", readings)
    assert len(set(keys)) == len(readings) and all(re.fullmatch("[0-9a-f]{64}", key) for key in keys)
    single = prompt_keys("w", "s", ["ab", "c", "abc", "ab|c", "w|s|abc"])
    assert not set(keys[:4]) & set(single)  # a reading of several texts never meets a single text's key
    assert reading_keys("v", "s", readings[:1]) != keys[:1] and reading_keys("w", "t", readings[:1]) != keys[:1]


def test_a_lone_surrogate_in_the_settings_keys_as_prompt_keys_does():
    """`prompt_keys` encodes its whole prefix with surrogatepass; a reading of several texts too."""
    readings = [("a", "b")]
    assert reading_keys("w", "s\ud800", readings) != reading_keys("w", "s\ufffd", readings)
    assert reading_keys("w\udfff", "s", [("a",)]) == prompt_keys("w\udfff", "s", ["a"])
