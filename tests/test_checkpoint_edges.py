"""Checkpoint edges beyond the common damage of test_checkpoint.py: `read_extra` (the world-size
guard of `--resume`), exact messages, writes into a run folder not yet made or over a leftover
temporary folder, loading without the generators, and optimizer state of Python values only; then
damage that broke a parser (it escaped as a raw exception) or that was found only while loading (it
left the model loaded from the refused checkpoint), a parameter group without a number `lr`, and a
module name that is no file of its own or a tensor learning rate, refused before anything is
written. Written against the mutation run of probe15 (its surviving mutants of
training/checkpoint.py) and the bugs it found."""

from __future__ import annotations

import copy
import json
import os
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_checkpoint import _run_with_checkpoints, _setup, _step
from test_checkpoint_mutants import _adamw_checkpoint, _edit_trainer, _load_error, _rewrite_optimizer_file

import clipcond.training.checkpoint as checkpoint
from clipcond.training.checkpoint import (
    CheckpointDamaged,
    NoIntactCheckpoint,
    latest_checkpoint,
    load_checkpoint,
    load_newest_intact,
    read_extra,
    save_checkpoint,
)


def _checkpoint_with_extra(run_dir, extra, step=1):
    return save_checkpoint(run_dir, step, {"model": torch.nn.Linear(3, 2)}, extra=extra)


def _edit_optimizer(folder, tensors_edit=lambda tensors: tensors, metadata_edit=lambda metadata: metadata):
    """Rewrite optimizer.safetensors with its tensors and its JSON metadata (text) edited."""
    path = folder / "optimizer.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()["optimizer"]
    _rewrite_optimizer_file(folder, tensors_edit(load_file(str(path))), metadata_edit(metadata))


def _edit_optimizer_json(folder, edit):
    _edit_optimizer(folder, metadata_edit=lambda metadata: json.dumps(edit(json.loads(metadata))))


# ---------------------------------------------------------------- read_extra


def test_read_extra_returns_the_extra_its_check_sees(tmp_path):
    folder = _checkpoint_with_extra(tmp_path, {"samples": 12, "processes": 2})
    seen = []
    assert read_extra(str(folder), lambda extra: seen.append(extra)) == {"samples": 12, "processes": 2}
    assert seen == [{"samples": 12, "processes": 2}]
    assert read_extra(folder) == {"samples": 12, "processes": 2}


def test_read_extra_names_what_the_loop_s_check_refuses(tmp_path):
    folder = _checkpoint_with_extra(tmp_path, {"samples": "twelve"})
    with pytest.raises(CheckpointDamaged) as error:
        read_extra(folder, lambda extra: f"samples is {extra['samples']!r}")
    assert str(error.value) == f"{folder}: trainer.json `extra`: samples is 'twelve'"


@pytest.mark.parametrize("kind", ["a file named step-N", "a folder of another name", "nothing there"])
def test_read_extra_refuses_what_is_no_checkpoint_folder(tmp_path, kind):
    folder = _checkpoint_with_extra(tmp_path, {})
    if kind == "a file named step-N":
        folder = tmp_path / "checkpoints" / "step-000000005"
        folder.write_text("{}")
    elif kind == "a folder of another name":
        folder = folder.rename(folder.with_name("latest-1"))
    else:
        folder = tmp_path / "checkpoints" / "step-000000009"
    with pytest.raises(CheckpointDamaged) as error:
        read_extra(folder)
    assert str(error.value) == f"{folder} is not a checkpoint folder (checkpoints/step-<N>)"


def test_the_loop_s_check_sees_each_checkpoint_s_own_extra(tmp_path):
    for step in (2, 4):
        _checkpoint_with_extra(tmp_path, {"samples": 4 * step}, step=step)
    seen = []

    def refuse_the_first(extra):
        seen.append(extra)
        return "refused" if len(seen) == 1 else None

    point = load_newest_intact(tmp_path, {"model": torch.nn.Linear(3, 2)}, check_extra=refuse_the_first)
    assert seen == [{"samples": 16}, {"samples": 8}] and point.step == 2


