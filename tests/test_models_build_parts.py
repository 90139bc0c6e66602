"""`clipcond.models.build` part by part: every field of the transformers configs it writes (values
chosen unlike any default, so a field left out shows), the towers it builds, and
`model_config_from_hf`'s reading back, legacy token ids, and refusals, each message whole."""

from __future__ import annotations

import pytest
from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig

from clipcond.models import (
    ResNetImageTower,
    build_clip_model,
    build_image_tower,
    build_text_tower,
    hf_clip_config,
    hf_text_config,
    hf_vision_config,
    model_config_from_dict,
    model_config_from_hf,
)


def _config(quick_gelu: bool = False, text_intermediate=None, vit_intermediate=None, logit_scale_init: float = 1.25):
    text = dict(
        width=24,
        layers=3,
        heads=4,
        context_length=19,
        vocab_size=49410,
        bos_token_id=49408,
        eos_token_id=49409,
        pad_token_id=7,
    )
    vit = dict(patch_size=4, width=20, layers=2, heads=5)
    if text_intermediate:
        text["intermediate_size"] = text_intermediate
    if vit_intermediate:
        vit["intermediate_size"] = vit_intermediate
    return model_config_from_dict(
        {
            "embed_dim": 6,
            "quick_gelu": quick_gelu,
            "logit_scale_init": logit_scale_init,
            "text": text,
            "vision": {"kind": "vit", "image_size": 12, "vit": vit},
        }
    )


def _resnet_config():
    return model_config_from_dict(
        {
            "embed_dim": 6,
            "text": {"width": 8, "layers": 1, "heads": 2},
            "vision": {
                "kind": "resnet",
                "image_size": 32,
                "resnet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "pool_heads": 2},
            },
        }
    )


# ---------------------------------------------------------------------------- to transformers


def test_the_text_config_carries_every_field() -> None:
    text = hf_text_config(_config())
    assert isinstance(text, CLIPTextConfig)
    got = {
        key: getattr(text, key)
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "projection_dim",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "hidden_act",
            "layer_norm_eps",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
    }
    assert got == {
        "vocab_size": 49410,
        "hidden_size": 24,
        "intermediate_size": 96,
        "projection_dim": 6,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 19,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49408,
        "eos_token_id": 49409,
        "pad_token_id": 7,
    }


def test_given_intermediate_sizes_and_quick_gelu_are_taken() -> None:
    config = _config(quick_gelu=True, text_intermediate=40, vit_intermediate=30)
    text, vision = hf_text_config(config), hf_vision_config(config)
    assert (text.intermediate_size, text.hidden_act) == (40, "quick_gelu")
    assert (vision.intermediate_size, vision.hidden_act) == (30, "quick_gelu")


def test_the_vision_config_carries_every_field() -> None:
    vision = hf_vision_config(_config())
    assert isinstance(vision, CLIPVisionConfig)
    got = {
        key: getattr(vision, key)
        for key in (
            "hidden_size",
            "intermediate_size",
            "projection_dim",
            "num_hidden_layers",
            "num_attention_heads",
            "image_size",
            "patch_size",
            "hidden_act",
            "layer_norm_eps",
        )
    }
    assert got == {
        "hidden_size": 20,
        "intermediate_size": 80,
        "projection_dim": 6,
        "num_hidden_layers": 2,
        "num_attention_heads": 5,
        "image_size": 12,
        "patch_size": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }


def test_a_resnet_config_has_no_vision_config() -> None:
    with pytest.raises(ValueError) as refused:
        hf_vision_config(_resnet_config())
    assert str(refused.value) == "vision.kind is 'resnet'; a CLIPVisionConfig exists only for kind 'vit'"


def test_the_clip_config_joins_both_towers_with_the_projection_and_temperature() -> None:
    config = _config()
    clip = hf_clip_config(config)
    assert isinstance(clip, CLIPConfig)
    assert (clip.projection_dim, clip.logit_scale_init_value) == (6, 1.25)
    assert (clip.text_config.hidden_size, clip.text_config.eos_token_id) == (24, 49409)
    assert (clip.vision_config.hidden_size, clip.vision_config.patch_size) == (20, 4)


def test_the_towers_are_built_from_those_configs() -> None:
    config = _config()
    text = build_text_tower(config)
    assert isinstance(text, CLIPTextModelWithProjection)
    assert text.text_projection.weight.shape == (6, 24)
    vision = build_image_tower(config)
    assert type(vision).__name__ == "CLIPVisionModelWithProjection"
    assert vision.visual_projection.weight.shape == (6, 20)
    assert isinstance(build_image_tower(_resnet_config()), ResNetImageTower)
    model = build_clip_model(config)
    assert type(model).__name__ == "CLIPModel"
    assert model.logit_scale.item() == 1.25


