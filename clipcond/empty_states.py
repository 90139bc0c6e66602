"""The encoders' token states of the empty prompt, computed once per weights state.

The "comfy" and "compel" emphasis modes move weighted tokens away from the empty prompt's
states. Those states depend only on the encoder's weights, its tokenizer and the recipe's
layer choice, so a conditioner keeps them here instead of encoding the empty window again on
every call; any change of that key (weights written or moved, a token added, another clip-skip)
drops them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch


class EmptyPromptStates:
    """A memo of the empty prompt's token states per encoder slot, valid for one key.

    `get(key, slot, compute)` returns the states stored for `slot` under `key`, computing and
    storing them with `compute()` when missing; a different `key` than the last one clears
    every slot first. States are kept without a graph (detached).
    """

    def __init__(self) -> None:
        self._key: Hashable | None = None
        self._states: dict[Hashable, torch.Tensor] = {}

    def get(self, key: Hashable, slot: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The states of `slot` under `key`: (length, width)."""
        if key != self._key:
            self._states.clear()
            self._key = key
        if slot not in self._states:
            self._states[slot] = compute().detach()
        return self._states[slot]
