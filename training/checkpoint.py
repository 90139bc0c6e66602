"""Training checkpoints: safetensors only, written atomically, resumable bit for bit, and
checked before they are loaded.

A checkpoint is a folder ``<run>/checkpoints/step-<N>/`` holding:

- ``<name>.safetensors`` for every module (via `safetensors.torch.save_model`, so shared
  tensors are handled);
- ``optimizer.safetensors``: every tensor of the optimizer state, keyed ``<param>.<field>``,
  with the rest of the optimizer state (param groups, scalars) as JSON metadata;
- ``rng.safetensors``: the torch CPU (and CUDA, when present) generator states, and each
  process's own in a run of several (`clipcond.training.rng_state`);
- ``trainer.json``: step, scheduler state, Python and NumPy RNG states, and whatever the loop
  adds (e.g. how many metrics records it had written).

It is written into a hidden temporary folder (``.tmp-step-<N>-<pid>``) and renamed into place,
and ``latest`` (a text file naming the newest step folder) is replaced atomically afterwards,
so a run killed at any moment leaves either the previous checkpoint or the new one, never half
of one. A write that fails (a full disk, an unwritable folder, Ctrl-C) deletes its temporary
folder; what a killed writer leaves (`remove_unfinished_writes`) is removed at the next start.
``latest`` is for people and tools: readers order the step folders by their names.

What a disk, a copy or a hand can still do to a checkpoint (a truncated file, a missing one, a
trainer.json that does not parse, a tensor of another shape) is found before anything is
loaded: `load_checkpoint` checks every file against the objects it loads into (headers, names,
shapes, trainer state, and the loop's own values in ``extra`` through the `ExtraCheck` it gives)
and raises `CheckpointDamaged` naming what is wrong, leaving the objects untouched;
`load_newest_intact` falls back to the newest checkpoint that passes. A scheduler state is
checked by loading it: it is loaded first, and a failure (or the optimizer's) puts back the
scheduler's and the optimizer's states before the modules are touched.

Pickle files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) can run code when loaded: `load_pickle`
refuses them unless the caller says `trust_pickle=True`.

Why this module is over 400 lines: the format is written and checked in one place, so that
a file name or a field the writer adds cannot be missed by the checks that read it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from clipcond.folder_saves import remove_entry
from clipcond.training import rng_state
from clipcond.training.run_folder import RunFolderError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
_STEP_PREFIX = "step-"
_STEP_FOLDER = re.compile(r"step-(\d+)")
_UNFINISHED = (".tmp-step-", ".latest-")
_DAMAGED_PREFIX = "damaged-"
# a module's file is <name>.safetensors in the step folder: a plain file name, none of the format's own
_MODULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_FORMAT_FILES = ("optimizer", "rng")
# what every torch LR scheduler's state holds and a resume cannot do without (where the run's has it)
_SCHEDULER_FIELDS = ("last_epoch", "base_lrs")
# what loading a state that passed the checks can still raise: a scheduler state without a field its
# class reads, an optimizer value of a type its class does not expect; and a file changed since checked
_LOAD_ERRORS = (
    SafetensorError,
    OSError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RuntimeError,
    ArithmeticError,
)


class CheckpointDamaged(ValueError):
    """A checkpoint folder that cannot be loaded into the given objects; the message names the
    folder and what is wrong with it."""


# extra -> what is wrong with it (None: nothing): the loop's checks of the values it saved in `extra`
ExtraCheck = Callable[[dict[str, Any]], str | None]


class NoIntactCheckpoint(RunFolderError):
    """A run has checkpoints, and none of them can be loaded (each one's problem is named)."""


def _optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, fields in state["state"].items():
        for field, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{field}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param_id), {})[field] = value
    try:
        metadata = json.dumps({"param_groups": state["param_groups"], "scalars": scalars})
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"optimizer: its param_groups (e.g. `lr`) and the values of its state that are not tensors must be "
            f"numbers, strings, lists or mappings to be saved in optimizer.safetensors ({error})"
        ) from None
    return tensors, metadata


