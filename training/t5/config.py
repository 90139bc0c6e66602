"""`TrainT5Config`: a span-corruption pretraining run of a small T5, described in YAML
(validated; unknown keys are errors naming the key and the file)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipcond.config import load_config
from clipcond.training.data import DataConfig
from clipcond.training.loop import check_seed
from clipcond.training.optim import check_optimizer_settings
from clipcond.training.t5.span_corruption import max_spans


@dataclass
class T5ModelSettings:
    """The architecture (transformers `T5Config` fields of the same names).

    Attributes:
        d_model: token width; d_ff: feed-forward width; d_kv: width of one attention head.
        num_layers: encoder blocks; num_decoder_layers: decoder blocks (None: as many).
        num_heads: attention heads.
        relative_attention_num_buckets, relative_attention_max_distance: T5's relative
            position buckets.
        dropout_rate: dropout in every block.
        feed_forward_proj: "gated-gelu" (T5 v1.1, the encoders SD3 and Flux use) or "relu" (T5 v1).
    """

    d_model: int = 64
    d_ff: int = 128
    d_kv: int = 32
    num_layers: int = 2
    num_decoder_layers: int | None = None
    num_heads: int = 2
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    feed_forward_proj: Literal["gated-gelu", "relu"] = "gated-gelu"

    def __post_init__(self) -> None:
        for name in (
            "d_model",
            "d_ff",
            "d_kv",
            "num_layers",
            "num_heads",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_decoder_layers is not None and self.num_decoder_layers < 1:
            raise ValueError(f"model.num_decoder_layers must be >= 1 or null, got {self.num_decoder_layers}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}")


@dataclass
class T5TokenizerSettings:
    """The tokenizer trained at the start of the run.

    Attributes:
        vocab_size: at most this many learned pieces (``<pad>``, ``</s>``, ``<unk>`` included);
            sentinels come on top. A corpus of few distinct words yields fewer; the run reports it.
        sentinels: ``<extra_id_k>`` tokens; must cover the most spans a caption of
            `max_length` tokens gets.
        train_captions: captions (the first ones of the training data) to train it on.
        max_length: tokens per caption, ``</s>`` included; longer captions are truncated and counted.
    """

    vocab_size: int = 512
    sentinels: int = 32
    train_captions: int = 20000
    max_length: int = 64

    def __post_init__(self) -> None:
        if self.vocab_size < 4:
            raise ValueError(f"tokenizer.vocab_size must be >= 4, got {self.vocab_size}")
        if self.sentinels < 1 or self.train_captions < 1 or self.max_length < 2:
            raise ValueError(
                "tokenizer.sentinels and tokenizer.train_captions must be >= 1 and tokenizer.max_length >= 2, "
                f"got {self.sentinels}, {self.train_captions}, {self.max_length}"
            )


@dataclass
class TrainT5Config:
    """A span-corruption (T5) pretraining run on captions.

    Attributes:
        model: the architecture; tokenizer: the tokenizer trained first.
        data: where captions come from: the shapes stream (random access), or the captions of
            a JSONL manifest or webdataset shards (their `txt`; images are never read), loaded
            into memory, the last `eval_captions` of them held out for evaluation.
        noise_density, mean_noise_span_length: T5's span corruption (0.15 and 3), applied to
            each caption alone (no packing, unlike T5): a caption of n tokens gets
            round(n x density) dropped tokens in round(that / span length) spans, at least one
            of each, so on short captions (shapes: 9 tokens on average) every caption has one
            span and a span length above about 2.5 changes nothing.
        batch_size: captions per step and process.
        steps, lr, warmup_steps, weight_decay, betas, eps: AdamW with warm-up + cosine (checked
            by `check_optimizer_settings`: lr > 0, weight_decay >= 0, eps > 0, all finite).
        mixed_precision: "no" or "bf16" (accelerate).
        checkpoint_every, keep_checkpoints: safetensors checkpoints in output_dir.
        log_every: steps between progress-bar / metrics.jsonl updates.
        eval_every: steps between held-out evaluations (0: only at the end).
        eval_captions: held-out captions evaluated (shapes: the "heldout" split, seed + 1).
        output_dir: the run folder; the encoder and tokenizer go to ``<output_dir>/model``.
        seed: model initialisation, data order and span noise, an integer in [0, 2**32 - 1].
    """

    model: T5ModelSettings = field(default_factory=T5ModelSettings)
    tokenizer: T5TokenizerSettings = field(default_factory=T5TokenizerSettings)
    data: DataConfig = field(default_factory=DataConfig)
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    batch_size: int = 64
    steps: int = 1000
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    mixed_precision: Literal["no", "bf16"] = "no"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0
    eval_captions: int = 512
    output_dir: str = "runs/t5"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"`noise_density` must be in (0, 1), got {self.noise_density}")
        if not 1.0 <= self.mean_noise_span_length < math.inf:  # NaN fails too
            raise ValueError(
                f"`mean_noise_span_length` must be a finite number >= 1, got {self.mean_noise_span_length}"
            )
        if self.batch_size < 1 or self.steps < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"`batch_size`, `steps` and `checkpoint_every` must be >= 1, "
                f"got {self.batch_size}, {self.steps}, {self.checkpoint_every}"
            )
        check_optimizer_settings(self.lr, self.weight_decay, self.warmup_steps, self.betas, self.eps)
        check_seed(self.seed)
        if self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("`log_every` and `keep_checkpoints` must be >= 1")
        if self.eval_every < 0 or self.eval_captions < 1:
            raise ValueError(
                f"`eval_every` must be >= 0 and `eval_captions` >= 1, got {self.eval_every}, {self.eval_captions}"
            )
        if self.data.num_workers:
            raise ValueError("data.num_workers must be 0 for train-t5: captions are made in the loop's process")
        needed = max_spans(self.tokenizer.max_length, self.noise_density, self.mean_noise_span_length)
        if needed > self.tokenizer.sentinels:
            raise ValueError(
                f"tokenizer.sentinels ({self.tokenizer.sentinels}) is too few: captions of up to "
                f"tokenizer.max_length ({self.tokenizer.max_length}) tokens get up to {needed} noise spans"
            )

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainT5Config:
        """Load and validate a YAML run config."""
        return load_config(cls, path)
