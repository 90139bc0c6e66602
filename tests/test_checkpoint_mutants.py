"""Checkpoint files outside the step folders: `load_pickle` (safetensors read directly, pickles
refused unless trusted, read onto the CPU and safely first) and `set_aside_damaged` (a damaged
step folder renamed, replacing an older one). Written against the mutation run of issue 24
(benchmarks/results/mutation.md)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from clipcond.training.checkpoint import (
    checkpoint_folders,
    load_checkpoint,
    load_pickle,
    save_checkpoint,
    set_aside_damaged,
)


@dataclasses.dataclass
class TrainingNote:
    """A plain Python object in a pickle: `torch.load(weights_only=True)` refuses it."""

    text: str


def _save_as_if_from_cuda(obj, path, monkeypatch):
    """torch.save, with every storage tagged as saved from `cuda:0`: loading it without a
    `map_location` on a machine with no CUDA fails."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path)


@pytest.fixture
def torch_load_calls(monkeypatch):
    """The keyword arguments of every `torch.load` call (each call still loads)."""
    calls = []
    real_load = torch.load

    def recording_load(path, **kwargs):
        calls.append(kwargs)
        return real_load(path, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return calls


def test_a_safetensors_file_loads_without_trust(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.arange(3.0)}, str(path))
    loaded = load_pickle(path)
    assert list(loaded) == ["w"] and torch.equal(loaded["w"], torch.arange(3.0))


def test_the_refusal_names_the_file_and_both_ways_out(tmp_path):
    path = tmp_path / "weights.ckpt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(ValueError) as error:
        load_pickle(str(path))
    assert str(error.value) == (
        f"refusing to load the pickle checkpoint {path}: unpickling can run arbitrary code. "
        "Convert it to safetensors, or pass trust_pickle=True (--trust-pickle) if you trust its source."
    )


def test_a_trusted_tensor_pickle_is_read_safely_once_onto_the_cpu(tmp_path, monkeypatch, torch_load_calls):
    path = tmp_path / "weights.pt"
    _save_as_if_from_cuda({"w": torch.arange(4.0)}, path, monkeypatch)
    loaded = load_pickle(str(path), trust_pickle=True)
    assert loaded["w"].device == torch.device("cpu") and torch.equal(loaded["w"], torch.arange(4.0))
    assert torch_load_calls == [{"map_location": "cpu", "weights_only": True}]


def test_a_trusted_pickle_of_python_objects_falls_back_to_a_full_unpickle_onto_the_cpu(
    tmp_path, monkeypatch, torch_load_calls
):
    path = tmp_path / "weights.pth"
    _save_as_if_from_cuda({"w": torch.ones(2), "note": TrainingNote("step 7")}, path, monkeypatch)
    loaded = load_pickle(path, trust_pickle=True)
    assert loaded["note"] == TrainingNote("step 7")
    assert loaded["w"].device == torch.device("cpu") and torch.equal(loaded["w"], torch.ones(2))
    assert torch_load_calls == [
        {"map_location": "cpu", "weights_only": True},
        {"map_location": "cpu", "weights_only": False},
    ]


def test_a_damaged_folder_is_renamed_aside_with_its_files(tmp_path):
    root = tmp_path / "checkpoints"
    folder = root / "step-000000004"
    folder.mkdir(parents=True)
    (folder / "trainer.json").write_text("half")
    moved = set_aside_damaged(str(folder))
    assert moved == root / "damaged-step-000000004"
    assert not folder.exists() and (moved / "trainer.json").read_text() == "half"
    assert checkpoint_folders(tmp_path) == []  # no longer a checkpoint of the run


def test_setting_aside_again_replaces_the_older_damaged_folder(tmp_path):
    root = tmp_path / "checkpoints"
    older = root / "damaged-step-000000004"
    older.mkdir(parents=True)
    (older / "stale.safetensors").write_bytes(b"old")
    folder = root / "step-000000004"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"new")
    moved = set_aside_damaged(folder)
    assert moved == older
    assert sorted(path.name for path in moved.iterdir()) == ["model.safetensors"]
    assert sorted(path.name for path in root.iterdir()) == ["damaged-step-000000004"]


