"""The CLIP run's evaluations on their own: the eval-mode block that gives each module back its own
flag, batched encoding against one pass of the real tiny model, and the zero-shot and retrieval
figures of stand-in towers whose right answers are known (a text names its class, an image carries
its class in its pixels), worked out by hand.

How a training run reports them is tested in test_train_clip.py and the eval command's tests."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import clipcond.training.clip.evaluation as evaluation
from clipcond import clip_tokenizer
from clipcond.models import ClipTwoTower, load_model_config
from clipcond.shapes import ZERO_SHOT_TEMPLATES, class_name, colour_shape_classes, heldout_pairs
from clipcond.training.clip.evaluation import (
    TooFewPairs,
    encode_images,
    encode_texts,
    evaluating,
    pair_retrieval,
    shapes_zero_shot,
)
from clipcond.training.data import CaptionTokenizer

TINY = Path(__file__).resolve().parents[1] / "configs" / "models" / "clip-tiny.yaml"
CLASSES = colour_shape_classes()
NAMES = [class_name(colour, shape) for colour, shape in CLASSES]
HELD_OUT = {CLASSES.index(pair) for pair in heldout_pairs()}


# ------------------------------------------------------------------ evaluating


class Locked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)


def test_inside_the_block_all_is_in_eval_mode_and_each_module_gets_its_own_flag_back() -> None:
    model = Locked().train()
    model.tower.eval()  # a locked tower stays in eval mode through the run
    with evaluating(model):
        assert [module.training for module in model.modules()] == [False, False, False]
    assert (model.training, model.tower.training, model.head.training) == (True, False, True)
    with pytest.raises(RuntimeError, match="stopped"), evaluating(model):
        raise RuntimeError("stopped")
    assert (model.training, model.tower.training, model.head.training) == (True, False, True)
    model.eval()
    with evaluating(model):
        pass
    assert not any(module.training for module in model.modules())


# ------------------------------------------------------------------ batched encoding, real tiny model


@pytest.fixture(scope="module")
def tiny() -> tuple[ClipTwoTower, CaptionTokenizer]:
    torch.manual_seed(0)
    return ClipTwoTower(load_model_config(TINY)).eval(), CaptionTokenizer(clip_tokenizer(), 77)


def test_texts_encoded_in_batches_are_those_of_one_pass(tiny) -> None:
    clip, tokenizer = tiny
    texts = ["a red circle", "a blue square above a green triangle", "a cat", "", "two small purple squares"]
    with torch.no_grad():
        one_pass = clip.encode_text(tokenizer(texts)).float()
    for batch_size in (1, 2, 5, 256):
        batched = encode_texts(clip, tokenizer, texts, batch_size=batch_size)
        assert batched.shape == one_pass.shape and batched.dtype == torch.float32
        torch.testing.assert_close(batched, one_pass, rtol=1e-5, atol=1e-6)
    assert not encode_texts(clip, tokenizer, texts).requires_grad


def test_images_encoded_in_batches_are_those_of_one_pass_in_the_models_dtype(tiny) -> None:
    clip, _ = tiny
    size = clip.config.vision.image_size
    pixels = torch.randn(7, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        one_pass = clip.encode_image(pixels.float()).float()
    for batch_size in (1, 3, 7):
        batched = encode_images(clip, pixels, batch_size=batch_size)  # float64 pixels cast to the model's float32
        assert batched.dtype == torch.float32
        torch.testing.assert_close(batched, one_pass, rtol=1e-5, atol=1e-6)


def test_zero_shot_of_the_real_tiny_model_gives_fractions_and_keeps_its_flags(tiny) -> None:
    clip, tokenizer = tiny
    clip.train()
    clip.vision.eval()
    try:
        result = shapes_zero_shot(clip, tokenizer, images_per_class=1, seed=3)
        assert clip.training and clip.text.training and not clip.vision.training
    finally:
        clip.eval()
    assert set(result) == {"top1", "top5", "mean_per_class_recall", "images", "seen_top1", "heldout_top1"}
    assert result["images"] == 18.0
    assert all(0.0 <= result[key] <= 1.0 for key in result if key != "images")
    assert result["top1"] <= result["top5"]
    # top-1 is the images' mean of the two groups': 15 seen images, 3 held out
    assert result["top1"] == pytest.approx((15 * result["seen_top1"] + 3 * result["heldout_top1"]) / 18)
    assert shapes_zero_shot(clip, tokenizer, images_per_class=1, seed=3) == result


# ------------------------------------------------------------------ zero-shot with stand-in towers


class KnownAnswers(nn.Module):
    """A CLIP stand-in: a text embeds as the one-hot of the class it names; an image as the one-hot
    of the class its pixels carry, or, where `wrong` says, of the next class, with its own class a
    little behind (second place)."""

    def __init__(self, wrong: set[int] = frozenset()) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.config = SimpleNamespace(vision=SimpleNamespace(image_size=24))
        self.wrong = wrong
        self.modes: list[bool] = []

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return nn.functional.one_hot(ids, len(CLASSES)).float()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        classes = pixels[:, 0, 0, 0].long()
        embeds = nn.functional.one_hot(classes, len(CLASSES)).float()
        for row, label in enumerate(classes.tolist()):
            if label in self.wrong:
                embeds[row] = 0.5 * embeds[row]
                embeds[row, (label + 1) % len(CLASSES)] = 1.0
        return embeds


class NamingTokenizer:
    """Captions -> the index of the class each names (the longest class name it contains)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, texts) -> torch.Tensor:
        self.texts.extend(texts)
        return torch.tensor(
            [max((n for n in range(len(NAMES)) if NAMES[n] in text), key=lambda n: len(NAMES[n])) for text in texts]
        )


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The scenes the zero-shot draws; its pixels carry each scene's class instead of a picture."""
    scenes = []

    def render(scene, size):
        scenes.append((scene, size))
        return scene

    class ClassPixels:
        def __init__(self, size: int) -> None:
            self.size = size

        def __call__(self, scene) -> torch.Tensor:
            (thing,) = scene.objects
            return torch.full((3, 2, 2), float(CLASSES.index((thing.colour, thing.shape))))

    monkeypatch.setattr(evaluation, "render_scene", render)
    monkeypatch.setattr(evaluation, "ClipImageTransform", ClassPixels)
    return scenes


