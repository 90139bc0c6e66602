"""Evaluating a `ClipTwoTower`: zero-shot colour-shape classification on the shapes world and
image-text retrieval on any image-caption pairs.

Zero-shot on shapes: the classes are every colour-shape combination ("red circle"), each
embedded through prompt templates and ensembled; the images are single objects (random size
and place) of each combination. Accuracy is reported over the combinations seen in training
and, separately, over the held-out combinations no training image ever showed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from clipcond.models import ClipTwoTower
from clipcond.shapes import (
    ZERO_SHOT_TEMPLATES,
    class_name,
    colour_shape_classes,
    heldout_pairs,
    render_scene,
    single_object_scene,
)
from clipcond.training.clip.metrics import class_embeddings, retrieval_recall, zero_shot_accuracy
from clipcond.training.data import CaptionTokenizer, ClipImageTransform


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Inside the block every module of `model` is in eval mode; afterwards each module gets back
    its own training flag.

    Not `model.train(was_training)`: that sets every submodule alike, so it would put a tower a
    run keeps locked (its BatchNorm statistics frozen, see `ContrastiveModel.train`) back in
    train mode after an evaluation in the middle of the run.
    """
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in flags.items():
            module.training = training


@torch.no_grad()
def encode_texts(
    clip: ClipTwoTower, tokenizer: CaptionTokenizer, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """(len(texts), embed_dim) text embeddings (not normalised), in batches."""
    device = clip.logit_scale.device
    parts = [
        clip.encode_text(tokenizer(texts[start : start + batch_size]).to(device)).float()
        for start in range(0, len(texts), batch_size)
    ]
    return torch.cat(parts)


@torch.no_grad()
def encode_images(clip: ClipTwoTower, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(n, embed_dim) image embeddings (not normalised) of (n, 3, size, size) CLIP-normalised pixels."""
    device = clip.logit_scale.device
    dtype = clip.logit_scale.dtype
    parts = [
        clip.encode_image(pixels[start : start + batch_size].to(device, dtype)).float()
        for start in range(0, len(pixels), batch_size)
    ]
    return torch.cat(parts)


def shapes_zero_shot(
    clip: ClipTwoTower,
    tokenizer: CaptionTokenizer,
    images_per_class: int = 20,
    seed: int = 12345,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
) -> dict[str, float]:
    """Zero-shot colour-shape classification of single-object shapes images.

    Args:
        clip: the model (evaluated in eval mode; each module's training flag is restored afterwards).
        tokenizer: captions -> ids for its text tower.
        images_per_class: rendered test images per colour-shape combination.
        seed: selects sizes and places of the test objects (independent of training data).
        templates: prompt templates, each with one "{}" for the class name.

    Returns:
        fractions in [0, 1]: ``top1``, ``top5``, ``mean_per_class_recall`` over all classes,
        ``seen_top1`` over combinations in the training split, ``heldout_top1`` over held-out
        combinations; and ``images``, the number of test images.
    """
    if images_per_class < 1:
        raise ValueError(f"`images_per_class` must be >= 1, got {images_per_class}")
    with evaluating(clip):
        classes = colour_shape_classes()
        names = [class_name(colour, shape) for colour, shape in classes]
        classifier = class_embeddings(lambda texts: encode_texts(clip, tokenizer, texts), names, templates)
        image_size = clip.config.vision.image_size
        transform = ClipImageTransform(image_size)
        rng = random.Random(seed)
        pixels, labels = [], []
        for label, (colour, shape) in enumerate(classes):
            for _ in range(images_per_class):
                pixels.append(transform(render_scene(single_object_scene(colour, shape, rng), image_size)))
                labels.append(label)
        embeds = encode_images(clip, torch.stack(pixels))
        label_tensor = torch.tensor(labels, device=embeds.device)  # labels and mask where the scores are
        overall = zero_shot_accuracy(embeds, classifier.to(embeds.device), label_tensor)
        heldout = set(heldout_pairs())
        is_heldout = torch.tensor([classes[label] in heldout for label in labels], device=embeds.device)
        result = {
            "top1": overall.top1,
            "top5": overall.top5,
            "mean_per_class_recall": overall.mean_per_class_recall,
            "images": float(len(labels)),
        }
        for name, rows in (("seen_top1", ~is_heldout), ("heldout_top1", is_heldout)):
            if rows.any():
                result[name] = zero_shot_accuracy(embeds[rows], classifier, label_tensor[rows]).top1
        return result


class TooFewPairs(ValueError):
    """Retrieval was given fewer than 2 usable image-caption pairs."""


def pair_retrieval(
    clip: ClipTwoTower, tokenizer: CaptionTokenizer, pairs: Iterable[tuple[object, str]], limit: int = 1000
) -> dict[str, float]:
    """Image<->text recall@1/5/10 over up to `limit` (PIL image, caption) pairs (image i matches caption i;
    an exact tie with the true match counts as a hit, see `retrieval_recall`).

    Raises:
        TooFewPairs: fewer than 2 pairs (recall needs a wrong caption to rank against).
    """
    transform = ClipImageTransform(clip.config.vision.image_size)
    pixels, captions = [], []
    for image, caption in pairs:
        pixels.append(transform(image))
        captions.append(caption)
        if len(captions) >= limit:
            break
    if len(captions) < 2:
        raise TooFewPairs(f"retrieval needs at least 2 image-caption pairs, got {len(captions)}")
    with evaluating(clip):
        result = retrieval_recall(encode_images(clip, torch.stack(pixels)), encode_texts(clip, tokenizer, captions))
    result["pairs"] = float(len(captions))
    return result
