"""Training checkpoints: safetensors only, written atomically, resumable bit for bit.

A checkpoint is a folder ``<run>/checkpoints/step-<N>/`` holding:

- ``<name>.safetensors`` for every module (via `safetensors.torch.save_model`, so shared
  tensors are handled);
- ``optimizer.safetensors``: every tensor of the optimizer state, keyed ``<param>.<field>``,
  with the rest of the optimizer state (param groups, scalars) as JSON metadata;
- ``rng.safetensors``: the torch CPU (and CUDA, when present) generator states;
- ``trainer.json``: step, scheduler state, Python and NumPy RNG states, and whatever the loop
  adds (samples seen, skipped samples).

It is written into a hidden temporary folder and renamed into place, and ``latest`` (a text
file naming the newest step folder) is replaced atomically afterwards, so a run killed at
any moment leaves either the previous checkpoint or the new one, never half of one.

Pickle files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) can run code when loaded: `load_pickle`
refuses them unless the caller says `trust_pickle=True`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
_STEP_PREFIX = "step-"


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    json_state = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    return tensors, json_state


def _restore_rng(tensors: dict[str, torch.Tensor], json_state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    version, values, gauss = json_state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, *rest = json_state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


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
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


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
) -> Path:
    """Write the training state at `step` atomically; keep the newest `keep` checkpoints.

    Args:
        run_dir: the run folder; checkpoints go to ``run_dir/checkpoints/step-<step>``.
        step: optimizer steps taken so far.
        modules: name -> module; each is saved to ``<name>.safetensors``.
        optimizer, scheduler: saved when given (scheduler via its `state_dict`, as JSON).
        extra: JSON-serialisable values the loop wants back on resume.
        keep: how many checkpoints to keep (older ones are deleted after the new one is in place).

    Returns:
        The checkpoint folder.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_STEP_PREFIX}{step:09d}"
    temporary = root / f".tmp-{final.name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    for name, module in modules.items():
        save_model(module, str(temporary / f"{name}.safetensors"))
    if optimizer is not None:
        tensors, metadata = _optimizer_to_safetensors(optimizer)
        save_file(tensors, str(temporary / "optimizer.safetensors"), metadata={"optimizer": metadata})
    rng_tensors, rng_json = _rng_state()
    save_file(rng_tensors, str(temporary / "rng.safetensors"))
    trainer = {
        "step": step,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_json,
        "extra": extra or {},
    }
    (temporary / "trainer.json").write_text(json.dumps(trainer))
    for child in temporary.iterdir():
        with open(child, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    pointer = root / f".latest-{os.getpid()}"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    for old in sorted(p for p in root.iterdir() if p.name.startswith(_STEP_PREFIX))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        folder = root / pointer.read_text().strip()
        if (folder / "trainer.json").is_file():
            return folder
    complete = sorted(p for p in root.glob(f"{_STEP_PREFIX}*") if (p / "trainer.json").is_file())
    return complete[-1] if complete else None


def load_checkpoint(
    folder: str | os.PathLike,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` into the given objects.

    Returns:
        ``{"step": int, "extra": dict}`` as saved.
    """
    folder = Path(folder)
    if not (folder / "trainer.json").is_file():
        raise FileNotFoundError(f"{folder} is not a complete clipcond checkpoint (no trainer.json)")
    for name, module in modules.items():
        load_model(module, str(folder / f"{name}.safetensors"))
    if optimizer is not None:
        _optimizer_from_safetensors(optimizer, folder / "optimizer.safetensors")
    trainer = json.loads((folder / "trainer.json").read_text())
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    if restore_rng:
        _restore_rng(load_file(str(folder / "rng.safetensors")), trainer["rng"])
    return {"step": trainer["step"], "extra": trainer["extra"]}


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
