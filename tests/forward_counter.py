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


def record_encoder_runs(monkeypatch) -> list[int]:
    """The number of windows of each encoder run of every conditioner (its `encode_fragments`
    calls), recorded from now on; an empty list: no prompt was encoded."""
    from clipcond import conditioning

    runs: list[int] = []
    real = conditioning.encode_fragments

    def counted(*args, **kwargs):
        runs.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(conditioning, "encode_fragments", counted)
    return runs
