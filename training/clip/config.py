"""`TrainClipConfig`: a contrastive training run described in YAML (validated, unknown keys
are errors naming the key and the file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipcond.config import load_config
from clipcond.training.data import DataConfig
from clipcond.training.loop import check_seed
from clipcond.training.lora_settings import check_lora_rank_and_alpha
from clipcond.training.optim import check_optimizer_settings

Mode = Literal["pretrain", "finetune", "text_only", "lit", "lora"]


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the attention projections of both towers.

    Attributes:
        r: the adapters' rank, an integer >= 1.
        alpha: the update is scaled by alpha / r; a number > 0.
        dropout: dropout on the adapters' input while training, in [0, 1).
        target_modules: names of the modules that get an adapter (the last part of a module's
            dotted name, e.g. "q_proj"); at least one, at least one of them must exist in one of
            the towers, and every module they match must be one peft wraps (a linear, embedding
            or convolution layer, not a LayerNorm or a whole block); the last two are checked
            when the model is built, before the first step.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])

    def __post_init__(self) -> None:
        check_lora_rank_and_alpha(self.r, self.alpha)
        if isinstance(self.dropout, bool) or not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"`lora.dropout` must be a number in [0, 1), got {self.dropout!r}")
        if not self.target_modules or not all(isinstance(name, str) and name for name in self.target_modules):
            raise ValueError(
                f"`lora.target_modules` must be a non-empty list of module names (such as q_proj), "
                f"got {self.target_modules!r}"
            )


def check_log_with(log_with: str | None) -> None:
    """Refuse a tracker name accelerate does not know, before any work.

    Raises:
        ValueError: `log_with` is not None and not one of accelerate's `LoggerType` values.
    """
    if log_with is None:
        return
    from accelerate.utils import LoggerType

    names = [kind.value for kind in LoggerType]
    if log_with not in names:
        raise ValueError(f"`log_with` must be one of accelerate's trackers {names} or null, got {log_with!r}")


@dataclass
class TrainClipConfig:
    """A contrastive CLIP run.

    Attributes:
        model: path of the model YAML (configs/models/...), relative paths resolved against the
            working directory and then the run config's folder; needed by "pretrain", refused
            by the other modes (they take the architecture from `init_from`).
        init_from: a folder written by `clipcond.models.save_clip` to start from (needed by
            every mode but "pretrain", refused by "pretrain", which starts from random weights;
            "lit" takes only its image tower and starts the text tower from scratch).
        mode: "pretrain" (random init, all trained), "finetune" (all trained), "text_only"
            (image tower frozen), "lit" (pretrained image tower locked, text tower from
            scratch), "lora" (both towers frozen, LoRA adapters trained).
        loss: "clip" (symmetric InfoNCE) or "siglip".
        hard_negatives: add a caption with swapped attributes per sample as an extra negative
            (shapes data only).
        batch_size: the contrastive batch per process; `micro_batch_size` splits it for memory
            while keeping one loss over the whole batch (a BatchNorm tower's statistics are
            per micro-batch: see `contrastive_step`).
        steps, lr, weight_decay, warmup_steps, betas, eps: AdamW with warm-up + cosine (checked
            by `check_optimizer_settings`: lr > 0, weight_decay >= 0, eps > 0, all finite).
        mixed_precision: "no", "fp16" or "bf16" (accelerate).
        gradient_checkpointing: recompute activations in the backward pass.
        checkpoint_every, keep_checkpoints: safetensors checkpoints in output_dir.
        log_every: steps between progress-bar / tracker updates; log_with: an accelerate
            tracker name ("tensorboard", one of `accelerate.utils.LoggerType`) or None.
        eval_every: steps between shapes zero-shot evaluations (0: only at the end; shapes data only).
        eval_images_per_class: images per colour-shape class in that evaluation.
        seed: model initialisation and data order, an integer in [0, 2**32 - 1].
        lora: the adapters of mode "lora"; refused in the other modes when it differs from the
            defaults (they would ignore it).
    """

    model: str | None = None
    init_from: str | None = None
    mode: Mode = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    loss: Literal["clip", "siglip"] = "clip"
    hard_negatives: bool = False
    batch_size: int = 64
    micro_batch_size: int | None = None
    steps: int = 1000
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup_steps: int = 100
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    output_dir: str = "runs/clip"
    seed: int = 0
    log_every: int = 10
    log_with: str | None = None
    eval_every: int = 0
    eval_images_per_class: int = 20
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if self.mode == "pretrain" and self.model is None:
            raise ValueError("mode 'pretrain' needs `model` (a model YAML such as configs/models/clip-tiny.yaml)")
        if self.mode == "pretrain" and self.init_from is not None:
            raise ValueError(
                "mode 'pretrain' starts from random weights and does not read `init_from`; to start from "
                f"{self.init_from!r}, did you mean mode: finetune (or text_only, lit, lora)? Else remove `init_from`"
            )
        if self.mode != "pretrain" and self.model is not None:
            raise ValueError(
                f"`model` is only read in mode 'pretrain'; mode {self.mode!r} takes the architecture from "
                "`init_from`: remove `model`"
            )
        if self.mode != "lora" and self.lora != LoraSettings():
            raise ValueError(
                f"`lora` is only read in mode 'lora'; mode {self.mode!r} would ignore {self.lora}: "
                "set mode: lora, or remove the `lora` section"
            )
        check_log_with(self.log_with)
        if self.eval_every < 0 or self.eval_images_per_class < 1:
            raise ValueError("`eval_every` must be >= 0 and `eval_images_per_class` >= 1")
        if self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("`log_every` and `keep_checkpoints` must be >= 1")
        check_optimizer_settings(self.lr, self.weight_decay, self.warmup_steps, self.betas, self.eps)
        check_seed(self.seed)
        if self.mode != "pretrain" and self.init_from is None:
            raise ValueError(f"mode {self.mode!r} needs `init_from` (a saved CLIP folder)")
        if self.batch_size < 2:
            raise ValueError(f"`batch_size` must be >= 2 for a contrastive loss, got {self.batch_size}")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise ValueError(f"`micro_batch_size` must be between 1 and batch_size, got {self.micro_batch_size}")
        if self.steps < 1 or self.checkpoint_every < 1:
            raise ValueError("`steps` and `checkpoint_every` must be >= 1")
        if self.hard_negatives and self.data.source != "shapes":
            raise ValueError("`hard_negatives` needs data.source 'shapes' (it swaps scene attributes)")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainClipConfig:
        """Load and validate a YAML run config."""
        return load_config(cls, path)
