"""The UNet of a diffusion run: `init_from`'s, or a new one of the config's `unet:` arguments,
checked against what the loop and the saved pipeline give it (`unet(noisy, timesteps,
encoder_hidden_states=tokens)`, tokens of the conditioner's width), and LoRA on its
cross-attention. A UNet that cannot be built or fed as the config asks is a `RunSetupError`
before the run's snapshot and first step.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from clipcond.errors import user_errors
from clipcond.file_damage import refuse_damaged_folder
from clipcond.pipelines.coordinates import COORDINATE_CHANNELS
from clipcond.training.diffusion.config import TrainDiffusionConfig
from clipcond.training.loop import RunSetupError, reading_part

# The loop and the saved pipeline call `unet(noisy, timesteps, encoder_hidden_states=tokens)`: no
# class labels, nothing in `added_cond_kwargs`. These UNet settings ask for more (addition_embed_type
# "text" reads the tokens themselves and is allowed).
_UNFED_SETTINGS = {
    "addition_embed_type": "inputs in added_cond_kwargs",
    "class_embed_type": "class labels",
    "num_class_embeds": "class labels",
    **dict.fromkeys(("encoder_hid_dim", "encoder_hid_dim_type"), "encoder_hid_dim-wide tokens or image embeddings"),
}


def _check_unet_inputs(settings: Mapping[str, Any], where: str) -> None:
    """Refuse (`RunSetupError`, naming `where`: ``init_from <folder>`` or ``unet``) a UNet whose
    settings (its ``config.json`` or the `unet:` section) need inputs the loop does not give."""
    for name, needs in _UNFED_SETTINGS.items():
        value = settings.get(name)
        if value is None or (name == "addition_embed_type" and value == "text"):
            continue
        if value == "text_time":
            needs = "pooled text embeddings and time ids (an SDXL-class UNet)"
        raise RunSetupError(
            f"{where}: the UNet has {name} {value!r}, which needs {needs}; train-diffusion gives the UNet "
            "only the noisy input, the timesteps and the prompt's tokens (an SD-class UNet)"
        )


def _check_text_pooling(settings: Mapping[str, Any], width: int) -> None:
    """A UNet of `unet:` `settings` with addition_embed_type "text" pools the `width`-wide tokens
    with attention of `addition_embed_type_num_heads` heads (diffusers' `TextTimeEmbedding`):
    they must split the width, or its first step fails inside diffusers (a reshape error)."""
    from diffusers import UNet2DConditionModel

    if settings.get("addition_embed_type") != "text":
        return
    default = inspect.signature(UNet2DConditionModel.__init__).parameters["addition_embed_type_num_heads"].default
    heads = settings.get("addition_embed_type_num_heads", default)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or width % heads:
        raise RunSetupError(
            f"unet: addition_embed_type 'text' pools the {width}-wide tokens with addition_embed_type_num_heads "
            f"({heads!r}) attention heads, which must divide {width}; set unet.addition_embed_type_num_heads to "
            f"a divisor of {width}"
        )


def build_unet(config: TrainDiffusionConfig, width: int, vae: nn.Module | None) -> nn.Module:
    """`init_from`'s UNet, or a new one of `config.unet`, reading `width`-wide tokens; one that
    reads another width or needs inputs the loop does not give is a `RunSetupError`."""
    from diffusers import UNet2DConditionModel

    if config.init_from is not None:
        folder = Path(config.init_from) / "unet"
        if not folder.is_dir():
            raise FileNotFoundError(f"init_from: no unet/ in {config.init_from} (a saved CLIPConditionedPipeline)")
        where = f"init_from {config.init_from}"
        with reading_part("init_from", config.init_from):
            refuse_damaged_folder("the folder", folder, [""])
            saved = UNet2DConditionModel.load_config(folder)  # a JSON object: the folder check says so
        _check_unet_inputs(saved, where)  # before the weights are read: an SDXL UNet's are gigabytes
        if saved.get("cross_attention_dim") != width:
            raise RunSetupError(
                f"{where}: the UNet reads {saved.get('cross_attention_dim')}-wide tokens but the conditioner gives "
                f"{width}; set projection_dim: {saved.get('cross_attention_dim')} (a learned adapter, `train: adapter`)"
            )
        with reading_part("init_from", config.init_from):
            return UNet2DConditionModel.from_pretrained(folder)
    _check_unet_inputs(config.unet, "unet")
    _check_text_pooling(config.unet, width)
    channels = 3 if vae is None else vae.config.latent_channels
    size = config.image_size if vae is None else config.image_size // 2 ** (len(vae.config.block_out_channels) - 1)
    extra = COORDINATE_CHANNELS if config.coordinate_channels else 0
    fed = {"in_channels": channels + extra, "out_channels": channels}
    wrong = {key: value for key, value in config.unet.items() if key in fed and value != fed[key]}
    if wrong:
        what = "pixels (RGB)" if vae is None else "the VAE's latents"
        raise RunSetupError(
            f"unet: {wrong}, but the UNet denoises {what}: the run gives it {fed['in_channels']} input channels "
            f"and regresses {channels}; leave in_channels and out_channels out (the run sets them)"
        )
    settings = {**config.unet, **fed}
    # diffusers checks the arguments together (block types, one channel count per block, group
    # norm sizes): what it refuses is the config's to fix
    with user_errors(ValueError, TypeError, error=RunSetupError, context="unet: "):
        return UNet2DConditionModel(**settings, sample_size=size, cross_attention_dim=width)


# the layer types peft's LoRA adapts (of those a UNet has)
_LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def add_lora(unet: nn.Module, config: TrainDiffusionConfig) -> None:
    """LoRA (peft, `config.lora`) on the modules of `unet` that `lora.target_modules` name (a
    name matches a module whose dotted path is it or ends in ``.<name>``, as peft matches).

    Raises:
        RunSetupError: the UNet already holds a LoRA adapter; a target matches no module of
            the UNet, or a module that is not a layer peft adapts (e.g. ``attn2``, the attention
            block, not its projections).
    """
    from peft import LoraConfig

    # peft's wrapped layers are no nn.Linear: checked first, a second call would read as a bad target
    adapters = sorted(getattr(unet, "peft_config", None) or {})
    if adapters:
        raise RunSetupError(
            f"the UNet already holds LoRA adapter(s) {adapters}; the run adds its own to a UNet without one"
        )
    targets = list(config.lora.target_modules)
    matched = {t: [m for name, m in unet.named_modules() if name == t or name.endswith(f".{t}")] for t in targets}
    unmatched = [t for t in targets if not matched[t]]
    not_layers = {t: type(m).__name__ for t in targets for m in matched[t] if not isinstance(m, _LORA_LAYERS)}
    if unmatched or not_layers:
        found = f"{unmatched} match no module of the UNet" if unmatched else f"{not_layers} name modules, not layers"
        raise RunSetupError(
            f"`lora.target_modules` {found}; LoRA adapts linear and convolution layers, such as the "
            "cross-attention projections attn2.to_q, attn2.to_k, attn2.to_v, attn2.to_out.0"
        )
    lora = LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, target_modules=targets, init_lora_weights="gaussian"
    )
    with user_errors(ValueError, error=RunSetupError, context="`lora.target_modules`: "):
        unet.add_adapter(lora)