# ---------------------------------------------------------------- exact messages


def test_a_missing_module_file_is_named_with_its_folder(tmp_path):
    folder, model, _ = _adamw_checkpoint(tmp_path)
    (folder / "model.safetensors").unlink()
    assert _load_error(folder, {"model": model}) == f"{folder}: model.safetensors is missing"


def test_an_optimizer_moment_of_another_shape_is_named_with_its_folder(tmp_path):
    folder, model, optimizer = _adamw_checkpoint(tmp_path)
    _edit_optimizer(folder, lambda tensors: {**tensors, "1.exp_avg": torch.zeros(3)})
    assert _load_error(folder, {"model": model}, optimizer) == (
        f"{folder}: optimizer.safetensors: 1.exp_avg is [3], its parameter [2]"
    )


@pytest.mark.parametrize(
    ("damage", "start"),
    [
        (lambda text: text[:-1], "trainer.json does not parse ("),
        (
            lambda text: text.replace('"numpy"', '"numbpy"'),
            "trainer.json holds no usable random-number states (KeyError(",
        ),
    ],
    ids=["cut short", "no numpy state"],
)
def test_trainer_damage_is_named_with_its_folder(tmp_path, damage, start):
    folder, model, _ = _adamw_checkpoint(tmp_path)
    path = folder / "trainer.json"
    path.write_text(damage(path.read_text()))
    assert _load_error(folder, {"model": model}).startswith(f"{folder}: {start}")


def _module_of(**shapes):
    module = torch.nn.Module()
    for name, size in shapes.items():
        module.register_parameter(name, torch.nn.Parameter(torch.zeros(size)))
    return module


def test_a_long_list_of_tensors_that_do_not_fit_is_cut_to_its_first_ones(tmp_path):
    folder = save_checkpoint(tmp_path, 1, {"model": _module_of(**{f"p{index}": 2 for index in range(7)})})
    other = _module_of(**{f"p{index}": 3 for index in range(7)}, **{f"q{index}": 2 for index in range(7)})
    assert _load_error(folder, {"model": other}) == (
        f"{folder}: model.safetensors does not fit the model (wrong shape: p0 is [2], the model's [3]; "
        "p1 is [2], the model's [3]; p2 is [2], the model's [3]; missing tensors: q0, q1, q2, q3, q4)"
    )
    assert _load_error(folder, {"model": torch.nn.Module()}) == (
        f"{folder}: model.safetensors does not fit the model (tensors the model does not have: p0, p1, p2, p3, p4)"
    )


# ---------------------------------------------------------------- writing


def test_a_failed_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    _adamw_checkpoint(tmp_path)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    model = torch.nn.Linear(3, 2)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 2, {"model": model}, torch.optim.AdamW(model.parameters()))
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000000001"]


def test_a_leftover_temporary_folder_of_this_process_is_written_over(tmp_path):
    leftover = tmp_path / "checkpoints" / f".tmp-step-000000003-{os.getpid()}"
    leftover.mkdir(parents=True)
    (leftover / "stale.safetensors").write_bytes(b"half")
    folder = save_checkpoint(tmp_path, 3, {"model": torch.nn.Linear(3, 2)})
    assert sorted(path.name for path in folder.iterdir()) == ["model.safetensors", "rng.safetensors", "trainer.json"]
    assert not leftover.exists()


def test_a_checkpoint_of_a_run_folder_not_yet_made_makes_it(tmp_path):
    folder = save_checkpoint(tmp_path / "runs" / "new", 1, {"model": torch.nn.Linear(3, 2)})
    assert folder == tmp_path / "runs" / "new" / "checkpoints" / "step-000000001" and folder.is_dir()


