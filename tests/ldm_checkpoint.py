"""Write a diffusers SD or SDXL pipeline as one original-format (LDM / A1111) checkpoint.

A test helper: `from_single_file` reads checkpoints laid out as the original Stable Diffusion
repositories saved them (`model.diffusion_model.*` for the UNet, `first_stage_model.*` for the
VAE, `cond_stage_model.transformer.*` for SD's CLIP; SDXL's `conditioner.embedders.0.transformer.*`
CLIP-L and `conditioner.embedders.1.model.*` OpenCLIP-G), and the tests need such files made
from tiny models. The key names follow diffusers' scripts
`convert_diffusers_to_original_stable_diffusion.py` and `convert_diffusers_to_original_sdxl.py`,
written here as rules over a key's parts. A key no rule covers is an error, so a model this
helper does not know is never written half.

The reference for whether this is right is diffusers' own reader: the tests first check that
`StableDiffusion[XL]Pipeline.from_single_file` reads a written file back to the same weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_RESNET_NAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _unet_resnet(rest: str) -> str:
    """A UNet resnet's parameter name in LDM (`norm1.weight` -> `in_layers.0.weight`)."""
    module, _, leaf = rest.rpartition(".")
    return f"{dict(_RESNET_NAMES).get(module, module)}.{leaf}"


def unet_key(key: str, config: dict) -> str:
    """A `UNet2DConditionModel` state-dict key -> its key in LDM's `UNetModel`.

    LDM numbers the UNet's layers in one list per half: `input_blocks.0` is `conv_in`, then each
    down level has `layers_per_block` (resnet, attention) layers and, below the last level, one
    downsampler; `output_blocks` count the up levels' `layers_per_block + 1` layers the same
    way, the upsampler sitting in the level's last layer after its resnet (and attention).
    """
    per_level = config["layers_per_block"]
    head, _, leaf = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{leaf}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + level * (per_level + 1) + layer
        return f"input_blocks.{index}.0.{_unet_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{(int(match[1]) + 1) * (per_level + 1)}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(match[1])}.{_unet_resnet(match[2])}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = level * (per_level + 1) + layer
        return (
            f"output_blocks.{index}.0.{_unet_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        )
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        level = int(match[1])
        has_attention = config["up_block_types"][level].startswith("CrossAttn")
        return f"output_blocks.{level * (per_level + 1) + per_level}.{2 if has_attention else 1}.conv.{match[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def vae_key(key: str, levels: int) -> str:
    """An `AutoencoderKL` state-dict key -> its key in LDM's `AutoencoderKL` (`levels`: the
    number of down blocks; LDM numbers the decoder's up levels from the bottom, diffusers from
    the top)."""
    if match := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
        return f"{match[1]}.norm_out.{match[2]}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = levels - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        return f"decoder.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.fullmatch(
        r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(\w+)", key
    ):
        name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[match[2]]
        return f"{match[1]}.mid.attn_1.{name}.{match[3]}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.\w+|(post_)?quant_conv\.\w+", key):
        return key
    raise KeyError(f"no LDM name for VAE key {key!r}")


def vae_state_dict(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The VAE's weights under LDM names; the mid-block attention's linear layers become the
    1x1 convolutions LDM stores (out, in) -> (out, in, 1, 1)."""
    levels = len(vae.config.down_block_types)
    converted = {}
    for key, value in vae.state_dict().items():
        name = vae_key(key, levels)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", name):
            value = value[:, :, None, None]
        converted[name] = value
    return converted


def clip_state_dict(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An OpenAI CLIP text tower's weights as `transformers` saved them when LDM was written
    (under `text_model.`), without the prefix: `embeddings...`, `encoder.layers...`."""
    return {key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()}


_OPEN_CLIP_NAMES = (
    ("encoder.layers.", "transformer.resblocks."),
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
    ("final_layer_norm", "ln_final"),
    ("embeddings.token_embedding", "token_embedding"),
)


def open_clip_state_dict(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A `CLIPTextModelWithProjection`'s weights in OpenCLIP's layout (SDXL's second encoder):
    q, k and v joined into `attn.in_proj_*` (3 * width, ...), the position table as
    `positional_embedding` (positions, width) and the projection as `text_projection`
    (width, projection), the transpose of the Linear weight."""
    weights = clip_state_dict(text_encoder)
    converted = {
        "positional_embedding": weights.pop("embeddings.position_embedding.weight"),
        "text_projection": weights.pop("text_projection.weight").T.contiguous(),
    }
    for layer in range(text_encoder.config.num_hidden_layers):
        for leaf in ("weight", "bias"):
            parts = [weights.pop(f"encoder.layers.{layer}.self_attn.{p}_proj.{leaf}") for p in "qkv"]
            converted[f"transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat(parts)
    for key, value in weights.items():
        for diffusers_name, open_clip_name in _OPEN_CLIP_NAMES:
            key = key.replace(diffusers_name, open_clip_name)
        converted[key] = value
    return converted


def _prefixed(prefix: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in weights.items()}


def ldm_state_dict(pipeline) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder(s) as one LDM state dict: SD's layout for a
    pipeline without `text_encoder_2`, SDXL's (CLIP-L, then OpenCLIP-G) with it."""
    unet_config = dict(pipeline.unet.config)
    checkpoint = {UNET_PREFIX + unet_key(k, unet_config): v for k, v in pipeline.unet.state_dict().items()}
    checkpoint.update(_prefixed(VAE_PREFIX, vae_state_dict(pipeline.vae)))
    if getattr(pipeline, "text_encoder_2", None) is None:
        checkpoint.update(_prefixed(SD_CLIP_PREFIX, clip_state_dict(pipeline.text_encoder)))
    else:
        checkpoint.update(_prefixed(SDXL_CLIP_L_PREFIX, clip_state_dict(pipeline.text_encoder)))
        checkpoint.update(_prefixed(SDXL_OPEN_CLIP_PREFIX, open_clip_state_dict(pipeline.text_encoder_2)))
    return {key: value.detach().contiguous() for key, value in checkpoint.items()}


def save_single_file(pipeline, path: Path) -> Path:
    """Write `ldm_state_dict(pipeline)` to `path`: safetensors for `.safetensors`, otherwise a
    `torch.save` of `{"state_dict": ...}` as LDM's `.ckpt` files nest it."""
    from safetensors.torch import save_file

    checkpoint = ldm_state_dict(pipeline)
    if path.suffix == ".safetensors":
        save_file(checkpoint, str(path))
    else:
        torch.save({"state_dict": checkpoint}, path)
    return path
