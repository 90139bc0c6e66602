"""Zero-shot accuracy and retrieval recall against hand-computed values."""

from __future__ import annotations

import torch

from clipcond.training.clip.metrics import class_embeddings, retrieval_recall, zero_shot_accuracy


def test_class_embeddings_average_normalised_templates():
    table = {"a cat": [1.0, 0.0], "the cat": [0.0, 2.0], "a dog": [0.0, 1.0], "the dog": [0.0, 3.0]}
    weights = class_embeddings(
        lambda texts: torch.tensor([table[t] for t in texts]), ["cat", "dog"], ["a {}", "the {}"]
    )
    torch.testing.assert_close(weights[0], torch.tensor([2**-0.5, 2**-0.5]))
    torch.testing.assert_close(weights[1], torch.tensor([0.0, 1.0]))


def test_zero_shot_top1_top5_and_per_class_recall():
    classifier = torch.eye(6)
    images = torch.eye(6)[[0, 1, 2, 2, 2, 3]]
    images[2] = torch.tensor([0.0, 0.0, 0.5, 1.0, 0.0, 0.0])  # a class-2 image predicted as 3; 2 is runner-up
    labels = torch.tensor([0, 1, 2, 2, 2, 3])
    result = zero_shot_accuracy(images, classifier, labels)
    assert abs(result.top1 - 5 / 6) < 1e-6 and result.top5 == 1.0
    assert abs(result.mean_per_class_recall - (1 + 1 + 2 / 3 + 1) / 4) < 1e-6


def test_retrieval_recall_both_ways():
    images = torch.eye(4)
    texts = torch.eye(4)[[0, 2, 1, 3]]  # texts 1 and 2 swapped
    recall = retrieval_recall(images, texts, ks=(1, 2))
    assert recall["image_to_text@1"] == 0.5 and recall["text_to_image@1"] == 0.5
    # Image 1's true text scores 0 and only the swapped text scores higher: rank 2.
    assert recall["image_to_text@2"] == 1.0 and recall["text_to_image@2"] == 1.0


def test_retrieval_recall_counts_an_exact_tie_with_the_true_match_as_a_hit():
    """Texts 0 and 1 are the same caption: for image 1 the copy at index 0 ties with its true
    text, which still counts at rank 1; open_clip's argsort ranking puts the copy first."""
    images = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.2, 0.0], [1.0, 0.2, 0.0], [0.0, 1.0, 1.0]])
    recall = retrieval_recall(images, texts, ks=(1, 2))
    assert recall["image_to_text@1"] == 1.0  # image 1 ties between texts 0 and 1
    assert abs(recall["text_to_image@1"] - 2 / 3) < 1e-6  # text 0 is nearer image 1 (no tie): rank 2
    assert recall["text_to_image@2"] == 1.0
    # open_clip_train's get_clip_metrics: rank = position of the true match in a descending argsort
    similarity = torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T
    ranking = torch.argsort(similarity, dim=-1, descending=True, stable=True)
    argsort_ranks = torch.where(ranking == torch.arange(3)[:, None])[1]
    assert argsort_ranks.tolist() == [0, 1, 0]  # image 1: its caption's copy at index 0 comes first
