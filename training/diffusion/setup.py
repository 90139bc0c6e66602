"""The models of a diffusion training run: frozen text encoders, the conditioner over them,
the UNet (`diffusion.unet_setup`), the optional projection (the `custom` recipe's adapter), the
optional frozen VAE and the noise schedule, with the parts `config.train` names set trainable;
and the pipeline they make when saved.

A folder the config names that does not exist is a `FileNotFoundError` naming the key; a damaged
one (`clipcond.file_damage`) is a `RunSetupError` naming the key, the folder and the file, before
it is loaded and before the snapshot (`reading_part`); so are parts that do not fit together
(`build_diffusion_models` lists them), e.g. an SDXL-class `init_from` UNet.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipcond.conditioning import TextConditioner
from clipcond.errors import user_errors
from clipcond.families import custom_recipe, get_recipe
from clipcond.file_damage import refuse_damaged_folder
from clipcond.pipelines.coordinates import append_coordinates
from clipcond.training.data import SampleGenerators
from clipcond.training.data.latent_shards import LatentShards, latent_moments
from clipcond.training.diffusion.config import TRAINED_PREDICTIONS, TrainDiffusionConfig, scheduler_class
from clipcond.training.diffusion.frozen_encoders import load_frozen_clip, load_frozen_t5
from clipcond.training.diffusion.unet_setup import add_lora, build_unet
from clipcond.training.loop import RunSetupError, reading_part

PROJECTION_DIR = "text_projection"


class Denoiser(nn.Module):
    """Everything a run may train: the UNet and the optional projection.

    `forward(noisy, timesteps, context)` -> the UNet's prediction (batch, C, H, W). The
    projection is applied by the conditioner when it builds `context`; holding it here puts
    it in the same optimiser, EMA, checkpoint and distributed wrapper as the UNet.
    """

    def __init__(self, unet: nn.Module, projection: nn.Module | None = None, coordinate_channels: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.projection = projection
        self.coordinate_channels = coordinate_channels

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.coordinate_channels:
            noisy = append_coordinates(noisy)
        return self.unet(noisy, timesteps, encoder_hidden_states=context).sample


@dataclass
class DiffusionModels:
    """The models of a run. `recipe` is "sd" (CLIP alone, no projection) or "custom";
    `noise_schedule` is the DDPM schedule trained with, `sample_scheduler` the scheduler the
    saved pipeline and the sample grids draw with (`_sample_scheduler`)."""

    denoiser: Denoiser
    conditioner: TextConditioner
    text_encoder: nn.Module
    tokenizer: Any
    t5_encoder: nn.Module | None
    t5_tokenizer: Any
    recipe: str
    t5_max_length: int | None
    vae: nn.Module | None
    noise_schedule: Any
    sample_scheduler: Any

    def to_model_space(
        self, pixels: torch.Tensor, generators: SampleGenerators, stored: LatentShards | None = None
    ) -> torch.Tensor:
        """Training images (batch, 3, H, W) in [-1, 1] -> what the UNet denoises: the pixels,
        or VAE latents (batch, C, H/f, W/f) sampled with each image's generator and scaled (and
        shifted) as the pipeline's decoder expects. With `stored` (``data.latents``) the latent
        distribution of each image is read there instead of running the VAE; the draw is the same."""
        if self.vae is None:
            return pixels
        if stored is None:
            mean, std = latent_moments(self.vae, pixels)
        else:
            mean, std = stored.moments(pixels, pixels.device)
        noise = generators.normal(mean.shape).to(mean)
        latents = mean + std * noise
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).to(pixels.dtype)

    @property
    def projection_trains(self) -> bool:
        """Whether prompts must be encoded with gradients (the projection learns)."""
        projection = self.denoiser.projection
        return projection is not None and any(p.requires_grad for p in projection.parameters())


def _load_init_projection(config: TrainDiffusionConfig) -> nn.Module | None:
    """`init_from`'s projection, which the run continues, or None when it has none.

    Raises:
        RunSetupError: it cannot be read, or `projection_dim` asks for another width.
    """
    if config.init_from is None or not (Path(config.init_from) / PROJECTION_DIR).is_dir():
        return None
    from clipcond.projection import TextProjection

    with reading_part("init_from", config.init_from):
        refuse_damaged_folder("the folder", Path(config.init_from), [PROJECTION_DIR])
        projection = TextProjection.from_pretrained(Path(config.init_from) / PROJECTION_DIR)
    saved = projection.config.projection_dim
    if config.projection_dim is not None and config.projection_dim != saved:
        raise RunSetupError(
            f"projection_dim: {config.projection_dim} differs from the {saved} of init_from {config.init_from}'s "
            f"{PROJECTION_DIR}/, which this run continues; leave projection_dim out (or set it to {saved})"
        )
    return projection


def load_vae(config: TrainDiffusionConfig) -> nn.Module | None:
    """The run's frozen VAE (`config.vae`, else `init_from`'s ``vae/``), or None in pixel space.

    Raises:
        FileNotFoundError: `config.vae` holds no AutoencoderKL.
        RunSetupError: the VAE's folder cannot be read (its key and folder named), or
            `image_size` is not a multiple of the VAE's downsampling.
    """
    from diffusers import AutoencoderKL

    source = config.vae
    if source is None and config.init_from is not None and (Path(config.init_from) / "vae").is_dir():
        source = config.init_from
    if source is None:
        return None
    folder = Path(source) / "vae" if (Path(source) / "vae").is_dir() else Path(source)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"vae: no AutoencoderKL at {source} (expected config.json or vae/)")
    key = "vae" if config.vae is not None else "init_from"
    with reading_part(key, source):
        refuse_damaged_folder("the folder", folder, [""])
        vae = AutoencoderKL.from_pretrained(folder).eval().requires_grad_(False)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if config.image_size % factor:
        raise RunSetupError(
            f"image_size ({config.image_size}) must be a multiple of the VAE's downsampling ({factor}; {key} {source})"
        )
    return vae


def _inherited_scheduler_config(config: TrainDiffusionConfig) -> dict[str, Any] | None:
    """`init_from`'s ``scheduler/scheduler_config.json`` (its ``_class_name`` included), or None
    from scratch or when it has none."""
    folder = None if config.init_from is None else Path(config.init_from) / "scheduler"
    if folder is None or not (folder / "scheduler_config.json").is_file():
        return None
    from diffusers import DDPMScheduler

    with reading_part("init_from", config.init_from):
        refuse_damaged_folder("the folder", folder, [""])
        return dict(DDPMScheduler.load_config(folder))


def _noise_schedule(config: TrainDiffusionConfig, inherited: dict[str, Any] | None) -> Any:
    """DDPM training schedule: `init_from`'s scheduler config (`inherited`) when it has one,
    else a fresh one.

    Raises:
        RunSetupError: `init_from`'s prediction type is one the loop does not train (e.g.
            "sample") and the config does not set `prediction_type`.
    """
    from diffusers import DDPMScheduler

    if inherited is None:
        return DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type or "epsilon",
        )
    overrides = {"prediction_type": config.prediction_type} if config.prediction_type else {}
    with reading_part("init_from", config.init_from):
        schedule = DDPMScheduler.from_config(inherited, **overrides)
    inherited_type = schedule.config.prediction_type
    if inherited_type not in TRAINED_PREDICTIONS:  # as diffusers' train_text_to_image.py refuses it
        raise RunSetupError(
            f"init_from {config.init_from}: its scheduler's prediction_type is {inherited_type!r}; train-diffusion "
            f"trains {' or '.join(map(repr, TRAINED_PREDICTIONS))}: set prediction_type to the one to train"
        )
    return schedule


def _sample_scheduler(config: TrainDiffusionConfig, inherited: dict[str, Any] | None, noise_schedule: Any) -> Any:
    """The scheduler the saved pipeline samples with: the class `sample_scheduler` names and
    the `timestep_spacing`, each taken when None from `init_from`'s scheduler (`inherited`), or
    from scratch DDIMScheduler and "leading"; on the training schedule (`noise_schedule`:
    `init_from`'s other settings, such as steps_offset, come along as its pipeline loads them).

    Raises:
        RunSetupError: `init_from`'s scheduler class is not a diffusers scheduler and
            `sample_scheduler` is not set.
    """
    spacing = {"timestep_spacing": config.timestep_spacing} if config.timestep_spacing else {}
    if inherited is None:
        chosen = scheduler_class(config.sample_scheduler or "DDIMScheduler", "sample_scheduler")
        return chosen.from_config(noise_schedule.config, **{"timestep_spacing": "leading", **spacing})
    name = config.sample_scheduler or inherited.get("_class_name") or "DDIMScheduler"
    try:
        chosen = scheduler_class(name, "sample_scheduler")
    except ValueError as error:
        raise RunSetupError(
            f"init_from {config.init_from}: its scheduler/ is a {name!r}, not a diffusers scheduler class; "
            "set sample_scheduler (e.g. DDIMScheduler)"
        ) from error
    return chosen.from_config({**inherited, "prediction_type": noise_schedule.config.prediction_type}, **spacing)


def uses_coordinate_channels(config: TrainDiffusionConfig) -> bool:
    """Whether the run's UNet reads coordinate channels: `config.coordinate_channels`, or for an
    `init_from` run, the setting of the pipeline it starts from.

    Raises:
        RunSetupError: `init_from`'s ``model_index.json`` is not a JSON object, or the config
            asks for a setting other than `init_from`'s.
    """
    if config.init_from is None:
        return bool(config.coordinate_channels)
    index = Path(config.init_from) / "model_index.json"
    inherited = False
    if index.is_file():
        with reading_part("init_from", index):
            saved = json.loads(index.read_bytes())
        if not isinstance(saved, dict):
            raise RunSetupError(f"init_from {index}: expected a JSON object, got {type(saved).__name__}")
        inherited = bool(saved.get("coordinate_channels", False))
    if config.coordinate_channels is not None and config.coordinate_channels != inherited:
        raise RunSetupError(
            f"coordinate_channels: {config.coordinate_channels} differs from init_from's pipeline "
            f"({config.init_from}: {inherited}); a trained UNet keeps its inputs (leave the key out)"
        )
    return inherited


def build_conditioner(config: TrainDiffusionConfig) -> TextConditioner:
    """The run's frozen encoders (`text_encoder`, `t5_encoder`) and the conditioner over them,
    with the projection (`init_from`'s, or a new one of `projection_dim`) when there is one.

    The recipe is a row of the family table: "sd" for a CLIP alone, "custom" (with the row's
    defaults, e.g. its T5 budget when `t5_max_length` is unset) for a T5 or an adapter.
    Captions are read as `caption_syntax` and `caption_window_split` say (by default literal
    text cut at 75 CLIP tokens, as diffusers' training scripts read them).
    `clipcond encode --train-config` builds the same conditioner, so that its embeddings fit.

    Raises:
        FileNotFoundError: `text_encoder` or `t5_encoder` does not exist.
        RunSetupError: one of them, or `init_from`'s projection, cannot be read; `train:
            adapter` without a projection (checked before any model is loaded).
    """
    has_init_projection = config.init_from is not None and (Path(config.init_from) / PROJECTION_DIR).is_dir()
    if config.train == "adapter" and not has_init_projection and config.projection_dim is None:
        raise RunSetupError(
            "`train: adapter` trains a projection: set `projection_dim`, or init_from a pipeline that has one "
            f"(init_from {config.init_from} has no {PROJECTION_DIR}/)"
        )
    projection = _load_init_projection(config)
    text_encoder, tokenizer = load_frozen_clip(config.text_encoder)
    t5_encoder, t5_tokenizer = load_frozen_t5(config.t5_encoder) if config.t5_encoder else (None, None)
    custom = t5_encoder is not None or projection is not None or bool(config.projection_dim)
    recipe = (
        custom_recipe(
            True, t5_encoder is not None, t5_max_length=config.t5_max_length, t5_attention_mask=config.t5_attention_mask
        )
        if custom
        else get_recipe("sd")
    )
    # the encoders' widths must fit together: init_from's projection reads those it was trained
    # with, and CLIP and T5 tokens of two widths need a projection_dim
    where = f"init_from {config.init_from} {PROJECTION_DIR}/: " if projection is not None else ""
    with user_errors(ValueError, error=RunSetupError, context=where):
        return TextConditioner(
            recipe,
            clip=[(text_encoder, tokenizer)],
            t5=None if t5_encoder is None else (t5_encoder, t5_tokenizer),
            projection=projection,
            projection_dim=config.projection_dim,
            parse_weights=config.caption_syntax,
            lora_tags="strip",  # a caption's LoRA tags name how its image was made: no text to read
            window_split=config.caption_window_split,
            cache_size=100_000,
        )


def build_diffusion_models(config: TrainDiffusionConfig) -> DiffusionModels:
    """Load the encoders, build the conditioner (`build_conditioner`), the UNet and the
    projection, and set which weights train (`config.train`: "unet" -> UNet and projection;
    "lora" -> LoRA only; "adapter" -> the projection, plus LoRA with `adapter_lora`).

    Raises:
        FileNotFoundError: a folder the config names does not exist.
        RunSetupError: one cannot be read (its key and folder named); `train: adapter` without
            a projection, a UNet that reads tokens of another width or needs inputs the loop
            does not give, an `image_size` the VAE cannot take, a `coordinate_channels` other
            than `init_from`'s.
    """
    inherited = _inherited_scheduler_config(config)
    noise_schedule = _noise_schedule(config, inherited)  # the schedules first: cheap, and refused before any loading
    sample_scheduler = _sample_scheduler(config, inherited, noise_schedule)
    conditioner = build_conditioner(config)
    clip, t5 = conditioner.clip[0], conditioner.t5
    projection = conditioner.projection
    width = projection.config.projection_dim if projection is not None else conditioner.clip_width
    vae = load_vae(config)
    unet = build_unet(config, width, vae)
    unet.requires_grad_(config.train == "unet")
    if projection is not None:
        projection.requires_grad_(config.train in ("unet", "adapter"))
    if config.train == "lora" or config.adapter_lora:
        add_lora(unet, config)
    denoiser = Denoiser(unet, projection, uses_coordinate_channels(config)).train()
    return DiffusionModels(
        denoiser,
        conditioner,
        clip.model,
        clip.tokenizer,
        None if t5 is None else t5.model,
        None if t5 is None else t5.tokenizer,
        conditioner.recipe.name,
        conditioner.recipe.t5_max_length if t5 is not None else None,
        vae,
        noise_schedule,
        sample_scheduler,
    )


def make_pipeline(models: DiffusionModels, denoiser: Denoiser) -> Any:
    """A `CLIPConditionedPipeline` over `denoiser`'s UNet and projection (shared, not copied)
    and the run's encoders and VAE, with a fresh copy of `models.sample_scheduler`."""
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    scheduler = type(models.sample_scheduler).from_config(models.sample_scheduler.config)
    pipe = CLIPConditionedPipeline(
        unet=denoiser.unet,
        scheduler=scheduler,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        vae=models.vae,
        text_encoder_2=models.t5_encoder,
        tokenizer_2=models.t5_tokenizer,
        text_projection=denoiser.projection,
        recipe=models.recipe,
        t5_max_length=models.t5_max_length,
        t5_attention_mask=models.t5_encoder is not None and models.conditioner.recipe.t5_attention_mask,
        coordinate_channels=denoiser.coordinate_channels,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def final_denoiser(denoiser: Denoiser, ema: Any) -> Denoiser:
    """A copy to ship: EMA weights when kept, LoRA merged into the UNet, in eval mode."""
    final = copy.deepcopy(denoiser)
    if ema is not None:
        ema.copy_to([p for p in final.parameters() if p.requires_grad])
    if getattr(final.unet, "peft_config", None):
        final.unet.fuse_lora()
        final.unet.unload_lora()
    return final.eval().requires_grad_(False)


def pipeline_from_checkpoint(config: TrainDiffusionConfig, checkpoint: str | Path, use_ema: bool = True) -> Any:
    """The pipeline a run would save, from one of its checkpoints (e.g. to judge a run midway).

    Args:
        config: the run's config (the one in its `train_config.yaml`).
        checkpoint: a `checkpoints/step-*` folder of that run.
        use_ema: take the EMA weights when the checkpoint holds them (as the final save does).
    """
    from clipcond.training.checkpoint import load_checkpoint

    models = build_diffusion_models(config)
    denoiser = models.denoiser
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    modules: dict[str, nn.Module] = {"unet": denoiser.unet}
    if denoiser.projection is not None:
        modules["projection"] = denoiser.projection
    has_ema = (Path(checkpoint) / "ema.safetensors").is_file()
    ema_weights = nn.ParameterList([nn.Parameter(torch.empty_like(p), requires_grad=False) for p in trainable])
    if use_ema and has_ema:
        modules["ema"] = ema_weights
    load_checkpoint(checkpoint, modules, restore_rng=False)
    if use_ema and has_ema:
        with torch.no_grad():
            for parameter, average in zip(trainable, ema_weights):
                parameter.copy_(average)
    return make_pipeline(models, final_denoiser(denoiser, None))
