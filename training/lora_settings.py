"""The checks every LoRA section of a training config shares (peft's rank and scale)."""

from __future__ import annotations

import math
from typing import Any


def check_lora_rank_and_alpha(r: Any, alpha: Any) -> None:
    """A ValueError naming the key unless `lora.r` is an integer >= 1 and `lora.alpha` a finite
    number > 0 (the update is scaled by alpha / r, so 0 would train nothing)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"`lora.r` must be an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0 < alpha < math.inf):
        raise ValueError(f"`lora.alpha` must be a number > 0 (the update is scaled by alpha / r), got {alpha!r}")