# ---------------------------------------------------------------- reading


def test_a_run_without_checkpoints_has_no_latest(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-000000001")
    assert latest_checkpoint(tmp_path) is None


def test_loading_without_the_generators_needs_no_rng_file_and_leaves_them(tmp_path):
    folder, model, _ = _adamw_checkpoint(tmp_path)
    (folder / "rng.safetensors").unlink()
    fresh = torch.nn.Linear(3, 2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert load_checkpoint(folder, {"model": fresh}, restore_rng=False) == {"step": 1, "extra": {}}
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)


class CountingSGD(torch.optim.SGD):
    """Plain SGD keeping, per parameter, only a Python value: no state tensor at all."""

    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for parameter in group["params"]:
                self.state[parameter]["updates"] = self.state[parameter].get("updates", 0) + 1
        return loss


def test_an_optimizer_state_of_python_values_only_round_trips(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = CountingSGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(4, 3)).square().mean().backward()
        optimizer.step()
    folder = save_checkpoint(tmp_path, 3, {"model": model}, optimizer)
    fresh = CountingSGD(model.parameters(), lr=0.1)
    load_checkpoint(folder, {"model": model}, fresh)
    assert fresh.state_dict()["state"] == optimizer.state_dict()["state"] == {0: {"updates": 3}, 1: {"updates": 3}}


# ---------------------------------------------------------------- damage that breaks a parser


def _numpy_key_out_of_range(trainer):
    trainer["rng"]["numpy"][1][0] = 9_999_999_999  # one digit of a 10-digit key changed
    return trainer


def _python_value_out_of_range(trainer):
    trainer["rng"]["python"][1][0] = 2**70
    return trainer


def _with_key(tensors, key):
    return {**tensors, key: torch.zeros(8, 8)}


PARSER_DAMAGE = {
    "numpy key out of the 32-bit range": (
        lambda folder: _edit_trainer(folder, _numpy_key_out_of_range),
        "trainer.json holds no usable random-number states (OverflowError(",
    ),
    "python generator value past 64 bits": (
        lambda folder: _edit_trainer(folder, _python_value_out_of_range),
        "trainer.json holds no usable random-number states (OverflowError(",
    ),
    "trainer.json nested too deep": (
        lambda folder: (folder / "trainer.json").write_text("[" * 100_000),
        "trainer.json does not parse (maximum recursion depth exceeded",
    ),
    "optimizer metadata nested too deep": (
        lambda folder: _edit_optimizer(folder, metadata_edit=lambda metadata: "[" * 100_000),
        "optimizer.safetensors holds no readable optimizer state (RecursionError(",
    ),
    "optimizer key of a Unicode digit": (
        lambda folder: _edit_optimizer(folder, lambda tensors: _with_key(tensors, "\u00b2.exp_avg")),
        "optimizer.safetensors holds '\u00b2.exp_avg', which names no parameter of the run",
    ),
    "optimizer key of a 5000-digit id": (
        lambda folder: _edit_optimizer(folder, lambda tensors: _with_key(tensors, "1" * 5000 + ".exp_avg")),
        f"optimizer.safetensors holds '{'1' * 5000}.exp_avg', which names no parameter of the run",
    ),
}


def _resume_after_harming_the_newest(tmp_path, harm, steps):
    """Train with checkpoints at `steps`, `harm` the newest, then resume fresh objects from the
    run: (the ResumePoint, the harmed folder)."""
    _run_with_checkpoints(tmp_path, steps=steps)
    newest = tmp_path / "checkpoints" / f"step-{max(steps):09d}"
    harm(newest)
    model, optimizer, scheduler = _setup(seed=99)
    return load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler), newest


