"""The contrastive training loop (CLIP / SigLIP), on accelerate.

`train_clip(config)` runs one `TrainClipConfig`: it builds the model for the mode, reads
batches (shapes stream, webdataset shards or a JSONL manifest), takes AdamW steps with
warm-up + cosine, keeps the whole batch in one loss when it is split into micro-batches,
writes atomic safetensors checkpoints every `checkpoint_every` steps and at the end, and
saves the final model with `clipcond.models.save_clip` to ``<output_dir>/model``.

Launch it with ``clipcond train-clip --config run.yaml`` or, for several processes,
``accelerate launch -m clipcond.training.train_clip --config run.yaml``: accelerate handles
the processes, mixed precision and device placement; the loop does not.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipcond.losses import clip_loss, siglip_loss
from clipcond.models import save_clip
from clipcond.tokenization import clip_tokenizer
from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.clip.contrastive_step import contrastive_backward, split_batch
from clipcond.training.clip.evaluation import shapes_zero_shot
from clipcond.training.clip.model_setup import (
    ContrastiveModel,
    build_contrastive_model,
    clamp_logit_scale_,
    export_clip,
)
from clipcond.training.data import CaptionTokenizer, ImageCaptionBatches, SkipCounter
from clipcond.training.optim import param_groups, warmup_cosine
from clipcond.training.run_folder import (
    check_runtime,
    checkpoint_if_due,
    prepare_output_dir,
    progress_bar,
    resume_latest,
    stop_if_diverged,
)

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainClipResult:
    """What a finished run reports.

    Attributes:
        model_dir: where `save_clip` wrote the final model.
        steps: optimizer steps taken in total (including those before a resume).
        loss: the loss of the last step.
        samples_per_second: global training throughput of this invocation.
        skipped: unusable samples skipped, by reason.
        evaluation: the last shapes zero-shot result (None when not evaluated).
    """

    model_dir: Path
    steps: int
    loss: float
    samples_per_second: float
    skipped: dict[str, int]
    evaluation: dict[str, float] | None


def train_clip(
    config: TrainClipConfig,
    resume: bool = False,
    config_dir: str | Path | None = None,
    show_progress: bool = True,
) -> TrainClipResult:
    """Run (or resume) the contrastive training described by `config`.

    Args:
        config: the validated run config.
        resume: continue from the newest checkpoint in `config.output_dir` (a fresh start when
            there is none); without it, an output_dir that already holds a run is an error.
        config_dir: folder that relative paths in the config (model YAML, init_from) may be
            relative to; usually the run config's folder.
        show_progress: draw the tqdm bar (on the main process).

    Raises:
        TrainingDiverged: the loss became NaN/inf; the last good checkpoint stays in place.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    check_runtime(config.mixed_precision, config.log_with)
    config_dir = Path(config_dir) if config_dir is not None else None
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, log_with=config.log_with, project_dir=config.output_dir
    )
    output_dir = prepare_output_dir(config, resume) if accelerator.is_main_process else Path(config.output_dir)
    accelerator.wait_for_everyone()

    set_seed(config.seed)
    model = build_contrastive_model(config, config_dir)
    model.train()
    optimizer, scheduler = make_optimizer(model, config)

    skipped = SkipCounter()
    start_step, extra, checkpoint = resume_latest(
        accelerator, output_dir, resume, {"model": model}, optimizer, scheduler
    )
    skipped.counts.update(extra.get("skipped", {}))

    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: ContrastiveModel = accelerator.unwrap_model(prepared_model)
    clip_config = unwrapped.clip.config
    tokenizer = CaptionTokenizer(
        clip_tokenizer(model_max_length=clip_config.text.context_length), clip_config.text.context_length
    )
    batches = ImageCaptionBatches(
        config.data,
        tokenizer,
        image_size=clip_config.vision.image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        start_step=start_step,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
        hard_negatives=config.hard_negatives,
        skipped=skipped,
    )

    if config.log_with:
        accelerator.init_trackers("clipcond-train-clip", config=_flat(dataclasses.asdict(config)))

    take_step = ContrastiveStep(accelerator, prepared_model, optimizer, scheduler, config.micro_batch_size)

    global_batch = config.batch_size * accelerator.num_processes
    progress = progress_bar(accelerator, config.steps, start_step, "train-clip", show_progress)
    evaluation = None
    loss_value = float("nan")
    started = time.perf_counter()
    window_start, window_steps = started, 0
    last_checkpoint = checkpoint
    step = start_step
    for step in range(start_step + 1, config.steps + 1):
        batch = {key: value.to(accelerator.device) for key, value in next(batches).items()}
        loss = take_step.backward(batch)
        loss_value = accelerator.reduce(loss.detach().reshape(1), reduction="mean").item()
        if not np.isfinite(loss_value):
            progress.close()
            stop_if_diverged(loss_value, step, last_checkpoint, optimizer)
        take_step.update()
        progress.update(1)
        window_steps += 1

        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            speed = global_batch * window_steps / max(now - window_start, 1e-9)
            window_start, window_steps = now, 0
            scale = unwrapped.logit_scale.exp().item()
            metrics = {
                "loss": loss_value,
                "logit_scale": scale,
                "temperature": 1.0 / scale,
                "lr": scheduler.get_last_lr()[0],
                "samples_per_second": speed,
            }
            progress.set_postfix(loss=f"{loss_value:.4f}", temp=f"{1.0 / scale:.4f}", samples_s=f"{speed:.0f}")
            if config.log_with:
                accelerator.log(metrics, step=step)
            if accelerator.is_main_process:
                _append_metrics(output_dir, {"step": step, **metrics})

        if config.data.source == "shapes" and (
            (config.eval_every and step % config.eval_every == 0) or step == config.steps
        ):
            if accelerator.is_main_process:
                evaluation = shapes_zero_shot(unwrapped.clip, tokenizer, images_per_class=config.eval_images_per_class)
                progress.write(f"step {step}: zero-shot " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items()))
                _append_metrics(output_dir, {"step": step, **{f"eval/{k}": v for k, v in evaluation.items()}})
                if config.log_with:
                    accelerator.log({f"eval/{k}": v for k, v in evaluation.items()}, step=step)

        last_checkpoint = checkpoint_if_due(
            accelerator,
            step,
            config,
            output_dir,
            {"model": unwrapped},
            optimizer,
            scheduler,
            {"skipped": dict(skipped.counts)},
            last_checkpoint,
        )
    progress.close()
    elapsed = time.perf_counter() - started
    steps_run = max(step - start_step, 0)

    model_dir = output_dir / MODEL_DIR
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_clip(export_clip(unwrapped), model_dir)
        accelerator.print(skipped.report())
        if tokenizer.truncated:
            accelerator.print(f"captions truncated to {clip_config.text.context_length} tokens: {tokenizer.truncated}")
    if config.log_with:
        accelerator.end_training()
    return TrainClipResult(
        model_dir=model_dir,
        steps=step,
        loss=loss_value,
        samples_per_second=global_batch * steps_run / elapsed if elapsed > 0 and steps_run else 0.0,
        skipped=dict(skipped.counts),
        evaluation=evaluation,
    )


