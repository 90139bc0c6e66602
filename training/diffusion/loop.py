"""The diffusion training loop: a pixel-space UNet (or LoRA on its cross-attention, or only the
`custom` recipe's projection adapter) learns to denoise images (pixels or VAE latents) given the prompt embeddings of
frozen text encoders (CLIP, optionally with T5), on accelerate. The models come from
`diffusion_setup.build_diffusion_models`.

`train_diffusion(config)` reads image-caption batches (the same sources as the CLIP loop),
noises them with diffusers' DDPM schedule, regresses the noise (or v), drops captions for
classifier-free guidance, keeps an EMA of the weights (diffusers' `EMAModel`), writes atomic
safetensors checkpoints and resumes from them exactly, writes sample grids, and saves a
`CLIPConditionedPipeline` to ``<output_dir>/pipeline``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipcond.training.data import ImageCaptionBatches, pixels_in_unit_range
from clipcond.training.diffusion.config import TrainDiffusionConfig
from clipcond.training.diffusion.setup import (
    Denoiser,
    DiffusionModels,
    build_diffusion_models,
    final_denoiser,
    make_pipeline,
)
from clipcond.training.optim import param_groups, warmup_cosine
from clipcond.training.run_folder import (
    check_runtime,
    checkpoint_if_due,
    prepare_output_dir,
    progress_bar,
    resume_latest,
    stop_if_diverged,
)

PIPELINE_DIR = "pipeline"


@dataclass
class TrainDiffusionResult:
    """What a finished run reports: where the pipeline went, steps, last loss, throughput."""

    pipeline_dir: Path
    steps: int
    loss: float
    samples_per_second: float
    skipped: dict[str, int]


def train_diffusion(
    config: TrainDiffusionConfig, resume: bool = False, show_progress: bool = True
) -> TrainDiffusionResult:
    """Run (or resume) the diffusion training described by `config` (see the module docstring).

    Raises:
        TrainingDiverged: the loss became NaN/inf; the last good checkpoint stays in place.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel

    check_runtime(config.mixed_precision)
    set_seed(config.seed)  # before the models: a UNet from scratch takes its initial weights from it
    models = build_diffusion_models(config)
    denoiser, conditioner = models.denoiser, models.conditioner
    accelerator = Accelerator(mixed_precision=config.mixed_precision, project_dir=config.output_dir)
    output_dir = prepare_output_dir(config, resume) if accelerator.is_main_process else Path(config.output_dir)
    accelerator.wait_for_everyone()

    # on the training device before the optimizer and the EMA are made: the EMA's shadow copies
    # are made where the weights are, and its update mixes the two
    denoiser.to(accelerator.device)
    trainable = [parameter for parameter in denoiser.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(denoiser, config.weight_decay), lr=config.lr, fused=True)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps)
    noise_schedule = models.noise_schedule
    prediction_type = noise_schedule.config.prediction_type
    ema = EMAModel(trainable, decay=config.ema_decay) if config.ema_decay is not None else None
    # EMA weights as a module so checkpoints hold them (the Parameters share the EMA's storage).
    ema_weights = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in ema.shadow_params]) if ema else None

    modules = {
        "unet": denoiser.unet,
        **({"projection": denoiser.projection} if denoiser.projection is not None else {}),
        **({"ema": ema_weights} if ema else {}),
    }
    start_step, extra, checkpoint = resume_latest(accelerator, output_dir, resume, modules, optimizer, scheduler)
    if ema is not None and checkpoint is not None:
        ema.optimization_step = extra["ema_step"]

    wrapped, optimizer = accelerator.prepare(denoiser, optimizer)
    conditioner.to(accelerator.device)
    if models.vae is not None:
        models.vae.to(accelerator.device)
    batches = ImageCaptionBatches(
        config.data,
        None,
        image_size=config.image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        start_step=start_step,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
        transform=lambda image: pixels_in_unit_range(image, config.image_size),
    )

    progress = progress_bar(accelerator, config.steps, start_step, "train-diffusion", show_progress)
    loss_value, last_checkpoint, step = float("nan"), checkpoint, start_step
    started = window = time.perf_counter()
    for step in range(start_step + 1, config.steps + 1):
        pixels, captions = batches.next_with_captions()
        pixels = pixels.to(accelerator.device)
        # caption dropout, decided per (seed, step, row): identical after a resume
        captions = [
            ""
            if random.Random(f"dropout:{config.seed}:{step}:{accelerator.process_index}:{row}").random()
            < config.caption_dropout
            else caption
            for row, caption in enumerate(captions)
        ]
        # encoders are frozen (run without grad inside the conditioner); a learning projection needs the graph
        with torch.enable_grad() if models.projection_trains else torch.no_grad():
            context = conditioner.encode(captions).tokens
        # noise and timesteps from a generator seeded by (seed, step, rank): identical after a resume
        generator = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 1009 + accelerator.process_index)
        clean = models.to_model_space(pixels, generator)
        noise = torch.randn(clean.shape, generator=generator).to(clean.device)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (clean.shape[0],), generator=generator)
        timesteps = timesteps.to(clean.device)
        noisy = noise_schedule.add_noise(clean, noise, timesteps)
        target = noise if prediction_type == "epsilon" else noise_schedule.get_velocity(clean, noise, timesteps)
        with accelerator.autocast():
            prediction = wrapped(noisy, timesteps, context)
        loss = _denoising_loss(prediction, target, timesteps, noise_schedule, config.snr_gamma)
        accelerator.backward(loss)
        loss_value = accelerator.reduce(loss.detach().reshape(1), reduction="mean").item()
        if not np.isfinite(loss_value):
            progress.close()
            stop_if_diverged(loss_value, step, last_checkpoint, optimizer)
        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(trainable)
        progress.update(1)
        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            speed = config.batch_size * accelerator.num_processes * config.log_every / max(now - window, 1e-9)
            window = now
            progress.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{speed:.0f}")
            if accelerator.is_main_process:
                with open(output_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                    handle.write(
                        json.dumps({"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0]}) + "\n"
                    )
        if accelerator.is_main_process and config.sample_every and step % config.sample_every == 0:
            _write_samples(
                config, models, accelerator.unwrap_model(wrapped), output_dir / "samples" / f"step-{step:07d}.png"
            )
        last_checkpoint = checkpoint_if_due(
            accelerator,
            step,
            config,
            output_dir,
            modules,
            optimizer,
            scheduler,
            {"ema_step": ema.optimization_step if ema else 0},
            last_checkpoint,
        )
    progress.close()
    elapsed = time.perf_counter() - started

    pipeline_dir = output_dir / PIPELINE_DIR
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe = make_pipeline(models, final_denoiser(accelerator.unwrap_model(wrapped), ema), config)
        pipe.save_pretrained(pipeline_dir)
        accelerator.print(batches.skipped.report())
    return TrainDiffusionResult(
        pipeline_dir=pipeline_dir,
        steps=step,
        loss=loss_value,
        samples_per_second=config.batch_size * accelerator.num_processes * (step - start_step) / max(elapsed, 1e-9),
        skipped=dict(batches.skipped.counts),
    )


def _denoising_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_schedule: Any,
    snr_gamma: float | None,
) -> torch.Tensor:
    """MSE of the (batch, C, H, W) prediction, optionally Min-SNR weighted per example (see
    `TrainDiffusionConfig.snr_gamma`); a scalar."""
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_schedule, timesteps).float()
    clipped = torch.clamp(snr, max=snr_gamma)
    weights = clipped / (snr + 1) if noise_schedule.config.prediction_type == "v_prediction" else clipped / snr
    per_example = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_example * weights).mean()


def _write_samples(config: TrainDiffusionConfig, models: DiffusionModels, denoiser: Denoiser, path: Path) -> None:
    """A row of samples of `config.sample_prompts` with the current weights (fixed seed)."""
    from diffusers.utils import make_image_grid

    was_training = denoiser.training
    pipe = make_pipeline(models, denoiser.eval(), config)
    with torch.no_grad():
        images = pipe(
            list(config.sample_prompts),
            num_inference_steps=config.sample_steps,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
        ).images
    denoiser.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(images, rows=1, cols=len(images)).save(path)
