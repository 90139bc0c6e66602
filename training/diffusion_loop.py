"""The diffusion training loop: a pixel-space UNet (or LoRA on its cross-attention) learns to
denoise images given the prompt embeddings of a frozen CLIP text tower, on accelerate.

`train_diffusion(config)` reads image-caption batches (the same sources as the CLIP loop),
noises them with diffusers' DDPM schedule, regresses the noise (or v), drops captions for
classifier-free guidance, keeps an EMA of the weights (diffusers' `EMAModel`), writes atomic
safetensors checkpoints and resumes from them exactly, writes sample grids, and saves a
`CLIPConditionedPipeline` to ``<output_dir>/pipeline``.
"""

from __future__ import annotations

import copy
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
from tqdm.auto import tqdm

from clipcond.conditioning import TextConditioner
from clipcond.tokenization import clip_tokenizer
from clipcond.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from clipcond.training.clip_batches import ContrastiveBatches
from clipcond.training.diffusion_config import TrainDiffusionConfig
from clipcond.training.optim import param_groups, warmup_cosine
from clipcond.training.run_folder import check_runtime, prepare_output_dir, stop_if_diverged

PIPELINE_DIR = "pipeline"


def pixels_in_unit_range(image: Any, size: int) -> torch.Tensor:
    """PIL image -> (3, size, size) float32 in [-1, 1] (resized with bicubic when needed)."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def load_frozen_text_encoder(path: str) -> nn.Module:
    """The CLIP text tower of a `save_clip` folder or a transformers folder, frozen, in eval mode."""
    from transformers import CLIPTextModel

    folder = Path(path)
    if (folder / "text_encoder").is_dir():
        folder = folder / "text_encoder"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text_encoder: no text encoder at {path} (expected config.json or text_encoder/)")
    # CLIPTextModel (not ...WithProjection): its first output is the per-token states, which is
    # what a StableDiffusionPipeline reads too; projection weights, if stored, are ignored.
    model = CLIPTextModel.from_pretrained(folder)
    return model.eval().requires_grad_(False)


@dataclass
class TrainDiffusionResult:
    """What a finished run reports: where the pipeline went, steps, last loss, throughput."""

    pipeline_dir: Path
    steps: int
    loss: float
    samples_per_second: float
    skipped: dict[str, int]


def _build_unet(config: TrainDiffusionConfig, width: int) -> nn.Module:
    from diffusers import UNet2DConditionModel

    if config.init_from is not None:
        folder = Path(config.init_from) / "unet"
        if not folder.is_dir():
            raise FileNotFoundError(f"init_from: no unet/ in {config.init_from} (a saved CLIPConditionedPipeline)")
        unet = UNet2DConditionModel.from_pretrained(folder)
    else:
        settings = {"in_channels": 3, "out_channels": 3, **config.unet}
        unet = UNet2DConditionModel(**settings, sample_size=config.image_size, cross_attention_dim=width)
    if unet.config.cross_attention_dim != width:
        raise ValueError(
            f"the UNet reads {unet.config.cross_attention_dim}-wide tokens but the text encoder gives {width}"
        )
    if config.train == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                                    target_modules=list(config.lora.target_modules), init_lora_weights="gaussian"))  # fmt: skip
    return unet


def train_diffusion(config: TrainDiffusionConfig, resume: bool = False, show_progress: bool = True) -> TrainDiffusionResult:
    """Run (or resume) the diffusion training described by `config` (see the module docstring).

    Raises:
        TrainingDiverged: the loss became NaN/inf; the last good checkpoint stays in place.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    check_runtime(config.mixed_precision)
    text_encoder = load_frozen_text_encoder(config.text_encoder)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, project_dir=config.output_dir)
    output_dir = prepare_output_dir(config, resume) if accelerator.is_main_process else Path(config.output_dir)
    accelerator.wait_for_everyone()
    set_seed(config.seed)

    tokenizer = clip_tokenizer(model_max_length=text_encoder.config.max_position_embeddings)
    conditioner = TextConditioner("sd", clip=[(text_encoder, tokenizer)], cache_size=100_000)
    unet = _build_unet(config, text_encoder.config.hidden_size).train()
    trainable = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(unet, config.weight_decay), lr=config.lr, fused=True)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps)
    noise_schedule = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type)
    ema = EMAModel(trainable, decay=config.ema_decay) if config.ema_decay is not None else None
    # EMA weights as a module so checkpoints hold them (the Parameters share the EMA's storage).
    ema_weights = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in ema.shadow_params]) if ema else None

    modules = {"unet": unet, **({"ema": ema_weights} if ema else {})}
    start_step, checkpoint = 0, (latest_checkpoint(output_dir) if resume else None)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, modules, optimizer, scheduler)
        start_step = state["step"]
        if ema is not None:
            ema.optimization_step = state["extra"]["ema_step"]
        accelerator.print(f"resuming from {checkpoint} (step {start_step})")

    unet, optimizer = accelerator.prepare(unet, optimizer)
    conditioner.to(accelerator.device)
    batches = ContrastiveBatches(
        config.data, None, image_size=config.image_size, batch_size=config.batch_size, seed=config.seed,
        start_step=start_step, rank=accelerator.process_index, world=accelerator.num_processes,
        transform=lambda image: pixels_in_unit_range(image, config.image_size),
    )  # fmt: skip

    progress = tqdm(total=config.steps, initial=start_step, desc="train-diffusion",
                    disable=not (show_progress and accelerator.is_local_main_process), dynamic_ncols=True)  # fmt: skip
    loss_value, last_checkpoint, step = float("nan"), checkpoint, start_step
    started = window = time.perf_counter()
    for step in range(start_step + 1, config.steps + 1):
        pixels, captions = batches.next_with_captions()
        pixels = pixels.to(accelerator.device)
        # caption dropout, decided per (seed, step, row): identical after a resume
        captions = [
            "" if random.Random(f"dropout:{config.seed}:{step}:{accelerator.process_index}:{row}").random()
            < config.caption_dropout else caption
            for row, caption in enumerate(captions)
        ]  # fmt: skip
        with torch.no_grad():
            context = conditioner.encode(captions).tokens
        # noise and timesteps from a generator seeded by (seed, step, rank): identical after a resume
        generator = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 1009 + accelerator.process_index)
        noise = torch.randn(pixels.shape, generator=generator).to(pixels.device)
        timesteps = torch.randint(0, config.num_train_timesteps, (pixels.shape[0],), generator=generator).to(pixels.device)
        noisy = noise_schedule.add_noise(pixels, noise, timesteps)
        target = noise if config.prediction_type == "epsilon" else noise_schedule.get_velocity(pixels, noise, timesteps)
        with accelerator.autocast():
            prediction = unet(noisy, timesteps, encoder_hidden_states=context).sample
        loss = F.mse_loss(prediction.float(), target.float())
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
                    handle.write(json.dumps({"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0]}) + "\n")
        if accelerator.is_main_process and config.sample_every and step % config.sample_every == 0:
            _write_samples(config, accelerator.unwrap_model(unet), text_encoder, tokenizer, output_dir / "samples" / f"step-{step:07d}.png")
        if step % config.checkpoint_every == 0 or step == config.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                last_checkpoint = save_checkpoint(
                    output_dir, step, {**modules, "unet": accelerator.unwrap_model(unet)},
                    optimizer=optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                    scheduler=scheduler, extra={"ema_step": ema.optimization_step if ema else 0},
                    keep=config.keep_checkpoints,
                )  # fmt: skip
    progress.close()
    elapsed = time.perf_counter() - started

    pipeline_dir = output_dir / PIPELINE_DIR
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = _final_unet(accelerator.unwrap_model(unet), ema)
        pipe = _pipeline(CLIPConditionedPipeline, final, text_encoder, tokenizer, config)
        pipe.save_pretrained(pipeline_dir)
        accelerator.print(batches.skipped.report())
    return TrainDiffusionResult(
        pipeline_dir=pipeline_dir, steps=step, loss=loss_value,
        samples_per_second=config.batch_size * accelerator.num_processes * (step - start_step) / max(elapsed, 1e-9),
        skipped=dict(batches.skipped.counts),
    )  # fmt: skip


def _final_unet(unet: nn.Module, ema: Any) -> nn.Module:
    """A plain UNet to ship: EMA weights when kept, LoRA merged into the weights."""
    final = copy.deepcopy(unet)
    if ema is not None:
        ema.copy_to([p for p in final.parameters() if p.requires_grad])
    if getattr(final, "peft_config", None):
        final.fuse_lora()
        final.unload_lora()
    return final.eval()


def _pipeline(pipeline_class: Any, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any, config: TrainDiffusionConfig) -> Any:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type)
    pipe = pipeline_class(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _write_samples(config: TrainDiffusionConfig, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any, path: Path) -> None:
    """A row of samples of `config.sample_prompts` with the current weights (fixed seed)."""
    from diffusers.utils import make_image_grid

    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    was_training = unet.training
    pipe = _pipeline(CLIPConditionedPipeline, unet.eval(), text_encoder, tokenizer, config)
    images = pipe(list(config.sample_prompts), num_inference_steps=config.sample_steps, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    unet.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(images, rows=1, cols=len(images)).save(path)

