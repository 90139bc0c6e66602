"""Every setting an encoding depends on is part of its cache key: each one flipped misses the
cache (on disk; in memory for the settings that can change under a conditioner) and gives what
an uncached conditioner with that setting gives.
And the in-memory level evicts the least recently used record first."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from clipcond import TextConditioner
from clipcond.cache import EmbeddingCache
from clipcond.encoders import TextEncoder
from clipcond.record_spec import expected_record
from clipcond.records import EncodedPrompt

PROMPT = "a (red:1.5) circle [left] of a blue square"


def _nudge(model: torch.nn.Module) -> None:
    """Change the position embeddings in place (every token's states move)."""
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if "position_embedding" in name).add_(0.5)


def _sd_parts(sd_pipe):
    """Copies of the SD text encoder and tokenizer. The final layer norm gets a bias, as trained
    CLIPs have: with none, every window's mean is 0 and the a1111 emphasis cannot rescale."""
    model = copy.deepcopy(sd_pipe.text_encoder)
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if name.endswith("final_layer_norm.bias")).add_(0.1)
    return model, copy.deepcopy(sd_pipe.tokenizer)


def _variants(sd_pipe) -> dict[str, dict]:
    """name -> keyword arguments of `TextConditioner`, each differing from the base in one setting."""
    model, tokenizer = _sd_parts(sd_pipe)
    short_tokenizer = copy.deepcopy(tokenizer)
    short_tokenizer.model_max_length = 20  # windows of 20 tokens
    masked = copy.deepcopy(model)
    masked.config.use_attention_mask = True
    padded_tokenizer = copy.deepcopy(tokenizer)
    padded_tokenizer.pad_token = "!"  # the same prompt ids, other padding ids
    nudged = copy.deepcopy(model)
    _nudge(nudged)
    base = dict(recipe="sd", clip=[(model, tokenizer)])
    from clipcond.families import get_recipe

    no_norm = dataclasses.replace(get_recipe("sd"), clip_final_norm=False, name="sd-without-final-norm")
    return {
        "parse_weights": {**base, "parse_weights": False},
        "emphasis": {**base, "emphasis": "a1111"},
        "clip_skip": {**base, "clip_skip": 1},
        "recipe": {**base, "recipe": no_norm},
        "window length": {**base, "clip": [(model, short_tokenizer)]},
        "attention mask use": {**base, "clip": [(masked, tokenizer)]},
        "tokenizer": {**base, "clip": [(model, padded_tokenizer)]},
        "weights": {**base, "clip": [(nudged, tokenizer)]},
    }


@pytest.fixture(scope="module")
def variants(sd_pipe):
    return _variants(sd_pipe)


@pytest.mark.parametrize(
    "setting",
    [
        "parse_weights",
        "emphasis",
        "clip_skip",
        "recipe",
        "window length",
        "attention mask use",
        "tokenizer",
        "weights",
    ],
)
def test_each_setting_flipped_misses_on_disk(sd_pipe, variants, setting, tmp_path) -> None:
    model, tokenizer = _sd_parts(sd_pipe)
    base = TextConditioner("sd", clip=[(model, tokenizer)], cache_dir=str(tmp_path))
    base_tokens = base.encode(PROMPT).tokens
    settings = variants[setting]
    uncached = TextConditioner(**settings, cache_size=0).encode(PROMPT).tokens
    assert not torch.equal(uncached, base_tokens), f"flipping {setting} should change the embeddings"

    on_disk = TextConditioner(**settings, cache_dir=str(tmp_path))  # a fresh memory level
    assert torch.equal(on_disk.encode(PROMPT).tokens, uncached)
    assert on_disk.cache.hits == 0


def _flip_in_place(setting: str, cond: TextConditioner) -> None:
    encoder = cond.clip[0]
    if setting == "parse_weights":
        cond.parse_weights = False
    elif setting == "window length":
        encoder.tokenizer.model_max_length = 20
    elif setting == "attention mask use":
        encoder.model.config.use_attention_mask = True
    elif setting == "tokenizer":
        encoder.tokenizer.pad_token = "!"
    else:
        _nudge(encoder.model)


@pytest.mark.parametrize("setting", ["parse_weights", "window length", "attention mask use", "tokenizer", "weights"])
def test_each_setting_changed_in_place_misses_in_memory(sd_pipe, variants, setting) -> None:
    """The settings a conditioner can see change after it was built (the others are fixed at
    construction, so its memory level cannot mix them up): the second encode misses."""
    model, tokenizer = _sd_parts(sd_pipe)
    cond = TextConditioner("sd", clip=[(model, tokenizer)])  # memory only
    cond.encode(PROMPT)
    _flip_in_place(setting, cond)
    expected = TextConditioner(**variants[setting], cache_size=0).encode(PROMPT).tokens
    assert torch.equal(cond.encode(PROMPT).tokens, expected)
    assert cond.cache.hits == 0


def test_the_same_settings_hit(sd_pipe, tmp_path) -> None:
    """The control of the test above: nothing flipped, the second conditioner reads the file."""
    model, tokenizer = _sd_parts(sd_pipe)
    first = TextConditioner("sd", clip=[(model, tokenizer)], cache_dir=str(tmp_path))
    expected = first.encode(PROMPT).tokens
    second = TextConditioner("sd", clip=[(copy.deepcopy(model), copy.deepcopy(tokenizer))], cache_dir=str(tmp_path))
    assert torch.equal(second.encode(PROMPT).tokens, expected) and second.cache.hits == 1


# ------------------------------------------------------------------ LRU order


def _record(value: float) -> EncodedPrompt:
    return EncodedPrompt(clip_tokens=torch.full((1, 77, 4), value), pooled=torch.full((4,), value))


def test_the_least_recently_used_record_goes_first(sd_pipe) -> None:
    encoder = TextEncoder(sd_pipe.text_encoder, sd_pipe.tokenizer)
    spec = expected_record([encoder], None, TextConditioner.from_pipeline(sd_pipe).recipe)
    cache = EmbeddingCache(max_entries=3)
    for key, value in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        cache.put(key, _record(value), spec)
    assert cache.get("a", spec) is not None  # a is now the most recently used
    cache.put("d", _record(4.0), spec)  # evicts b, the least recently used
    assert cache.get("b", spec) is None
    assert [float(cache.get(key, spec).pooled[0]) for key in ("a", "c", "d")] == [1.0, 3.0, 4.0]
    cache.put("e", _record(5.0), spec)  # after the reads above, a is the oldest again
    assert cache.get("a", spec) is None and len(cache) == 3
