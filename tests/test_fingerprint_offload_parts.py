"""`WeightsWatch`, `weights_hash` and `offloaded_tensor` on weights that accelerate keeps off the
module, one way of keeping them at a time, on modules of one or two linear layers (no pipeline):
accelerate's own `.dat` files (`disk_offload`), a safetensors checkpoint read in place (index
entries with `safetensors_file` and `weight_name`, as transformers' `offload_folder` writes
them), a layer offloaded on its own (its offload hook second in a `SequentialHook`), and a layer
shared under two names under sequential offload. The references are the same weights not
offloaded."""

from __future__ import annotations

import os
from pathlib import Path

import accelerate
import torch
from accelerate.utils import OffloadedWeightsLoader
from safetensors.torch import save_file
from torch import nn

from clipcond.fingerprint import WeightsWatch, offloaded_tensor, weights_hash

CPU = torch.device("cpu")


class Twin(nn.Module):
    """Two linear layers of one shape, so a weight can be read in another's place."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Linear(3, 3)
        self.second = nn.Linear(3, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(inputs))


def _twin_with(values: dict[str, torch.Tensor]) -> Twin:
    twin = Twin()
    twin.load_state_dict(values)
    return twin


def _copies(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict in tensors of their own."""
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def _watched_across_a_forward(module: nn.Module, plain_hash: str) -> tuple[WeightsWatch, tuple]:
    """A watch of the offloaded `module` and its first state, checked to stay the same across a
    forward (the hooks load the values and put meta tensors back) and to hash as the plain weights."""
    watch = WeightsWatch([module])
    first = watch.state()
    module(torch.ones(1, 3))
    assert watch.state() == first
    assert watch.content_hash() == plain_hash
    return watch, first


def test_weights_in_accelerates_dat_files_are_watched_by_file_and_hashed_by_value(tmp_path: Path) -> None:
    module = Twin()
    values = _copies(module)
    plain_hash = weights_hash([module])
    accelerate.disk_offload(module, tmp_path, execution_device=CPU)
    assert {weight.device.type for weight in module.parameters()} == {"meta"}
    assert sorted(path.name for path in tmp_path.glob("*.dat")) == [f"{name}.dat" for name in sorted(values)]
    watch, first = _watched_across_a_forward(module, plain_hash)  # each weight loaded from its file

    # new values written into one file in place: the same size and inode, a later write time
    path = tmp_path / "second.weight.dat"
    before = path.stat()
    values["second.weight"] = torch.full((3, 3), 0.5)
    with open(path, "r+b") as stream:
        stream.write(values["second.weight"].numpy().tobytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert (path.stat().st_size, path.stat().st_ino) == (before.st_size, before.st_ino)
    assert watch.state() != first
    expected = _twin_with(values)
    assert torch.equal(module(torch.ones(1, 3)), expected(torch.ones(1, 3)))
    assert watch.content_hash() == weights_hash([expected])


def test_weights_read_from_a_safetensors_file_follow_the_entry_each_is_read_from(tmp_path: Path) -> None:
    """Two weights of one file keep the file's size, write time and inode when their index
    entries are swapped; what each is read from is part of its mark."""
    module = Twin()
    values = _copies(module)
    plain_hash = weights_hash([module])
    checkpoint = tmp_path / "model.safetensors"
    stored = {f"stored.{name}": tensor for name, tensor in values.items()}
    save_file(stored, checkpoint)
    index = {
        name: {"safetensors_file": str(checkpoint), "weight_name": f"stored.{name}", "dtype": "float32"}
        for name in values
    }
    accelerate.cpu_offload(module, CPU, state_dict=OffloadedWeightsLoader(index=index, save_folder=str(tmp_path)))
    watch, first = _watched_across_a_forward(module, plain_hash)

    index["first.weight"]["weight_name"], index["second.weight"]["weight_name"] = (
        "stored.second.weight",
        "stored.first.weight",
    )
    assert watch.state() != first
    swapped = _twin_with({**values, "first.weight": values["second.weight"], "second.weight": values["first.weight"]})
    assert torch.equal(module(torch.ones(1, 3)), swapped(torch.ones(1, 3)))
    assert watch.content_hash() == weights_hash([swapped])


def test_a_layer_offloaded_on_its_own_is_read_through_the_second_of_its_hooks() -> None:
    """`cpu_offload` of a bare layer gives it an input-and-output hook, then the offload hook:
    one `SequentialHook`, whose offloading member holds the values."""
    layer = nn.Linear(2, 2)
    values = _copies(layer)
    plain_hash = weights_hash([layer])
    accelerate.cpu_offload(layer, CPU)
    hooks = layer._hf_hook.hooks
    assert [hook.offload for hook in hooks] == [False, True]
    parts = dict(layer.named_modules(remove_duplicate=False))
    assert torch.equal(offloaded_tensor(parts, "weight", layer.weight), values["weight"])
    assert weights_hash([layer]) == plain_hash
    watch = WeightsWatch([layer])
    first = watch.state()
    with torch.no_grad():
        hooks[1].weights_map["weight"].mul_(2.0)
    assert watch.state() != first


def test_a_weight_no_hook_offloads_has_no_offloaded_values() -> None:
    layer = nn.Linear(2, 2)
    assert offloaded_tensor(dict(layer.named_modules(remove_duplicate=False)), "weight", layer.weight) is None
    with torch.device("meta"):
        empty = nn.Linear(2, 2)
    assert offloaded_tensor(dict(empty.named_modules(remove_duplicate=False)), "weight", empty.weight) is None


class SharedTable(nn.Module):
    """One layer under two names, as transformers 4's T5 holds its token table (`shared` and
    `encoder.embed_tokens`): the state dict names its weights twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(3, 3)
        self.encoder = nn.Sequential()
        self.encoder.add_module("embed_tokens", self.shared)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.shared(inputs))


def test_a_module_shared_under_two_names_hashes_offloaded_as_its_plain_self() -> None:
    module = SharedTable()
    assert "encoder.embed_tokens.weight" in module.state_dict()
    plain_hash = weights_hash([module])
    accelerate.cpu_offload(module, CPU)
    assert module.shared.weight.device.type == "meta"
    assert weights_hash([module]) == plain_hash
    _watched_across_a_forward(module, plain_hash)


def test_a_buffer_an_offloading_hook_leaves_in_place_is_watched_where_it_is() -> None:
    """`cpu_offload` keeps buffers on the execution device (`offload_buffers=False`): the
    forward reads the buffer itself, not the hook's copy, so a write to it is a change."""
    module = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval()
    # the hook's copy apart from the module's tensors, as on an accelerator (on the CPU, the
    # copy `cpu_offload` makes by default is the buffer itself)
    accelerate.cpu_offload(module, CPU, state_dict=_copies(module))
    norm = module[1]
    assert norm.weight.device.type == "meta" and norm.running_mean.device.type == "cpu"
    watch = WeightsWatch([module])
    first = watch.state()
    before = module(torch.ones(1, 2))
    with torch.no_grad():
        norm.running_mean.add_(1.0)
    assert not torch.equal(module(torch.ones(1, 2)), before)
    assert watch.state() != first
