"""Checkpoints (atomic safetensors, exact resume, pickle refusal, damage found before loading and
passed over for the previous checkpoint) and optimiser conventions."""

from __future__ import annotations

import math
import random
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from clipcond.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_newest_intact,
    load_pickle,
    save_checkpoint,
)
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


# ---------------------------------------------------------------- damaged checkpoints


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_shape(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors["linear.weight"] = torch.zeros(8, 9)
    save_file(tensors, str(path))


DAMAGE = {
    "truncated module file": (
        lambda folder: _truncate(folder / "model.safetensors"),
        "model.safetensors cannot be read",
    ),
    "truncated optimizer file": (
        lambda folder: _truncate(folder / "optimizer.safetensors"),
        "optimizer.safetensors cannot be read",
    ),
    "missing optimizer file": (
        lambda folder: (folder / "optimizer.safetensors").unlink(),
        "optimizer.safetensors is missing",
    ),
    "missing rng file": (lambda folder: (folder / "rng.safetensors").unlink(), "rng.safetensors is missing"),
    "missing trainer.json": (lambda folder: (folder / "trainer.json").unlink(), "trainer.json is missing"),
    "trainer.json not JSON": (
        lambda folder: (folder / "trainer.json").write_bytes(b'{"step": 4, \xff'),
        "trainer.json does not parse",
    ),
    "trainer.json of another step": (
        lambda folder: (folder / "trainer.json").write_text(
            (folder / "trainer.json").read_text().replace('"step": 4', '"step": 7')
        ),
        "trainer.json names step 7, the folder step 4",
    ),
    "trainer.json without RNG states": (
        lambda folder: (folder / "trainer.json").write_text(
            (folder / "trainer.json").read_text().replace('"python"', '"pithon"')
        ),
        "no usable random-number states",
    ),
    "wrong-shape tensor": (
        lambda folder: _wrong_shape(folder / "model.safetensors"),
        "linear.weight is [8, 9], the model's [8, 8]",
    ),
}


def _run_with_checkpoints(run_dir, steps=(2, 4)):
    """Train Tiny for max(steps) steps from a fixed start, with a checkpoint at each of `steps`;
    returns the weights after each of them."""
    random.seed(1), np.random.seed(1)
    model, optimizer, scheduler = _setup()
    weights = {}
    for step in range(1, max(steps) + 1):
        _step(model, optimizer, scheduler)
        if step in steps:
            save_checkpoint(run_dir, step, {"model": model}, optimizer, scheduler, keep=len(steps))
            weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return weights


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_previous_one(tmp_path, damage):
    from clipcond.training.checkpoint import CheckpointDamaged, load_newest_intact

    weights = _run_with_checkpoints(tmp_path)
    newest = tmp_path / "checkpoints" / "step-000000004"
    harm, problem = DAMAGE[damage]
    harm(newest)

    model, optimizer, scheduler = _setup(seed=99)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointDamaged, match=re.escape(problem)):
        load_checkpoint(newest, {"model": model}, optimizer, scheduler)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded

    point = load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler)
    assert point.step == 2 and point.folder.name == "step-000000002"
    assert [(folder, problem in text) for folder, text in point.passed_over] == [(newest, True)]
    assert all(torch.equal(weights[2][k], v) for k, v in model.state_dict().items())


def test_no_intact_checkpoint_is_one_error_naming_each_problem(tmp_path):
    from clipcond.training.checkpoint import NoIntactCheckpoint, load_newest_intact

    _run_with_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "step-000000004" / "trainer.json").unlink()
    _truncate(tmp_path / "checkpoints" / "step-000000002" / "model.safetensors")
    model, optimizer, scheduler = _setup()
    with pytest.raises(NoIntactCheckpoint) as error:
        load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler)
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, ValueError)
    assert "step-000000004: trainer.json is missing" in message
    assert "step-000000002: model.safetensors cannot be read" in message
    assert load_newest_intact(tmp_path / "elsewhere", {"model": model}) is None  # no checkpoint: a fresh start


def test_a_module_of_another_size_does_not_load(tmp_path):
    from clipcond.training.checkpoint import CheckpointDamaged

    model, optimizer, scheduler = _setup()
    folder = save_checkpoint(tmp_path, 1, {"model": model}, optimizer, scheduler)
    other = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(CheckpointDamaged, match="tensors the model does not have: linear.bias"):
        load_checkpoint(folder, {"model": other})
    bigger = torch.optim.AdamW([nn.Parameter(torch.zeros(3))] + list(model.parameters()), lr=1.0)
    with pytest.raises(CheckpointDamaged, match=r"parameter groups of \[1, 4\] parameters, the run's optimizer \[6\]"):
        load_checkpoint(folder, {"model": model}, bigger)
    _step(model, optimizer, scheduler)  # the optimizer now holds moments of each parameter's shape
    folder = save_checkpoint(tmp_path, 2, {"model": model}, optimizer, scheduler)
    decay, free = param_groups(model, 0.1)
    wider = torch.optim.AdamW([{**decay, "params": [nn.Parameter(torch.zeros(9, 8))]}, free], lr=1.0)
    with pytest.raises(CheckpointDamaged, match=r"0\.exp_avg is \[8, 8\], its parameter \[9, 8\]"):
        load_checkpoint(folder, {}, wider)


