"""CUDA generator states in a checkpoint, on a machine without CUDA: torch.cuda is stood in for
by the calls the checkpoint makes (is_available, device_count, get/set_rng_state_all), each
device's state a 16-byte tensor as torch's CUDA generator gives.

A run resumed with the GPUs it was written with gets every device's state back; one resumed
with fewer or more (or on the CPU) gets those the two have in common and a warning naming both
counts, never an error after the model is loaded; a damaged CUDA state is refused before
anything is loaded."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipcond.training.checkpoint import CheckpointDamaged, load_checkpoint, load_newest_intact, save_checkpoint


def cuda_state(device: int) -> torch.Tensor:
    return torch.full((16,), device, dtype=torch.uint8)


class FakeCuda:
    """`devices` visible GPUs, with the states set on them recorded; setting a state on a
    device that is not there raises as torch does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, devices: int) -> None:
        self.devices = devices
        self.restored: list[torch.Tensor] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.devices > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.devices)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [cuda_state(d) for d in range(self.devices)])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_rng_state_all)

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for device, state in enumerate(states):
            if device >= self.devices:
                raise RuntimeError("CUDA error: invalid device ordinal")
            self.restored.append(state)


def linear(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 3)


def test_every_cuda_generator_state_is_restored_to_its_device_past_ten_devices(tmp_path, monkeypatch):
    cuda = FakeCuda(monkeypatch, devices=11)
    model = linear(0)
    folder = save_checkpoint(tmp_path, 1, {"model": model})
    load_checkpoint(folder, {"model": model})
    assert [int(state[0]) for state in cuda.restored] == list(range(11))
    assert all(torch.equal(state, cuda_state(device)) for device, state in enumerate(cuda.restored))


@pytest.mark.parametrize(("written_with", "resumed_with"), [(2, 1), (1, 2), (2, 0), (0, 1)])
def test_another_gpu_count_resumes_with_the_common_states_and_a_warning_naming_both(
    tmp_path, monkeypatch, written_with, resumed_with
):
    cuda = FakeCuda(monkeypatch, devices=written_with)
    saved = linear(0)
    save_checkpoint(tmp_path, 1, {"model": saved})
    cuda.devices = resumed_with
    fresh = linear(1)
    with pytest.warns(
        UserWarning, match=rf"CUDA generator states for {written_with} device\(s\) and this process sees {resumed_with}"
    ):
        point = load_newest_intact(tmp_path, {"model": fresh})
    assert point.step == 1
    assert torch.equal(fresh.weight, saved.weight)
    common = min(written_with, resumed_with)
    assert [int(state[0]) for state in cuda.restored] == list(range(common))


def test_the_same_gpu_count_resumes_without_a_warning(tmp_path, monkeypatch, recwarn):
    FakeCuda(monkeypatch, devices=2)
    save_checkpoint(tmp_path, 1, {"model": linear(0)})
    load_newest_intact(tmp_path, {"model": linear(1)})
    assert not [warning for warning in recwarn if "CUDA" in str(warning.message)]


def damage_cuda_states(folder, change) -> None:
    path = folder / "rng.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda t: t.update(torch_cuda_1=torch.zeros(5056, dtype=torch.uint8)),
            r"torch_cuda_1 is a torch.uint8 tensor of shape \[5056\]",
        ),
        (lambda t: t.update(torch_cuda_0=torch.zeros(4, dtype=torch.int32)), "torch_cuda_0 is a torch.int32 tensor"),
        (lambda t: t.update(torch_cuda_0=torch.zeros(2, 8, dtype=torch.uint8)), r"shape \[2, 8\]"),
        (
            lambda t: t.update(torch_cuda_x=t.pop("torch_cuda_1")),
            r"\['torch_cuda_0', 'torch_cuda_x'\], not \['torch_cuda_0', 'torch_cuda_1'\]",
        ),
        (lambda t: t.update(torch_cuda_2=t.pop("torch_cuda_1")), r"not \['torch_cuda_0', 'torch_cuda_1'\]"),
    ],
    ids=["cpu-sized", "int32", "two-dimensional", "not-a-number", "a-gap"],
)
def test_a_damaged_cuda_state_is_refused_before_anything_is_loaded(tmp_path, monkeypatch, change, named):
    cuda = FakeCuda(monkeypatch, devices=2)
    folder = save_checkpoint(tmp_path, 1, {"model": linear(0)})
    damage_cuda_states(folder, change)
    fresh = linear(1)
    before = fresh.weight.detach().clone()
    with pytest.raises(CheckpointDamaged, match=named):
        load_checkpoint(folder, {"model": fresh})
    assert torch.equal(fresh.weight, before)
    assert cuda.restored == []
