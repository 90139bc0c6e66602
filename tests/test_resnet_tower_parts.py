"""`clipcond.models.resnet_tower` part by part: the attention pool against attention written out
head by head, the mean pool, what the tower builds from its config and refuses, and the
stage-by-stage checkpointing (when it runs, what it refuses, BatchNorm statistics updated once)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipcond.models import AttentionPool2d, MeanPool2d, ResNetImageTower
from clipcond.models.config import ResNetTowerConfig, VisionTowerConfig, ViTTowerConfig
from clipcond.models.resnet_tower import _running_stats_kept


def _vision(pooling: str = "attention", image_size: int = 32, **resnet) -> VisionTowerConfig:
    spec = dict(
        embedding_size=8, hidden_sizes=[16, 24], depths=[1, 2], layer_type="basic", pooling=pooling, pool_heads=2
    )
    spec.update(resnet)
    return VisionTowerConfig(kind="resnet", image_size=image_size, resnet=ResNetTowerConfig(**spec))


def _tower(pooling: str = "attention", seed: int = 0, **resnet) -> ResNetImageTower:
    torch.manual_seed(seed)
    return ResNetImageTower(_vision(pooling, **resnet), embed_dim=12)


def _pixels(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- attention pool


def test_the_attention_pool_has_a_position_for_the_mean_and_each_cell() -> None:
    torch.manual_seed(0)
    pool = AttentionPool2d(channels=64, grid_size=3, heads=4, out_dim=10)
    assert (pool.grid_size, pool.heads) == (3, 4)
    assert pool.positional_embedding.shape == (10, 64)
    # drawn from N(0, 1) / sqrt(channels): a standard deviation near 1/8
    assert abs(pool.positional_embedding.std().item() - 1 / 8) < 0.02
    assert [tuple(p.weight.shape) for p in (pool.q_proj, pool.k_proj, pool.v_proj, pool.out_proj)] == [
        (64, 64),
        (64, 64),
        (64, 64),
        (10, 64),
    ]


def test_the_attention_pool_is_the_mean_querying_every_cell_head_by_head() -> None:
    torch.manual_seed(2)
    channels, grid, heads, out_dim = 6, 2, 2, 5
    pool = AttentionPool2d(channels, grid, heads, out_dim).eval()
    features = torch.randn(3, channels, grid, grid)
    expected = torch.empty(3, out_dim)
    width = channels // heads
    for b in range(3):
        cells = [features[b, :, i, j] for i in range(grid) for j in range(grid)]  # row-major
        tokens = [sum(cells) / len(cells), *cells]
        tokens = [token + pool.positional_embedding[n] for n, token in enumerate(tokens)]
        query = pool.q_proj(tokens[0])
        keys = [pool.k_proj(token) for token in tokens]
        values = [pool.v_proj(token) for token in tokens]
        joined = []
        for h in range(heads):
            part = slice(h * width, (h + 1) * width)
            scores = torch.stack([(query[part] * key[part]).sum() / math.sqrt(width) for key in keys])
            weights = scores.softmax(dim=0)
            joined.append(sum(w * value[part] for w, value in zip(weights, values)))
        expected[b] = pool.out_proj(torch.cat(joined))
    with torch.no_grad():
        torch.testing.assert_close(pool(features), expected.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(3, 3), (2, 3), (3, 2)])
def test_a_map_of_another_size_is_refused_whole(size) -> None:
    pool = AttentionPool2d(channels=4, grid_size=2, heads=2, out_dim=3)
    with pytest.raises(ValueError) as refused:
        pool(torch.zeros(1, 4, *size))
    assert str(refused.value) == (
        f"attention pool was built for a 2x2 feature map, got {size[0]}x{size[1]}; "
        "feed images of the configured vision.image_size"
    )


# ---------------------------------------------------------------------------- mean pool


def test_the_mean_pool_projects_the_mean_over_cells() -> None:
    torch.manual_seed(3)
    pool = MeanPool2d(channels=4, out_dim=3)
    features = torch.randn(2, 4, 3, 5)
    expected = features.sum(dim=(2, 3)) / 15 @ pool.out_proj.weight.t() + pool.out_proj.bias
    with torch.no_grad():
        torch.testing.assert_close(pool(features), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- the tower


def test_a_vit_config_is_refused_naming_its_kind() -> None:
    vision = VisionTowerConfig(kind="vit", image_size=32, vit=ViTTowerConfig(patch_size=8, width=16, layers=1, heads=2))
    with pytest.raises(ValueError) as refused:
        ResNetImageTower(vision, embed_dim=8)
    assert str(refused.value) == "ResNetImageTower needs a vision config of kind 'resnet', got kind 'vit'"


def test_the_backbone_is_transformers_resnet_of_the_configs_sizes() -> None:
    tower = _tower(embedding_size=8, hidden_sizes=[16, 24], depths=[1, 2], layer_type="bottleneck")
    config = tower.backbone.config
    assert type(tower.backbone).__name__ == "ResNetModel"
    assert (config.embedding_size, config.hidden_sizes, config.depths, config.layer_type) == (
        8,
        [16, 24],
        [1, 2],
        "bottleneck",
    )
    assert [len(stage.layers) for stage in tower.backbone.encoder.stages] == [1, 2]
    assert tower.gradient_checkpointing is False


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_the_layer_type_is_the_configs(layer_type) -> None:
    assert _tower(layer_type=layer_type).backbone.config.layer_type == layer_type


def test_the_pools_read_the_last_stages_channels() -> None:
    tower = _tower("attention", image_size=64, hidden_sizes=[8, 16, 40], depths=[1, 1, 1], pool_heads=4)
    # 64 px: 4x, then 2x twice: a 4x4 map of 40 channels
    assert tower.pool.positional_embedding.shape == (17, 40)
    assert tower.pool.q_proj.in_features == 40
    assert _tower("mean", hidden_sizes=[8, 16, 40], depths=[1, 1, 1], image_size=64).pool.out_proj.in_features == 40


def test_the_attention_pool_is_sized_to_the_final_map() -> None:
    tower = _tower("attention", image_size=64, pool_heads=3)
    assert isinstance(tower.pool, AttentionPool2d)
    # 64 px, a stem of 4x and one more stage of 2x: an 8x8 map of 24 channels
    assert (tower.pool.grid_size, tower.pool.heads) == (8, 3)
    assert tower.pool.positional_embedding.shape == (65, 24)
    assert tower.pool.out_proj.out_features == 12


def test_the_mean_pool_is_taken_when_configured() -> None:
    tower = _tower("mean")
    assert isinstance(tower.pool, MeanPool2d)
    assert (tower.pool.out_proj.in_features, tower.pool.out_proj.out_features) == (24, 12)


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_the_output_is_the_pooled_map_and_the_map_as_tokens(pooling) -> None:
    tower = _tower(pooling).eval()
    pixels = _pixels()
    with torch.no_grad():
        output = tower(pixel_values=pixels)
        features = tower.backbone(pixel_values=pixels).last_hidden_state
    assert features.shape == (2, 24, 4, 4)
    assert output.image_embeds.shape == (2, 12)
    assert torch.equal(output.image_embeds, tower.pool(features))
    assert output.last_hidden_state.shape == (2, 16, 24)
    assert torch.equal(output.last_hidden_state[:, 5], features[:, :, 1, 1])  # row-major cells


# ---------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize("kwargs", [None, {}, {"use_reentrant": False}])
def test_checkpointing_is_switched_on_and_off(kwargs) -> None:
    tower = _tower()
    tower.gradient_checkpointing_enable(kwargs)
    assert tower.gradient_checkpointing is True
    tower.gradient_checkpointing_disable()
    assert tower.gradient_checkpointing is False
    assert ResNetImageTower.activation_checkpointing_enable is ResNetImageTower.gradient_checkpointing_enable
    assert ResNetImageTower.activation_checkpointing_disable is ResNetImageTower.gradient_checkpointing_disable


@pytest.mark.parametrize(
    "kwargs", [{"use_reentrant": True}, {"preserve_rng_state": False}, {"use_reentrant": False, "debug": True}]
)
def test_other_checkpointing_options_are_refused_whole(kwargs) -> None:
    tower = _tower()
    with pytest.raises(ValueError) as refused:
        tower.gradient_checkpointing_enable(kwargs)
    assert str(refused.value) == (
        f"ResNetImageTower checkpoints with use_reentrant=False and no other options, got {kwargs}"
    )
    assert tower.gradient_checkpointing is False


def _stage_runs(tower: ResNetImageTower) -> list[int]:
    runs = [0] * len(tower.backbone.encoder.stages)
    for index, stage in enumerate(tower.backbone.encoder.stages):

        def count(module, inputs, index=index):
            runs[index] += 1

        stage.register_forward_pre_hook(count)
    return runs


def test_checkpointed_stages_run_again_in_the_backward_pass_with_the_same_gradients() -> None:
    plain, checkpointed = _tower(seed=4).train(), _tower(seed=4).train()
    checkpointed.gradient_checkpointing_enable()
    runs = _stage_runs(checkpointed)
    pixels = _pixels(4)
    plain(pixel_values=pixels).image_embeds.square().sum().backward()
    checkpointed(pixel_values=pixels).image_embeds.square().sum().backward()
    assert runs == [2, 2]
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name  # running statistics updated once, as without checkpointing


def test_a_checkpointed_forward_updates_the_running_statistics_before_any_backward_pass() -> None:
    plain, checkpointed = _tower(seed=4).train(), _tower(seed=4).train()
    checkpointed.gradient_checkpointing_enable()
    pixels = _pixels(4)
    plain(pixel_values=pixels)
    checkpointed(pixel_values=pixels)  # no backward: the stages ran once
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_checkpointing_stays_out_of_evaluation_and_gradient_free_runs(mode) -> None:
    tower = _tower()
    tower.gradient_checkpointing_enable()
    tower.train(mode != "eval")
    runs = _stage_runs(tower)
    before = tower.backbone.embedder.embedder.normalization.num_batches_tracked.item()
    if mode == "eval":
        tower(pixel_values=_pixels()).image_embeds.sum().backward()
    else:
        with torch.no_grad():
            tower(pixel_values=_pixels())
    assert runs == [1, 1]
    tracked = tower.backbone.embedder.embedder.normalization.num_batches_tracked.item()
    assert tracked == before + (mode == "no_grad")


def test_running_statistics_come_back_after_the_block_even_when_it_raises() -> None:
    norm, untracked = nn.BatchNorm1d(3), nn.BatchNorm1d(3, track_running_stats=False)
    module = nn.Sequential(norm, untracked).train()
    module(torch.randn(8, 3))
    saved = [buffer.clone() for buffer in norm.buffers()]
    with pytest.raises(RuntimeError, match="stop"):
        with _running_stats_kept(module):
            module(torch.randn(8, 3) * 5 + 2)
            assert not torch.equal(norm.running_mean, saved[0])
            raise RuntimeError("stop")
    assert all(torch.equal(now, then) for now, then in zip(norm.buffers(), saved))
    assert norm.num_batches_tracked.item() == 1
