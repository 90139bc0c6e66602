"""Comparisons the exactness tests share: within 1e-6 of a reference, or clearly moved from it."""

from __future__ import annotations

import torch


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Assert `actual` equals `expected` within 1e-6 (absolute), of the same shape."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def differs(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """True when the shapes differ or some element moved by more than 1e-4."""
    return actual.shape != expected.shape or (actual - expected).abs().max().item() > 1e-4
