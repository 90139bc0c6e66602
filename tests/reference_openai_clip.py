"""OpenAI's CLIP (ViT variant) in OpenAI's parameter layout, written independently of transformers.

This is the other side of the conversion tests: `OpenAIStyleCLIP(...).state_dict()` has the
key names and shapes of an OpenAI checkpoint (`visual.conv1.weight`,
`transformer.resblocks.N.attn.in_proj_weight`, `text_projection`, ...), which is also what
open_clip's plain `CLIP` writes. Nothing here comes from transformers: attention is torch's
`nn.MultiheadAttention` with its stacked q/k/v input projection, projections are raw matrices
applied as `x @ proj`, the text is causal through an additive mask and is pooled at
argmax(token ids), where OpenAI's tokenizer puts <|endoftext|> (the largest id).

Layout, sequence-first inside the transformers as in OpenAI's code:

    image (B, 3, S, S) -conv1-> (B, W, S/p, S/p) -> tokens (B, 1 + (S/p)^2, W) with the class token
        -> + positional_embedding -> ln_pre -> transformer -> ln_post(class token) @ proj -> (B, E)
    ids (B, L) -> token_embedding + positional_embedding[:L] -> causal transformer -> ln_final
        -> the row at argmax(ids) @ text_projection -> (B, E)
    logits_per_image = exp(logit_scale) * normalise(image) @ normalise(text).T
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). Tensors are (seq, batch, width)."""

    def __init__(self, width: int, heads: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", activation()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock`s under the name `resblocks`."""

    def __init__(self, width: int, layers: int, heads: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, activation) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    """The image tower: patchify with a bias-free convolution, prepend a class token, encode, project."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        scale = width**-0.5
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, activation)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (batch, 3, size, size) -> (batch, output_dim), unnormalised."""
        patches = self.conv1(pixels).flatten(2).transpose(1, 2)  # (batch, grid*grid, width)
        class_token = self.class_embedding.expand(patches.shape[0], 1, -1)
        x = torch.cat([class_token, patches], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAIStyleCLIP(nn.Module):
    """OpenAI's ViT CLIP: `visual` tower, text tower at the top level, `logit_scale`."""

    def __init__(
        self,
        embed_dim: int,
        image_size: int,
        patch_size: int,
        vision_width: int,
        vision_layers: int,
        vision_heads: int,
        context_length: int,
        vocab_size: int,
        text_width: int,
        text_layers: int,
        text_heads: int,
        quick_gelu: bool = True,
    ) -> None:
        super().__init__()
        activation = QuickGELU if quick_gelu else nn.GELU
        self.visual = VisionTransformer(
            image_size, patch_size, vision_width, vision_layers, vision_heads, embed_dim, activation
        )
        self.transformer = Transformer(text_width, text_layers, text_heads, activation)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(text_width**-0.5 * torch.randn(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @staticmethod
    def causal_mask(length: int) -> torch.Tensor:
        """(length, length) additive mask: -inf above the diagonal, so token i sees tokens 0..i."""
        return torch.full((length, length), float("-inf")).triu(1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (batch, 3, size, size) -> (batch, embed_dim), unnormalised."""
        return self.visual(pixels)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (batch, length) with <|endoftext|> as the largest id of each row -> (batch, embed_dim)."""
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        x = self.transformer(x.transpose(0, 1), attn_mask=self.causal_mask(length)).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits_per_image (images, texts), logits_per_text (texts, images))."""
        image = F.normalize(self.encode_image(pixels), dim=-1)
        text = F.normalize(self.encode_text(ids), dim=-1)
        logits_per_image = self.logit_scale.exp() * image @ text.t()
        return logits_per_image, logits_per_image.t()


# The attributes of OpenAI's top-level CLIP that open_clip's `CustomTextCLIP` moves into its `text` submodule.
_TEXT_TOWER_NAMES = (
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "text_projection",
    "attn_mask",
)


def as_custom_text_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under open_clip `CustomTextCLIP` names: the text tower's keys gain a `text.` prefix."""
    return {(f"text.{key}" if key.startswith(_TEXT_TOWER_NAMES) else key): value for key, value in state_dict.items()}


def tiny_openai_clip(
    vision_width: int = 128, vision_heads: int = 2, text_heads: int = 2, quick_gelu: bool = True, seed: int = 0
) -> OpenAIStyleCLIP:
    """A tiny OpenAI-layout CLIP (embed 24, 32-pixel images in 8-pixel patches, context 16, text
    width 32, 2 layers per tower) with every weight random: biases and LayerNorms too (zeros and
    ones at init, under which a mixed-up bias or norm would go unnoticed), logit scale 3."""
    torch.manual_seed(seed)
    model = OpenAIStyleCLIP(
        embed_dim=24,
        image_size=32,
        patch_size=8,
        vision_width=vision_width,
        vision_layers=2,
        vision_heads=vision_heads,
        context_length=16,
        vocab_size=49408,
        text_width=32,
        text_layers=2,
        text_heads=text_heads,
        quick_gelu=quick_gelu,
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * torch.randn_like(module.weight))
        model.logit_scale.fill_(3.0)
    return model.eval()
