"""The contrastive training loop (CLIP / SigLIP), on accelerate.

`train_clip(config)` runs one `TrainClipConfig` on the loop skeleton
(`clipcond.training.loop.TrainingRun`: run folder, resume, logging, checkpoints). What is
contrastive is here: the model built for the mode, the image-caption batches, the step
(`ContrastiveStep`: one loss over the whole batch even when it is split into micro-batches,
AdamW with warm-up + cosine, the temperature clamp), the shapes zero-shot evaluation, and the
final model saved with `clipcond.models.save_clip` to ``<output_dir>/model`` (with SigLIP's
learned bias, when the loss is siglip).

Launch it with ``clipcond train-clip --config run.yaml`` or, for several processes,
``accelerate launch -m clipcond.training.train_clip --config run.yaml``: accelerate handles
the processes, mixed precision and device placement; the loop does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipcond.losses import clip_loss, siglip_loss
from clipcond.models import save_clip
from clipcond.tokenization import clip_tokenizer
from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.clip.contrastive_step import batch_norm_statistics_kept, contrastive_backward, split_batch
from clipcond.training.clip.evaluation import shapes_zero_shot
from clipcond.training.clip.model_setup import (
    ContrastiveModel,
    build_contrastive_model,
    clamp_logit_scale_,
    export_clip,
)
from clipcond.training.data import CaptionTokenizer, ImageCaptionBatches
from clipcond.training.loop import TrainingRun
from clipcond.training.optim import adamw_with_warmup_cosine

MODEL_DIR = "model"

logger = logging.getLogger(__name__)


@dataclass
class TrainClipResult:
    """What a finished run reports.

    Attributes:
        model_dir: where `save_clip` wrote the final model.
        steps: optimizer steps taken in total (including those before a resume).
        loss: the loss of the last step.
        samples_per_second: global training throughput of this invocation.
        skipped: unusable samples skipped, by reason.
        evaluation: the last shapes zero-shot result (None when not evaluated); the main
            process makes it, and every process returns it.
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
        RunFolderError: the output_dir cannot be used as asked (another live run holds it, it
            holds another run, its config changed, none of its checkpoints can be loaded).
        RunAlreadyFinished: `resume` of a run that took all its steps and saved its result.
    """
    from accelerate.utils import set_seed

    config_dir = Path(config_dir) if config_dir is not None else None
    with TrainingRun(config, "train-clip", resume, show_progress, log_with=config.log_with, result=MODEL_DIR) as run:
        accelerator = run.accelerator
        if config.warmup_steps > config.steps and accelerator.is_main_process:
            logger.warning(warmup_past_the_end(config.warmup_steps, config.steps))
        # every process alike, as diffusers' training scripts seed (accelerate's default): a checkpoint's
        # one RNG state then resumes every process exactly, and each process draws the same dropout
        # masks for its rows, so a run with dropout equals one process of the global batch only roughly
        set_seed(config.seed)
        model = build_contrastive_model(config, config_dir)
        model.train()
        optimizer, scheduler = make_optimizer(model, config)
        start_step, _ = run.resume({"model": model}, optimizer, scheduler)

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
            skipped=run.skipped,
        )
        take_step = ContrastiveStep(accelerator, prepared_model, optimizer, scheduler, config.micro_batch_size)
        evaluation = None

        def backward(step: int) -> torch.Tensor:
            return take_step.backward({key: value.to(accelerator.device) for key, value in next(batches).items()})

        def temperature() -> dict[str, float]:
            scale = unwrapped.logit_scale.exp().item()
            return {"logit_scale": scale, "temperature": 1.0 / scale}

        def evaluate_if_due(step: int) -> None:
            nonlocal evaluation
            due = (config.eval_every and step % config.eval_every == 0) or step == config.steps
            if config.data.source == "shapes" and due:
                evaluation = shapes_zero_shot(unwrapped.clip, tokenizer, images_per_class=config.eval_images_per_class)
                run.log_evaluation(step, "zero-shot", evaluation)

        outcome = run.train(backward, take_step.update, metrics=temperature, after_step=evaluate_if_due)
        evaluation = run.main_process_value(evaluation)  # made on the main process: every rank's result

        model_dir = run.result_dir
        if accelerator.is_main_process:
            with run.writing_result() as folder:  # renamed to model_dir once whole
                save_clip(export_clip(unwrapped), folder, logit_bias=unwrapped.logit_bias)
            if tokenizer.truncated:
                accelerator.print(
                    f"captions truncated to {clip_config.text.context_length} tokens: {tokenizer.truncated}"
                )
    return TrainClipResult(
        model_dir=model_dir,
        steps=outcome.steps,
        loss=outcome.loss,
        samples_per_second=outcome.throughput,
        skipped=dict(run.skipped.counts),
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
        """Loss of `batch` (this process's share of the global batch) and its gradients,
        averaged across processes by DDP (every trained parameter once)."""
        accelerator = self.accelerator
        return contrastive_backward(
            self._encode,
            self._loss,
            split_batch(batch, self.micro_batch_size),
            loss_parameters=[p for p in (self.model.logit_scale, self.model.logit_bias) if p is not None],
            no_sync=lambda: accelerator.no_sync(self.prepared_model),
            backward=accelerator.backward,
            state_kept=lambda: batch_norm_statistics_kept(self.model),
        )

    def update(self) -> None:
        """AdamW step, learning-rate schedule, temperature clamp (CLIP loss only); gradients cleared."""
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.model.logit_bias is None:  # SigLIP's scale is left free, as in the paper
            clamp_logit_scale_(self.model)


def warmup_past_the_end(warmup_steps: int, steps: int) -> str:
    """The warning for a warm-up longer than the run: the rate still rises at the last step and
    peaks at steps / warmup_steps of `lr` (open_clip's `cosine_lr` does the same; a run whose
    `--steps` was cut below its recipe's warm-up is the usual cause)."""
    return (
        f"warmup_steps {warmup_steps} > steps {steps}: the learning rate rises for the whole run and "
        f"peaks at {steps / warmup_steps:.3g} x lr at the last step; lower warmup_steps to reach lr"
    )


def make_optimizer(model: torch.nn.Module, config: TrainClipConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters (no decay on gains, biases, temperature) with warm-up + cosine."""
    return adamw_with_warmup_cosine(
        model, config.lr, config.weight_decay, config.warmup_steps, config.steps, betas=config.betas, eps=config.eps
    )
