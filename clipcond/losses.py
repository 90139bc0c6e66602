"""Contrastive losses for two-tower image-text training: CLIP's softmax loss and SigLIP's sigmoid loss.

Both losses take the L2-normalised features of the *local* batch, `(local_batch, dim)`, and the
model's *log* logit scale. Under `torch.distributed` they gather the other ranks' features with
gradients and compute the loss of the local rows against the global batch, normalised so that:

* the mean of the ranks' losses equals the loss of one process on the global batch, and
* the ranks' parameter gradients, averaged by DDP, equal the gradients of that single-process loss.

The global batch is the ranks' local batches concatenated in rank order; every rank must bring the
same local batch size (the gather needs equal shapes; use `drop_last=True` in the data loader).

Hard negatives (NegCLIP, Yuksekgonul et al. 2023) are extra captions that match no image: they are
added as extra columns of the image -> text logits only, gathered across ranks like the captions.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

# CLIP clips the learned temperature so logits are never scaled by more than 100 (Radford et al. 2021).
MAX_LOGIT_SCALE = math.log(100)

# SigLIP's initial temperature t' = log 10 and bias b = -10 (Zhai et al. 2023).
SIGLIP_INIT_LOGIT_SCALE = math.log(10)
SIGLIP_INIT_LOGIT_BIAS = -10.0


def clamp_logit_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """Clamp a log logit scale to `[0, MAX_LOGIT_SCALE]`, so `exp()` of it lies in `[1, 100]`.

    Args:
        logit_scale: the log scale, any shape (usually a scalar parameter).

    Returns:
        A tensor of the same shape. Inside the range it is the input, with gradient 1; outside it is
        the bound, with gradient 0 (so a parameter pushed past a bound gets no gradient from the loss:
        a training loop should also clamp the parameter in place after each step, as open_clip does).
    """
    return logit_scale.clamp(0.0, MAX_LOGIT_SCALE)


def _rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features concatenated in rank order, with gradients flowing back to every rank.

    Args:
        features: `(local_batch, ...)`, this rank's rows. Every rank must pass the same shape.

    Returns:
        `(world_size * local_batch, ...)`; rows `rank * local_batch : (rank + 1) * local_batch` are
        this rank's input. Without an initialised process group, or with a world size of 1, the
        input itself is returned.

    The backward pass sums, over all ranks, the gradients that reach each rank's rows (the gather
    from `torch.distributed.nn.functional`), so a loss computed on any rank trains every rank's
    towers.
    """
    if features.ndim < 1:
        raise ValueError(f"features must have a batch axis, got shape {tuple(features.shape)}")
    _, world_size = _rank_and_world_size()
    if world_size == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0)


def _as_scalar(name: str, value: torch.Tensor) -> torch.Tensor:
    """`value` as a 0-dim tensor; it may be shaped () (CLIPModel, open_clip) or (1,) (SiglipModel)."""
    if not isinstance(value, torch.Tensor) or value.ndim > 1 or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a one-element tensor of shape () or (1,), got {shape}")
    return value.reshape(())


def _check_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    negative_text_features: torch.Tensor | None,
) -> None:
    if image_features.ndim != 2 or image_features.shape[0] == 0:
        raise ValueError(
            f"image_features must be (batch, dim) with batch >= 1, got shape {tuple(image_features.shape)}"
        )
    if text_features.shape != image_features.shape:
        raise ValueError(
            f"text_features must have the shape of image_features {tuple(image_features.shape)} "
            f"(one caption per image), got {tuple(text_features.shape)}"
        )
    if negative_text_features is not None and negative_text_features.shape != text_features.shape:
        raise ValueError(
            f"negative_text_features must have the shape of text_features {tuple(text_features.shape)} "
            f"(one hard negative per image), got {tuple(negative_text_features.shape)}"
        )


