"""The random generator states a checkpoint keeps, and putting them back.

``rng.safetensors`` holds torch's generator states as uint8 tensors:

- ``torch_cpu``: the CPU generator of the process that wrote the checkpoint (rank 0);
- ``torch_cuda_<device>``: each CUDA device's generator as that process saw it;
- ``process_<rank>.torch_cpu`` and ``process_<rank>.torch_cuda``: in a run of several processes,
  each process's own CPU generator and its own device's CUDA generator, gathered by the loop.
  Rank 0 alone sees the other devices' generators untouched (rank ``r`` draws from device
  ``r``'s), so without these a resumed rank would take its device's state from the start of the
  run: LoRA dropout on a GPU would draw other masks than in the uninterrupted run.

Python's and NumPy's states go to trainer.json (`python_and_numpy_states`, checked by `json_states_problem`).
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

CPU = "torch_cpu"
CUDA_PREFIX = "torch_cuda_"
_PROCESS_STATE = re.compile(r"process_(\d+)\.torch_(cpu|cuda)")


def own_generator_states(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's own torch generators: the CPU's, and `device`'s when it is a CUDA device.

    Returns:
        ``{"torch_cpu": uint8 tensor[, "torch_cuda": uint8 tensor (16 bytes)]}``.
    """
    states = {CPU: torch.get_rng_state()}
    if device.type == "cuda":
        states["torch_cuda"] = torch.cuda.get_rng_state(device)
    return states


def generator_tensors(processes: Sequence[dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """What rng.safetensors holds: this process's CPU and CUDA generators, and `processes`
    (each rank's `own_generator_states`, in rank order) when the run has several."""
    tensors = {CPU: torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{CUDA_PREFIX}{index}"] = state
    for rank, states in enumerate(processes or ()):
        for name, state in states.items():
            tensors[f"process_{rank}.{name}"] = state.detach().cpu().clone()  # safetensors refuses shared memory
    return tensors


def python_and_numpy_states() -> dict[str, Any]:
    """Python's and NumPy's generator states, as JSON values (trainer.json's ``rng``)."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def _is_cuda_state(state: torch.Tensor) -> bool:
    # what torch's CUDA generator takes: a seed and an offset, 8 bytes each (or a seed alone)
    return state.dtype == torch.uint8 and state.dim() == 1 and state.numel() in (8, 16)


def _is_cpu_state(state: torch.Tensor) -> bool:
    try:
        torch.Generator().set_state(state)
    except (RuntimeError, TypeError):
        return False
    return True


def tensors_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with rng.safetensors' tensors (None: nothing); checked before anything is
    loaded, since CUDA states can only be tried on a GPU, after the modules are."""
    if CPU not in tensors:
        return f"it holds no torch generator state ({CPU})"
    cuda = sorted(name for name in tensors if name.startswith(CUDA_PREFIX))
    expected = sorted(f"{CUDA_PREFIX}{index}" for index in range(len(cuda)))
    if cuda != expected:
        return f"it holds CUDA generator states {cuda}, not {expected}"
    ranks = set()
    for name, state in tensors.items():
        process = _PROCESS_STATE.fullmatch(name)
        if process is None and name != CPU and name not in cuda:
            return f"it holds {name!r}, which names no generator"
        if process is not None:
            ranks.add(int(process.group(1)))
        on_cpu = name == CPU or (process is not None and process.group(2) == "cpu")
        if not (_is_cpu_state(state) if on_cpu else _is_cuda_state(state)):
            kind = "generator state" if on_cpu else "CUDA generator state (16 bytes, uint8)"
            return f"{name} is a {state.dtype} tensor of shape {list(state.shape)}, not a {kind}"
    if ranks != set(range(len(ranks))) or any(f"process_{rank}.{CPU}" not in tensors for rank in ranks):
        return f"it holds the generator states of processes {sorted(ranks)}, not of processes 0 to {len(ranks) - 1}"
    return None


def json_states_problem(json_state: Any) -> str | None:
    """What is wrong with trainer.json's Python and NumPy states (None: nothing), found by
    setting them on generators of their own."""
    try:
        version, values, gauss = json_state["python"]
        random.Random().setstate((version, tuple(values), gauss))
        name, keys, *rest = json_state["numpy"]
        np.random.RandomState().set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    except (KeyError, TypeError, ValueError, OverflowError) as error:  # a value out of range: OverflowError
        return repr(error)
    return None


def restore(
    tensors: dict[str, torch.Tensor],
    json_state: dict[str, Any],
    process_index: int | None = None,
    device: torch.device | None = None,
) -> None:
    """Put back the saved generator states (checked by `tensors_problem`).

    CUDA states are restored for the devices both the checkpoint and this process have; a
    different device count (a run written with 2 visible GPUs resumed with 1, or a CPU run
    resumed on a GPU) is a warning, as the run goes on but its CUDA draws are no longer those of
    an uninterrupted run. Where the checkpoint holds each process's own states, process
    `process_index` then takes its own: its CPU generator's, and `device`'s when that is a CUDA
    device.
    """
    torch.set_rng_state(tensors[CPU])
    saved = [tensors[f"{CUDA_PREFIX}{index}"] for index in range(sum(name.startswith(CUDA_PREFIX) for name in tensors))]
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if saved and here:
        torch.cuda.set_rng_state_all(saved[:here])
    if len(saved) != here:
        warnings.warn(
            f"the checkpoint holds CUDA generator states for {len(saved)} device(s) and this process sees {here}: "
            f"{min(len(saved), here)} restored, so random draws on CUDA differ from an uninterrupted run's "
            "(resume with the same visible GPUs for that)",
            stacklevel=4,
        )
    if process_index is not None and f"process_{process_index}.{CPU}" in tensors:
        torch.set_rng_state(tensors[f"process_{process_index}.{CPU}"])
        own_cuda = tensors.get(f"process_{process_index}.torch_cuda")
        if own_cuda is not None and device is not None and device.type == "cuda" and here:
            torch.cuda.set_rng_state(own_cuda, device)
    version, values, gauss = json_state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, *rest = json_state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
