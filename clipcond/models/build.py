"""From a `ClipModelConfig` to transformers configs and modules.

The text tower is always a `CLIPTextModelWithProjection`, the ViT image tower a
`CLIPVisionModelWithProjection`, the ResNet one our `ResNetImageTower`. For ViT configs
`build_clip_model` gives the same network as a single transformers `CLIPModel`.
"""

from __future__ import annotations

from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from clipcond.models.config import ClipModelConfig, model_config_from_dict
from clipcond.models.resnet_tower import ResNetImageTower

# transformers' CLIP default, and what OpenAI's and open_clip's LayerNorms use.
_LAYER_NORM_EPS = 1e-5


def hf_text_config(config: ClipModelConfig) -> CLIPTextConfig:
    """The transformers `CLIPTextConfig` of the text tower, projecting to `config.embed_dim`."""
    text = config.text
    return CLIPTextConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.width,
        intermediate_size=text.intermediate_size or 4 * text.width,
        projection_dim=config.embed_dim,
        num_hidden_layers=text.layers,
        num_attention_heads=text.heads,
        max_position_embeddings=text.context_length,
        hidden_act=config.hidden_act,
        layer_norm_eps=_LAYER_NORM_EPS,
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
    )


def hf_vision_config(config: ClipModelConfig) -> CLIPVisionConfig:
    """The transformers `CLIPVisionConfig` of a ViT image tower; a ResNet config is an error."""
    vit = config.vision.vit
    if vit is None:
        raise ValueError(f"vision.kind is {config.vision.kind!r}; a CLIPVisionConfig exists only for kind 'vit'")
    return CLIPVisionConfig(
        hidden_size=vit.width,
        intermediate_size=vit.intermediate_size or 4 * vit.width,
        projection_dim=config.embed_dim,
        num_hidden_layers=vit.layers,
        num_attention_heads=vit.heads,
        image_size=config.vision.image_size,
        patch_size=vit.patch_size,
        hidden_act=config.hidden_act,
        layer_norm_eps=_LAYER_NORM_EPS,
    )


def hf_clip_config(config: ClipModelConfig) -> CLIPConfig:
    """The transformers `CLIPConfig` of a ViT two-tower (text + vision + logit scale)."""
    return CLIPConfig(
        text_config=hf_text_config(config).to_dict(),
        vision_config=hf_vision_config(config).to_dict(),
        projection_dim=config.embed_dim,
        logit_scale_init_value=config.logit_scale_init,
    )


def build_text_tower(config: ClipModelConfig) -> CLIPTextModelWithProjection:
    """A randomly initialised text tower: input_ids (batch, seq) -> `text_embeds` (batch, embed_dim)."""
    return CLIPTextModelWithProjection(hf_text_config(config))


def build_image_tower(config: ClipModelConfig) -> CLIPVisionModelWithProjection | ResNetImageTower:
    """A randomly initialised image tower: pixel_values (batch, 3, H, W) -> `image_embeds` (batch, embed_dim)."""
    if config.vision.kind == "vit":
        return CLIPVisionModelWithProjection(hf_vision_config(config))
    return ResNetImageTower(config.vision, config.embed_dim)


def build_clip_model(config: ClipModelConfig) -> CLIPModel:
    """A randomly initialised transformers `CLIPModel` (ViT configs only).

    Its state dict has the same keys as `ClipTwoTower.clip_state_dict()`, so weights move
    between the two with `load_state_dict` (see `ClipTwoTower.from_clip_model`).
    """
    return CLIPModel(hf_clip_config(config))


def model_config_from_hf(config: CLIPConfig) -> ClipModelConfig:
    """The `ClipModelConfig` of a transformers `CLIPConfig` (e.g. one from `convert_openai_state_dict`)."""
    text, vision = config.text_config, config.vision_config
    activations = {text.hidden_act, vision.hidden_act}
    if not activations <= {"quick_gelu", "gelu"} or len(activations) != 1:
        raise ValueError(
            f"both towers must use quick_gelu or both gelu, got text {text.hidden_act!r}, vision {vision.hidden_act!r}"
        )
    # Settings a ClipModelConfig does not hold: refuse rather than build a model that computes something else.
    if text.layer_norm_eps != _LAYER_NORM_EPS or vision.layer_norm_eps != _LAYER_NORM_EPS:
        raise ValueError(
            f"layer_norm_eps must be {_LAYER_NORM_EPS} in both towers (as in every CLIP), "
            f"got text {text.layer_norm_eps}, vision {vision.layer_norm_eps}"
        )
    if vision.num_channels != 3:
        raise ValueError(f"only RGB image towers are supported, got vision num_channels {vision.num_channels}")
    bos, eos, pad = text.bos_token_id, text.eos_token_id, text.pad_token_id
    if eos == 2:
        # Configs from before transformers PR #24773 carry placeholder ids (bos 0, pad 1, eos 2) and pool at
        # argmax(input_ids), i.e. at the first <|endoftext|> of the CLIP vocabulary: write the real ids.
        bos, eos, pad = text.vocab_size - 2, text.vocab_size - 1, text.vocab_size - 1
    return model_config_from_dict(
        {
            "embed_dim": config.projection_dim,
            "quick_gelu": text.hidden_act == "quick_gelu",
            "logit_scale_init": float(config.logit_scale_init_value),
            "text": {
                "width": text.hidden_size,
                "layers": text.num_hidden_layers,
                "heads": text.num_attention_heads,
                "intermediate_size": text.intermediate_size,
                "context_length": text.max_position_embeddings,
                "vocab_size": text.vocab_size,
                "bos_token_id": bos,
                "eos_token_id": eos,
                "pad_token_id": eos if pad is None else pad,
            },
            "vision": {
                "kind": "vit",
                "image_size": _single_int(vision.image_size),
                "vit": {
                    "patch_size": _single_int(vision.patch_size),
                    "width": vision.hidden_size,
                    "layers": vision.num_hidden_layers,
                    "heads": vision.num_attention_heads,
                    "intermediate_size": vision.intermediate_size,
                },
            },
        },
        source="CLIPConfig",
    )


def _single_int(value: int | list[int] | tuple[int, int]) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"only square images and patches are supported, got {value}")
    return int(value[0])