def _candidate_texts(text_features: torch.Tensor, negative_text_features: torch.Tensor | None) -> torch.Tensor:
    """The global captions, then the global hard negatives: the columns of the image -> text logits."""
    all_texts = gather_features(text_features)
    if negative_text_features is None:
        return all_texts
    return torch.cat([all_texts, gather_features(negative_text_features)], dim=0)


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    negative_text_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss: image -> text and text -> image cross-entropy, averaged.

    Args:
        image_features: `(local_batch, dim)`, L2-normalised image embeddings of this rank.
        text_features: `(local_batch, dim)`, L2-normalised caption embeddings; row i captions image i.
        logit_scale: one element, shape `()` or `(1,)`: the *log* scale (a model's `logit_scale`
            parameter). It is clamped with `clamp_logit_scale`, then exponentiated.
        negative_text_features: optional `(local_batch, dim)` hard-negative captions. They add columns
            to the image -> text logits only; the text -> image direction is unchanged.

    Returns:
        Scalar loss, `(CE(image -> text) + CE(text -> image)) / 2`, each cross-entropy averaged over
        the local rows. With `world_size` ranks the local rows are scored against the gathered global
        batch (labels offset by `rank * local_batch`), so the ranks' mean loss is the single-process
        loss on the global batch, and DDP's gradient average gives its gradients.

    Raises:
        ValueError: feature shapes that are not `(batch, dim)` alike (naming the argument and the
            shapes), or a `logit_scale` that is not one element. Checked before any computation.
    """
    _check_features(image_features, text_features, negative_text_features)
    logit_scale = _as_scalar("logit_scale", logit_scale)

    rank, _ = _rank_and_world_size()
    local_batch = image_features.shape[0]
    scale = clamp_logit_scale(logit_scale).exp()

    logits_per_image = scale * image_features @ _candidate_texts(text_features, negative_text_features).T
    logits_per_text = scale * text_features @ gather_features(image_features).T
    labels = torch.arange(local_batch, device=image_features.device) + rank * local_batch
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    negative_text_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023).

    Every image-caption pair is a binary classification: logit `exp(logit_scale) * x_i . y_j +
    logit_bias`, label +1 for the matching caption and -1 for every other one.

    Args:
        image_features: `(local_batch, dim)`, L2-normalised image embeddings of this rank.
        text_features: `(local_batch, dim)`, L2-normalised caption embeddings; row i captions image i.
        logit_scale: one element, shape `()` or `(1,)`: the *log* scale t' (starts at
            `SIGLIP_INIT_LOGIT_SCALE`). It is *not* clamped: the paper and big_vision leave it free,
            and trained SigLIP models go past 100 (open_clip's ViT-SO400M-14-SigLIP-384 has
            exp(t') ~ 112), which a clamp would change.
        logit_bias: one element, shape `()` or `(1,)`: the bias b (starts at `SIGLIP_INIT_LOGIT_BIAS`).
        negative_text_features: optional `(local_batch, dim)` hard-negative captions, scored as extra
            pairs with label -1 for every image.

    Returns:
        Scalar loss, `-sum(logsigmoid(label * logit)) / local_batch`, summed over the local images
        against all gathered captions (and negatives). Dividing by the *local* batch size makes the
        ranks' mean loss equal `-sum(...) / global_batch` over all pairs of the global batch, the
        single-process loss, and DDP's gradient average its gradients.

    Raises:
        ValueError: feature shapes that are not `(batch, dim)` alike (naming the argument and the
            shapes), or a scale or bias that is not one element. Checked before any computation.
    """
    _check_features(image_features, text_features, negative_text_features)
    logit_scale = _as_scalar("logit_scale", logit_scale)
    logit_bias = _as_scalar("logit_bias", logit_bias)

    rank, _ = _rank_and_world_size()
    local_batch = image_features.shape[0]
    candidates = _candidate_texts(text_features, negative_text_features)

    logits = logit_scale.exp() * image_features @ candidates.T + logit_bias
    rows = torch.arange(local_batch, device=logits.device)
    signs = -torch.ones_like(logits)
    signs[rows, rows + rank * local_batch] = 1.0
    return -F.logsigmoid(signs * logits).sum() / local_batch