@pytest.mark.parametrize("damage", sorted(PARSER_DAMAGE))
def test_damage_that_breaks_a_parser_is_passed_over(tmp_path, damage):
    """Each escaped as a raw OverflowError, RecursionError or ValueError, so `--resume` crashed
    instead of resuming from the checkpoint before."""
    harm, problem = PARSER_DAMAGE[damage]
    point, newest = _resume_after_harming_the_newest(tmp_path, harm, steps=(2, 4))
    assert point.step == 2
    assert [(folder, text.startswith(problem)) for folder, text in point.passed_over] == [(newest, True)]


# ---------------------------------------------------------------- damage found while loading


def _equal(a, b):
    """Nested state dicts equal, tensors by dtype and value."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


def _states(model, optimizer, scheduler):
    return copy.deepcopy([model.state_dict(), optimizer.state_dict(), scheduler.state_dict()])


def _with_values(values):
    return lambda folder: _edit_optimizer_json(folder, lambda saved: {**saved, "scalars": values})


LOAD_DAMAGE = {
    "optimizer values keyed by no parameter": (
        _with_values({"x": {}}),
        "optimizer.safetensors holds values of ['x'], which name no parameter of the run",
    ),
    "optimizer values of no mapping": (
        _with_values({"0": 5}),
        "optimizer.safetensors holds no readable optimizer state (TypeError('unexpected types of values that are not tensors'))",
    ),
    "an optimizer step that is no number": (
        _with_values({"0": {"step": None}}),  # read by AdamW's own loading only
        "optimizer.safetensors holds no usable optimizer state (TypeError(",
    ),
    "a scheduler state without its lambdas": (  # read by LambdaLR's own loading only
        lambda folder: _edit_trainer(
            folder,
            lambda trainer: {
                **trainer,
                "scheduler": {k: v for k, v in trainer["scheduler"].items() if k != "lr_lambdas"},
            },
        ),
        "trainer.json holds no usable scheduler state (KeyError('lr_lambdas'))",
    ),
}


@pytest.mark.parametrize("damage", sorted(LOAD_DAMAGE))
def test_damage_found_while_loading_leaves_the_objects_untouched(tmp_path, damage):
    """Each was found only after the model had been loaded from the refused checkpoint (and a
    run with no other checkpoint stopped with the model holding its weights)."""
    _run_with_checkpoints(tmp_path, steps=(2,))
    folder = tmp_path / "checkpoints" / "step-000000002"
    harm, problem = LOAD_DAMAGE[damage]
    harm(folder)
    model, optimizer, scheduler = _setup(seed=99)
    _step(model, optimizer, scheduler)  # an optimizer and a scheduler with a state of their own
    before = _states(model, optimizer, scheduler)
    with pytest.raises(CheckpointDamaged) as error:
        load_checkpoint(folder, {"model": model}, optimizer, scheduler)
    assert str(error.value).startswith(f"{folder}: {problem}")
    assert _equal(_states(model, optimizer, scheduler), before)
    with pytest.raises(NoIntactCheckpoint):
        load_newest_intact(tmp_path, {"model": model}, optimizer, scheduler)
    assert _equal(_states(model, optimizer, scheduler), before)


# ---------------------------------------------------------------- what no check read


@pytest.mark.parametrize("rate", [None, "0.1"], ids=["no lr", "an lr of text"])
def test_a_parameter_group_without_a_number_learning_rate_is_damaged(tmp_path, rate):
    """It loaded without a word, and the run failed at its first optimizer step (KeyError: 'lr')."""
    folder, model, optimizer = _adamw_checkpoint(tmp_path)

    def set_rate(group):
        return {key: value for key, value in group.items() if key != "lr"} | ({} if rate is None else {"lr": rate})

    _edit_optimizer_json(folder, lambda saved: {**saved, "param_groups": [set_rate(g) for g in saved["param_groups"]]})
    assert _load_error(folder, {"model": model}, optimizer) == (
        f"{folder}: optimizer.safetensors has a parameter group without a number `lr` (lr: [{rate!r}])"
    )


def _scheduler_edit(edit):
    return lambda folder: _edit_trainer(folder, lambda trainer: {**trainer, "scheduler": edit(trainer["scheduler"])})


def _group_edit(edit):
    return lambda folder: _edit_optimizer_json(
        folder, lambda saved: {**saved, "param_groups": [edit(group) for group in saved["param_groups"]]}
    )


VALUE_DAMAGE = {  # each loaded, then the run restarted its schedule without a word or died at its first step
    "a scheduler state without last_epoch": (
        _scheduler_edit(lambda state: {k: v for k, v in state.items() if k != "last_epoch"}),
        "trainer.json's scheduler state lacks ['last_epoch']",
    ),
    "a last_epoch of text": (
        _scheduler_edit(lambda state: {**state, "last_epoch": "x"}),
        "trainer.json's scheduler state has `last_epoch`: 'x' (",
    ),
    "base_lrs of no group": (
        _scheduler_edit(lambda state: {**state, "base_lrs": []}),
        "trainer.json's scheduler state has `base_lrs`: [] (",
    ),
    "betas of text": (
        _group_edit(lambda group: {**group, "betas": "ab"}),
        "optimizer.safetensors: parameter group 0 has `betas`: 'ab' ((0.9, 0.999) in the run)",
    ),
    "an eps of null": (
        _group_edit(lambda group: {**group, "eps": None}),
        "optimizer.safetensors: parameter group 0 has `eps`: None (1e-08 in the run)",
    ),
}


@pytest.mark.parametrize("damage", sorted(VALUE_DAMAGE))
def test_values_of_the_wrong_kind_are_damage_passed_over(tmp_path, damage):
    """A saved value is checked against the run's own of the same key (a number, a flag, a list
    as long): the resume goes back to the checkpoint before, nothing loaded from the damaged one."""
    harm, problem = VALUE_DAMAGE[damage]
    point, newest = _resume_after_harming_the_newest(tmp_path, harm, steps=(1, 2))
    assert point.step == 1
    [(folder, text)] = point.passed_over
    assert folder == newest and text.startswith(problem), text


# ---------------------------------------------------------------- what cannot be saved


@pytest.mark.parametrize("name", ["rng", "Optimizer", "../escape", "a/b", ""])
def test_a_module_name_that_is_no_file_of_its_own_is_refused(tmp_path, name):
    """ "rng" and "optimizer" were written over by the format's own files (the checkpoint then
    never loaded), "../escape" was written outside the step folder and never deleted."""
    model = torch.nn.Linear(2, 2)
    refusal = (
        "^"
        + re.escape(
            f"modules: {name!r} cannot name a module's file in a checkpoint; a name is letters, digits, '_', '-' and '.' "
            "(a letter, digit or '_' first), and not 'optimizer' or 'rng' (the checkpoint's own files)"
        )
        + "$"
    )
    with pytest.raises(ValueError, match=refusal):
        save_checkpoint(tmp_path, 1, {name: model})
    assert list(tmp_path.iterdir()) == []
    folder = save_checkpoint(tmp_path, 1, {"model": model})
    with pytest.raises(ValueError, match=refusal) as error:
        load_checkpoint(folder, {name: model})
    assert not isinstance(error.value, CheckpointDamaged)  # the caller's error, no damage to pass over


def test_a_tensor_learning_rate_is_named_before_anything_is_written(tmp_path):
    """torch takes a tensor `lr`; JSON cannot hold it, and the error named neither the optimizer
    nor its param groups."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(0.01))
    with pytest.raises(TypeError) as error:
        save_checkpoint(tmp_path, 1, {"model": model}, optimizer)
    assert str(error.value) == (
        "optimizer: its param_groups (e.g. `lr`) and the values of its state that are not tensors must be numbers, "
        "strings, lists or mappings to be saved in optimizer.safetensors (Object of type Tensor is not JSON serializable)"
    )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- survivors of the full mutation run


