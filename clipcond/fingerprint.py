"""Fingerprints of model weights, so cached embeddings are never stale.

`WeightsWatch` answers two questions about a set of modules:
- `state()`: a cheap token that changes whenever any parameter or buffer is replaced
  (a different tensor object or storage) or modified in place (torch bumps a tensor's
  version counter on every in-place write: optimizer steps, `load_state_dict`, `copy_`).
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
    """Hex digest (blake2b, 32 bytes) of every tensor's name, dtype, shape and bytes."""
    digest = hashlib.blake2b(digest_size=32)
    for name, tensor in _tensors(modules):
        data = tensor.detach()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        if data.device.type == "meta":
            raise ValueError(f"cannot fingerprint weights on the meta device ({name}); load them first")
        data = data.to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(data.numpy()))
    return digest.hexdigest()


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
        tensors = [tensor for _, tensor in _tensors(self._modules)]
        same_objects = len(tensors) == len(self._refs) and all(
            ref() is tensor for ref, tensor in zip(self._refs, tensors)
        )
        if not same_objects:
            # New tensor objects: start a new generation, so a recycled id() can never match.
            self._generation += 1
            self._refs = [weakref.ref(tensor) for tensor in tensors]
        versions = tuple((tensor._version, tensor.data_ptr()) for tensor in tensors)
        state = (self._generation, versions)
        self._last_state = state
        return state

    def content_hash(self) -> str:
        """`weights_hash` of the modules, recomputed only when `state()` changed."""
        state = self.state()
        if self._hash is None or state != self._hash_state:
            self._hash = weights_hash(self._modules)
            self._hash_state = state
        return self._hash
