"""The cache key: every setting it covers changes it, and a conditioner with one setting flipped
misses the other's entries on disk and in memory."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPTextModel

from clipcond import TextConditioner
from clipcond.cache_key import prompt_keys, settings_key
from clipcond.recipes import Recipe
from clipcond.tokenization import clip_tokenizer


class CLIPStandIn:
    pass


class T5StandIn:
    pass


def _encoder(model=CLIPStandIn, window_length: int = 77, uses_attention_mask: bool = False):
    # settings_key reads an encoder's class name, window length and mask use, nothing else
    return SimpleNamespace(model=model(), window_length=window_length, uses_attention_mask=uses_attention_mask)


BASE = dict(recipe=Recipe(name="sd"), parse_weights=True, encoders=[_encoder()], fingerprints=["tok-a"])


def _key(**changes) -> str:
    args = {**BASE, **changes}
    return settings_key(args["recipe"], args["parse_weights"], args["encoders"], args["fingerprints"])


@pytest.mark.parametrize(
    "changes",
    [
        dict(parse_weights=False),
        dict(recipe=Recipe(name="sd", emphasis="a1111")),
        dict(recipe=Recipe(name="sd").with_clip_skip(1)),
        dict(recipe=Recipe(name="sd", lowercase=True)),
        dict(recipe=Recipe(name="custom")),
        dict(encoders=[_encoder(model=T5StandIn)]),
        dict(encoders=[_encoder(window_length=78)]),
        dict(encoders=[_encoder(uses_attention_mask=True)]),
        dict(fingerprints=["tok-b"]),
        dict(encoders=[_encoder(), _encoder()], fingerprints=["tok-a", "tok-a"]),
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
    assert _key(encoders=[clip, t5], fingerprints=["c", "t"]) != _key(encoders=[t5, clip], fingerprints=["t", "c"])


def test_one_fingerprint_per_encoder_or_a_value_error():
    with pytest.raises(
        ValueError, match=re.escape("`tokenizer_fingerprints` must have one entry per encoder (1), got 2")
    ):
        _key(fingerprints=["tok-a", "tok-b"])


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


# ----------------------------------------------------------------------- through the conditioner


class _ForwardCounter:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


WEIGHTED = "a (red:1.5) circle"


@pytest.fixture
def clip_pair(tiny_clip_text_path):
    return CLIPTextModel.from_pretrained(tiny_clip_text_path).eval(), clip_tokenizer()


@pytest.mark.parametrize(
    "setting",
    [dict(parse_weights=False), dict(clip_skip=1), dict(emphasis="a1111")],
    ids=lambda setting: next(iter(setting)),
)
def test_a_flipped_setting_misses_the_disk_cache(clip_pair, tmp_path, setting):
    model, tokenizer = clip_pair
    TextConditioner("sd", clip=[clip_pair], cache_dir=str(tmp_path)).encode(WEIGHTED)
    flipped = TextConditioner("sd", clip=[clip_pair], cache_dir=str(tmp_path), **setting)
    counter = _ForwardCounter(model)
    got = flipped.encode(WEIGHTED).tokens
    assert counter.calls == 1
    uncached = TextConditioner("sd", clip=[clip_pair], cache_size=0, **setting).encode(WEIGHTED).tokens
    torch.testing.assert_close(got, uncached, rtol=0, atol=0)


def test_parse_weights_flipped_in_place_misses_the_memory_cache(clip_pair):
    model, _ = clip_pair
    cond = TextConditioner("sd", clip=[clip_pair])
    weighted = cond.encode(WEIGHTED).tokens
    cond.parse_weights = False
    counter = _ForwardCounter(model)
    literal = cond.encode(WEIGHTED).tokens
    assert counter.calls == 1 and not torch.equal(literal, weighted)
    uncached = TextConditioner("sd", clip=[clip_pair], cache_size=0, parse_weights=False).encode(WEIGHTED).tokens
    torch.testing.assert_close(literal, uncached, rtol=0, atol=0)
