"""The diffusion training loop: a UNet (or LoRA on its cross-attention, or only the `custom`
recipe's projection adapter) learns to denoise images (pixels or VAE latents) given the prompt
embeddings of frozen text encoders (CLIP, optionally with T5), on accelerate.

`train_diffusion(config)` runs one `TrainDiffusionConfig` on the loop skeleton
(`clipcond.training.loop.TrainingRun`: run folder, resume, logging, checkpoints). What is
diffusion's is here: the models (`diffusion.setup.build_diffusion_models`), image-caption
batches (the same sources as the CLIP loop), the captions' context (the live conditioner, or
with ``data.embeddings`` the records ``clipcond encode`` stored, checked against the
conditioner's weights and settings, and assembled by it), the images' latents (the live VAE,
or with ``data.latents`` the distributions ``clipcond encode --latents`` stored), the step (captions dropped for classifier-free
guidance, noise from diffusers' DDPM schedule, the noise (or v) regressed, optionally Min-SNR
weighted, gradients clipped, an EMA of the weights kept with diffusers' `EMAModel`), sample
grids during training (drawn with the EMA weights when kept: the ones saved), and a
`CLIPConditionedPipeline` saved to ``<output_dir>/pipeline``.
Noise, timesteps and dropped captions depend only on (seed, the sample's global index), so a
resumed run takes the steps of the uninterrupted one, and `world` processes of `batch_size`
take the steps of one process of `world * batch_size`.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from clipcond.output_paths import write_atomically
from clipcond.pipelines.vocabulary import write_vocabulary
from clipcond.shapes.captions import caption_vocabulary
from clipcond.training.data import ImageCaptionBatches, SampleGenerators, pixels_in_unit_range
from clipcond.training.diffusion.config import TRAINED_PREDICTIONS, TrainDiffusionConfig
from clipcond.training.diffusion.setup import (
    Denoiser,
    DiffusionModels,
    build_diffusion_models,
    final_denoiser,
    make_pipeline,
)
from clipcond.training.loop import TrainingRun
from clipcond.training.optim import adamw_with_warmup_cosine

if TYPE_CHECKING:
    from clipcond.conditioning import TextConditioner
    from clipcond.training.data.embedding_shards import EmbeddingShards
    from clipcond.training.data.latent_shards import LatentShards

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
        RunFolderError: the output_dir cannot be used as asked (another live run holds it, it
            holds another run, its config changed, none of its checkpoints can be loaded).
        RunAlreadyFinished: `resume` of a run that took all its steps and saved its result.
    """
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel

    with TrainingRun(config, "train-diffusion", resume, show_progress, result=PIPELINE_DIR) as run:
        accelerator = run.accelerator
        set_seed(config.seed)  # before the models: a UNet from scratch takes its initial weights from it
        models = build_diffusion_models(config)
        denoiser, conditioner, noise_schedule = models.denoiser, models.conditioner, models.noise_schedule
        embeddings = _embedding_shards(config, conditioner)  # stale ones refused before any step
        stored_latents = _latent_shards(config, models.vae)  # likewise
        # on the training device before the optimizer and the EMA are made: the EMA's shadow copies
        # are made where the weights are, and its update mixes the two
        denoiser.to(accelerator.device)
        trainable = [parameter for parameter in denoiser.parameters() if parameter.requires_grad]
        optimizer, scheduler = adamw_with_warmup_cosine(
            denoiser, config.lr, config.weight_decay, config.warmup_steps, config.steps
        )
        ema = EMAModel(trainable, decay=config.ema_decay) if config.ema_decay is not None else None
        # EMA weights as a module so checkpoints hold them (the Parameters share the EMA's storage).
        ema_weights = (
            nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in ema.shadow_params]) if ema else None
        )
        modules = {
            "unet": denoiser.unet,
            **({"projection": denoiser.projection} if denoiser.projection is not None else {}),
            **({"ema": ema_weights} if ema else {}),
        }
        start_step, extra = run.resume(modules, optimizer, scheduler, counts=("ema_step",))
        if ema is not None and run.resume_from is not None:
            ema.optimization_step = extra["ema_step"]

        wrapped, optimizer = accelerator.prepare(denoiser, optimizer)
        conditioner.to(accelerator.device)
        encode_captions = _caption_encoding(conditioner, embeddings)
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
            skipped=run.skipped,
            transform=lambda image: pixels_in_unit_range(image, config.image_size),
        )

        def backward(step: int) -> torch.Tensor:
            pixels, captions = batches.next_with_captions()
            pixels = pixels.to(accelerator.device)
            samples = batches.indices(step - 1)  # global sample indices: what keys each sample's randomness
            # caption dropout, decided per (seed, sample): identical after a resume and on any number of processes
            captions = [
                "" if random.Random(f"dropout:{config.seed}:{sample}").random() < config.caption_dropout else caption
                for sample, caption in zip(samples, captions)
            ]
            # encoders are frozen (run without grad inside the conditioner); a learning projection needs the graph
            with torch.enable_grad() if models.projection_trains else torch.no_grad():
                context = encode_captions(captions)
            # latent sample, noise and timestep from each sample's own generator (seed, sample index)
            generators = SampleGenerators(config.seed, samples)
            clean = models.to_model_space(pixels, generators, stored_latents)
            noise = generators.normal(clean.shape).to(clean.device)
            timesteps = generators.integers(noise_schedule.config.num_train_timesteps).to(clean.device)
            noisy = noise_schedule.add_noise(clean, noise, timesteps)
            with accelerator.autocast():
                prediction = wrapped(noisy, timesteps, context)
            target = _denoising_target(noise_schedule, clean, noise, timesteps)
            loss = _denoising_loss(prediction, target, timesteps, noise_schedule, config.snr_gamma)
            accelerator.backward(loss)
            return loss

        def update() -> None:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(trainable)

        def write_samples_if_due(step: int) -> None:
            if config.sample_every and step % config.sample_every == 0:
                path = run.output_dir / "samples" / f"step-{step:07d}.png"
                with _ema_weights(ema, trainable):  # the weights the run saves
                    _write_samples(config, models, accelerator.unwrap_model(wrapped), path)

        outcome = run.train(
            backward,
            update,
            after_step=write_samples_if_due,
            extra=lambda: {"ema_step": ema.optimization_step if ema else 0},
        )

        pipeline_dir = run.result_dir
        if accelerator.is_main_process:
            pipe = make_pipeline(models, final_denoiser(accelerator.unwrap_model(wrapped), ema))
            with run.writing_result() as folder:  # renamed to pipeline_dir once whole
                pipe.save_pretrained(folder)
                if config.data.source == "shapes":  # its captions' words are known: generate can warn about others
                    write_vocabulary(folder, caption_vocabulary(config.data.max_objects))
    return TrainDiffusionResult(
        pipeline_dir=pipeline_dir,
        steps=outcome.steps,
        loss=outcome.loss,
        samples_per_second=outcome.throughput,
        skipped=dict(run.skipped.counts),
    )


