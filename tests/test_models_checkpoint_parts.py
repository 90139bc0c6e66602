"""`save_clip`, `load_logit_bias` and `load_text_tower` at their edges, on the tiny configs:
a folder made with its parents, a ResNet model saved twice into one folder, the YAML config
in the config's own key order, a bias file of the wrong shape or keys refused whole, the text
tower in its stored dtype (or the one asked), and a text encoder lacking weights named with
its first four missing keys.

test_models.py checks the round trips; test_clip_folder_damage.py damaged folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from clipcond.models import ClipTwoTower, load_clip, load_logit_bias, load_model_config, load_text_tower, save_clip

REPO = Path(__file__).resolve().parents[1]


def tiny(name: str, seed: int = 0) -> ClipTwoTower:
    torch.manual_seed(seed)
    return ClipTwoTower(load_model_config(REPO / "configs" / "models" / f"{name}.yaml")).eval()


def test_a_folder_is_made_with_its_parents(tmp_path) -> None:
    folder = save_clip(tiny("clip-tiny-vit"), str(tmp_path / "a" / "b" / "clip"))
    assert folder == tmp_path / "a" / "b" / "clip" and isinstance(folder, Path)
    assert (folder / "clip_config.yaml").is_file()


def test_a_resnet_model_saves_twice_into_one_folder(tmp_path) -> None:
    first, second = tiny("clip-rn-tiny", seed=1), tiny("clip-rn-tiny", seed=2)
    save_clip(first, tmp_path / "rn")
    save_clip(second, tmp_path / "rn")
    loaded = load_clip(tmp_path / "rn")
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in second.state_dict().items())


def test_the_yaml_config_keeps_the_configs_key_order(tmp_path) -> None:
    model = tiny("clip-tiny-vit")
    text = (save_clip(model, tmp_path / "vit") / "clip_config.yaml").read_text(encoding="utf-8")
    top = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert top == ["embed_dim", "text", "vision", "quick_gelu", "logit_scale_init"]
    assert yaml.safe_load(text) == model.config.to_dict()


# ------------------------------------------------------------------ the SigLIP bias


@pytest.mark.parametrize(
    "tensors, keys",
    [
        ({"logit_bias": torch.zeros(2)}, "['logit_bias']"),
        ({"logit_bias": torch.zeros(()), "other": torch.zeros(())}, "['logit_bias', 'other']"),
        ({"bias": torch.zeros(())}, "['bias']"),
    ],
)
def test_a_bias_file_of_another_shape_or_keys_is_refused(tmp_path, tensors, keys) -> None:
    save_file(tensors, str(tmp_path / "logit_bias.safetensors"))
    with pytest.raises(ValueError) as error:
        load_logit_bias(tmp_path)
    assert (
        str(error.value) == f"{tmp_path / 'logit_bias.safetensors'} must hold one scalar named logit_bias, got {keys}"
    )


def test_a_bias_of_one_element_in_any_shape_reads_as_a_scalar(tmp_path) -> None:
    save_file({"logit_bias": torch.tensor([[-3.5]], dtype=torch.bfloat16)}, str(tmp_path / "logit_bias.safetensors"))
    bias = load_logit_bias(str(tmp_path))
    assert bias.shape == () and bias.dtype == torch.bfloat16 and bias.item() == -3.5


# ------------------------------------------------------------------ the text tower


@pytest.fixture(scope="module")
def saved_half(tmp_path_factory) -> Path:
    return save_clip(tiny("clip-tiny-vit").to(torch.bfloat16), tmp_path_factory.mktemp("half") / "clip")


def test_the_text_tower_loads_in_its_stored_dtype_or_the_one_asked(saved_half) -> None:
    assert load_text_tower(saved_half).dtype == torch.bfloat16
    assert load_text_tower(saved_half / "text_encoder").dtype == torch.bfloat16
    assert load_text_tower(saved_half, dtype=torch.float32).dtype == torch.float32
    assert not load_text_tower(saved_half).training


def test_a_text_encoder_lacking_weights_is_named_with_its_first_four_missing_keys(tmp_path) -> None:
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    folder = tmp_path / "plain"
    CLIPTextModel(config).save_pretrained(folder)  # no projection
    expected_missing = ["text_projection.weight"]
    with pytest.raises(ValueError) as error:
        load_text_tower(folder)
    assert str(error.value) == (
        f"{folder} lacks weights of a CLIPTextModelWithProjection: {expected_missing}; a text encoder without a "
        "projection (e.g. SD 1.x's CLIPTextModel) loads with transformers.CLIPTextModel instead"
    )
    # more missing: the final norm's and the projection's, five sorted keys, four shown
    weights = load_file(str(folder / "model.safetensors"))
    kept = {key: value for key, value in weights.items() if "final_layer_norm" not in key and "layers.0.mlp" not in key}
    save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as error:
        load_text_tower(folder)
    missing = sorted(
        [f"text_model.{key.removeprefix('text_model.')}" for key in weights if key not in kept] + expected_missing
    )
    assert len(missing) > 4
    assert f"CLIPTextModelWithProjection: {missing[:4]}; " in str(error.value)