def test_no_intact_checkpoint_names_each_problem_and_the_folder_to_move_aside(tmp_path):
    for step in (1, 2):
        folder = save_checkpoint(tmp_path, step, {"model": torch.nn.Linear(2, 2)})
        (folder / "trainer.json").unlink()
    with pytest.raises(NoIntactCheckpoint) as error:
        load_newest_intact(tmp_path, {"model": torch.nn.Linear(2, 2)})
    assert str(error.value) == (
        f"cannot resume {tmp_path}: none of its 2 checkpoints can be loaded (step-000000002: trainer.json is missing; "
        f"step-000000001: trainer.json is missing). Fix the model config if it changed, or move "
        f"{tmp_path / 'checkpoints'} aside to start afresh"
    )


def test_a_read_error_of_the_generator_file_is_damage_of_that_checkpoint(tmp_path, monkeypatch):
    """A disk that fails while the tensors are read (its header read fine): the checkpoint is
    damaged, named with its folder, and nothing is loaded."""
    model = torch.nn.Linear(2, 2)
    folder = save_checkpoint(tmp_path, 1, {"model": model})
    real_load_file = checkpoint.load_file

    def failing_on_rng(path):
        if path.endswith("rng.safetensors"):
            raise OSError(5, "Input/output error")
        return real_load_file(path)

    monkeypatch.setattr(checkpoint, "load_file", failing_on_rng)
    fresh = torch.nn.Linear(2, 2)
    before = fresh.weight.detach().clone()
    with pytest.raises(CheckpointDamaged) as error:
        load_checkpoint(folder, {"model": fresh})
    assert str(error.value) == f"{folder}: rng.safetensors does not read (OSError(5, 'Input/output error'))"
    assert torch.equal(fresh.weight, before)


