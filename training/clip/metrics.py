"""Evaluation of a CLIP model: zero-shot classification and image-text retrieval.

Both work on already-computed embeddings, so they are independent of how the towers are
built; `class_embeddings` turns class names and prompt templates into classifier weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a {}.",
    "a photo of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a picture of a {}.",
)


def class_embeddings(
    encode_texts: Callable[[list[str]], torch.Tensor], class_names: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Zero-shot classifier weights: for each class, the mean of its normalised template
    embeddings, normalised again (template ensembling, as in the CLIP paper).

    Args:
        encode_texts: list of strings -> (n, dim) text embeddings.
        class_names: the classes, e.g. "red circle".
        templates: format strings with one "{}", e.g. "a photo of a {}.".

    Returns:
        (classes, dim), unit length rows.
    """
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    texts = [template.format(name) for name in class_names for template in templates]
    embeds = F.normalize(encode_texts(texts).float(), dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(embeds.mean(dim=1), dim=-1)


@dataclass
class ZeroShotResult:
    """Zero-shot classification accuracy (fractions in [0, 1])."""

    top1: float
    top5: float
    mean_per_class_recall: float
    count: int


def zero_shot_accuracy(image_embeds: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor) -> ZeroShotResult:
    """Accuracy of nearest-class prediction.

    Args:
        image_embeds: (n, dim) image embeddings (normalised here).
        classifier: (classes, dim) from `class_embeddings`.
        labels: (n,) int class indices.
    """
    logits = F.normalize(image_embeds.float(), dim=-1) @ classifier.float().T
    labels = labels.to(logits.device)
    top = logits.topk(min(5, classifier.shape[0]), dim=-1).indices
    correct1 = top[:, 0] == labels
    correct5 = (top == labels[:, None]).any(dim=-1)
    recalls = [correct1[labels == c].float().mean() for c in labels.unique()]
    return ZeroShotResult(
        top1=correct1.float().mean().item(),
        top5=correct5.float().mean().item(),
        mean_per_class_recall=torch.stack(recalls).mean().item(),
        count=len(labels),
    )


def retrieval_recall(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K both ways for paired embeddings (image i matches text i).

    A query's rank is the number of candidates scoring strictly higher than its true match, so a
    candidate that ties with the true match exactly counts as a hit too: a repeated caption (the
    same text, hence the same embedding) found for an image is a hit, whichever copy it is.
    open_clip's `get_clip_metrics` ranks by `argsort` instead, where an exact tie falls either
    way by sort order, so with repeated captions its image_to_text recall can be lower; without
    exact ties the two agree. text_to_image ties only for identical images.

    Args:
        image_embeds: (n, dim) image embeddings (normalised here).
        text_embeds: (n, dim) text embeddings of the paired captions (normalised here).
        ks: the K of Recall@K.

    Returns:
        {"image_to_text@1": ..., "text_to_image@1": ..., ...} as fractions.
    """
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError("retrieval needs one text per image (paired rows)")
    similarity = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T
    target = torch.arange(similarity.shape[0], device=similarity.device)
    result = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        # rank of the true match = number of candidates scoring strictly higher
        true_scores = scores[target, target]
        ranks = (scores > true_scores[:, None]).sum(dim=-1)
        for k in ks:
            result[f"{direction}@{k}"] = (ranks < k).float().mean().item()
    return result