def test_zero_shot_of_a_perfect_model_is_one_everywhere(drawn) -> None:
    model = KnownAnswers().train()
    tokenizer = NamingTokenizer()
    result = shapes_zero_shot(model, tokenizer, images_per_class=2)
    assert result == {
        "top1": 1.0,
        "top5": 1.0,
        "mean_per_class_recall": 1.0,
        "images": 36.0,
        "seen_top1": 1.0,
        "heldout_top1": 1.0,
    }
    # every template of every class, in eval mode, and the model back in train mode after
    assert sorted(tokenizer.texts) == sorted(
        template.format(name) for name in NAMES for template in ZERO_SHOT_TEMPLATES
    )
    assert model.modes and not any(model.modes) and model.training
    # two single-object images of each class, drawn at the vision tower's size
    assert [CLASSES.index((scene.objects[0].colour, scene.objects[0].shape)) for scene, _ in drawn] == [
        label for label in range(18) for _ in range(2)
    ]
    assert {size for _, size in drawn} == {24}


def test_zero_shot_splits_the_held_out_classes_from_the_seen_ones(drawn) -> None:
    result = shapes_zero_shot(KnownAnswers(wrong=HELD_OUT), NamingTokenizer(), images_per_class=3)
    assert len(HELD_OUT) == 3
    assert result["top1"] == pytest.approx(15 / 18)
    assert result["mean_per_class_recall"] == pytest.approx(15 / 18)
    assert (result["seen_top1"], result["heldout_top1"], result["top5"], result["images"]) == (1.0, 0.0, 1.0, 54.0)
    seen_wrong = shapes_zero_shot(KnownAnswers(wrong={0, 1}), NamingTokenizer(), images_per_class=1)
    assert (seen_wrong["seen_top1"], seen_wrong["heldout_top1"]) == (pytest.approx(13 / 15), 1.0)


def test_the_seed_alone_places_the_objects(drawn) -> None:
    def places(**seed) -> list:
        drawn.clear()
        shapes_zero_shot(KnownAnswers(), NamingTokenizer(), images_per_class=2, **seed)
        return [scene for scene, _ in drawn]

    first = places(seed=5)
    random.seed(99)  # the global generator plays no part
    assert places(seed=5) == first
    assert places(seed=6) != first
    assert places() == places(seed=12345)  # the default seed