def test_the_latest_pointer_is_only_a_hint(tmp_path):
    _run_with_checkpoints(tmp_path)
    pointer = tmp_path / "checkpoints" / "latest"
    pointer.write_bytes(b"\xff\xfe step-000000002")
    assert latest_checkpoint(tmp_path).name == "step-000000004"
    pointer.write_text("step-000000099")
    assert latest_checkpoint(tmp_path).name == "step-000000004"
    pointer.unlink()
    assert latest_checkpoint(tmp_path).name == "step-000000004"


def test_unfinished_writes_are_removed(tmp_path):
    from clipcond.training.checkpoint import remove_unfinished_writes

    _run_with_checkpoints(tmp_path)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000000006-4242").mkdir()
    (root / ".tmp-step-000000006-4242" / "model.safetensors").write_bytes(b"half")
    (root / ".latest-4242").write_text("step-000000006")
    removed = remove_unfinished_writes(tmp_path)
    assert sorted(path.name for path in removed) == [".latest-4242", ".tmp-step-000000006-4242"]
    assert sorted(path.name for path in root.iterdir()) == ["latest", "step-000000002", "step-000000004"]


def test_a_damaged_later_checkpoint_never_costs_the_new_one(tmp_path):
    """keep=1 with a leftover folder of a later step: the new checkpoint stays, older ones go."""
    model, optimizer, scheduler = _setup()
    save_checkpoint(tmp_path, 9, {"model": model}, optimizer, keep=1)
    (tmp_path / "checkpoints" / "step-000000009" / "trainer.json").unlink()
    for step in (6, 7):
        save_checkpoint(tmp_path, step, {"model": model}, optimizer, keep=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-000000007", "step-000000009"]


def test_a_step_entry_that_is_a_file_is_a_damaged_checkpoint(tmp_path):
    """A file named ``checkpoints/step-<N>``: listed, passed over as damaged, set aside, and
    replaced or deleted by the checkpoints written after it (it was invisible to the resume,
    whose checkpoint of step N then failed on it: NotADirectoryError)."""
    from clipcond.training.checkpoint import checkpoint_folders, load_newest_intact, set_aside_damaged

    weights = _run_with_checkpoints(tmp_path)
    newest = tmp_path / "checkpoints" / "step-000000004"
    shutil.rmtree(newest)
    newest.write_bytes(b"")
    assert checkpoint_folders(tmp_path) == [newest, tmp_path / "checkpoints" / "step-000000002"]
    model, optimizer, scheduler = _setup(seed=99)
    point = load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler)
    assert point.step == 2 and [folder for folder, _ in point.passed_over] == [newest]
    assert "is not a checkpoint folder" in point.passed_over[0][1]
    assert all(torch.equal(weights[2][k], v) for k, v in model.state_dict().items())
    assert set_aside_damaged(newest).is_file() and not newest.exists()
    newest.write_bytes(b"")  # again, and now written over by the step's checkpoint
    assert save_checkpoint(tmp_path, 4, {"model": model}, optimizer, scheduler, keep=2).is_dir()
    load_checkpoint(newest, {"model": model}, optimizer, scheduler)
    (tmp_path / "checkpoints" / "step-000000003").write_bytes(b"")  # an older entry, deleted when not kept
    save_checkpoint(tmp_path, 5, {"model": model}, optimizer, scheduler, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["damaged-step-000000004", "latest", "step-000000004", "step-000000005"]


def test_load_newest_intact_restores_the_scheduler(tmp_path):
    _run_with_checkpoints(tmp_path)
    model, optimizer, scheduler = _setup(seed=99)
    point = load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler)
    assert point.step == 4
    assert scheduler.last_epoch == 4 and scheduler.state_dict()["_step_count"] == 5


def test_load_newest_intact_passes_over_a_checkpoint_whose_extra_the_loop_refuses(tmp_path):
    _run_with_checkpoints(tmp_path)
    model, optimizer, scheduler = _setup(seed=99)
    seen = []

    def check(extra):
        seen.append(extra)
        return "another data order" if len(seen) == 1 else None

    point = load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler, check_extra=check)
    assert point.step == 2 and len(seen) == 2
    folder, problem = point.passed_over[0]
    assert folder.name == "step-000000004" and "another data order" in problem


def test_a_passed_over_problem_does_not_repeat_its_folder(tmp_path):
    _run_with_checkpoints(tmp_path)
    newest = tmp_path / "checkpoints" / "step-000000004"
    (newest / "trainer.json").unlink()
    model, optimizer, scheduler = _setup(seed=99)
    point = load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler)
    assert point.passed_over == [(newest, "trainer.json is missing")]


def test_load_newest_intact_returns_the_checkpoint_s_extra(tmp_path):
    model, optimizer, scheduler = _setup()
    _step(model, optimizer, scheduler)
    save_checkpoint(tmp_path, 1, {"model": model}, optimizer, scheduler, extra={"samples": 4})
    point = load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler)
    assert point.step == 1 and point.extra == {"samples": 4}
