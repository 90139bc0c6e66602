"""Zero-shot accuracy and retrieval recall against hand-computed values."""

from __future__ import annotations

import pytest
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


def _cosine(a, b):
    """Cosine similarities row by row in float64, written out (the reference of the tests below)."""
    a, b = a.double(), b.double()
    return (a @ b.T) / (a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None, :])


def test_zero_shot_accuracy_equals_a_per_image_count_on_unnormalised_embeddings():
    """40 images of 8 classes, embeddings of 5 dimensions at random lengths (the normalisation
    changes which class is nearest), against a count over the images one at a time."""
    generator = torch.Generator().manual_seed(3)
    classifier = torch.randn(8, 5, generator=generator)
    classifier = classifier / classifier.norm(dim=-1, keepdim=True)  # as class_embeddings returns it
    labels = torch.randint(0, 8, (40,), generator=generator)
    images = (classifier[labels] + 0.9 * torch.randn(40, 5, generator=generator)) * torch.rand(
        40, 1, generator=generator
    )
    images = images + 3.0 * torch.rand(1, 5, generator=generator)  # a shared offset, so lengths matter across rows
    similarity = _cosine(images, classifier)
    hits1, hits5, per_class = 0, 0, {}
    for row, label in zip(similarity.tolist(), labels.tolist()):
        order = sorted(range(8), key=lambda c: -row[c])
        hits1 += order[0] == label
        hits5 += label in order[:5]
        per_class.setdefault(label, []).append(order[0] == label)
    result = zero_shot_accuracy(images, classifier, labels)
    assert 0 < hits5 < 40 and hits1 < hits5  # the case tells top-1 from top-5 from everything
    assert abs(result.top1 - hits1 / 40) < 1e-6 and abs(result.top5 - hits5 / 40) < 1e-6
    expected_recall = sum(sum(hits) / len(hits) for hits in per_class.values()) / len(per_class)
    assert abs(result.mean_per_class_recall - expected_recall) < 1e-6
    assert result.count == 40
    # scaling an image changes nothing: the embeddings are normalised
    scaled = zero_shot_accuracy(images * torch.linspace(0.1, 10, 40)[:, None], classifier, labels)
    assert (scaled.top1, scaled.top5) == (result.top1, result.top5)


def test_retrieval_recall_equals_a_per_query_rank_on_unnormalised_embeddings():
    """12 pairs in 5 dimensions at random lengths: each query's rank of its true match, counted
    one query at a time (no exact ties among random floats), for K = 1, 3, 5 both ways."""
    generator = torch.Generator().manual_seed(4)
    texts = torch.randn(12, 5, generator=generator)
    images = (texts + 1.2 * torch.randn(12, 5, generator=generator)) * torch.rand(12, 1, generator=generator)
    texts = texts * (0.2 + torch.rand(12, 1, generator=generator)) + 2.0 * torch.rand(1, 5, generator=generator)
    similarity = _cosine(images, texts)
    expected = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranks = [sum(score > row[query] for score in row) for query, row in enumerate(scores.tolist())]
        for k in (1, 3, 5):
            expected[f"{direction}@{k}"] = sum(rank < k for rank in ranks) / 12
    recall = retrieval_recall(images, texts, ks=(1, 3, 5))
    assert recall.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(recall[key] - value) < 1e-6, key
    assert expected["image_to_text@3"] != expected["text_to_image@3"]  # the two ways differ here
    assert len(set(expected.values())) > 3


def test_retrieval_needs_one_text_per_image():
    with pytest.raises(ValueError, match=r"^retrieval needs one text per image \(paired rows\)$"):
        retrieval_recall(torch.randn(3, 3), torch.randn(4, 3))


@pytest.mark.parametrize("names, templates", [([], ["a {}"]), (["cat"], []), ([], [])])
def test_class_embeddings_need_a_class_and_a_template(names, templates):
    with pytest.raises(ValueError, match=r"^need at least one class name and one template$"):
        class_embeddings(lambda texts: torch.ones(len(texts), 2), names, templates)


def test_top5_of_fewer_than_five_classes_is_every_class():
    """3 classes in 4 dimensions: top-5 takes all three, so it is 1.0 whatever top-1 is."""
    classifier = torch.eye(4)[:3]
    images = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.2, 0.0, 0.0], [0.0, 0.0, 1.0, 0.5]])
    result = zero_shot_accuracy(images, classifier, torch.tensor([0, 1, 2]))
    assert abs(result.top1 - 2 / 3) < 1e-6 and result.top5 == 1.0
