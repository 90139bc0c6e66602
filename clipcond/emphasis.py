"""Emphasis: how a token's weight changes its encoder states, as each UI does it.

The states of one window (CLIP: BOS + up to 75 tokens + EOS + padding; T5: its one sequence)
are `states` (windows, length, width); `weights` (windows, length) holds each token's weight
(1.0 for special and padding tokens). Every mode leaves a window whose weights are all 1.0
exactly as it was.

- ``multiply`` (A1111's "No norm"): each token's states times its weight.
- ``a1111`` (A1111's default, "Original", ``modules/sd_emphasis.py``): multiply, then rescale
  the window so the mean of all its states (every position and channel) is what it was before
  weighting. A1111 takes that mean over the batch of windows it encodes together (one prompt,
  or the texts of one prompt's editing schedule); here each prompt's window is its own batch,
  which is the same for a prompt without editing.
- ``comfy`` (ComfyUI, ``comfy/sd1_clip.py``): a weighted token moves away from the empty
  prompt's state at the same position: ``empty + (state - empty) * weight``.
- ``compel`` (compel's ``EmbeddingsProvider``, its default down-weighting by masking): every
  weight moves a token as ``comfy`` does; then, for each fragment weighted below 1, the prompt
  is encoded again with that fragment masked out of attention, weighted the same way, and the
  results are blended with weights 1 and tan((1 - max(w, 1e-5)) * pi / 2) per such fragment,
  normalised to sum to 1 (so weight 0.5 lands half-way to the prompt without the fragment).

The mode names and their check live in `clipcond.emphasis_modes`, which imports no torch (the
command line offers them in ``--help``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# compel clamps a down-weight before taking the tangent, so that weight 0 stays finite.
COMPEL_MIN_WEIGHT = 1e-5


def multiply(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(windows, length, width) states times (windows, length) weights."""
    return states * weights.unsqueeze(-1)


def multiply_keeping_window_means(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original": multiply, then scale each window back to its unweighted mean.

    A window whose weights are all 1 is returned as it is. Where the weighted mean is 0 the
    ratio of the means is not finite (A1111 then divides by zero and draws infinities): that
    window is left multiplied, not rescaled. It happens with untrained encoders, whose final
    layer norm has no bias, so that the mean of their states is 0 up to rounding. The
    gradient there is that of the multiplication alone: the division is made again with 1 in
    place of the zero mean, so that no 0/0 of its backward reaches an encoder being trained.
    """
    original_mean = states.mean(dim=(1, 2), keepdim=True)  # (windows, 1, 1)
    weighted = multiply(states, weights)
    weighted_mean = weighted.mean(dim=(1, 2), keepdim=True)
    finite = torch.isfinite(original_mean / weighted_mean)
    ones = torch.ones_like(weighted_mean)
    ratio = torch.where(finite, original_mean / torch.where(finite, weighted_mean, ones), ones)
    unweighted = (weights == 1.0).all(dim=1).reshape(-1, 1, 1)
    return torch.where(unweighted, states, weighted * ratio)


def away_from_empty(states: torch.Tensor, weights: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """ComfyUI's and compel's up-weighting: ``empty + (states - empty) * weight`` where the
    weight is not 1; `empty` (length, width) is the empty prompt's window."""
    moved = empty + (states - empty) * weights.unsqueeze(-1)
    return torch.where((weights == 1.0).unsqueeze(-1), states, moved)


def compel_blend_weight(weight: float) -> float:
    """The blend weight of the prompt encoded without a fragment of `weight` (< 1)."""
    return math.tan((1.0 - max(COMPEL_MIN_WEIGHT, weight)) * math.pi / 2)


def compel_blend(
    versions: Sequence[torch.Tensor], blend_weights: Sequence[float], normalize: bool = True
) -> torch.Tensor:
    """Blend versions of one prompt's states (tensors of one shape, e.g. (windows, length,
    width)) with weights normalised to sum to 1 (unless `normalize` is False), as compel does,
    in the states' dtype."""
    stacked = torch.stack(list(versions))  # (versions, *shape)
    weights = torch.tensor(blend_weights, dtype=stacked.dtype, device=stacked.device)
    if normalize:
        weights = weights / weights.sum()
    return (stacked * weights.reshape(-1, *([1] * (stacked.dim() - 1)))).sum(dim=0)
