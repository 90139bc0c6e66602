"""Accumulation that keeps the contrastive batch whole equals one step on the full batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipcond.training.clip.contrastive_step import contrastive_backward


def _loss(scale):
    def loss_fn(images, texts):
        images, texts = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
        logits = scale.exp() * images @ texts.T
        labels = torch.arange(len(images))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return loss_fn


def test_accumulated_gradients_equal_the_full_batch():
    torch.manual_seed(0)
    image_tower, text_tower = nn.Linear(6, 4), nn.Embedding(20, 4)
    scale = nn.Parameter(torch.tensor(2.0))
    pixels, tokens = torch.randn(12, 6), torch.randint(0, 20, (12,))

    def encode(batch):
        return image_tower(batch["pixels"]), text_tower(batch["tokens"])

    loss_fn = _loss(scale)
    full = contrastive_backward(encode, loss_fn, [{"pixels": pixels, "tokens": tokens}])
    expected = [p.grad.clone() for p in (*image_tower.parameters(), *text_tower.parameters(), scale)]
    for p in (*image_tower.parameters(), *text_tower.parameters(), scale):
        p.grad = None
    micro = [{"pixels": pixels[i : i + 4], "tokens": tokens[i : i + 4]} for i in range(0, 12, 4)]
    accumulated = contrastive_backward(encode, loss_fn, micro)
    torch.testing.assert_close(accumulated, full, rtol=0, atol=1e-6)
    got = [p.grad for p in (*image_tower.parameters(), *text_tower.parameters(), scale)]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The per-micro-batch loss (naive accumulation) is a different, smaller-batch objective.
    naive = sum(loss_fn(*encode(m)) for m in micro) / len(micro)
    assert abs(naive.item() - full.item()) > 1e-3