def test_zero_shot_takes_the_templates_it_is_given(drawn) -> None:
    tokenizer = NamingTokenizer()
    shapes_zero_shot(KnownAnswers(), tokenizer, images_per_class=1, templates=["{} here"])
    assert sorted(tokenizer.texts) == sorted(f"{name} here" for name in NAMES)


@pytest.mark.parametrize("count", [0, -1])
def test_zero_shot_needs_an_image_per_class(drawn, count: int) -> None:
    with pytest.raises(ValueError, match=rf"^`images_per_class` must be >= 1, got {count}$"):
        shapes_zero_shot(KnownAnswers(), NamingTokenizer(), images_per_class=count)
    assert drawn == []


# ------------------------------------------------------------------ retrieval with stand-in towers


class IndexedPairs(nn.Module):
    """A CLIP stand-in for retrieval: image i and the caption "caption i" embed as one-hot i."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.config = SimpleNamespace(vision=SimpleNamespace(image_size=8))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(ids, self.n).float()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(pixels[:, 0, 0, 0].long(), self.n).float()


@pytest.fixture
def indexed(monkeypatch):
    class IndexPixels:
        def __init__(self, size: int) -> None:
            assert size == 8

        def __call__(self, image: int) -> torch.Tensor:
            return torch.full((3, 2, 2), float(image))

    monkeypatch.setattr(evaluation, "ClipImageTransform", IndexPixels)
    return lambda texts: torch.tensor([int(text.split()[-1]) for text in texts])


def test_retrieval_of_matched_pairs_is_one_and_swapped_captions_miss(indexed) -> None:
    pairs = [(i, f"caption {i}") for i in range(12)]
    assert pair_retrieval(IndexedPairs(12), indexed, pairs) == {
        **{f"{way}@{k}": 1.0 for way in ("image_to_text", "text_to_image") for k in (1, 5, 10)},
        "pairs": 12.0,
    }
    pairs[0], pairs[1] = (0, "caption 1"), (1, "caption 0")
    result = pair_retrieval(IndexedPairs(12), indexed, pairs)
    assert (result["image_to_text@1"], result["text_to_image@1"]) == (pytest.approx(10 / 12), pytest.approx(10 / 12))
    # the swapped caption alone scores above a true match; the rest tie with it, and a tie is a hit
    assert (result["image_to_text@5"], result["pairs"]) == (1.0, 12.0)


def test_retrieval_reads_no_more_than_limit_pairs(indexed) -> None:
    def pairs():
        for i in range(5):
            yield i, f"caption {i}"
        raise AssertionError("read past the limit")

    assert pair_retrieval(IndexedPairs(5), indexed, pairs(), limit=5)["pairs"] == 5.0
    assert pair_retrieval(IndexedPairs(5), indexed, pairs(), limit=2)["pairs"] == 2.0


@pytest.mark.parametrize("count", [0, 1])
def test_retrieval_needs_two_pairs(indexed, count: int) -> None:
    with pytest.raises(TooFewPairs) as caught:
        pair_retrieval(IndexedPairs(2), indexed, [(i, f"caption {i}") for i in range(count)])
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == f"retrieval needs at least 2 image-caption pairs, got {count}"
    with pytest.raises(TooFewPairs, match="got 1$"):
        pair_retrieval(IndexedPairs(2), indexed, [(0, "caption 0"), (1, "caption 1")], limit=1)


def test_retrieval_runs_in_eval_mode_and_gives_the_flags_back(indexed) -> None:
    model = IndexedPairs(3).train()
    modes = []
    original = model.encode_image
    model.encode_image = lambda pixels: (modes.append(model.training), original(pixels))[1]
    pair_retrieval(model, indexed, [(i, f"caption {i}") for i in range(3)])
    assert modes == [False] and model.training


def test_the_default_is_twenty_images_a_class(drawn) -> None:
    assert shapes_zero_shot(KnownAnswers(), NamingTokenizer())["images"] == 360.0


def test_the_default_limit_is_a_thousand_pairs(indexed) -> None:
    pairs = [(i, f"caption {i}") for i in range(1002)]
    assert pair_retrieval(IndexedPairs(1002), indexed, pairs)["pairs"] == 1000.0