def _embedding_shards(config: TrainDiffusionConfig, conditioner: TextConditioner) -> EmbeddingShards | None:
    """The run's `data.embeddings` folder, checked against the conditioner's weights and
    settings (`StaleEmbeddings` otherwise), or None when captions are encoded live."""
    if config.data.embeddings is None:
        return None
    from clipcond.training.data.embedding_shards import EmbeddingIdentity, EmbeddingShards, StaleEmbeddings

    identity = EmbeddingIdentity(*conditioner.identity())
    try:
        return EmbeddingShards(
            config.data.embeddings, identity, argument="data.embeddings", spec=conditioner.record_spec
        )
    except StaleEmbeddings as stale:
        if "window_split=" not in str(stale) and "parse=" not in str(stale):
            raise
        raise StaleEmbeddings(
            f"{stale}. This run reads captions as `caption_syntax` ({config.caption_syntax}) and "
            f"`caption_window_split` ({config.caption_window_split!r}) say; shards written by `clipcond encode "
            "--pipeline` (or before these keys) read them as a pipeline reads prompts: set caption_syntax: true and "
            "caption_window_split: word to use them"
        ) from stale


def _latent_shards(config: TrainDiffusionConfig, vae: nn.Module | None) -> LatentShards | None:
    """The run's `data.latents` folder, checked against its VAE (`StaleEmbeddings` otherwise),
    or None when images are encoded live.

    Raises:
        EmbeddingShardError: `data.latents` in a run without a VAE (pixel space: nothing to read).
    """
    from clipcond.training.data.embedding_shards import EmbeddingShardError

    if config.data.latents is None:
        return None
    if vae is None:
        raise EmbeddingShardError(
            "data.latents: this run trains in pixel space (no `vae`, and `init_from` has no vae/); "
            "latents are read only by runs on a VAE's latents"
        )
    from clipcond.training.data.latent_shards import LatentShards, vae_identity

    return LatentShards(config.data.latents, vae_identity(vae), argument="data.latents")


def _caption_encoding(
    conditioner: TextConditioner, embeddings: EmbeddingShards | None
) -> Callable[[list[str]], torch.Tensor]:
    """captions -> context tokens (batch, seq, width) for the UNet: the conditioner's `encode`,
    or the captions' records read from `embeddings` and assembled by the conditioner (the same
    padding, join and projection; only the encoders' forward is skipped)."""
    if embeddings is None:
        return lambda captions: conditioner.encode(captions).tokens
    empty = embeddings.record("", conditioner.device)  # pads short prompts, and is the dropped caption

    def read(captions: list[str]) -> torch.Tensor:
        return conditioner.assemble(embeddings.records(captions, conditioner.device), empty).tokens

    return read


def _denoising_target(
    noise_schedule: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet regresses for `clean` (batch, C, H, W) noised with `noise` at `timesteps`
    (batch,): the noise (epsilon) or the velocity (v_prediction), as the schedule's
    `prediction_type` says; (batch, C, H, W).

    Raises:
        ValueError: another prediction type (setup refuses it; this guards the formula).
    """
    kind = noise_schedule.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_schedule.get_velocity(clean, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r}: train-diffusion trains one of {list(TRAINED_PREDICTIONS)}")


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


@contextlib.contextmanager
def _ema_weights(ema: Any, parameters: list[nn.Parameter]) -> Iterator[None]:
    """Inside the block, the trained `parameters` hold the EMA's weights (the ones the run
    saves), as diffusers' train_text_to_image.py draws its validation images; after it, their
    own values again, exactly (`EMAModel.store` / `copy_to` / `restore`). No EMA: unchanged."""
    if ema is None:
        yield
        return
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)


def _write_samples(config: TrainDiffusionConfig, models: DiffusionModels, denoiser: Denoiser, path: Path) -> None:
    """A row of samples of `config.sample_prompts` with `denoiser`'s weights (fixed seed)."""
    from diffusers.utils import make_image_grid

    was_training = denoiser.training
    pipe = make_pipeline(models, denoiser.eval())
    with torch.no_grad():
        images = pipe(
            list(config.sample_prompts),
            num_inference_steps=config.sample_steps,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
        ).images
    denoiser.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    make_image_grid(images, rows=1, cols=len(images)).save(encoded, format="PNG")
    write_atomically(path, encoded.getvalue())  # a full disk or a kill leaves no cut PNG