class ShadowSGD(torch.optim.SGD):
    """SGD that keeps, per parameter, a state tensor whose name holds a dot and a Python int:
    the optimizer state format (`<param>.<field>` tensors, other values as JSON) allows both."""

    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for parameter in group["params"]:
                state = self.state[parameter]
                state["shadow.mean"] = parameter.detach().clone()
                state["updates"] = state.get("updates", 0) + 1
        return loss


def test_optimizer_fields_with_dots_and_python_values_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = ShadowSGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        model(torch.randn(4, 3)).square().mean().backward()
        optimizer.step()
    folder = save_checkpoint(tmp_path, 2, {"model": model}, optimizer)

    fresh = ShadowSGD(model.parameters(), lr=0.1, momentum=0.9)
    load_checkpoint(folder, {"model": model}, fresh)
    saved, loaded = optimizer.state_dict()["state"], fresh.state_dict()["state"]
    assert loaded.keys() == saved.keys() == {0, 1}
    for param_id, fields in saved.items():
        assert loaded[param_id].keys() == fields.keys() == {"momentum_buffer", "shadow.mean", "updates"}
        assert loaded[param_id]["updates"] == 2
        assert torch.equal(loaded[param_id]["shadow.mean"], fields["shadow.mean"])


def test_an_rng_file_without_the_torch_state_is_named_as_such(tmp_path):
    from clipcond.training.checkpoint import CheckpointDamaged

    model = torch.nn.Linear(2, 2)
    folder = save_checkpoint(tmp_path, 1, {"model": model})
    save_file({"numpy": torch.zeros(2)}, str(folder / "rng.safetensors"))
    with pytest.raises(CheckpointDamaged) as error:
        load_checkpoint(folder, {"model": model})
    assert str(error.value) == f"{folder}: rng.safetensors: it holds no torch generator state (torch_cpu)"


