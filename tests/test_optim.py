"""The optimiser every trainer builds (clipcond.training.optim): which parameters decay, the
warm-up and cosine schedule at its edges, AdamW as `adamw_with_warmup_cosine` sets it up."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipcond.training.optim import adamw_with_warmup_cosine, is_decay_free, param_groups, warmup_cosine


class _Named(nn.Module):
    """Parameters whose names and shapes test each rule of `is_decay_free` on its own: every one
    is 2-D, so only its name can make it decay-free."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.proj.bias = nn.Parameter(torch.zeros(2, 3))  # a 2-D bias
        self.logit_scale = nn.Parameter(torch.zeros(1, 1))
        self.logit_bias = nn.Parameter(torch.zeros(1, 1))
        self.bias_table = nn.Parameter(torch.zeros(2, 3))  # "bias" in its name, but not a `.bias`


def test_each_name_rule_makes_a_2d_parameter_decay_free_on_its_own():
    model = _Named()
    free = {name for name, parameter in model.named_parameters() if is_decay_free(name, parameter)}
    assert free == {"proj.bias", "logit_scale", "logit_bias"}
    assert is_decay_free("anything", torch.zeros(4)) and is_decay_free("anything", torch.zeros(()))
    assert not is_decay_free("anything", torch.zeros(4, 1))


def test_frozen_parameters_are_left_out_wherever_they_come():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.LayerNorm(2))
    model[0].weight.requires_grad_(False)  # the first parameter named: the ones after it still count
    model[2].bias.requires_grad_(False)
    decay, free = param_groups(model, 0.3)
    assert decay["params"] == [model[1].weight] and decay["weight_decay"] == 0.3
    assert free["params"] == [model[0].bias, model[1].bias, model[2].weight] and free["weight_decay"] == 0.0


def _rates(warmup: int, total: int, steps: int, min_lr_ratio: float = 0.0) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup, total, min_lr_ratio)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_the_schedule_at_its_edges():
    assert _rates(0, 1, 3) == pytest.approx([1.0, 0.0, 0.0])  # no warm-up, one step: full rate, then the floor
    assert _rates(2, 3, 5, 0.2) == pytest.approx([0.5, 1.0, 1.0, 0.2, 0.2])  # one step after warm-up
    assert _rates(3, 3, 3) == pytest.approx([1 / 3, 2 / 3, 1.0])  # warm-up as long as the run: all of it
    cosine = _rates(1, 5, 6)
    assert cosine == pytest.approx([1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)])


@pytest.mark.parametrize("warmup, total", [(-1, 10), (0, 0), (2, -3)])
def test_a_schedule_without_steps_is_refused(warmup, total):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=rf"^need warmup_steps >= 0 and total_steps >= 1, got {warmup}, {total}$"):
        warmup_cosine(optimizer, warmup, total)


def test_adamw_with_warmup_cosine_sets_up_fused_adamw_over_the_two_groups():
    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    optimizer, scheduler = adamw_with_warmup_cosine(
        model, lr=0.01, weight_decay=0.05, warmup_steps=2, total_steps=6, betas=[0.8, 0.95], eps=1e-6
    )
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.05, 0.0]
    assert optimizer.param_groups[0]["params"] == [model[0].weight]
    assert optimizer.param_groups[1]["params"] == [model[0].bias, model[1].weight, model[1].bias]
    for group in optimizer.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
        assert group["lr"] == pytest.approx(0.005) and group["initial_lr"] == 0.01  # the first warm-up step
    assert scheduler.optimizer is optimizer
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.01 * factor for factor in _rates(2, 6, 7)])


def test_adamw_with_warmup_cosine_defaults_to_torchs_betas_and_eps():
    optimizer, _ = adamw_with_warmup_cosine(nn.Linear(2, 2), lr=0.1, weight_decay=0.0, warmup_steps=0, total_steps=2)
    reference = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    assert optimizer.defaults["betas"] == reference.defaults["betas"]
    assert optimizer.defaults["eps"] == reference.defaults["eps"]
