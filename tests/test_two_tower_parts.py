"""`clipcond.models.two_tower` part by part, on the tiny shipped configs: the temperature it
starts at, what each tower returns (unnormalised) and what `forward` normalises, the strict
loading's whole message, `from_clip_model`'s dtype, the checkpointing switches of both towers,
and the parameter count on the meta device."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from clipcond.models import ClipTwoTower, ResNetImageTower, build_clip_model, count_parameters, load_model_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
EOS = 49407


def _model(name: str = "clip-tiny-vit", seed: int = 0, **changes) -> ClipTwoTower:
    config = load_model_config(CONFIGS / f"{name}.yaml")
    if changes:
        config = dataclasses.replace(config, **changes)
    torch.manual_seed(seed)
    return ClipTwoTower(config).eval()


def _ids(rows: list[list[int]], context: int = 8) -> torch.Tensor:
    ids = torch.zeros(len(rows), context, dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens) + 2] = torch.tensor([49406, *tokens, EOS])
    return ids


def _pixels(batch: int, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(5))


def test_the_temperature_starts_at_the_configs_log_scale() -> None:
    model = _model()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    assert model.logit_scale.shape == () and model.logit_scale.requires_grad
    assert _model(logit_scale_init=1.5).logit_scale.item() == 1.5


def test_the_towers_are_transformers_models_and_the_config_is_kept() -> None:
    model = _model()
    assert type(model.text).__name__ == "CLIPTextModelWithProjection"
    assert type(model.vision).__name__ == "CLIPVisionModelWithProjection"
    assert model.config.embed_dim == 32
    assert isinstance(_model("clip-rn-tiny").vision, ResNetImageTower)


def test_encode_text_is_the_text_towers_projection_with_its_mask() -> None:
    model = _model()
    ids = _ids([[320, 1929], [320, 1929, 550]])
    mask = (ids != 0).long()
    with torch.no_grad():
        got = model.encode_text(ids, mask)
        expected = model.text(input_ids=ids, attention_mask=mask).text_embeds
        unmasked = model.encode_text(ids)
    assert got.shape == (2, 32)
    assert torch.equal(got, expected)
    assert torch.equal(unmasked, model.text(input_ids=ids).text_embeds)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(2))  # not normalised


def test_encode_image_is_the_image_towers_projection() -> None:
    model = _model()
    pixels = _pixels(3)
    with torch.no_grad():
        got = model.encode_image(pixels)
        expected = model.vision(pixel_values=pixels).image_embeds
    assert got.shape == (3, 32) and torch.equal(got, expected)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(3))


def test_forward_returns_image_then_text_each_normalised_along_the_embedding() -> None:
    model = _model()
    ids, pixels = _ids([[320], [320, 1929], [550]]), _pixels(2)
    mask = (ids != 0).long()
    mask[:, 1] = 0  # a hole before the eos: the text tower's attention is causal, padding after it is unseen
    with torch.no_grad():
        image, text = model(ids, pixels, attention_mask=mask)
        raw_image, raw_text = model.encode_image(pixels), model.encode_text(ids, mask)
    assert image.shape == (2, 32) and text.shape == (3, 32)
    torch.testing.assert_close(image, raw_image / raw_image.norm(dim=1, keepdim=True), rtol=0, atol=1e-7)
    torch.testing.assert_close(text, raw_text / raw_text.norm(dim=1, keepdim=True), rtol=0, atol=1e-7)
    with torch.no_grad():
        _, unmasked = model(ids, pixels)
    assert not torch.allclose(unmasked, text)  # the mask reaches the text tower


def test_clip_state_dict_is_both_towers_and_a_detached_temperature() -> None:
    model = _model()
    state = model.clip_state_dict()
    assert set(state) == set(model.text.state_dict()) | set(model.vision.state_dict()) | {"logit_scale"}
    assert state["logit_scale"].requires_grad is False
    assert state["logit_scale"].data_ptr() == model.logit_scale.data_ptr()


def test_loading_a_state_dict_sets_every_weight_and_the_temperature() -> None:
    source, target = _model(seed=1), _model(seed=2)
    state = source.clip_state_dict()
    state["logit_scale"] = torch.tensor([2.5])  # any one-number shape is taken
    target.load_clip_state_dict(state)
    loaded = target.clip_state_dict()
    assert target.logit_scale.item() == 2.5 and target.logit_scale.shape == ()
    for key, value in source.clip_state_dict().items():
        if key != "logit_scale":
            assert torch.equal(loaded[key], value), key


def test_a_state_dict_that_does_not_fit_is_refused_whole_naming_five_keys_of_each_kind() -> None:
    model = _model()
    state = model.clip_state_dict()
    removed = sorted(state)[:7]
    for key in removed:
        del state[key]
    state.update({f"extra.{n}": torch.zeros(1) for n in range(2)})
    with pytest.raises(ValueError) as refused:
        model.load_clip_state_dict(state)
    assert str(refused.value) == (
        "state dict does not fit this vit two-tower: unknown keys ['extra.0', 'extra.1'], "
        f"missing keys {removed[:5]} ..."
    )
    before = model.clip_state_dict()["logit_scale"].clone()
    assert model.logit_scale.item() == before.item()  # nothing loaded


def test_five_keys_of_a_kind_are_named_without_an_ellipsis() -> None:
    model = _model("clip-rn-tiny")
    state = model.clip_state_dict()
    state.update({f"extra.{n}": torch.zeros(1) for n in range(5)})
    with pytest.raises(ValueError) as refused:
        model.load_clip_state_dict(state)
    assert str(refused.value) == (
        "state dict does not fit this resnet two-tower: unknown keys "
        "['extra.0', 'extra.1', 'extra.2', 'extra.3', 'extra.4'], missing keys []"
    )


def test_a_state_dict_missing_only_the_temperature_is_refused() -> None:
    model = _model()
    state = model.clip_state_dict()
    del state["logit_scale"]
    with pytest.raises(ValueError) as refused:
        model.load_clip_state_dict(state)
    assert str(refused.value).endswith("unknown keys [], missing keys ['logit_scale']")


def test_from_clip_model_keeps_the_peers_weights_and_dtype() -> None:
    config = load_model_config(CONFIGS / "clip-tiny-vit.yaml")
    torch.manual_seed(4)
    peer = build_clip_model(config).to(torch.bfloat16)
    ours = ClipTwoTower.from_clip_model(peer)
    assert ours.logit_scale.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    peer_state = peer.state_dict()
    for key, value in ours.clip_state_dict().items():
        assert torch.equal(value, peer_state[key]), key
    assert isinstance(peer, CLIPModel)


@pytest.mark.parametrize("name", ["clip-tiny-vit", "clip-rn-tiny"])
def test_checkpointing_switches_reach_both_towers(name) -> None:
    model = _model(name)
    model.enable_gradient_checkpointing()
    assert model.text.text_model.encoder.gradient_checkpointing
    if isinstance(model.vision, ResNetImageTower):
        assert model.vision.gradient_checkpointing
    else:
        assert model.vision.vision_model.encoder.gradient_checkpointing
    model.disable_gradient_checkpointing()
    assert not model.text.text_model.encoder.gradient_checkpointing
    if isinstance(model.vision, ResNetImageTower):
        assert not model.vision.gradient_checkpointing
    else:
        assert not model.vision.vision_model.encoder.gradient_checkpointing


@pytest.mark.parametrize("name", ["clip-tiny-vit", "clip-rn-tiny", "clip-tiny"])
def test_the_parameter_count_is_an_allocated_models(name) -> None:
    config = load_model_config(CONFIGS / f"{name}.yaml")
    assert count_parameters(config) == sum(p.numel() for p in ClipTwoTower(config).parameters())


def test_the_tiny_vits_count_is_the_one_its_config_states() -> None:
    assert count_parameters(load_model_config(CONFIGS / "clip-tiny-vit.yaml")) == 1_643_297


@pytest.mark.parametrize("name", ["clip-tiny-vit", "clip-rn-tiny"])
def test_checkpointing_switches_use_transformers_current_names_without_a_deprecation_warning(name) -> None:
    """transformers 5 keeps `gradient_checkpointing_enable/disable` until v6 but warns on them."""
    import warnings

    model = _model(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.enable_gradient_checkpointing()
        model.disable_gradient_checkpointing()
    assert [str(warning.message) for warning in caught] == []


@pytest.mark.parametrize("name", ["clip-tiny-vit", "clip-rn-tiny"])
def test_checkpointed_towers_take_autograd_grad(name) -> None:
    """Non-reentrant checkpointing: `torch.autograd.grad` works (the reentrant kind refuses it)."""
    model = _model(name).train()
    model.enable_gradient_checkpointing()
    image, text = model(_ids([[320, 1929], [550]]), _pixels(2))
    loss = (model.logit_scale.exp() * image @ text.t()).logsumexp(dim=1).sum()
    parameters = [p for p in model.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in gradients)
