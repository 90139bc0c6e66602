"""Counting a module's forward calls, for tests that check what the cache saves."""

from __future__ import annotations

from torch import nn


class ForwardCounter:
    """`calls`: how many times `module` has run forward since this was made."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.calls += 1
