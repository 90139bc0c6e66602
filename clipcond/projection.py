"""`TextProjection`: the learned adapter of a ``custom`` recipe, as a diffusers model.

A `TextConditioner` with `projection_dim` maps its token states to the UNet's
`cross_attention_dim` with one linear layer per source: "clip" (the CLIP token states,
channels of every CLIP encoder joined) and/or "t5". This module holds those layers. Being a
diffusers `ModelMixin` with its widths in a config, it saves as a pipeline component
(`text_projection/` with `config.json` and safetensors weights) and loads back through
`DiffusionPipeline.from_pretrained`.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin  # ModelMixin here also lets diffusers find our loader
from diffusers.configuration_utils import register_to_config
from torch import nn

SOURCES: tuple[str, ...] = ("clip", "t5")


class TextProjection(ModelMixin, ConfigMixin):
    """One `nn.Linear` per token source, to a common width.

    Args:
        projection_dim: output width (the UNet's `cross_attention_dim`).
        clip_width: input width of the CLIP token states, or None for no CLIP layer.
        t5_width: input width of the T5 token states, or None for no T5 layer.

    `projection["clip"]` / `projection["t5"]` are the layers; `"t5" in projection` says
    whether one exists.
    """

    @register_to_config
    def __init__(self, projection_dim: int, clip_width: int | None = None, t5_width: int | None = None) -> None:
        super().__init__()
        for name, value in (("projection_dim", projection_dim), ("clip_width", clip_width), ("t5_width", t5_width)):
            if value is None and name != "projection_dim":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive int{'' if name == 'projection_dim' else ' or None'}, got {value!r}"
                )
        if clip_width is None and t5_width is None:
            raise ValueError("a TextProjection needs `clip_width` and/or `t5_width`")
        widths = {"clip": clip_width, "t5": t5_width}
        self.layers = nn.ModuleDict({name: nn.Linear(width, projection_dim) for name, width in widths.items() if width})

    def __getitem__(self, source: str) -> nn.Linear:
        if source not in self.layers:
            raise KeyError(f"this TextProjection has no {source!r} layer (it has {list(self.layers)})")
        return self.layers[source]

    def __contains__(self, source: object) -> bool:
        return source in self.layers

    def input_widths(self) -> dict[str, int]:
        """Source -> input width of its layer."""
        return {name: layer.in_features for name, layer in self.layers.items()}

    def forward(self, tokens: torch.Tensor, source: str = "clip") -> torch.Tensor:
        """Project (batch, seq, width of `source`) token states to (batch, seq, projection_dim)."""
        return self[source](tokens)