def test_a_trainer_json_without_generator_states_names_the_first_one_missing(tmp_path):
    model = torch.nn.Linear(2, 2)
    folder = save_checkpoint(tmp_path, 1, {"model": model})
    _edit_trainer(folder, lambda trainer: {key: value for key, value in trainer.items() if key != "rng"})
    with pytest.raises(CheckpointDamaged) as error:
        load_checkpoint(folder, {"model": model})
    assert str(error.value) == f"{folder}: trainer.json holds no usable random-number states (KeyError('python'))"


class TableScheduler:
    """A scheduler whose state holds `table`: a list when saved, a tensor in the run that loads."""

    def __init__(self, table):
        self.table = table

    def state_dict(self):
        return {"last_epoch": 1, "table": self.table}

    def load_state_dict(self, state):
        self.table = state["table"]


def test_a_scheduler_value_of_no_json_kind_in_the_run_takes_the_saved_one(tmp_path):
    """Only JSON kinds are compared: a tensor (or any object) in the live state takes what was saved."""
    model = torch.nn.Linear(2, 2)
    folder = save_checkpoint(tmp_path, 1, {"model": model}, scheduler=TableScheduler([1.0, 2.0]))
    live = TableScheduler(torch.tensor([5.0, 6.0]))
    load_checkpoint(folder, {"model": model}, scheduler=live)
    assert live.table == [1.0, 2.0]


def test_the_error_that_stopped_a_write_is_raised_when_its_folder_cannot_be_removed(tmp_path, monkeypatch):
    """A write that fails after its temporary folder went (removed by hand, or by a cleanup of
    the disk): the user sees the write's error, not the failed removal's."""
    model = torch.nn.Linear(2, 2)
    kept = save_checkpoint(tmp_path, 1, {"model": model})

    def write_then_lose_the_folder(folder, *args):
        folder.rmdir()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_state", write_then_lose_the_folder)
    with pytest.raises(OSError, match=r"^\[Errno 28\] No space left on device$"):
        save_checkpoint(tmp_path, 2, {"model": model})
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000000001"]
    assert latest_checkpoint(tmp_path) == kept
