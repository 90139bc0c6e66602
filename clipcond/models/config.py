"""The model config: a CLIP two-tower described as data, loaded from `configs/models/*.yaml`.

A file looks like

    embed_dim: 512
    text:   {width: 512, layers: 12, heads: 8}
    vision:
      kind: vit                       # or resnet, with a `resnet:` section instead
      image_size: 224
      vit: {patch_size: 32, width: 768, layers: 12, heads: 12}

Every key is checked by `clipcond.config.load_config`: an unknown or mistyped key is a
`ValueError` naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clipcond.config import config_from_dict, load_config

CLIP_VOCAB_SIZE = 49408
CLIP_BOS_TOKEN_ID = 49406
CLIP_EOS_TOKEN_ID = 49407


@dataclass
class TextTowerConfig:
    """The text transformer (a transformers `CLIPTextModelWithProjection`).

    `intermediate_size` defaults to 4 * width, as in every OpenAI and open_clip model. The
    pooled vector is read at the first `eos_token_id`, which the CLIP tokenizer places right
    after the prompt (and also uses as padding). `vocab_size` is at least CLIP's 49408: every
    command tokenizes with CLIP's BPE tokenizer (`clipcond.tokenization.clip_tokenizer`), whose
    ids go up to 49407.
    """

    width: int = 512
    layers: int = 12
    heads: int = 8
    intermediate_size: int | None = None
    context_length: int = 77
    vocab_size: int = CLIP_VOCAB_SIZE
    bos_token_id: int = CLIP_BOS_TOKEN_ID
    eos_token_id: int = CLIP_EOS_TOKEN_ID
    pad_token_id: int = CLIP_EOS_TOKEN_ID

    def __post_init__(self) -> None:
        _check_positive(
            "text",
            width=self.width,
            layers=self.layers,
            context_length=self.context_length,
            intermediate_size=self.intermediate_size,
        )
        _check_heads("text", self.width, self.heads)
        if self.vocab_size < CLIP_VOCAB_SIZE:
            raise ValueError(
                f"text.vocab_size must be at least {CLIP_VOCAB_SIZE}, got {self.vocab_size}: every command "
                f"tokenizes with CLIP's BPE tokenizer (clip_tokenizer), whose ids go up to {CLIP_VOCAB_SIZE - 1}"
            )
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(
                    f"text.{name} = {getattr(self, name)} is outside the vocabulary (size {self.vocab_size})"
                )


@dataclass
class ViTTowerConfig:
    """A vision transformer over `patch_size` x `patch_size` patches (`CLIPVisionModelWithProjection`)."""

    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    intermediate_size: int | None = None

    def __post_init__(self) -> None:
        _check_positive(
            "vision.vit",
            patch_size=self.patch_size,
            width=self.width,
            layers=self.layers,
            intermediate_size=self.intermediate_size,
        )
        _check_heads("vision.vit", self.width, self.heads)


@dataclass
class ResNetTowerConfig:
    """A transformers ResNet backbone, pooled to one vector per image, then projected.

    `embedding_size` is the stem width, `hidden_sizes` and `depths` one entry per stage.
    `pooling: attention` is the CLIP paper's attention pool (one query, the mean feature,
    attends over the final feature map with learned positional embeddings, `pool_heads`
    heads); `pooling: mean` averages the feature map.
    """

    embedding_size: int = 64
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    layer_type: Literal["basic", "bottleneck"] = "bottleneck"
    pooling: Literal["attention", "mean"] = "attention"
    pool_heads: int = 32

    def __post_init__(self) -> None:
        _check_positive("vision.resnet", embedding_size=self.embedding_size)
        for name in ("hidden_sizes", "depths"):
            if any(value < 1 for value in getattr(self, name)):
                raise ValueError(f"vision.resnet.{name} must be positive integers, got {getattr(self, name)}")
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"vision.resnet: hidden_sizes {self.hidden_sizes} and depths {self.depths} need one entry per stage"
            )
        if self.pooling == "attention":
            _check_heads("vision.resnet (pool)", self.hidden_sizes[-1], self.pool_heads)

    @property
    def downsampling(self) -> int:
        """How many pixels one cell of the final feature map spans (stem 4x, then 2x per later stage)."""
        return 4 * 2 ** (len(self.depths) - 1)


@dataclass
class VisionTowerConfig:
    """The image tower: `kind` picks which of the `vit` / `resnet` sections must be given."""

    kind: Literal["vit", "resnet"] = "vit"
    image_size: int = 224
    vit: ViTTowerConfig | None = None
    resnet: ResNetTowerConfig | None = None

    def __post_init__(self) -> None:
        _check_positive("vision", image_size=self.image_size)
        own, other = ("vit", "resnet") if self.kind == "vit" else ("resnet", "vit")
        if getattr(self, own) is None:
            raise ValueError(f"vision.kind is {self.kind!r} but the `vision.{own}` section is missing")
        if getattr(self, other) is not None:
            raise ValueError(f"vision.kind is {self.kind!r}; remove the `vision.{other}` section or change the kind")
        if self.vit is not None and self.image_size % self.vit.patch_size:
            raise ValueError(
                f"vision.image_size {self.image_size} is not a multiple of vision.vit.patch_size {self.vit.patch_size}"
            )
        if self.resnet is not None and self.image_size % self.resnet.downsampling:
            raise ValueError(
                f"vision.image_size {self.image_size} is not a multiple of {self.resnet.downsampling}, "
                f"the downsampling of a {len(self.resnet.depths)}-stage ResNet"
            )


@dataclass
class ClipModelConfig:
    """A CLIP two-tower: text tower, image tower, both projected to `embed_dim`.

    `quick_gelu: true` is OpenAI's activation (x * sigmoid(1.702 x)); open_clip models trained
    from scratch mostly use plain GELU (`quick_gelu: false`). It applies to both transformers.
    `logit_scale_init` is the initial log temperature, log(1 / 0.07) as in the CLIP paper; a
    finite number.
    """

    embed_dim: int
    text: TextTowerConfig
    vision: VisionTowerConfig
    quick_gelu: bool = True
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self) -> None:
        _check_positive("", embed_dim=self.embed_dim)
        if isinstance(self.logit_scale_init, bool) or not (
            isinstance(self.logit_scale_init, (int, float)) and math.isfinite(self.logit_scale_init)
        ):
            raise ValueError(
                "logit_scale_init must be a finite number (the initial log of the logit scale, "
                f"log(1 / 0.07) = 2.659 in CLIP), got {self.logit_scale_init!r}"
            )

    @property
    def hidden_act(self) -> str:
        """The transformers name of the activation."""
        return "quick_gelu" if self.quick_gelu else "gelu"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (no `None` sections), as written to YAML by `save_clip`."""
        return _drop_none(dataclasses.asdict(self))


def load_model_config(path: str | Path) -> ClipModelConfig:
    """Read a model YAML (e.g. `configs/models/clip-tiny.yaml`) into a validated `ClipModelConfig`."""
    return load_config(ClipModelConfig, path)


def model_config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ClipModelConfig:
    """Build a `ClipModelConfig` from plain data, validated as `load_model_config` does."""
    return config_from_dict(ClipModelConfig, data, source=source)


def _check_positive(where: str, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{where + '.' if where else ''}{name} must be a positive integer, got {value}")


def _check_heads(where: str, width: int, heads: int) -> None:
    if heads < 1 or width % heads:
        raise ValueError(f"{where}: width {width} is not divisible into {heads} attention heads")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_none(item) for key, item in value.items() if item is not None}
    return value
