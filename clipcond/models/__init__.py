"""CLIP two-tower models: built from YAML configs, saved and loaded, converted from OpenAI / open_clip.

Public API:
    ClipModelConfig, load_model_config     the config (configs/models/*.yaml)
    ClipTwoTower                           text tower + image tower + logit scale
    build_clip_model                       the same network as a transformers CLIPModel (ViT only)
    count_parameters                       parameter count of a config, without allocating
    ResNetImageTower, AttentionPool2d      the ResNet image tower and its attention pool
    save_clip, load_clip, load_text_tower  safetensors folders; the text tower alone for conditioning
    load_logit_bias                        SigLIP's learned bias saved beside a model (or None)
    convert_openai_state_dict              OpenAI / open_clip ViT weights -> transformers CLIPModel
"""

from clipcond.models.build import (
    build_clip_model,
    build_image_tower,
    build_text_tower,
    hf_clip_config,
    hf_text_config,
    hf_vision_config,
    model_config_from_hf,
)
from clipcond.models.checkpoint import load_clip, load_logit_bias, load_text_tower, save_clip
from clipcond.models.config import (
    ClipModelConfig,
    ResNetTowerConfig,
    TextTowerConfig,
    VisionTowerConfig,
    ViTTowerConfig,
    load_model_config,
    model_config_from_dict,
)
from clipcond.models.convert import convert_openai_state_dict
from clipcond.models.resnet_tower import AttentionPool2d, MeanPool2d, ResNetImageTower
from clipcond.models.two_tower import ClipTwoTower, count_parameters

__all__ = [
    "AttentionPool2d",
    "ClipModelConfig",
    "ClipTwoTower",
    "MeanPool2d",
    "ResNetImageTower",
    "ResNetTowerConfig",
    "TextTowerConfig",
    "ViTTowerConfig",
    "VisionTowerConfig",
    "build_clip_model",
    "build_image_tower",
    "build_text_tower",
    "convert_openai_state_dict",
    "count_parameters",
    "hf_clip_config",
    "hf_text_config",
    "hf_vision_config",
    "load_clip",
    "load_logit_bias",
    "load_model_config",
    "load_text_tower",
    "model_config_from_dict",
    "model_config_from_hf",
    "save_clip",
]