# ---------------------------------------------------------------------------- from transformers


def test_a_config_comes_back_from_its_transformers_config() -> None:
    for config in (_config(), _config(quick_gelu=True, text_intermediate=40, vit_intermediate=30)):
        back = model_config_from_hf(hf_clip_config(config))
        expected = config.to_dict()
        expected["text"].setdefault("intermediate_size", 4 * 24)
        expected["vision"]["vit"].setdefault("intermediate_size", 4 * 20)
        assert back.to_dict() == expected
        assert type(back.logit_scale_init) is float


def _hf(**changes) -> CLIPConfig:
    clip = hf_clip_config(_config())
    for key, value in changes.items():
        tower, name = key.split("__")
        setattr(getattr(clip, tower), name, value)
    return clip


@pytest.mark.parametrize(
    "text_act, vision_act",
    [("gelu", "quick_gelu"), ("quick_gelu", "gelu"), ("relu", "relu"), ("gelu_new", "gelu"), ("gelu", "silu")],
)
def test_activations_other_than_one_gelu_for_both_are_refused_whole(text_act, vision_act) -> None:
    with pytest.raises(ValueError) as refused:
        model_config_from_hf(_hf(text_config__hidden_act=text_act, vision_config__hidden_act=vision_act))
    assert str(refused.value) == (
        f"both towers must use quick_gelu or both gelu, got text {text_act!r}, vision {vision_act!r}"
    )


@pytest.mark.parametrize("tower", ["text_config", "vision_config"])
def test_a_layer_norm_epsilon_other_than_clips_is_refused_whole(tower) -> None:
    with pytest.raises(ValueError) as refused:
        model_config_from_hf(_hf(**{f"{tower}__layer_norm_eps": 1e-6}))
    text_eps, vision_eps = (1e-6, 1e-5) if tower == "text_config" else (1e-5, 1e-6)
    assert str(refused.value) == (
        f"layer_norm_eps must be 1e-05 in both towers (as in every CLIP), got text {text_eps}, vision {vision_eps}"
    )


@pytest.mark.parametrize("channels", [1, 4])
def test_an_image_tower_of_other_than_three_channels_is_refused_whole(channels) -> None:
    with pytest.raises(ValueError) as refused:
        model_config_from_hf(_hf(vision_config__num_channels=channels))
    assert str(refused.value) == f"only RGB image towers are supported, got vision num_channels {channels}"


def test_placeholder_token_ids_of_old_configs_become_the_vocabularys_last_two() -> None:
    """Configs from before transformers PR #24773: bos 0, pad 1, eos 2."""
    back = model_config_from_hf(
        _hf(text_config__bos_token_id=0, text_config__pad_token_id=1, text_config__eos_token_id=2)
    )
    assert (back.text.bos_token_id, back.text.eos_token_id, back.text.pad_token_id) == (49408, 49409, 49409)


def test_real_ids_are_kept_and_a_missing_pad_is_the_eos() -> None:
    back = model_config_from_hf(_hf(text_config__bos_token_id=3, text_config__eos_token_id=4))
    assert (back.text.bos_token_id, back.text.eos_token_id, back.text.pad_token_id) == (3, 4, 7)
    back = model_config_from_hf(_hf(text_config__pad_token_id=None))
    assert back.text.pad_token_id == 49409


@pytest.mark.parametrize("size, patch", [([12, 12], (4, 4)), ((12, 12), [4, 4])])
def test_square_sizes_given_as_pairs_are_read_as_one_number(size, patch) -> None:
    back = model_config_from_hf(_hf(vision_config__image_size=size, vision_config__patch_size=patch))
    assert (back.vision.image_size, back.vision.vit.patch_size) == (12, 4)
    assert type(back.vision.image_size) is int


@pytest.mark.parametrize("key, value", [("image_size", [12, 16]), ("patch_size", (4, 2))])
def test_sizes_that_are_not_square_are_refused_whole(key, value) -> None:
    with pytest.raises(ValueError) as refused:
        model_config_from_hf(_hf(**{f"vision_config__{key}": value}))
    assert str(refused.value) == f"only square images and patches are supported, got {value}"


def test_a_transformers_config_our_checks_refuse_is_named_as_the_source() -> None:
    with pytest.raises(ValueError) as refused:
        model_config_from_hf(_hf(text_config__vocab_size=1000))
    assert str(refused.value).startswith("CLIPConfig: text.vocab_size must be at least 49408, got 1000")
