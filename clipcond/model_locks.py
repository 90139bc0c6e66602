"""One lock per model, for threads that share it.

A conditioner changes settings of the encoders it shares for the length of an encode: a call's
`lora_scale` multiplies their peft LoRA layers' scale and divides it back after. Another thread
encoding with the same model meanwhile (through the same conditioner or another one over the
same model, such as a second pipeline made with `from_pipe`) would run it at that scale, and
two threads at 0.5 each would run it at 0.25. So encodes over a model take turns: each holds the
lock of every model it runs, from its cache lookup to its last forward pass, and a scaled block
holds them from the scaling to its undoing.

The locks are reentrant (a scaled block encodes under its own locks) and are taken in one order
(by `id`), so two threads holding locks of overlapping sets of models cannot wait on each
other. A model's lock lives as long as the model.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator

from torch import nn

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()  # guards `_LOCKS` itself


def model_lock(model: nn.Module) -> threading.RLock:
    """The reentrant lock of `model`, made on first use."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def holding(models: Iterable[nn.Module]) -> Iterator[None]:
    """Inside the block this thread holds the lock of each of `models` (each once, taken in
    order of `id`)."""
    unique = {id(model): model for model in models}
    with contextlib.ExitStack() as stack:
        for _, model in sorted(unique.items()):
            stack.enter_context(model_lock(model))
        yield


@contextlib.contextmanager
def holding_while(models: Iterable[nn.Module], block: contextlib.AbstractContextManager) -> Iterator[None]:
    """`block` entered and left with the locks of `models` held (`holding`), all of it when
    the ``with`` is entered, not when this is called."""
    with holding(models), block:
        yield


__all__ = ["holding", "holding_while", "model_lock"]
