"""The trainable module of a contrastive run, set up for each mode without training it: which
weights are loaded, fresh or frozen, where the temperature and SigLIP's bias start, LoRA's
targets and refusals, the train/eval state of frozen parts, the features it returns, the plain
CLIP it exports and the temperature clamp. References: the saved folders themselves, a model
built here from the same YAML and seed, and peft's own forward."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest
import torch
from lab_helpers import save_tiny_clip

from clipcond.losses import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE
from clipcond.models import ClipTwoTower, load_clip, load_model_config, save_clip
from clipcond.training.clip.config import LoraSettings, TrainClipConfig
from clipcond.training.clip.model_setup import (
    ContrastiveModel,
    build_contrastive_model,
    clamp_logit_scale_,
    export_clip,
    resolve_path,
)
from clipcond.training.loop import RunSetupError

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "models" / "clip-tiny.yaml"  # ResNet image tower with batch norm


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """clip-tiny (seed 0) with its temperature moved off the initial value, saved without a SigLIP bias."""
    folder = save_tiny_clip(tmp_path_factory.mktemp("setup"))
    clip = load_clip(folder)
    with torch.no_grad():
        clip.logit_scale.fill_(3.25)
    return save_clip(clip, folder.parent / "moved")


@pytest.fixture(scope="module")
def saved_with_bias(saved, tmp_path_factory) -> Path:
    return save_clip(load_clip(saved), tmp_path_factory.mktemp("bias") / "clip", logit_bias=torch.tensor(-4.5))


def _config(mode: str, source: Path | str | None = None, **settings) -> TrainClipConfig:
    if mode == "pretrain":
        return TrainClipConfig(model=str(source or TINY_YAML), mode=mode, **settings)
    return TrainClipConfig(init_from=str(source), mode=mode, **settings)


def _trainable(module: torch.nn.Module) -> set[bool]:
    return {parameter.requires_grad for parameter in module.parameters()}


# resolve_path


# (no chdir in these tests: mutmut finds the code it mutates from the working folder)


def test_a_path_that_exists_or_is_absolute_is_taken_as_given(tmp_path) -> None:
    (tmp_path / "here.yaml").write_text("x")
    here = os.path.relpath(tmp_path / "here.yaml")
    assert resolve_path(here, tmp_path / "configs") == Path(here)
    assert resolve_path(str(tmp_path / "gone.yaml"), Path("configs")) == tmp_path / "gone.yaml"
    assert resolve_path("gone.yaml", None) == Path("gone.yaml")


def test_a_missing_relative_path_is_read_beside_the_run_config() -> None:
    assert resolve_path("models/m.yaml", Path("runs/a")) == Path("runs/a/models/m.yaml")


# the modes


def test_pretrain_builds_the_yaml_model_with_everything_trained() -> None:
    torch.manual_seed(3)
    reference = ClipTwoTower(load_model_config(TINY_YAML))
    torch.manual_seed(3)
    model = build_contrastive_model(_config("pretrain"))
    assert isinstance(model, ContrastiveModel) and model.logit_bias is None
    assert _same(_weights(model.clip), _weights(reference))
    assert _trainable(model) == {True}
    assert model.logit_scale is model.clip.logit_scale
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_a_relative_model_yaml_is_found_beside_the_run_config(tmp_path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "m.yaml").write_text(TINY_YAML.read_text())
    model = build_contrastive_model(_config("pretrain", "m.yaml"), tmp_path / "runs")
    assert model.clip.config == load_model_config(TINY_YAML)


def test_a_missing_model_yaml_or_init_from_folder_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        build_contrastive_model(_config("pretrain", "nowhere.yaml"), tmp_path)
    assert str(caught.value) == "model config not found: nowhere.yaml"
    (tmp_path / "a-file").write_text("x")
    for missing in ("nowhere", str(tmp_path / "a-file")):
        with pytest.raises(FileNotFoundError) as caught:
            build_contrastive_model(_config("finetune", missing), tmp_path)
        assert str(caught.value) == f"`init_from` folder not found: {missing}"


def test_a_model_yaml_that_does_not_validate_is_a_setup_error_naming_the_key(tmp_path) -> None:
    broken = tmp_path / "m.yaml"
    broken.write_text(TINY_YAML.read_text().replace("embed_dim: 64", "embed_dim: -1"))
    with pytest.raises(RunSetupError) as caught:
        build_contrastive_model(_config("pretrain", broken))
    assert str(caught.value).startswith("model: ") and "embed_dim" in str(caught.value)


def test_damaged_init_from_weights_are_a_setup_error_naming_the_folder(saved, tmp_path) -> None:
    import shutil

    damaged = Path(shutil.copytree(saved, tmp_path / "damaged"))
    weights = damaged / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RunSetupError) as caught:
        build_contrastive_model(_config("finetune", damaged))
    assert str(caught.value).startswith(f"init_from {damaged}: ")


def test_finetune_loads_the_folder_in_float32_with_everything_trained(saved, tmp_path) -> None:
    half = save_clip(load_clip(saved).to(torch.bfloat16), tmp_path / "bf16")
    model = build_contrastive_model(_config("finetune", half))
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    expected = {key: value.float() for key, value in _weights(load_clip(half)).items()}
    assert _same(_weights(model.clip), expected)
    assert _trainable(model) == {True} and model.logit_bias is None
    assert model.clip.training


def test_finetune_keeps_the_saved_temperature(saved) -> None:
    model = build_contrastive_model(_config("finetune", saved))
    assert model.logit_scale.item() == 3.25
    assert _same(_weights(model.clip), _weights(load_clip(saved)))


def test_a_relative_init_from_is_found_beside_the_run_config(saved) -> None:
    assert not Path(saved.name).exists()
    model = build_contrastive_model(_config("finetune", saved.name), saved.parent)
    assert model.logit_scale.item() == 3.25


def test_text_only_freezes_the_image_tower(saved) -> None:
    model = build_contrastive_model(_config("text_only", saved))
    assert _trainable(model.clip.vision) == {False}
    assert _trainable(model.clip.text) == {True} and model.logit_scale.requires_grad
    assert _same(_weights(model.clip), _weights(load_clip(saved)))


def test_lit_keeps_the_image_tower_locked_and_starts_text_and_temperature_afresh(saved) -> None:
    loaded = load_clip(saved)
    model = build_contrastive_model(_config("lit", saved))
    assert _same(_weights(model.clip.vision), _weights(loaded.vision))
    assert _trainable(model.clip.vision) == {False} and _trainable(model.clip.text) == {True}
    assert model.logit_scale.requires_grad
    text, saved_text = _weights(model.clip.text), _weights(loaded.text)
    assert text.keys() == saved_text.keys()
    assert not any(torch.equal(text[key], saved_text[key]) for key in text if key.endswith("q_proj.weight"))
    assert model.logit_scale.item() == pytest.approx(loaded.config.logit_scale_init)
    assert model.logit_scale.item() != 3.25


def test_siglip_pretrain_and_lit_start_from_siglips_temperature_and_bias(saved) -> None:
    for config in (_config("pretrain", loss="siglip"), _config("lit", saved, loss="siglip")):
        model = build_contrastive_model(config)
        assert model.logit_scale.item() == pytest.approx(SIGLIP_INIT_LOGIT_SCALE)
        assert model.logit_bias.item() == SIGLIP_INIT_LOGIT_BIAS and model.logit_bias.requires_grad


@pytest.mark.parametrize("mode", ["finetune", "text_only", "lora"])
def test_siglip_from_a_folder_starts_from_its_saved_temperature_and_bias(mode, saved_with_bias) -> None:
    model = build_contrastive_model(_config(mode, saved_with_bias, loss="siglip"))
    assert model.logit_scale.item() == 3.25
    assert model.logit_bias.item() == -4.5 and model.logit_bias.dtype == torch.float32


def test_siglip_from_a_folder_without_a_bias_warns_and_starts_at_siglips(saved, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="clipcond.training.clip.model_setup"):
        model = build_contrastive_model(_config("finetune", saved, loss="siglip"))
    assert model.logit_bias.item() == SIGLIP_INIT_LOGIT_BIAS and model.logit_scale.item() == 3.25
    assert [record.getMessage() for record in caplog.records] == [
        f"{saved} has no logit_bias.safetensors (a CLIP-loss model, or saved before SigLIP's bias was kept): "
        f"the SigLIP bias starts at {SIGLIP_INIT_LOGIT_BIAS} beside the saved logit_scale"
    ]


def test_a_damaged_saved_bias_is_a_setup_error_naming_the_folder(saved_with_bias, tmp_path) -> None:
    import shutil

    damaged = Path(shutil.copytree(saved_with_bias, tmp_path / "damaged"))
    (damaged / "logit_bias.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(RunSetupError) as caught:
        build_contrastive_model(_config("finetune", damaged, loss="siglip"))
    assert str(caught.value).startswith(f"init_from {damaged}: ")


def test_a_saved_bias_that_cannot_be_read_is_a_setup_error_naming_the_folder(saved_with_bias, monkeypatch) -> None:
    import clipcond.training.clip.model_setup as model_setup

    def unreadable(folder):
        raise ValueError("logit_bias.safetensors holds no tensor 'logit_bias'")

    monkeypatch.setattr(model_setup, "load_logit_bias", unreadable)
    with pytest.raises(RunSetupError) as caught:
        build_contrastive_model(_config("finetune", saved_with_bias, loss="siglip"))
    assert str(caught.value) == f"init_from {saved_with_bias}: logit_bias.safetensors holds no tensor 'logit_bias'"


def test_gradient_checkpointing_is_switched_on_when_asked(saved, monkeypatch) -> None:
    calls: list[ClipTwoTower] = []
    monkeypatch.setattr(ClipTwoTower, "enable_gradient_checkpointing", lambda self: calls.append(self))
    build_contrastive_model(_config("finetune", saved))
    assert calls == []
    model = build_contrastive_model(_config("finetune", saved, gradient_checkpointing=True))
    assert calls == [model.clip]


# LoRA


def test_lora_trains_only_adapters_and_the_temperature(saved) -> None:
    lora = LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = build_contrastive_model(_config("lora", saved, lora=lora))
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert "clip.logit_scale" in trained
    adapters = trained - {"clip.logit_scale"}
    assert adapters and all(".lora_A." in name or ".lora_B." in name for name in adapters)
    wrapped = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in adapters}
    assert wrapped == {"q_proj", "v_proj"}
    assert {name.split(".")[1] for name in adapters} == {"text", "vision"}  # both towers have q/v_proj
    for tower in (model.clip.text, model.clip.vision):
        assert tower.peft_config["default"].r == 2 and tower.peft_config["default"].lora_alpha == 4


def test_lora_on_targets_of_one_tower_leaves_the_other_plain(saved) -> None:
    model = build_contrastive_model(_config("lora", saved, lora=LoraSettings(target_modules=["fc1"])))
    assert hasattr(model.clip.text, "peft_config") and not hasattr(model.clip.vision, "peft_config")
    assert _trainable(model.clip.vision) == {False}


def test_lora_on_targets_of_the_image_tower_alone(saved) -> None:
    lora = LoraSettings(r=2, alpha=2, dropout=0.25, target_modules=["convolution"])  # the ResNet's convolutions
    model = build_contrastive_model(_config("lora", saved, lora=lora))
    assert hasattr(model.clip.vision, "peft_config") and not hasattr(model.clip.text, "peft_config")
    assert model.clip.vision.peft_config["default"].lora_dropout == 0.25
    assert _trainable(model.clip.text) == {False}


def test_lora_dropout_reaches_peft(saved) -> None:
    lora = LoraSettings(r=2, alpha=4, dropout=0.125, target_modules=["q_proj"])
    model = build_contrastive_model(_config("lora", saved, lora=lora))
    for tower in (model.clip.text, model.clip.vision):
        assert tower.peft_config["default"].lora_dropout == 0.125


def test_lora_targets_that_match_nothing_are_refused(saved) -> None:
    with pytest.raises(RunSetupError) as caught:
        build_contrastive_model(_config("lora", saved, lora=LoraSettings(target_modules=["wq", "attn"])))
    assert str(caught.value) == (
        "`lora.target_modules` ['attn', 'wq'] match no module of either tower (their attention "
        "projections are q_proj, k_proj, v_proj, out_proj)"
    )


def test_lora_targets_peft_cannot_wrap_are_refused_with_what_they_matched(saved) -> None:
    with pytest.raises(RunSetupError) as caught:
        build_contrastive_model(_config("lora", saved, lora=LoraSettings(target_modules=["layer_norm1", "q_proj"])))
    assert str(caught.value) == (
        "`lora.target_modules` match layer_norm1 (LayerNorm), q_proj (Linear) in the text tower, and peft cannot "
        "put a LoRA adapter on every one: it wraps linear, embedding and convolution layers (and torch's "
        "MultiheadAttention), such as the attention projections q_proj, k_proj, v_proj, out_proj"
    )


# train / eval


def test_train_mode_leaves_frozen_towers_and_frozen_batch_norm_in_eval(saved) -> None:
    model = build_contrastive_model(_config("text_only", saved))
    assert model.train() is model
    assert model.training and model.clip.text.training and not model.clip.vision.training
    assert not any(module.training for module in model.clip.vision.modules())
    lora = build_contrastive_model(_config("lora", saved, lora=LoraSettings(target_modules=["q_proj"])))
    lora.train()
    norms = [module for module in lora.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert norms and not any(norm.training for norm in norms)
    assert lora.clip.vision.training  # it holds adapters to train
    assert any(module.training for module in lora.clip.vision.modules() if "lora" in type(module).__name__.lower())


def test_train_mode_trains_every_part_of_a_full_run_and_eval_none(saved) -> None:
    model = build_contrastive_model(_config("finetune", saved))
    model.train()
    assert all(module.training for module in model.modules())
    assert model.train(False) is model and not any(module.training for module in model.modules())
    model.train()
    assert all(module.training for module in model.modules())


# forward, export, clamp


def test_forward_returns_unit_features_and_stacks_the_negatives(saved) -> None:
    model = build_contrastive_model(_config("finetune", saved)).eval()
    clip = load_clip(saved).eval()
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32)
    ids, negatives = torch.randint(1, 49000, (3, 7)), torch.randint(1, 49000, (3, 7))
    with torch.no_grad():
        images, texts = model(pixels, ids)
        _, both = model(pixels, ids, negatives)
        expected_images = clip.encode_image(pixels)
        expected_texts, expected_negatives = clip.encode_text(ids), clip.encode_text(negatives)
    assert images.shape == (3, 64) and texts.shape == (3, 64) and both.shape == (3, 2, 64)
    torch.testing.assert_close(images, expected_images / expected_images.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(texts, expected_texts / expected_texts.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(both[:, 0], texts)
    torch.testing.assert_close(both[:, 1], expected_negatives / expected_negatives.norm(dim=-1, keepdim=True))


def test_export_of_a_plain_run_is_its_clip(saved) -> None:
    model = build_contrastive_model(_config("finetune", saved))
    assert export_clip(model) is model.clip


def test_export_merges_lora_into_plain_weights_on_a_copy(saved) -> None:
    lora = LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "fc1"])
    model = build_contrastive_model(_config("lora", saved, lora=lora)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:  # peft starts B at zero; move it so the merge shows
                parameter.copy_(torch.randn_like(parameter) * 0.1)
    torch.manual_seed(1)
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(1, 49000, (2, 6))
    with torch.no_grad():
        adapted = (model.clip.encode_image(pixels), model.clip.encode_text(ids))
        exported = export_clip(model)
        merged = (exported.encode_image(pixels), exported.encode_text(ids))
    assert exported is not model.clip and type(exported) is ClipTwoTower
    assert not hasattr(exported.text, "peft_config") and not hasattr(exported.vision, "peft_config")
    assert not any("lora" in key for key in exported.state_dict())
    assert hasattr(model.clip.text, "peft_config") and hasattr(model.clip.vision, "peft_config")  # kept
    for ours, theirs in zip(merged, adapted):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged[1], load_clip(saved).eval().encode_text(ids), atol=1e-4)
    assert set(exported.clip_state_dict()) == set(load_clip(saved).clip_state_dict())


@pytest.mark.parametrize(("start", "expected"), [(7.0, math.log(100.0)), (-0.5, 0.0), (2.0, 2.0), (0.0, 0.0)])
def test_the_temperature_is_clamped_to_a_scale_of_1_to_100(start, expected, saved) -> None:
    model = ContrastiveModel(load_clip(saved))
    with torch.no_grad():
        model.logit_scale.fill_(start)
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == pytest.approx(expected, abs=1e-7)
    assert model.logit_scale.requires_grad


def test_a_siglip_model_holds_its_bias_as_a_trained_scalar(saved) -> None:
    model = ContrastiveModel(load_clip(saved), siglip=True)
    assert isinstance(model.logit_bias, torch.nn.Parameter) and model.logit_bias.shape == ()
    assert model.logit_bias.item() == SIGLIP_INIT_LOGIT_BIAS
    assert "logit_bias" in dict(model.named_parameters())
    assert ContrastiveModel(load_clip(saved)).logit_bias is None
