"""A ResNet image tower for CLIP: transformers' `ResNetModel`, a pooling step, a projection.

The CLIP paper's modified ResNet replaces global average pooling with attention pooling:
the mean of the final feature map is a query that attends over every cell of the map (plus
itself), with learned positional embeddings. `AttentionPool2d` is that step, written out;
`MeanPool2d` is the plain alternative. The backbone itself is transformers' ResNet (not the
paper's three-convolution stem with anti-aliased downsampling).

transformers' ResNet has no activation checkpointing of its own, so `ResNetImageTower`
checkpoints it one stage at a time (`gradient_checkpointing_enable`). BatchNorm makes this
subtle: a recomputed stage would update the running statistics a second time, so they are put
back after the recomputation (which normalises with the batch statistics, exactly as the first
pass did).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import ResNetConfig, ResNetModel
from transformers.models.clip.modeling_clip import CLIPVisionModelOutput

from clipcond.models.config import VisionTowerConfig


class AttentionPool2d(nn.Module):
    """Pool a feature map to one vector with multi-head attention from its mean.

    Args:
        channels: feature channels C of the map.
        grid_size: the map is `grid_size` x `grid_size` cells (fixed: positions are learned).
        heads: attention heads; `channels` must divide into them.
        out_dim: width of the output vector (the projection is the attention's output layer).
    """

    def __init__(self, channels: int, grid_size: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.heads = heads
        # One position for the mean token, then one per cell in row-major order.
        self.positional_embedding = nn.Parameter(torch.randn(grid_size * grid_size + 1, channels) / channels**0.5)
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (batch, C, grid, grid) -> pooled: (batch, out_dim)."""
        batch, channels, height, width = features.shape
        if (height, width) != (self.grid_size, self.grid_size):
            raise ValueError(
                f"attention pool was built for a {self.grid_size}x{self.grid_size} feature map, got {height}x{width}; "
                "feed images of the configured vision.image_size"
            )
        cells = features.flatten(2).transpose(1, 2)  # (batch, grid*grid, C)
        tokens = torch.cat([cells.mean(dim=1, keepdim=True), cells], dim=1) + self.positional_embedding
        query = self._split_heads(self.q_proj(tokens[:, :1]))  # (batch, heads, 1, C/heads)
        key = self._split_heads(self.k_proj(tokens))  # (batch, heads, 1+grid*grid, C/heads)
        value = self._split_heads(self.v_proj(tokens))
        attended = F.scaled_dot_product_attention(query, key, value)  # (batch, heads, 1, C/heads)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, channels))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape
        return x.view(batch, length, self.heads, channels // self.heads).transpose(1, 2)


class MeanPool2d(nn.Module):
    """Average a feature map over its cells, then project: (batch, C, h, w) -> (batch, out_dim)."""

    def __init__(self, channels: int, out_dim: int) -> None:
        super().__init__()
        self.out_proj = nn.Linear(channels, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (batch, C, h, w) -> pooled: (batch, out_dim)."""
        return self.out_proj(features.mean(dim=(2, 3)))


class ResNetImageTower(nn.Module):
    """transformers `ResNetModel` + pooling + projection to the joint embedding space.

    Called like `CLIPVisionModelWithProjection`: `tower(pixel_values=...)` returns a
    `CLIPVisionModelOutput` whose `image_embeds` is (batch, embed_dim) (unnormalised) and
    whose `last_hidden_state` is the backbone's final map as tokens, (batch, h*w, C).
    `gradient_checkpointing_enable()` / `gradient_checkpointing_disable()` are named as in
    transformers, so a training loop treats both kinds of image tower alike.
    """

    def __init__(self, vision: VisionTowerConfig, embed_dim: int) -> None:
        super().__init__()
        if vision.resnet is None:
            raise ValueError(f"ResNetImageTower needs a vision config of kind 'resnet', got kind {vision.kind!r}")
        spec = vision.resnet
        self.backbone = ResNetModel(
            ResNetConfig(
                embedding_size=spec.embedding_size,
                hidden_sizes=list(spec.hidden_sizes),
                depths=list(spec.depths),
                layer_type=spec.layer_type,
            )
        )
        channels = spec.hidden_sizes[-1]
        if spec.pooling == "attention":
            grid_size = vision.image_size // spec.downsampling
            self.pool: nn.Module = AttentionPool2d(channels, grid_size, spec.pool_heads, embed_dim)
        else:
            self.pool = MeanPool2d(channels, embed_dim)
        self.gradient_checkpointing = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute each backbone stage in the backward pass (in training mode, when gradients are on).

        `gradient_checkpointing_kwargs` is accepted for transformers compatibility; only
        `{"use_reentrant": False}` (the default) is supported.
        """
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False) or kwargs:
            raise ValueError(
                "ResNetImageTower checkpoints with use_reentrant=False and no other options, "
                f"got {gradient_checkpointing_kwargs}"
            )
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep activations again (the default)."""
        self.gradient_checkpointing = False

    # transformers 5 renamed the methods; both names work here as on its models.
    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable

    def forward(self, pixel_values: torch.Tensor) -> CLIPVisionModelOutput:
        """pixel_values: (batch, 3, image_size, image_size) -> output with `image_embeds` (batch, embed_dim)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            features = self.backbone.embedder(pixel_values)
            for stage in self.backbone.encoder.stages:
                features = _checkpointed_stage(stage, features)
        else:
            features = self.backbone(pixel_values=pixel_values).last_hidden_state  # (batch, C, h, w)
        return CLIPVisionModelOutput(
            image_embeds=self.pool(features),
            last_hidden_state=features.flatten(2).transpose(1, 2),
        )


def _checkpointed_stage(stage: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Run one ResNet stage under activation checkpointing; only the first run updates BatchNorm statistics."""
    runs = 0

    def run(x: torch.Tensor) -> torch.Tensor:
        nonlocal runs
        runs += 1
        if runs == 1:
            return stage(x)
        with _running_stats_kept(stage):
            return stage(x)

    return checkpoint(run, hidden, use_reentrant=False)


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Put the BatchNorm running statistics back as they were once the block exits.

    The recomputation must run the very same operations as the first pass (torch checks that it
    saves the same tensors), so BatchNorm still updates its statistics; they are restored after.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[(buffer, buffer.clone()) for buffer in norm.buffers(recurse=False)] for norm in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffers in saved:
                for buffer, value in buffers:
                    buffer.copy_(value)
