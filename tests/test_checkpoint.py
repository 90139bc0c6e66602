"""Checkpoints (atomic safetensors, exact resume, pickle refusal) and optimiser conventions."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from clipcond.training.checkpoint import latest_checkpoint, load_checkpoint, load_pickle, save_checkpoint
from clipcond.training.optim import param_groups, warmup_cosine


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x):
        return self.norm(self.linear(x)) * self.logit_scale.exp()


def _setup(seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=10)
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    # Data drawn from every RNG the loop may use, so restoring them matters.
    x = torch.randn(4, 8) + random.random() + float(np.random.rand())
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    random.seed(1), np.random.seed(1)
    model, optimizer, scheduler = _setup()
    for _ in range(6):
        _step(model, optimizer, scheduler)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    random.seed(1), np.random.seed(1)
    model, optimizer, scheduler = _setup()
    for _ in range(3):
        _step(model, optimizer, scheduler)
    save_checkpoint(tmp_path, 3, {"model": model}, optimizer, scheduler, extra={"samples": 12})
    for _ in range(5):  # the run goes on (and is then lost), disturbing every RNG
        _step(model, optimizer, scheduler)

    model, optimizer, scheduler = _setup(seed=99)
    state = load_checkpoint(latest_checkpoint(tmp_path), {"model": model}, optimizer, scheduler)
    assert state == {"step": 3, "extra": {"samples": 12}}
    for _ in range(3):
        _step(model, optimizer, scheduler)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import clipcond.training.checkpoint as checkpoint

    model, optimizer, scheduler = _setup()
    save_checkpoint(tmp_path, 1, {"model": model}, optimizer, scheduler)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"model": model}, optimizer, scheduler)
    assert latest_checkpoint(tmp_path).name == "step-000000001"
    assert not (tmp_path / "checkpoints" / "step-000000002").exists()


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model, optimizer, scheduler = _setup()
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, {"model": model}, optimizer, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-000000003", "step-000000004"]
    assert all(
        p.suffix == ".safetensors" or p.name == "trainer.json" for p in (tmp_path / "checkpoints" / names[-1]).iterdir()
    )


def test_pickle_checkpoints_need_explicit_trust(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="trust_pickle"):
        load_pickle(path)
    assert torch.equal(load_pickle(path, trust_pickle=True)["w"], torch.ones(2))


def test_no_weight_decay_on_norms_biases_and_temperature():
    model = Tiny()
    decay, free = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"linear.weight"}
    assert {names[id(p)] for p in free["params"]} == {"linear.bias", "norm.weight", "norm.bias", "logit_scale"}
    assert decay["weight_decay"] == 0.2 and free["weight_decay"] == 0.0


def test_warmup_then_cosine():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0)
    assert rates[8] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rates[12] == pytest.approx(0.1) and rates[13] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