class ContrastiveStep:
    """One training step, split in two so the caller can look at the loss before updating.

    `backward(batch)` computes the loss of the whole batch (micro-batched when asked) and its
    gradients, returning the loss of this process (detached); `update()` applies AdamW, the
    schedule and the temperature clamp, and clears the gradients. Used by `train_clip` and by
    the benchmark, so both run the same code.
    """

    def __init__(
        self,
        accelerator: Any,
        prepared_model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        micro_batch_size: int | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.prepared_model = prepared_model
        self.model: ContrastiveModel = accelerator.unwrap_model(prepared_model)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.micro_batch_size = micro_batch_size

    def _encode(self, micro_batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.accelerator.autocast():
            images, texts = self.prepared_model(**micro_batch)
        return images.float(), texts.float()

    def _loss(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        negatives = None
        if texts.ndim == 3:
            texts, negatives = texts[:, 0], texts[:, 1]
        if self.model.logit_bias is not None:
            return siglip_loss(
                images, texts, self.model.logit_scale, self.model.logit_bias, negative_text_features=negatives
            )
        return clip_loss(images, texts, self.model.logit_scale, negative_text_features=negatives)

    def backward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of `batch` (this process's share of the global batch) and its gradients."""
        accelerator = self.accelerator
        loss = contrastive_backward(
            self._encode,
            self._loss,
            split_batch(batch, self.micro_batch_size),
            no_sync=lambda: accelerator.no_sync(self.prepared_model),
            backward=accelerator.backward,
        )
        if self.micro_batch_size is not None and accelerator.num_processes > 1:
            # Parameters used only by the loss got their gradient outside DDP's synchronised
            # backward when the batch was split: average them across processes here.
            for parameter in (self.model.logit_scale, self.model.logit_bias):
                if parameter is not None and parameter.grad is not None:
                    parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")
        return loss

    def update(self) -> None:
        """AdamW step, learning-rate schedule, temperature clamp (CLIP loss only); gradients cleared."""
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.model.logit_bias is None:  # SigLIP's scale is left free, as in the paper
            clamp_logit_scale_(self.model)


def make_optimizer(model: torch.nn.Module, config: TrainClipConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters (no decay on gains, biases, temperature) with warm-up + cosine."""
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        # The fused kernel updates every parameter in one pass: the same update, less memory traffic.
        fused=True,
    )
    return optimizer, warmup_cosine(optimizer, config.warmup_steps, config.steps)


def _append_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    with open(output_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat {"data.source": ...} with values trackers accept (numbers, strings)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
