"""`TrainDiffusionConfig`: a UNet (or LoRA, or a projection adapter) trained against a frozen text conditioner,
described in YAML (validated: an unknown key is an error naming the key and the file)."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from clipcond.config import load_config
from clipcond.shapes.render import MIN_IMAGE_SIZE
from clipcond.training.data import DataConfig
from clipcond.training.loop import check_seed
from clipcond.training.lora_settings import check_lora_rank_and_alpha
from clipcond.training.optim import check_optimizer_settings
from clipcond.window_splits import check_window_split

# what the loop regresses: the noise, or the velocity (Salimans & Ho 2022); as diffusers'
# train_text_to_image.py, not "sample" (x0)
PredictionType = Literal["epsilon", "v_prediction"]
TRAINED_PREDICTIONS: tuple[str, ...] = get_args(PredictionType)


@dataclass
class DiffusionLoraSettings:
    """LoRA (peft) on the UNet's cross-attention projections: rank `r` (>= 1) and `alpha`
    (> 0; the update is scaled by alpha / r, so 0 would train nothing)."""

    r: int = 8
    alpha: float = 8
    target_modules: list[str] = field(
        default_factory=lambda: ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
    )

    def __post_init__(self) -> None:
        check_lora_rank_and_alpha(self.r, self.alpha)
        names = self.target_modules
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(
                f"`lora.target_modules` must be a non-empty list of module names (such as attn2.to_q), got {names!r}"
            )


@dataclass
class DiffusionDataConfig(DataConfig):
    """The data section of a diffusion run: `DataConfig`'s sources, and optionally captions
    encoded beforehand.

    Attributes:
        embeddings: a folder of caption embeddings written by ``clipcond encode`` (for example
            ``clipcond encode --train-config this.yaml --out DIR``): each step reads its
            captions' encoder outputs there instead of running the text encoders. Every shard
            must have been encoded with this run's encoder weights and conditioner settings
            (else the run refuses to start), and every caption the run reads (and "", for
            caption dropout) must be there (else the run stops, naming the caption's hash).
        latents: a folder of the images' VAE latent distributions written by ``clipcond encode
            --latents DIR`` (a run on a VAE's latents only): each step reads its images' latent
            mean and std there instead of running the VAE, and draws the latent from them as
            the live VAE's would be drawn. The shards must come from this run's VAE (weights,
            dtype; else the run refuses to start), and every image the run reads, as it
            transforms it (`image_size`), must be there (else the run stops, naming the hash).
    """

    embeddings: str | None = None
    latents: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("embeddings", "latents"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise ValueError(f"data.{name} must be a folder path or null, got {value!r}")

    def check_files(self) -> None:
        """`DataConfig.check_files`, and the `embeddings` and `latents` folders exist."""
        super().check_files()
        for name in ("embeddings", "latents"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise FileNotFoundError(f"data.{name}: no such folder {value}")


def scheduler_class(name: str, argument: str = "scheduler") -> type:
    """The diffusers scheduler class called `name` (e.g. "DDIMScheduler").

    Raises:
        ValueError: `name` is not a diffusers `SchedulerMixin` class; the message names `argument`.
    """
    import diffusers

    found = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(found, type) and issubclass(found, diffusers.SchedulerMixin)):
        raise ValueError(f"`{argument}` must name a diffusers scheduler class (e.g. DDIMScheduler), got {name!r}")
    return found


@dataclass
class TrainDiffusionConfig:
    """A diffusion training run, in pixel space or on a VAE's latents.

    Attributes:
        text_encoder: folder of the frozen CLIP text tower: a `save_clip` folder (its
            `text_encoder/`), or a transformers text-encoder folder.
        t5_encoder: folder of a frozen transformers T5 encoder (tokenizer in the folder or its
            `tokenizer/`), joined to CLIP with the `custom` recipe (CLIP then T5 tokens on the
            sequence axis); None for CLIP alone (the `sd` recipe).
        projection_dim: width of a learned `TextProjection` (the `custom` recipe's adapter)
            between the encoders and the UNet, which then reads tokens of this width; needed
            when CLIP and T5 widths differ. Taken from `init_from` when its pipeline has one.
        t5_max_length: T5 token budget (>= 2, EOS included) of prompts with `t5_encoder` (only
            with one); None: the custom family's default (`clipcond.families`, 256). Stored in
            the saved pipeline so sampling uses the same length.
        t5_attention_mask: with `t5_encoder`, the T5 attends only to the caption's tokens, not
            to the padding up to `t5_max_length` (as it was pretrained by ``clipcond train-t5``,
            which masks padding); False (default): it attends to the padding too, as SD3's and
            Flux's pipelines run T5. Stored in the saved pipeline.
        unet: `UNet2DConditionModel` arguments for a UNet from scratch (`sample_size`,
            `in_channels`/`out_channels` (3), `cross_attention_dim` are set by the run); or None
            with `init_from`.
        coordinate_channels: the UNet also reads the pixel coordinates as two input channels
            (`clipcond.pipelines.coordinates`: lets it place things left or right, above or
            below, where its receptive field does not reach the image border). A UNet from
            scratch gets two more input channels; `init_from` runs inherit the setting of the
            pipeline they start from (giving a different one is an error).
        init_from: a saved `CLIPConditionedPipeline`, or a diffusers Stable Diffusion pipeline
            folder, whose UNet is fine-tuned (or gets LoRA / an adapter). Its noise schedule
            (`scheduler/`) is the one trained with, and its `vae/` (if any) is used.
        vae: folder of a frozen `AutoencoderKL` (or a pipeline folder with `vae/`): the UNet
            then works on its latents (`image_size` must be a multiple of its downsampling).
            Default: `init_from`'s VAE if it has one, else pixel space.
        train: "unet" (every UNet weight, and the projection if any), "lora" (LoRA on the
            UNet's cross-attention only) or "adapter" (only the projection, against a frozen
            UNet; with `adapter_lora` also LoRA on cross-attention).
        adapter_lora: with `train: adapter`, also train LoRA (`lora`) on cross-attention.
        prediction_type: "epsilon" or "v_prediction"; None: `init_from`'s (another one, such as
            "sample", is then an error), or "epsilon" (DDPM noise schedule of
            `num_train_timesteps` from scratch).
        beta_schedule: the DDPM noise schedule of a run from scratch: "linear" (DDPM's),
            "scaled_linear" (Stable Diffusion's) or "squaredcos_cap_v2" (the cosine schedule,
            better for small images); `init_from` runs inherit theirs.
        snr_gamma: Min-SNR loss weighting (Hang et al. 2023, as diffusers' training scripts'
            `--snr_gamma`): each example's loss is weighted by min(SNR(t), gamma) / SNR(t)
            (epsilon) or min(SNR(t), gamma) / (SNR(t) + 1) (v); None: plain MSE.
        sample_scheduler: the diffusers scheduler class the saved pipeline samples with (built
            from the training noise schedule), e.g. "DDIMScheduler" or "DDPMScheduler"
            (ancestral: fresh noise at every step); None: `init_from`'s scheduler's class, or
            "DDIMScheduler" from scratch.
        timestep_spacing: how the saved pipeline's scheduler spaces its sampling steps
            ("leading", "trailing" or "linspace"; "trailing" starts at the last training step);
            None: `init_from`'s scheduler's spacing, or "leading" from scratch.
        image_size: side of the training images in pixels (>= 8; >= 16 with `data.source:
            shapes`, whose scenes need it).
        caption_dropout: fraction of captions replaced by "" (for classifier-free guidance).
        caption_syntax: read prompt syntax in captions (weights, `BREAK`, escapes), as the
            pipeline reads prompts; False (default): a caption is its literal text, as
            diffusers' training scripts read it.
        caption_window_split: a caption longer than one CLIP window (75 tokens): "truncate"
            (default: its first 75 tokens, as diffusers' training scripts tokenize; every
            context is one window), or "word" / "a1111" / "comfy" (all of it, in windows cut as
            `TextConditioner`'s `window_split` says; a batch's captions then all get as many
            windows as its longest, so a caption's context depends on the batch it is in).
        ema_decay: the most the decay of the weight EMA reaches (the final UNet holds the
            EMA); diffusers' `EMAModel` warms it up as (1 + step) / (10 + step), capped here,
            so at 0.999 the cap is reached at step 8,991. None turns EMA off.
        data: where images and captions come from, and optionally the captions' embeddings
            (`DiffusionDataConfig.embeddings`, written by ``clipcond encode``).
        num_train_timesteps: steps of the DDPM noise schedule of a run from scratch (>= 1);
            `init_from` runs inherit theirs.
        lr, weight_decay, warmup_steps: AdamW with warm-up + cosine; max_grad_norm: gradients
            are clipped to this norm (> 0). Checked by `check_optimizer_settings`: lr > 0,
            weight_decay >= 0, all finite.
        checkpoint_every, keep_checkpoints: write a checkpoint every `checkpoint_every` steps,
            keeping the newest `keep_checkpoints` (>= 1).
        sample_every, sample_prompts, sample_steps: write a grid of samples of `sample_prompts`
            (at least one when `sample_every` is set) during training, drawn with the EMA weights
            when kept (the ones saved), as diffusers' train_text_to_image.py draws its own.
        seed: initial weights, data order, noise and caption dropout; an integer in [0, 2**32 - 1].
    """

    text_encoder: str
    t5_encoder: str | None = None
    projection_dim: int | None = None
    t5_max_length: int | None = None
    t5_attention_mask: bool = False
    unet: dict[str, Any] | None = None
    coordinate_channels: bool | None = None
    init_from: str | None = None
    vae: str | None = None
    train: Literal["unet", "lora", "adapter"] = "unet"
    adapter_lora: bool = False
    lora: DiffusionLoraSettings = field(default_factory=DiffusionLoraSettings)
    prediction_type: PredictionType | None = None
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    snr_gamma: float | None = None
    sample_scheduler: str | None = None
    timestep_spacing: Literal["leading", "trailing", "linspace"] | None = None
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    image_size: int = 32
    batch_size: int = 64
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    caption_dropout: float = 0.1
    caption_syntax: bool = False
    caption_window_split: str = "truncate"
    ema_decay: float | None = 0.999
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle", "a blue square above a green triangle"])
    sample_steps: int = 20
    output_dir: str = "runs/diffusion"
    seed: int = 0

    def __post_init__(self) -> None:
        if type(self.data) is DataConfig:  # a plain data section, built in code: no embeddings
            self.data = DiffusionDataConfig(**dataclasses.asdict(self.data))
        if (self.unet is None) == (self.init_from is None):
            raise ValueError("give exactly one of `unet` (a UNet from scratch) and `init_from` (a saved pipeline)")
        if self.train in ("lora", "adapter") and self.init_from is None:
            raise ValueError(f"`train: {self.train}` needs `init_from` (it trains against a trained UNet)")
        if self.adapter_lora and self.train != "adapter":
            raise ValueError("`adapter_lora` goes with `train: adapter` (for LoRA alone use `train: lora`)")
        if self.projection_dim is not None and (isinstance(self.projection_dim, bool) or self.projection_dim < 1):
            raise ValueError(f"`projection_dim` must be a positive int or null, got {self.projection_dim!r}")
        if self.unet is not None:
            from diffusers import UNet2DConditionModel

            allowed = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
            unknown = sorted(set(self.unet) - allowed)
            if unknown:
                raise ValueError(f"unet: unknown UNet2DConditionModel arguments {unknown}")
            if self.coordinate_channels and "in_channels" in self.unet:
                raise ValueError(
                    "unet: `in_channels` is set by the run with `coordinate_channels` (image channels + 2); remove it"
                )
            layers = self.unet.get("layers_per_block", 1)
            per_block = layers if isinstance(layers, (list, tuple)) else [layers]
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in per_block):
                raise ValueError(
                    f"unet: `layers_per_block` must be an integer >= 1 (or a list of them), got {layers!r}"
                )
            fixed = sorted({"sample_size", "cross_attention_dim"} & set(self.unet))
            if fixed:
                raise ValueError(
                    f"unet: {fixed} are set by the run (image_size, the text encoder's width); remove them"
                )
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"`snr_gamma` must be positive or null, got {self.snr_gamma}")
        if self.sample_scheduler is not None:
            scheduler_class(self.sample_scheduler, "sample_scheduler")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {self.caption_dropout}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1) or null, got {self.ema_decay}")
        if self.image_size < 8 or self.batch_size < 1 or self.steps < 1 or self.checkpoint_every < 1:
            raise ValueError("`image_size` must be >= 8 and `batch_size`, `steps`, `checkpoint_every` >= 1")
        if self.data.source == "shapes" and self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(
                f"`image_size` must be >= {MIN_IMAGE_SIZE} with data.source 'shapes', got {self.image_size}"
            )
        if self.t5_attention_mask and self.t5_encoder is None:
            raise ValueError("`t5_attention_mask` needs a `t5_encoder`")
        if self.t5_max_length is not None:
            if self.t5_encoder is None:
                raise ValueError("`t5_max_length` needs a `t5_encoder` (it is the T5's token budget)")
            if (
                isinstance(self.t5_max_length, bool)
                or not isinstance(self.t5_max_length, int)
                or self.t5_max_length < 2
            ):
                raise ValueError(
                    f"`t5_max_length` must be an integer >= 2 (EOS included) or null, got {self.t5_max_length!r}"
                )
        if self.keep_checkpoints < 1:
            raise ValueError(f"`keep_checkpoints` must be >= 1, got {self.keep_checkpoints}")
        check_window_split(self.caption_window_split, "caption_window_split")
        if self.sample_every < 0 or self.sample_steps < 1 or self.log_every < 1:
            raise ValueError("`sample_every` must be >= 0, `sample_steps` and `log_every` >= 1")
        if self.sample_every and not self.sample_prompts:
            raise ValueError(
                f"`sample_every: {self.sample_every}` needs at least one prompt in `sample_prompts` (it is empty); "
                "give prompts, or set sample_every: 0"
            )
        check_optimizer_settings(self.lr, self.weight_decay, self.warmup_steps, max_grad_norm=self.max_grad_norm)
        if isinstance(self.num_train_timesteps, bool) or not (
            isinstance(self.num_train_timesteps, int) and self.num_train_timesteps >= 1
        ):
            raise ValueError(f"`num_train_timesteps` must be an integer >= 1, got {self.num_train_timesteps!r}")
        check_seed(self.seed)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainDiffusionConfig:
        """Load and validate a YAML run config."""
        return load_config(cls, path)