def _adamw_checkpoint(tmp_path):
    """(folder, model, optimizer) of a checkpoint after one AdamW step of a tiny linear model."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).square().mean().backward()
    optimizer.step()
    return save_checkpoint(tmp_path, 1, {"model": model}, optimizer), model, optimizer


def _load_error(folder, modules, optimizer=None) -> str:
    from clipcond.training.checkpoint import CheckpointDamaged

    with pytest.raises(CheckpointDamaged) as error:
        load_checkpoint(folder, modules, optimizer)
    return str(error.value)


def _rewrite_optimizer_file(folder, tensors, metadata):
    save_file(tensors, str(folder / "optimizer.safetensors"), metadata={"optimizer": metadata})


def test_a_module_file_missing_a_tensor_is_named_and_nothing_is_loaded(tmp_path):
    folder, model, _ = _adamw_checkpoint(tmp_path)
    grown = torch.nn.Linear(3, 2)
    grown.register_parameter("scale", torch.nn.Parameter(torch.ones(2)))
    before = {name: tensor.clone() for name, tensor in grown.state_dict().items()}
    message = _load_error(folder, {"model": grown})
    assert message == f"{folder}: model.safetensors does not fit the model (missing tensors: scale)"
    assert all(torch.equal(before[name], tensor) for name, tensor in grown.state_dict().items())


def test_optimizer_groups_of_other_sizes_are_named_with_the_folder(tmp_path):
    folder, model, _ = _adamw_checkpoint(tmp_path)
    other = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    assert _load_error(folder, {"model": model}, other) == (
        f"{folder}: optimizer.safetensors has parameter groups of [2] parameters, the run's optimizer [1, 1]"
    )


def test_optimizer_state_of_unexpected_types_is_unreadable(tmp_path):
    folder, model, optimizer = _adamw_checkpoint(tmp_path)
    groups = [
        {**group, "params": [str(param_id) for param_id in group["params"]]}
        for group in optimizer.state_dict()["param_groups"]
    ]
    _rewrite_optimizer_file(folder, {}, json.dumps({"param_groups": groups, "scalars": {}}))
    assert _load_error(folder, {"model": model}, optimizer) == (
        f"{folder}: optimizer.safetensors holds no readable optimizer state (TypeError('unexpected types'))"
    )


@pytest.mark.parametrize("key", ["x.exp_avg", "7", "9.exp_avg", "1"])  # "1": a parameter's id, no state name
def test_an_optimizer_tensor_of_no_parameter_is_named(tmp_path, key):
    folder, model, optimizer = _adamw_checkpoint(tmp_path)
    groups = optimizer.state_dict()["param_groups"]
    _rewrite_optimizer_file(folder, {key: torch.zeros(2)}, json.dumps({"param_groups": groups, "scalars": {}}))
    assert _load_error(folder, {"model": model}, optimizer) == (
        f"{folder}: optimizer.safetensors holds {key!r}, which names no parameter of the run"
    )


def _edit_trainer(folder, edit):
    trainer = json.loads((folder / "trainer.json").read_text())
    (folder / "trainer.json").write_text(json.dumps(edit(trainer)))


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda trainer: [trainer], "trainer.json is not a JSON object"),
        (lambda trainer: {**trainer, "step": True}, "trainer.json names step True, the folder step 1"),
        (lambda trainer: {**trainer, "step": 1.0}, "trainer.json names step 1.0, the folder step 1"),
        (lambda trainer: {**trainer, "extra": []}, "trainer.json has no `extra` mapping"),
        (lambda trainer: {**trainer, "scheduler": None}, "trainer.json has no scheduler state"),
    ],
    ids=["a list", "a boolean step", "a float step", "extra not a mapping", "no scheduler state"],
)
def test_a_trainer_state_that_does_not_fit_is_named(tmp_path, edit, problem):
    folder, model, optimizer = _adamw_checkpoint(tmp_path)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    _edit_trainer(folder, edit)
    from clipcond.training.checkpoint import CheckpointDamaged

    with pytest.raises(CheckpointDamaged) as error:
        load_checkpoint(folder, {"model": model}, optimizer, scheduler)
    assert str(error.value) == f"{folder}: {problem}"


def test_every_tensor_that_does_not_fit_is_listed(tmp_path):
    folder, model, _ = _adamw_checkpoint(tmp_path)
    other = torch.nn.Module()
    other.register_parameter("gain", torch.nn.Parameter(torch.ones(2)))
    other.register_parameter("shift", torch.nn.Parameter(torch.zeros(2)))
    assert _load_error(folder, {"model": other}) == (
        f"{folder}: model.safetensors does not fit the model (missing tensors: gain, shift; "
        "tensors the model does not have: bias, weight)"
    )


@pytest.mark.parametrize("name", ["step-x", "latest-1", None])
def test_a_folder_that_is_no_checkpoint_is_refused(tmp_path, name):
    folder, model, _ = _adamw_checkpoint(tmp_path)
    if name is None:  # the right name, but a file
        folder = tmp_path / "checkpoints" / "step-000000005"
        folder.write_text("")
    else:
        folder = folder.rename(folder.with_name(name))
    assert _load_error(folder, {"model": model}) == f"{folder} is not a checkpoint folder (checkpoints/step-<N>)"


def test_step_folders_are_ordered_by_step_not_by_name(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-9", "step-10", "step-000000008"):
        (root / name).mkdir(parents=True)
    assert [folder.name for folder in checkpoint_folders(tmp_path)] == ["step-10", "step-9", "step-000000008"]


def test_the_default_keeps_two_checkpoints(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": model})
    assert [folder.name for folder in checkpoint_folders(tmp_path)] == ["step-000000003", "step-000000002"]


def test_saving_a_step_again_replaces_its_folder(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 3, {"model": model})
    with torch.no_grad():
        model.weight.fill_(7.0)
    folder = save_checkpoint(tmp_path, 3, {"model": model})
    fresh = torch.nn.Linear(2, 2)
    load_checkpoint(folder, {"model": fresh})
    assert torch.equal(fresh.weight, torch.full((2, 2), 7.0))


def test_a_failure_while_loading_checked_files_is_named(tmp_path, monkeypatch):
    import clipcond.training.checkpoint as checkpoint

    folder, model, _ = _adamw_checkpoint(tmp_path)

    def failing_load(module, path):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(checkpoint, "load_model", failing_load)
    assert _load_error(folder, {"model": model}) == f"{folder}: loading failed (RuntimeError('the disk went away'))"
