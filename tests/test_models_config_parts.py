"""The model config's dataclasses on their own: each tower's defaults, every refusal whole (as
the dataclass raises it, and as `model_config_from_dict` names its source and section), the
bounds of each check (0 refused, 1 taken; `vocab_size` 49407 refused, 49408 taken; token ids at
the vocabulary's edge), the ResNet's downsampling, the activation's name, `to_dict` without
empty sections, and a YAML file read back through `load_model_config`.

test_models.py builds models from these configs and breaks the shipped YAML files key by key;
these pin the messages and edges one at a time."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from clipcond.models.config import (
    CLIP_BOS_TOKEN_ID,
    CLIP_EOS_TOKEN_ID,
    CLIP_VOCAB_SIZE,
    ClipModelConfig,
    ResNetTowerConfig,
    TextTowerConfig,
    VisionTowerConfig,
    ViTTowerConfig,
    load_model_config,
    model_config_from_dict,
)


def refused(build, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        build(*args, **kwargs)
    return str(error.value)


def small_vision() -> VisionTowerConfig:
    return VisionTowerConfig(kind="vit", image_size=32, vit=ViTTowerConfig(patch_size=8, width=16, layers=1, heads=2))


# ------------------------------------------------------------------ CLIP's token constants


def test_clips_vocabulary_and_special_tokens() -> None:
    # CLIP's BPE: 49408 ids, <|startoftext|> 49406, <|endoftext|> 49407
    assert (CLIP_VOCAB_SIZE, CLIP_BOS_TOKEN_ID, CLIP_EOS_TOKEN_ID) == (49408, 49406, 49407)


# ------------------------------------------------------------------ the text tower


def test_the_text_towers_defaults_are_clip_b_32s() -> None:
    text = TextTowerConfig()
    assert (text.width, text.layers, text.heads, text.intermediate_size, text.context_length) == (512, 12, 8, None, 77)
    assert (text.vocab_size, text.bos_token_id, text.eos_token_id, text.pad_token_id) == (49408, 49406, 49407, 49407)


@pytest.mark.parametrize("name", ["width", "layers", "context_length", "intermediate_size"])
def test_each_size_of_the_text_tower_must_be_positive(name: str) -> None:
    assert refused(TextTowerConfig, **{name: 0}) == f"text.{name} must be a positive integer, got 0"
    assert refused(TextTowerConfig, **{name: -3}) == f"text.{name} must be a positive integer, got -3"
    if name != "width":  # a width of 1 does not divide into the default 8 heads
        assert getattr(TextTowerConfig(**{name: 1}), name) == 1


def test_the_text_width_must_divide_into_the_heads() -> None:
    assert refused(TextTowerConfig, width=24, heads=5) == "text: width 24 is not divisible into 5 attention heads"
    assert refused(TextTowerConfig, width=24, heads=0) == "text: width 24 is not divisible into 0 attention heads"
    assert TextTowerConfig(width=24, heads=3).heads == 3
    assert TextTowerConfig(width=1, heads=1).width == 1


def test_the_vocabulary_must_hold_clips_ids() -> None:
    assert refused(TextTowerConfig, vocab_size=49407) == (
        "text.vocab_size must be at least 49408, got 49407: every command tokenizes with CLIP's BPE "
        "tokenizer (clip_tokenizer), whose ids go up to 49407"
    )
    assert TextTowerConfig(vocab_size=49408).vocab_size == 49408
    assert TextTowerConfig(vocab_size=50000).vocab_size == 50000


@pytest.mark.parametrize("name", ["bos_token_id", "eos_token_id", "pad_token_id"])
def test_each_special_token_id_must_be_in_the_vocabulary(name: str) -> None:
    assert refused(TextTowerConfig, **{name: 49408}) == f"text.{name} = 49408 is outside the vocabulary (size 49408)"
    assert refused(TextTowerConfig, **{name: -1}) == f"text.{name} = -1 is outside the vocabulary (size 49408)"
    assert getattr(TextTowerConfig(**{name: 0}), name) == 0
    assert getattr(TextTowerConfig(**{name: 49407}), name) == 49407
    # a larger vocabulary takes larger ids
    assert getattr(TextTowerConfig(vocab_size=49410, **{name: 49409}), name) == 49409


# ------------------------------------------------------------------ the vision transformer


def test_the_vits_defaults_are_clip_b_32s() -> None:
    vit = ViTTowerConfig()
    assert (vit.patch_size, vit.width, vit.layers, vit.heads, vit.intermediate_size) == (32, 768, 12, 12, None)


@pytest.mark.parametrize("name", ["patch_size", "width", "layers", "intermediate_size"])
def test_each_size_of_the_vit_must_be_positive(name: str) -> None:
    assert refused(ViTTowerConfig, **{name: 0}) == f"vision.vit.{name} must be a positive integer, got 0"


def test_the_vit_width_must_divide_into_the_heads() -> None:
    assert refused(ViTTowerConfig, width=10, heads=3) == "vision.vit: width 10 is not divisible into 3 attention heads"
    assert ViTTowerConfig(width=12, heads=3, patch_size=1, layers=1, intermediate_size=1).heads == 3


# ------------------------------------------------------------------ the ResNet


def test_the_resnets_defaults_are_rn50s() -> None:
    resnet = ResNetTowerConfig()
    assert resnet.embedding_size == 64
    assert (resnet.hidden_sizes, resnet.depths) == ([256, 512, 1024, 2048], [3, 4, 6, 3])
    assert (resnet.layer_type, resnet.pooling, resnet.pool_heads) == ("bottleneck", "attention", 32)
    assert ResNetTowerConfig().hidden_sizes is not resnet.hidden_sizes  # a list of its own each time


def test_the_resnet_refuses_a_stem_stages_or_pool_it_cannot_build() -> None:
    assert (
        refused(ResNetTowerConfig, embedding_size=0) == "vision.resnet.embedding_size must be a positive integer, got 0"
    )
    assert refused(ResNetTowerConfig, hidden_sizes=[8, 0], depths=[1, 1], pool_heads=1) == (
        "vision.resnet.hidden_sizes must be positive integers, got [8, 0]"
    )
    assert refused(ResNetTowerConfig, hidden_sizes=[8, 16], depths=[1, 0], pool_heads=1) == (
        "vision.resnet.depths must be positive integers, got [1, 0]"
    )
    assert refused(ResNetTowerConfig, hidden_sizes=[8, 16], depths=[1]) == (
        "vision.resnet: hidden_sizes [8, 16] and depths [1] need one entry per stage"
    )
    assert refused(ResNetTowerConfig, hidden_sizes=[], depths=[]) == (
        "vision.resnet: hidden_sizes [] and depths [] need one entry per stage"
    )
    assert refused(ResNetTowerConfig, hidden_sizes=[8, 16], depths=[1, 1], pool_heads=3) == (
        "vision.resnet (pool): width 16 is not divisible into 3 attention heads"
    )
    smallest = ResNetTowerConfig(embedding_size=1, hidden_sizes=[1], depths=[1], pool_heads=1)
    assert (smallest.embedding_size, smallest.hidden_sizes, smallest.depths) == (1, [1], [1])


def test_mean_pooling_has_no_heads_to_check() -> None:
    resnet = ResNetTowerConfig(hidden_sizes=[8, 16], depths=[1, 1], pooling="mean", pool_heads=3)
    assert resnet.pool_heads == 3


@pytest.mark.parametrize("depths, downsampling", [([1], 4), ([1, 1], 8), ([3, 4, 6, 3], 32)])
def test_the_stem_downsamples_by_four_and_each_later_stage_by_two(depths: list[int], downsampling: int) -> None:
    resnet = ResNetTowerConfig(hidden_sizes=[8] * len(depths), depths=depths, pool_heads=1)
    assert resnet.downsampling == downsampling


# ------------------------------------------------------------------ the image tower


def test_the_image_tower_needs_the_section_of_its_kind_and_no_other() -> None:
    vit, resnet = ViTTowerConfig(patch_size=8), ResNetTowerConfig(hidden_sizes=[8, 16], depths=[1, 1], pool_heads=1)
    assert refused(VisionTowerConfig) == "vision.kind is 'vit' but the `vision.vit` section is missing"
    assert (
        refused(VisionTowerConfig, kind="resnet")
        == "vision.kind is 'resnet' but the `vision.resnet` section is missing"
    )
    assert refused(VisionTowerConfig, image_size=32, vit=vit, resnet=resnet) == (
        "vision.kind is 'vit'; remove the `vision.resnet` section or change the kind"
    )
    assert refused(VisionTowerConfig, kind="resnet", image_size=32, vit=vit, resnet=resnet) == (
        "vision.kind is 'resnet'; remove the `vision.vit` section or change the kind"
    )
    assert VisionTowerConfig(image_size=32, vit=vit).resnet is None
    assert VisionTowerConfig(kind="resnet", image_size=32, resnet=resnet).vit is None


def test_the_image_size_must_be_positive_and_a_whole_number_of_patches_or_cells() -> None:
    vit = ViTTowerConfig(patch_size=8)
    assert refused(VisionTowerConfig, image_size=0, vit=vit) == "vision.image_size must be a positive integer, got 0"
    assert refused(VisionTowerConfig, image_size=36, vit=vit) == (
        "vision.image_size 36 is not a multiple of vision.vit.patch_size 8"
    )
    assert VisionTowerConfig(image_size=40, vit=vit).image_size == 40
    resnet = ResNetTowerConfig(hidden_sizes=[8, 16, 32], depths=[1, 1, 1], pool_heads=1)  # 16 px a cell
    assert refused(VisionTowerConfig, kind="resnet", image_size=40, resnet=resnet) == (
        "vision.image_size 40 is not a multiple of 16, the downsampling of a 3-stage ResNet"
    )
    assert VisionTowerConfig(kind="resnet", image_size=48, resnet=resnet).image_size == 48
    default = VisionTowerConfig(vit=ViTTowerConfig())
    assert (default.kind, default.image_size) == ("vit", 224)


# ------------------------------------------------------------------ the two-tower


def test_the_two_towers_defaults_are_openais() -> None:
    config = ClipModelConfig(embed_dim=16, text=TextTowerConfig(), vision=small_vision())
    assert config.quick_gelu is True and config.hidden_act == "quick_gelu"
    assert config.logit_scale_init == math.log(1 / 0.07)
    plain = ClipModelConfig(embed_dim=16, text=TextTowerConfig(), vision=small_vision(), quick_gelu=False)
    assert plain.hidden_act == "gelu"


def test_the_joint_space_must_be_positive() -> None:
    assert refused(ClipModelConfig, embed_dim=0, text=TextTowerConfig(), vision=small_vision()) == (
        "embed_dim must be a positive integer, got 0"
    )
    assert ClipModelConfig(embed_dim=1, text=TextTowerConfig(), vision=small_vision()).embed_dim == 1


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, True, "2.6", None])
def test_the_initial_log_temperature_must_be_a_finite_number(value) -> None:
    message = refused(
        ClipModelConfig, embed_dim=8, text=TextTowerConfig(), vision=small_vision(), logit_scale_init=value
    )
    assert message == (
        "logit_scale_init must be a finite number (the initial log of the logit scale, "
        f"log(1 / 0.07) = 2.659 in CLIP), got {value!r}"
    )


@pytest.mark.parametrize("value", [0, 4, -1.5, 2.5])
def test_any_finite_initial_log_temperature_is_taken(value) -> None:
    config = ClipModelConfig(embed_dim=8, text=TextTowerConfig(), vision=small_vision(), logit_scale_init=value)
    assert config.logit_scale_init == value


def test_to_dict_is_plain_data_without_empty_sections() -> None:
    config = ClipModelConfig(embed_dim=16, text=TextTowerConfig(width=16, layers=1, heads=2), vision=small_vision())
    assert config.to_dict() == {
        "embed_dim": 16,
        "text": {
            "width": 16,
            "layers": 1,
            "heads": 2,
            "context_length": 77,
            "vocab_size": 49408,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        "vision": {"kind": "vit", "image_size": 32, "vit": {"patch_size": 8, "width": 16, "layers": 1, "heads": 2}},
        "quick_gelu": True,
        "logit_scale_init": math.log(1 / 0.07),
    }
    assert model_config_from_dict(config.to_dict()) == config


# ------------------------------------------------------------------ reading


def test_a_refusal_read_from_data_names_its_source_and_section_once() -> None:
    data = {"embed_dim": 8, "text": {"vocab_size": 1000}, "vision": {"image_size": 32, "vit": {"patch_size": 8}}}
    with pytest.raises(ValueError) as error:
        model_config_from_dict(data, source="m.yaml")
    assert str(error.value).startswith("m.yaml: text.vocab_size must be at least 49408, got 1000: ")
    with pytest.raises(ValueError) as error:
        model_config_from_dict({**data, "text": {}, "embed_dim": 0})
    assert str(error.value) == "<dict>: ClipModelConfig: embed_dim must be a positive integer, got 0"


def test_a_model_yaml_is_read_into_a_checked_config(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(
        "embed_dim: 32\n"
        "quick_gelu: false\n"
        "text: {width: 32, layers: 2, heads: 4}\n"
        "vision:\n"
        "  kind: resnet\n"
        "  image_size: 16\n"
        "  resnet: {embedding_size: 8, hidden_sizes: [8, 16], depths: [1, 2], layer_type: basic, pool_heads: 4}\n"
    )
    config = load_model_config(path)
    assert config == ClipModelConfig(
        embed_dim=32,
        text=TextTowerConfig(width=32, layers=2, heads=4),
        vision=VisionTowerConfig(
            kind="resnet",
            image_size=16,
            resnet=ResNetTowerConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic", pool_heads=4
            ),
        ),
        quick_gelu=False,
    )
    assert load_model_config(str(path)) == config
    path.write_text(path.read_text().replace("pool_heads: 4", "pool_heads: 3"))
    with pytest.raises(ValueError) as error:
        load_model_config(path)
    assert str(error.value) == f"{path}: vision.resnet (pool): width 16 is not divisible into 3 attention heads"
