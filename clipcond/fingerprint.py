"""Fingerprints of model weights, so cached embeddings are never stale.

`WeightsWatch` answers two questions about a set of modules:
- `state()`: a cheap token that changes whenever any parameter or buffer is replaced
  (a different tensor object or storage) or modified in place (torch bumps a tensor's
  version counter on every in-place write: optimizer steps, `load_state_dict`, `copy_`).
  For modules placed by accelerate hooks (`enable_model_cpu_offload`), whose storage moves
  on every call by design, a change of dtype or device stands in for a change of storage.
  The settings of peft adapter layers (scale, active, merged, disabled) are part of it too.
- `content_hash()`: a hash of the weights' names, shapes, dtypes and bytes, stable across
  processes (used for the on-disk cache); computed once per state, since it reads every byte.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence

import torch
from torch import nn


def _tensors(modules: Sequence[nn.Module]) -> list[tuple[str, torch.Tensor]]:
    named = []
    for index, module in enumerate(modules):
        for name, tensor in module.state_dict(keep_vars=True).items():
            named.append((f"{index}.{name}", tensor))
    return named


def weights_hash(modules: Sequence[nn.Module]) -> str:
    """Hex digest (blake2b, 32 bytes) of every tensor's name, dtype, shape and bytes, and of
    the modules' peft adapter settings."""
    digest = hashlib.blake2b(digest_size=32)
    for name, tensor in _tensors(modules):
        data = tensor.detach()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        if data.device.type == "meta":
            raise ValueError(f"cannot fingerprint weights on the meta device ({name}); load them first")
        data = data.to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(data.numpy()))
    for index, module in enumerate(modules):
        digest.update(f"{index}|adapters|{_adapter_settings(list(module.named_modules()))!r}".encode())
    return digest.hexdigest()


# Hooks and adapter settings are plain attributes: read from __dict__, which skips
# nn.Module.__getattr__'s slow miss on the many modules that lack them.


def _placed_by_hook(parts: list[tuple[str, nn.Module]]) -> bool:
    """True when accelerate hooks place the weights of a module, given its `named_modules()`
    (`enable_model_cpu_offload`)."""
    return any(part.__dict__.get("_hf_hook") is not None for _, part in parts)


def _adapter_settings(parts: list[tuple[str, nn.Module]]) -> tuple:
    """The settings of peft adapter layers among a module's `named_modules()` that change its
    output without touching a weight: each layer's scaling per adapter, active adapters,
    merged adapters, and whether adapters are disabled (`set_adapters`, `scale_layer`,
    `disable_adapter_layers`)."""
    settings = []
    for name, part in parts:
        scaling = part.__dict__.get("scaling")
        if isinstance(scaling, dict) and hasattr(part, "active_adapters"):
            settings.append(
                (
                    name,
                    tuple(sorted(scaling.items())),
                    tuple(part.active_adapters),
                    tuple(getattr(part, "merged_adapters", ())),
                    bool(getattr(part, "disable_adapters", False)),
                )
            )
    return tuple(settings)


class WeightsWatch:
    """Watches the weights of `modules` for replacement or in-place change."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self._modules = list(modules)
        self._refs: list[weakref.ref] = []
        self._generation = 0
        self._last_state: tuple | None = None
        self._hash_state: tuple | None = None
        self._hash: str | None = None

    def state(self) -> tuple:
        """A token equal between two calls if and only if no weight was replaced or written."""
        tensors: list[torch.Tensor] = []
        marks: list[tuple] = []
        adapters = []
        for module in self._modules:
            parts = list(module.named_modules())
            placed_by_hook = _placed_by_hook(parts)
            adapters.append(_adapter_settings(parts))
            for tensor in module.state_dict(keep_vars=True).values():
                tensors.append(tensor)
                # A hook moves the weights for each forward and back after: their storage
                # changes on every call while their values do not.
                where = (tensor.dtype, tensor.device) if placed_by_hook else tensor.data_ptr()
                marks.append((tensor._version, where))
        same_objects = len(tensors) == len(self._refs) and all(
            ref() is tensor for ref, tensor in zip(self._refs, tensors)
        )
        if not same_objects:
            # New tensor objects: start a new generation, so a recycled id() can never match.
            self._generation += 1
            self._refs = [weakref.ref(tensor) for tensor in tensors]
        state = (self._generation, tuple(marks), tuple(adapters))
        self._last_state = state
        return state

    def content_hash(self) -> str:
        """`weights_hash` of the modules, recomputed only when `state()` changed."""
        state = self.state()
        if self._hash is None or state != self._hash_state:
            self._hash = weights_hash(self._modules)
            self._hash_state = state
        return self._hash
