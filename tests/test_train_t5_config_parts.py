"""`TrainT5Config` and its `model` and `tokenizer` sections on their own: each refusal whole, the
edge of each range accepted, and the sentinels counted against spans worked out by hand.

The shared optimizer and seed checks are tested for every config in test_training_settings.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clipcond.training.data import DataConfig
from clipcond.training.t5.config import T5ModelSettings, T5TokenizerSettings, TrainT5Config

POSITIVE = [
    "d_model",
    "d_ff",
    "d_kv",
    "num_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
]


def _refused(make, message: str, **settings) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make(**settings)


# ------------------------------------------------------------------ model


@pytest.mark.parametrize("name", POSITIVE)
def test_every_size_of_the_model_must_be_at_least_one(name: str) -> None:
    _refused(T5ModelSettings, f"model.{name} must be >= 1, got 0", **{name: 0})
    _refused(T5ModelSettings, f"model.{name} must be >= 1, got -2", **{name: -2})
    assert getattr(T5ModelSettings(**{name: 1}), name) == 1


def test_the_decoder_depth_is_at_least_one_or_null() -> None:
    _refused(T5ModelSettings, "model.num_decoder_layers must be >= 1 or null, got 0", num_decoder_layers=0)
    assert T5ModelSettings(num_decoder_layers=1).num_decoder_layers == 1
    assert T5ModelSettings().num_decoder_layers is None


@pytest.mark.parametrize("rate", [-0.01, 1.0, 2.0])
def test_a_dropout_rate_outside_zero_to_one_is_refused(rate: float) -> None:
    _refused(T5ModelSettings, f"model.dropout_rate must be in [0, 1), got {rate}", dropout_rate=rate)


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.999])
def test_a_dropout_rate_in_zero_to_one_is_taken(rate: float) -> None:
    assert T5ModelSettings(dropout_rate=rate).dropout_rate == rate


# ------------------------------------------------------------------ tokenizer


def test_the_vocabulary_holds_at_least_the_three_special_pieces_and_one_more() -> None:
    _refused(T5TokenizerSettings, "tokenizer.vocab_size must be >= 4, got 3", vocab_size=3)
    assert T5TokenizerSettings(vocab_size=4).vocab_size == 4


@pytest.mark.parametrize(
    "settings,given",
    [
        ({"sentinels": 0}, "0, 20000, 64"),
        ({"train_captions": 0}, "32, 0, 64"),
        ({"max_length": 1}, "32, 20000, 1"),
    ],
)
def test_sentinels_captions_and_length_have_their_least(settings: dict, given: str) -> None:
    message = (
        "tokenizer.sentinels and tokenizer.train_captions must be >= 1 and tokenizer.max_length >= 2, got " + given
    )
    _refused(T5TokenizerSettings, message, **settings)


def test_the_least_tokenizer_is_taken() -> None:
    settings = T5TokenizerSettings(vocab_size=4, sentinels=1, train_captions=1, max_length=2)
    assert (settings.sentinels, settings.train_captions, settings.max_length) == (1, 1, 2)


# ------------------------------------------------------------------ the run


@pytest.mark.parametrize("density", [0.0, 1.0, -0.5, float("nan")])
def test_a_noise_density_outside_zero_to_one_is_refused(density: float) -> None:
    _refused(TrainT5Config, f"`noise_density` must be in (0, 1), got {density}", noise_density=density)


@pytest.mark.parametrize("length", [0.99, float("inf"), float("nan")])
def test_a_span_length_below_one_or_not_finite_is_refused(length: float) -> None:
    _refused(
        TrainT5Config,
        f"`mean_noise_span_length` must be a finite number >= 1, got {length}",
        mean_noise_span_length=length,
    )


def test_the_edges_of_the_noise_are_taken() -> None:
    config = TrainT5Config(noise_density=0.999, mean_noise_span_length=1.0, tokenizer=T5TokenizerSettings(sentinels=64))
    assert (config.noise_density, config.mean_noise_span_length) == (0.999, 1.0)
    assert TrainT5Config(noise_density=0.001).noise_density == 0.001


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"batch_size": 0}, "`batch_size`, `steps` and `checkpoint_every` must be >= 1, got 0, 1000, 200"),
        ({"steps": 0}, "`batch_size`, `steps` and `checkpoint_every` must be >= 1, got 64, 0, 200"),
        ({"checkpoint_every": 0}, "`batch_size`, `steps` and `checkpoint_every` must be >= 1, got 64, 1000, 0"),
        ({"log_every": 0}, "`log_every` and `keep_checkpoints` must be >= 1"),
        ({"keep_checkpoints": 0}, "`log_every` and `keep_checkpoints` must be >= 1"),
        ({"eval_every": -1}, "`eval_every` must be >= 0 and `eval_captions` >= 1, got -1, 512"),
        ({"eval_captions": 0}, "`eval_every` must be >= 0 and `eval_captions` >= 1, got 0, 0"),
        ({"betas": [0.9, 1.0]}, "`betas` must be two numbers in [0, 1), got [0.9, 1.0]"),
        ({"eps": 0.0}, "`eps` must be a finite number > 0, got 0.0"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_a_number_out_of_its_range_is_refused(settings: dict, message: str) -> None:
    _refused(TrainT5Config, message, **settings)


def test_the_least_numbers_are_taken() -> None:
    config = TrainT5Config(
        batch_size=1, steps=1, checkpoint_every=1, log_every=1, keep_checkpoints=1, eval_every=0, eval_captions=1
    )
    assert (config.batch_size, config.steps, config.eval_every, config.eval_captions) == (1, 1, 0, 1)


def test_captions_are_made_in_the_loops_process() -> None:
    _refused(
        TrainT5Config,
        "data.num_workers must be 0 for train-t5: captions are made in the loop's process",
        data=DataConfig(num_workers=2),
    )
    assert TrainT5Config(data=DataConfig(num_workers=0)).data.num_workers == 0


def test_the_sentinels_must_cover_the_spans_of_the_longest_caption() -> None:
    # 64 tokens with </s>: 63 ids, round(63 * 0.15) = 9 noise tokens, round(9 / 3) = 3 spans
    _refused(
        TrainT5Config,
        "tokenizer.sentinels (2) is too few: captions of up to tokenizer.max_length (64) tokens get up to 3 noise spans",
        tokenizer=T5TokenizerSettings(sentinels=2, max_length=64),
    )
    assert TrainT5Config(tokenizer=T5TokenizerSettings(sentinels=3, max_length=64)).tokenizer.sentinels == 3
    # 21 tokens: 20 ids, 3 noise tokens, one span; a density of 0.5 makes it 10 tokens, 3 spans
    assert TrainT5Config(tokenizer=T5TokenizerSettings(sentinels=1, max_length=21)).tokenizer.sentinels == 1
    _refused(
        TrainT5Config,
        "tokenizer.sentinels (1) is too few: captions of up to tokenizer.max_length (21) tokens get up to 3 noise spans",
        tokenizer=T5TokenizerSettings(sentinels=1, max_length=21),
        noise_density=0.5,
    )


def test_from_yaml_reads_the_sections_and_names_the_file_of_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "t5.yaml"
    path.write_text(yaml.safe_dump({"model": {"d_model": 32, "num_decoder_layers": 1}, "tokenizer": {"sentinels": 8}}))
    config = TrainT5Config.from_yaml(path)
    assert (config.model.d_model, config.model.num_decoder_layers, config.tokenizer.sentinels) == (32, 1, 8)
    assert (config.model.d_ff, config.tokenizer.max_length, config.noise_density) == (128, 64, 0.15)
    path.write_text(yaml.safe_dump({"model": {"num_heads": 0}}))
    with pytest.raises(ValueError, match="model.num_heads must be >= 1, got 0") as caught:
        TrainT5Config.from_yaml(path)
    assert str(path) in str(caught.value)