def _optimizer_from_safetensors(optimizer: torch.optim.Optimizer, path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["optimizer"])
    tensors = load_file(str(path))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        param_id, field = key.split(".", 1)
        state.setdefault(int(param_id), {})[field] = value
    for param_id, fields in metadata["scalars"].items():
        state.setdefault(int(param_id), {}).update(fields)
    optimizer.load_state_dict({"state": state, "param_groups": metadata["param_groups"]})


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    process_rng: Sequence[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the training state at `step` atomically; keep the newest `keep` checkpoints.

    Args:
        run_dir: the run folder; checkpoints go to ``run_dir/checkpoints/step-<step>``.
        step: optimizer steps taken so far.
        modules: name -> module; each is saved to ``<name>.safetensors``.
        optimizer, scheduler: saved when given (scheduler via its `state_dict`, as JSON).
        extra: JSON-serialisable values the loop wants back on resume.
        keep: how many checkpoints up to this one to keep (older ones are deleted after the new
            one is in place; the new one never is).
        process_rng: in a run of several processes, each one's own generator states
            (`rng_state.own_generator_states`, gathered in rank order), for each to resume its own.

    Returns:
        The checkpoint folder.

    Raises:
        ValueError: a module name that is no plain file name, or one of the format's own files.
        TypeError: an optimizer whose param groups hold something JSON cannot (a tensor `lr`).
    """
    _check_module_names(modules)
    optimizer_state = _optimizer_to_safetensors(optimizer) if optimizer is not None else None
    final = checkpoint_folder(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".tmp-{final.name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    try:
        _write_state(temporary, step, modules, optimizer_state, scheduler, extra, process_rng)
        if final.exists() or final.is_symlink():  # a damaged entry of this step: a folder, or a file
            remove_entry(final)
        os.replace(temporary, final)
    except BaseException:  # a full disk, an unwritable folder, Ctrl-C: no hidden half checkpoint stays
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    pointer = root / f".latest-{os.getpid()}"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    older = [folder for folder in checkpoint_folders(run_dir) if checkpoint_step(folder) < step]
    for old in older[max(keep - 1, 0) :]:
        remove_entry(old)
    return final


def _write_state(
    folder: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizer_state: tuple[dict[str, torch.Tensor], str] | None,
    scheduler: Any | None,
    extra: dict[str, Any] | None,
    process_rng: Sequence[dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write the files of a checkpoint (module docstring) into `folder`, each synced to disk;
    `optimizer_state` is `_optimizer_to_safetensors`'s (tensors, metadata), or None."""
    for name, module in modules.items():
        save_model(module, str(folder / f"{name}.safetensors"))
    if optimizer_state is not None:
        tensors, metadata = optimizer_state
        save_file(tensors, str(folder / "optimizer.safetensors"), metadata={"optimizer": metadata})
    save_file(rng_state.generator_tensors(process_rng), str(folder / "rng.safetensors"))
    trainer = {
        "step": step,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state.python_and_numpy_states(),
        "extra": extra or {},
    }
    (folder / "trainer.json").write_text(json.dumps(trainer))
    for child in folder.iterdir():
        with open(child, "rb") as handle:
            os.fsync(handle.fileno())


def _check_module_names(modules: dict[str, nn.Module]) -> None:
    """Each name is that of its file in the step folder (``<name>.safetensors``): a plain file name
    (letters, digits, ``_``, ``.``, ``-``; no path) and none of the format's own files."""
    for name in modules:
        if not _MODULE_NAME.fullmatch(name) or name.casefold() in _FORMAT_FILES:
            raise ValueError(
                f"modules: {name!r} cannot name a module's file in a checkpoint; a name is letters, digits, '_', "
                "'-' and '.' (a letter, digit or '_' first), and not 'optimizer' or 'rng' (the checkpoint's own files)"
            )


def checkpoint_folder(run_dir: str | os.PathLike, step: int) -> Path:
    """The folder `save_checkpoint` writes the checkpoint of `step` to: ``checkpoints/step-<N>``."""
    return Path(run_dir) / "checkpoints" / f"{_STEP_PREFIX}{step:09d}"


def checkpoint_step(folder: Path) -> int:
    """The step of a checkpoint folder ``step-<N>``, from its name."""
    return int(_STEP_FOLDER.fullmatch(folder.name).group(1))


def checkpoint_folders(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint entries of a run (``checkpoints/step-<N>``), newest first, whatever they
    are and hold: a file of that name is listed too, so that `load_newest_intact` names it as
    damaged (`load_checkpoint`: "not a checkpoint folder") and the loop sets it aside, rather
    than a resume passing over it and the checkpoint of step N failing on it later."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    folders = [path for path in root.iterdir() if _STEP_FOLDER.fullmatch(path.name)]
    return sorted(folders, key=checkpoint_step, reverse=True)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder of a run, or None; not checked (see `load_newest_intact`)."""
    folders = checkpoint_folders(run_dir)
    return folders[0] if folders else None


def remove_unfinished_writes(run_dir: str | os.PathLike) -> list[Path]:
    """Delete what checkpoint writers killed mid-write left in ``checkpoints/``: ``.tmp-step-*``
    folders (a whole checkpoint each) and ``.latest-*`` pointers. Call it only while holding the
    run folder's lock: a live writer's files look the same. Returns what was deleted."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(_UNFINISHED):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
    return removed


def set_aside_damaged(folder: str | os.PathLike) -> Path:
    """Rename a damaged checkpoint folder (or a file in its place) to ``damaged-step-<N>``
    (replacing an older one of that name): kept for a look, no longer a checkpoint of the run.
    Returns the new path."""
    folder = Path(folder)
    target = folder.with_name(_DAMAGED_PREFIX + folder.name)
    if target.exists() or target.is_symlink():
        remove_entry(target)
    os.replace(folder, target)
    return target


# ---------------------------------------------------------------- checking a checkpoint


def _damaged(folder: Path, problem: str) -> CheckpointDamaged:
    return CheckpointDamaged(f"{folder}: {problem}")


def _read_header(folder: Path, file_name: str) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(tensor name -> shape, metadata) of a safetensors file; safetensors refuses a file whose
    length does not match its header, so a truncated file fails here."""
    path = folder / file_name
    if not path.is_file():
        raise _damaged(folder, f"{file_name} is missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
            return shapes, handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise _damaged(folder, f"{file_name} cannot be read ({error})") from None


def _check_module(folder: Path, name: str, module: nn.Module) -> None:
    """The file of `module` holds exactly its tensors, each of its shape. A tensor the file does
    not name is fine when it shares its storage with one it names (tied weights, which
    `save_model` writes once)."""
    shapes, _ = _read_header(folder, f"{name}.safetensors")
    live = module.state_dict()
    unexpected = sorted(set(shapes) - set(live))
    wrong = [
        f"{key} is {shapes[key]}, the model's {list(live[key].shape)}"
        for key in sorted(set(shapes) & set(live))
        if shapes[key] != list(live[key].shape)
    ]

    def storage(tensor: torch.Tensor) -> tuple[int, int]:
        return tensor.untyped_storage().data_ptr(), tensor.storage_offset()

    saved_storages = {storage(live[key]) for key in shapes if key in live}
    missing = sorted(key for key in set(live) - set(shapes) if storage(live[key]) not in saved_storages)
    problems = []
    if wrong:
        problems.append(f"wrong shape: {'; '.join(wrong[:3])}")
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"tensors the model does not have: {', '.join(unexpected[:5])}")
    if problems:
        raise _damaged(folder, f"{name}.safetensors does not fit the model ({'; '.join(problems)})")


def _check_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    """Param groups of the same sizes as the optimizer's, each with a number `lr`; every state
    tensor keyed by one of its parameters, a scalar or of that parameter's shape (as AdamW's
    moments are); every other state value in a mapping keyed by one of its parameters."""
    shapes, metadata = _read_header(folder, "optimizer.safetensors")
    try:
        saved = json.loads(metadata["optimizer"])
        groups, scalars = saved["param_groups"], saved["scalars"]
        sizes = [len(group["params"]) for group in groups]
        ids = [param_id for group in groups for param_id in group["params"]]
        if not isinstance(scalars, dict) or not all(isinstance(param_id, int) for param_id in ids):
            raise TypeError("unexpected types")
        if not all(isinstance(fields, dict) for fields in scalars.values()):
            raise TypeError("unexpected types of values that are not tensors")
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise _damaged(folder, f"optimizer.safetensors holds no readable optimizer state ({error!r})") from None
    live_sizes = [len(group["params"]) for group in optimizer.param_groups]
    if sizes != live_sizes:
        raise _damaged(
            folder,
            f"optimizer.safetensors has parameter groups of {sizes} parameters, the run's optimizer {live_sizes}",
        )
    rates = [group.get("lr") for group in groups]
    if not all(isinstance(rate, (int, float)) and not isinstance(rate, bool) for rate in rates):
        raise _damaged(folder, f"optimizer.safetensors has a parameter group without a number `lr` (lr: {rates})")
    for index, (group, live_group) in enumerate(zip(groups, optimizer.param_groups)):
        wrong = _unlike(group, live_group)  # `params`: ids saved, tensors live (which take anything); counted above
        if wrong:
            raise _damaged(folder, f"optimizer.safetensors: parameter group {index} has {wrong}")
    # keyed as the writer writes ids (str(int)): a digit that int() reads but the writer never writes is no id
    live = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    parameters = {str(param_id): parameter for param_id, parameter in zip(ids, live)}
    for key, shape in shapes.items():
        param_id, _, state_name = key.partition(".")
        parameter = parameters.get(param_id) if state_name else None
        if parameter is None:
            raise _damaged(folder, f"optimizer.safetensors holds {key!r}, which names no parameter of the run")
        if shape and shape != list(parameter.shape):
            raise _damaged(folder, f"optimizer.safetensors: {key} is {shape}, its parameter {list(parameter.shape)}")
    strays = sorted(param_id for param_id in scalars if param_id not in parameters)
    if strays:
        raise _damaged(folder, f"optimizer.safetensors holds values of {strays}, which name no parameter of the run")


def _read_trainer(folder: Path, scheduler: Any | None, check_extra: ExtraCheck | None = None) -> dict[str, Any]:
    """trainer.json, checked: the step of the folder's name, an `extra` mapping that passes
    `check_extra`, a scheduler state when a scheduler is to be loaded, RNG states that the
    generators accept."""
    path = folder / "trainer.json"
    if not path.is_file():
        raise _damaged(folder, "trainer.json is missing")
    try:
        trainer = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as error:
        raise _damaged(folder, f"trainer.json does not parse ({error})") from None
    if not isinstance(trainer, dict):
        raise _damaged(folder, "trainer.json is not a JSON object")
    step = trainer.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step != checkpoint_step(folder):
        raise _damaged(folder, f"trainer.json names step {step!r}, the folder step {checkpoint_step(folder)}")
    if not isinstance(trainer.get("extra"), dict):
        raise _damaged(folder, "trainer.json has no `extra` mapping")
    problem = check_extra(trainer["extra"]) if check_extra is not None else None
    if problem:
        raise _damaged(folder, f"trainer.json `extra`: {problem}")
    if scheduler is not None and not isinstance(trainer.get("scheduler"), dict):
        raise _damaged(folder, "trainer.json has no scheduler state")
    if scheduler is not None:
        live = scheduler.state_dict()
        missing = [key for key in _SCHEDULER_FIELDS if key in live and key not in trainer["scheduler"]]
        wrong = _unlike(trainer["scheduler"], live)
        if missing or wrong:
            raise _damaged(
                folder, f"trainer.json's scheduler state {'lacks ' + str(missing) if missing else 'has ' + wrong}"
            )
    problem = rng_state.json_states_problem(trainer.get("rng", {}))
    if problem:
        raise _damaged(folder, f"trainer.json holds no usable random-number states ({problem})")
    return trainer


def _unlike(saved: dict[str, Any], live: dict[str, Any]) -> str:
    """The first key both mappings hold whose saved value is not of the live value's kind, as
    ``"`key`: saved value (live value)"``, or "". Kinds: a number (bool apart), a flag (bool or
    None, as torch's `foreach` and `fused` are), a string, a list or tuple of as many items of
    the same kinds, a mapping; other live values (tensors, objects) take anything. Keys only one
    side holds are not compared: a torch release may add or drop one."""
    for key in saved.keys() & live.keys():
        if not _same_kind(saved[key], live[key]):
            return f"`{key}`: {saved[key]!r} ({live[key]!r} in the run)"
    return ""


def _same_kind(saved: Any, live: Any) -> bool:
    """Whether `saved` (read from JSON) is of `live`'s kind (`_unlike`)."""
    if live is None or isinstance(live, bool):
        return saved is None or isinstance(saved, bool)
    if isinstance(live, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(live, str):
        return isinstance(saved, str)
    if isinstance(live, (list, tuple)):
        return (
            isinstance(saved, (list, tuple))
            and len(saved) == len(live)
            and all(_same_kind(item, live_item) for item, live_item in zip(saved, live))
        )
    if isinstance(live, dict):
        return isinstance(saved, dict)
    return True


def read_extra(folder: str | os.PathLike, check_extra: ExtraCheck | None = None) -> dict[str, Any]:
    """The `extra` values of a checkpoint, read and checked as `load_checkpoint` checks them,
    without loading anything.

    Raises:
        CheckpointDamaged: the folder is no checkpoint, or its trainer.json fails the checks.
    """
    folder = Path(folder)
    if not folder.is_dir() or not _STEP_FOLDER.fullmatch(folder.name):
        raise CheckpointDamaged(f"{folder} is not a checkpoint folder (checkpoints/step-<N>)")
    return _read_trainer(folder, None, check_extra)["extra"]


def _read_rng(folder: Path) -> dict[str, torch.Tensor]:
    _read_header(folder, "rng.safetensors")
    try:
        tensors = load_file(str(folder / "rng.safetensors"))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise _damaged(folder, f"rng.safetensors does not read ({error!r})") from None
    problem = rng_state.tensors_problem(tensors)
    if problem:
        raise _damaged(folder, f"rng.safetensors: {problem}")
    return tensors


def load_checkpoint(
    folder: str | os.PathLike,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    check_extra: ExtraCheck | None = None,
    process_index: int | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` into the given objects.

    Every file is checked before anything is loaded: present, readable to its end, holding the
    tensors of the given modules with their shapes, an optimizer state that fits `optimizer`,
    and a trainer state that parses, with an `extra` that `check_extra` (the loop's checks of
    the values it saved there) finds nothing wrong with.

    `process_index` and `device` (the loop's rank and its device) pick this process's own
    generator states where a run of several processes saved them (`rng_state.restore`).

    Returns:
        ``{"step": int, "extra": dict}`` as saved.

    Raises:
        CheckpointDamaged: what is wrong with the folder; the objects are untouched (a file that
            changes on disk while the modules load can leave them partly loaded).
        ValueError: a module name that cannot be a checkpoint's (`save_checkpoint`).

    Warns:
        UserWarning: the checkpoint holds CUDA generator states for another number of devices
            than this process sees; those of the devices both have are restored.
    """
    _check_module_names(modules)
    folder = Path(folder)
    if not folder.is_dir() or not _STEP_FOLDER.fullmatch(folder.name):
        raise CheckpointDamaged(f"{folder} is not a checkpoint folder (checkpoints/step-<N>)")
    trainer = _read_trainer(folder, scheduler, check_extra)
    for name, module in modules.items():
        _check_module(folder, name, module)
    if optimizer is not None:
        _check_optimizer(folder, optimizer)
    rng = _read_rng(folder) if restore_rng else {}
    _load_in_place(folder, modules, optimizer, scheduler, trainer.get("scheduler"))
    if restore_rng:
        rng_state.restore(rng, trainer["rng"], process_index, device)
    return {"step": trainer["step"], "extra": trainer["extra"]}


def _load_in_place(
    folder: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scheduler_state: Any,
) -> None:
    """Load the checked files: the scheduler's state and the optimizer's first, whose loading can
    still fail on values no check reads (a scheduler state without a field its class needs), then
    the modules'. On a failure the optimizer and the scheduler get their states from before back."""
    before = [(target, target.state_dict()) for target in (scheduler, optimizer) if target is not None]
    problem = "trainer.json holds no usable scheduler state"
    try:
        if scheduler is not None:
            scheduler.load_state_dict(scheduler_state)
        problem = "optimizer.safetensors holds no usable optimizer state"
        if optimizer is not None:
            _optimizer_from_safetensors(optimizer, folder / "optimizer.safetensors")
        problem = "loading failed"  # the module files were checked: they changed, or the disk failed
        for name, module in modules.items():
            load_model(module, str(folder / f"{name}.safetensors"))
    except _LOAD_ERRORS as error:
        for target, state in before:
            target.load_state_dict(state)
        raise _damaged(folder, f"{problem} ({error!r})") from None


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from.

    Attributes:
        folder: the checkpoint loaded.
        step: its step.
        extra: the values the loop saved with it.
        passed_over: the newer checkpoints that could not be loaded, with what is wrong with each.
    """

    folder: Path
    step: int
    extra: dict[str, Any]
    passed_over: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


def load_newest_intact(
    run_dir: str | os.PathLike,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    check_extra: ExtraCheck | None = None,
    process_index: int | None = None,
    device: torch.device | None = None,
) -> ResumePoint | None:
    """Load the newest checkpoint of a run that passes `load_checkpoint`'s checks (with
    `check_extra`, the loop's checks of its `extra` values; `process_index` and `device` as there).

    Returns:
        Where the run resumes (with the newer checkpoints passed over), or None when the run
        has no checkpoint folder.

    Raises:
        NoIntactCheckpoint: the run has checkpoints and none loads; the message names each
            one's problem. Nothing is loaded.
    """
    passed_over: list[tuple[Path, str]] = []
    for folder in checkpoint_folders(run_dir):
        try:
            state = load_checkpoint(
                folder,
                modules,
                optimizer,
                scheduler,
                check_extra=check_extra,
                process_index=process_index,
                device=device,
            )
        except CheckpointDamaged as damage:
            passed_over.append((folder, str(damage).removeprefix(f"{folder}: ")))
            continue
        return ResumePoint(folder, state["step"], state["extra"], passed_over)
    if not passed_over:
        return None
    problems = "; ".join(f"{folder.name}: {problem}" for folder, problem in passed_over)
    raise NoIntactCheckpoint(
        f"cannot resume {run_dir}: none of its {len(passed_over)} checkpoints can be loaded ({problems}). "
        f"Fix the model config if it changed, or move {Path(run_dir) / 'checkpoints'} aside to start afresh"
    )


def load_pickle(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """Load a pickle-based checkpoint (``torch.load``) only when the caller trusts it.

    Unpickling can execute arbitrary code, so an untrusted file is refused with a
    `ValueError` unless `trust_pickle=True` (the CLI flag ``--trust-pickle``). Files that
    `torch.load(weights_only=True)` can read safely are still read that way first.
    """
    path = Path(path)
    if path.suffix in (".safetensors",):
        return load_file(str(path))
    if not trust_pickle:
        raise ValueError(
            f"refusing to load the pickle checkpoint {path}: unpickling can run arbitrary code. "
            "Convert it to safetensors, or pass trust_pickle=True (--trust-pickle) if you trust its source."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a full unpickle was explicitly allowed
        return torch.load(path, map_location="cpu", weights_only=False)
