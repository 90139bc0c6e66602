"""Generator states in a checkpoint across devices and processes, on a machine without CUDA:
torch.cuda is stood in for by the calls the checkpoint makes (is_available, device_count,
get/set_rng_state(_all)), each device's state a 16-byte tensor as torch's CUDA generator gives.

A run resumed with the GPUs it was written with gets every device's state back; one resumed
with fewer or more (or on the CPU) gets those the two have in common and a warning naming both
counts, never an error after the model is loaded; a damaged CUDA state is refused before
anything is loaded. In a run of several processes each one resumes its own generators: rank 0
alone cannot see the others' devices' generators advance."""

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
        self.set_on: dict[int, torch.Tensor] = {}  # device -> the state set on it alone
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.devices > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.devices)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [cuda_state(d) for d in range(self.devices)])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_rng_state_all)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state(100 + torch.device(device).index))
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for device, state in enumerate(states):
            if device >= self.devices:
                raise RuntimeError("CUDA error: invalid device ordinal")
            self.restored.append(state)

    def set_rng_state(self, state: torch.Tensor, device: torch.device) -> None:
        self.set_on[torch.device(device).index] = state


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


def cpu_state_after(draws: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    torch.randn(draws, generator=generator)
    return generator.get_state()


@pytest.mark.parametrize("through_newest_intact", [False, True], ids=["load_checkpoint", "load_newest_intact"])
@pytest.mark.parametrize("process_index", [0, 1])
def test_each_process_resumes_its_own_generators(tmp_path, monkeypatch, process_index, through_newest_intact):
    """Each rank's own CPU generator and its own device's CUDA generator, as the loop gathers them
    (`own_generator_states` on each rank), go back to that rank; the main process's view of the
    other devices is restored first and overridden for the rank's own device."""
    from clipcond.training.rng_state import own_generator_states

    cuda = FakeCuda(monkeypatch, devices=2)
    ranks = []
    for rank in range(2):
        torch.set_rng_state(cpu_state_after(rank + 1))
        ranks.append(own_generator_states(torch.device("cuda", rank)))
    assert [int(states["torch_cuda"][0]) for states in ranks] == [100, 101]
    folder = save_checkpoint(tmp_path, 1, {"model": linear(0)}, process_rng=ranks)

    torch.manual_seed(123)
    own = {"process_index": process_index, "device": torch.device("cuda", process_index)}
    if through_newest_intact:
        load_newest_intact(tmp_path, {"model": linear(1)}, **own)
    else:
        load_checkpoint(folder, {"model": linear(1)}, **own)
    assert torch.equal(torch.get_rng_state(), cpu_state_after(process_index + 1))
    assert [int(state[0]) for state in cuda.restored] == [0, 1]  # rank 0's view of every device
    assert list(cuda.set_on) == [process_index] and int(cuda.set_on[process_index][0]) == 100 + process_index


def test_without_a_process_index_the_main_process_states_are_restored(tmp_path):
    ranks = [{"torch_cpu": cpu_state_after(1)}, {"torch_cpu": cpu_state_after(2)}]
    model = linear(0)
    torch.set_rng_state(cpu_state_after(5))
    folder = save_checkpoint(tmp_path, 1, {"model": model}, process_rng=ranks)
    torch.manual_seed(123)
    load_checkpoint(folder, {"model": linear(1)})
    assert torch.equal(torch.get_rng_state(), cpu_state_after(5))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda t: t.pop("process_0.torch_cpu"), r"processes \[1\], not of processes 0 to 0"),
        (
            lambda t: t.update({"process_1.torch_cuda": torch.zeros(5056, dtype=torch.uint8)}),
            r"process_1.torch_cuda is a torch.uint8 tensor of shape \[5056\]",
        ),
        (
            lambda t: t.update({"process_1.torch_cpu": torch.zeros(16, dtype=torch.uint8)}),
            r"process_1.torch_cpu is a torch.uint8 tensor of shape \[16\]",
        ),
        (
            lambda t: t.update({"process_x.torch_cpu": t["torch_cpu"].clone()}),
            "it holds 'process_x.torch_cpu', which names no generator",
        ),
    ],
    ids=["a-missing-rank", "a-cpu-sized-cuda-state", "a-cuda-sized-cpu-state", "not-a-rank"],
)
def test_damaged_process_states_are_refused_before_anything_is_loaded(tmp_path, change, named):
    ranks = [{"torch_cpu": cpu_state_after(1)}, {"torch_cpu": cpu_state_after(2)}]
    folder = save_checkpoint(tmp_path, 1, {"model": linear(0)}, process_rng=ranks)
    damage_cuda_states(folder, change)
    fresh = linear(1)
    before = fresh.weight.detach().clone()
    with pytest.raises(CheckpointDamaged, match=named):
        load_checkpoint(folder, {"model": fresh}, process_index=1)
    assert torch.equal(fresh.weight, before)


