"""`ClipTwoTower`: a text tower and an image tower projected into one space, plus a temperature.

One path for every config: the towers are always separate modules (`text` is a
`CLIPTextModelWithProjection`, `vision` a `CLIPVisionModelWithProjection` or a
`ResNetImageTower`). For ViT configs the union of the two towers' state dicts and
`logit_scale` has exactly the keys of a transformers `CLIPModel`, so `clip_state_dict()`,
`from_clip_model()` and `build_clip_model()` move weights between the two without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, PreTrainedModel

from clipcond.models.build import build_image_tower, build_text_tower, model_config_from_hf
from clipcond.models.config import ClipModelConfig


class ClipTwoTower(nn.Module):
    """CLIP built from a `ClipModelConfig`.

    Attributes:
        config: the `ClipModelConfig` it was built from (written next to the weights by `save_clip`).
        text: `CLIPTextModelWithProjection`; drops into diffusers pipelines as a text encoder.
        vision: `CLIPVisionModelWithProjection` (kind vit) or `ResNetImageTower` (kind resnet).
        logit_scale: scalar parameter, log of the inverse softmax temperature, starts at
            `config.logit_scale_init` (log(1 / 0.07)).
    """

    def __init__(self, config: ClipModelConfig) -> None:
        super().__init__()
        self.config = config
        self.text = build_text_tower(config)
        self.vision = build_image_tower(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Project prompts into the joint space.

        Args:
            input_ids: (batch, seq) int64 token ids from the CLIP tokenizer, seq <= context_length;
                each row must contain the eos id (the pooled token is the first eos).
            attention_mask: (batch, seq) 1 for real tokens, 0 for padding, or None.

        Returns:
            (batch, embed_dim) text embeddings, NOT normalised.
        """
        return self.text(input_ids=input_ids, attention_mask=attention_mask).text_embeds

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Project images into the joint space.

        Args:
            pixel_values: (batch, 3, image_size, image_size) float, normalised with the CLIP mean/std.

        Returns:
            (batch, embed_dim) image embeddings, NOT normalised.
        """
        return self.vision(pixel_values=pixel_values).image_embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers, L2-normalised: returns (image_embeds (batch_i, embed_dim), text_embeds (batch_t, embed_dim)).

        The contrastive logits are `logit_scale.exp() * image_embeds @ text_embeds.T`.
        """
        image_embeds = F.normalize(self.encode_image(pixel_values), dim=-1)
        text_embeds = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        return image_embeds, text_embeds

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass, in both towers (applies in training mode only).

        The transformers towers checkpoint every encoder layer, the ResNet tower every backbone
        stage (`ResNetImageTower.gradient_checkpointing_enable`). Losses and gradients are
        unchanged; memory falls and the backward pass repeats the forward work.
        """
        for tower in (self.text, self.vision):
            if isinstance(tower, PreTrainedModel) and hasattr(tower, "activation_checkpointing_enable"):
                tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:  # transformers 4 names it gradient_checkpointing_enable; so does ResNetImageTower
                tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def disable_gradient_checkpointing(self) -> None:
        """Keep activations again in both towers (the default)."""
        for tower in (self.text, self.vision):
            if isinstance(tower, PreTrainedModel) and hasattr(tower, "activation_checkpointing_disable"):
                tower.activation_checkpointing_disable()
            else:
                tower.gradient_checkpointing_disable()

    def clip_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under transformers `CLIPModel` key names (ViT configs; for ResNet the vision keys are ours)."""
        return {**self.text.state_dict(), **self.vision.state_dict(), "logit_scale": self.logit_scale.detach()}

    def load_clip_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load weights given under `CLIPModel` key names (the inverse of `clip_state_dict`); strict."""
        text_keys = set(self.text.state_dict())
        vision_keys = set(self.vision.state_dict())
        expected = text_keys | vision_keys | {"logit_scale"}
        unknown = sorted(set(state_dict) - expected)
        missing = sorted(expected - set(state_dict))
        if unknown or missing:
            raise ValueError(
                f"state dict does not fit this {self.config.vision.kind} two-tower: "
                f"unknown keys {_first(unknown)}, missing keys {_first(missing)}"
            )
        self.text.load_state_dict({key: value for key, value in state_dict.items() if key in text_keys})
        self.vision.load_state_dict({key: value for key, value in state_dict.items() if key in vision_keys})
        with torch.no_grad():
            self.logit_scale.copy_(state_dict["logit_scale"].reshape(()))

    @classmethod
    def from_clip_model(cls, model: CLIPModel) -> ClipTwoTower:
        """A two-tower with the config and weights of a transformers `CLIPModel` (outputs are identical)."""
        two_tower = cls(model_config_from_hf(model.config))
        two_tower.load_clip_state_dict(model.state_dict())
        return two_tower.to(dtype=model.dtype)


def _first(keys: list[str], count: int = 5) -> str:
    return f"{keys[:count]}{' ...' if len(keys) > count else ''}"


def count_parameters(config: ClipModelConfig) -> int:
    """Number of parameters of `ClipTwoTower(config)`, counted on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        model = ClipTwoTower(config)
    return sum(parameter.numel() for parameter in model.parameters())