def test_the_refusals_of_a_state_name_the_kind_each_generator_takes():
    from clipcond.training.rng_state import tensors_problem

    cpu = torch.get_rng_state()
    assert tensors_problem({"torch_cpu": torch.zeros(3, dtype=torch.uint8)}) == (
        "torch_cpu is a torch.uint8 tensor of shape [3], not a generator state"
    )
    assert tensors_problem({"torch_cpu": cpu, "torch_cuda_0": torch.zeros(5, dtype=torch.uint8)}) == (
        "torch_cuda_0 is a torch.uint8 tensor of shape [5], not a CUDA generator state (16 bytes, uint8)"
    )
    # torch's CUDA generator state: a seed and an offset (16 bytes), or a seed alone (8)
    for size in (8, 16):
        assert tensors_problem({"torch_cpu": cpu, "torch_cuda_0": torch.zeros(size, dtype=torch.uint8)}) is None
    assert "not a CUDA generator state" in tensors_problem(
        {"torch_cpu": cpu, "torch_cuda_0": torch.zeros(9, dtype=torch.uint8)}
    )


def test_the_device_count_warning_whole(tmp_path, monkeypatch):
    """The warning names both counts, how many states were restored, and what to do."""
    cuda = FakeCuda(monkeypatch, devices=2)
    save_checkpoint(tmp_path, 1, {"model": linear(0)})
    cuda.devices = 1
    with pytest.warns(UserWarning) as record:
        load_newest_intact(tmp_path, {"model": linear(1)})
    [warning] = [w for w in record if "CUDA" in str(w.message)]
    assert str(warning.message) == (
        "the checkpoint holds CUDA generator states for 2 device(s) and this process sees 1: 1 restored, so random "
        "draws on CUDA differ from an uninterrupted run's (resume with the same visible GPUs for that)"
    )


def test_a_process_index_on_a_checkpoint_without_per_process_states_restores_the_main_ones(tmp_path):
    """A checkpoint written by one process (no `process_<rank>` states) resumed with a process
    index: the main process's generators come back, nothing is looked up per rank."""
    model, fresh = linear(0), linear(1)
    torch.set_rng_state(cpu_state_after(4))
    folder = save_checkpoint(tmp_path, 1, {"model": model})
    torch.manual_seed(123)
    load_checkpoint(folder, {"model": fresh}, process_index=1, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), cpu_state_after(4))


@pytest.mark.parametrize(
    ("own_cuda", "device"),
    [(False, torch.device("cuda", 0)), (True, None), (True, torch.device("cpu"))],
    ids=["no-own-cuda-state", "no-device", "a-cpu-device"],
)
def test_a_rank_sets_its_own_cuda_state_only_with_one_and_a_cuda_device(tmp_path, monkeypatch, own_cuda, device):
    cuda = FakeCuda(monkeypatch, devices=1)
    ranks = [{"torch_cpu": cpu_state_after(1)}, {"torch_cpu": cpu_state_after(2)}]
    if own_cuda:
        for rank, states in enumerate(ranks):
            states["torch_cuda"] = cuda_state(100 + rank)
    folder = save_checkpoint(tmp_path, 1, {"model": linear(0)}, process_rng=ranks)
    load_checkpoint(folder, {"model": linear(1)}, process_index=0, device=device)
    assert torch.equal(torch.get_rng_state(), cpu_state_after(1))
    assert cuda.set_on == {}
