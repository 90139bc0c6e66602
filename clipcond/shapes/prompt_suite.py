"""Prompt suites for the shapes world: prompts that carry the scene they ask for, and
how generated images score against them.

A `SuitePrompt` is a prompt, the category it tests ("single", "relation",
"two_objects", ...) and a `Scene` that states what the image must hold. Only the
scene's colours, shapes, counts and relation are scored (`score_image`); its
object positions are a canonical layout that makes the relation true, since a
prompt states no absolute positions.

`shapes_model_suite` is the fixed suite the bundled model is measured on;
`judge_suite` scores images against any suite and `SuiteReport` pools the
scores per category.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from clipcond.shapes.captions import class_prompt
from clipcond.shapes.scene import Scene, ShapeObject
from clipcond.shapes.scoring import SceneScore, score_image
from clipcond.shapes.splits import heldout_pairs, train_pairs
from clipcond.shapes.vocab import RELATIONS

# Canonical centres for up to four objects: the corners of a centred 2x2 grid.
_SLOTS: tuple[tuple[float, float], ...] = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
# Slots of (first, second) that make `first <relation> second` true.
_RELATION_SLOTS: dict[str, tuple[int, int]] = {"left of": (0, 1), "right of": (1, 0), "above": (0, 2), "below": (2, 0)}

# The prompt wording of each relation in the suite (one per relation: the suite tests
# binding and layout, not paraphrase).
RELATION_WORDS: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}


@dataclass(frozen=True)
class SuitePrompt:
    """One prompt of a suite.

    Attributes:
        category: what the prompt tests, e.g. "single" or "relation".
        prompt: the text given to the pipeline.
        scene: what the image must show (colours, shapes, counts, relation).
    """

    category: str
    prompt: str
    scene: Scene

    def __post_init__(self) -> None:
        if not isinstance(self.category, str) or not self.category:
            raise ValueError(f"category must be a non-empty str, got {self.category!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"prompt must be a non-empty str, got {self.prompt!r}")
        if not isinstance(self.scene, Scene):
            raise TypeError(f"scene must be a Scene, got {type(self.scene).__name__}")


def scene_from_spec(objects: Sequence[tuple[str, str]], relation: tuple[int, str, int] | None = None) -> Scene:
    """A scene of small objects on the canonical layout.

    Args:
        objects: 1 to 4 `(colour, shape)` pairs, one per object (repeat a pair for a count).
        relation: `(i, relation, j)` over `objects`, or None; the layout makes it true.
    """
    if not 1 <= len(objects) <= len(_SLOTS):
        raise ValueError(f"objects must hold 1 to {len(_SLOTS)} (colour, shape) pairs, got {len(objects)}")
    order = list(range(len(objects)))
    if relation is not None:
        i, name, j = relation
        if name not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {name!r}")
        if not (0 <= i < len(objects) and 0 <= j < len(objects) and i != j):
            raise ValueError(f"relation indices must be two different objects of {len(objects)}, got {relation!r}")
        first, second = _RELATION_SLOTS[name]
        rest = [s for s in range(len(_SLOTS)) if s not in (first, second)]
        slot_of = {i: first, j: second}
        for k in order:
            if k not in slot_of:
                slot_of[k] = rest.pop(0)
    else:
        slot_of = dict(zip(order, range(len(_SLOTS))))
    placed = []
    for k, (colour, shape) in enumerate(objects):
        x, y = _SLOTS[slot_of[k]]
        placed.append(ShapeObject(shape=shape, colour=colour, size="small", x=x, y=y))
    return Scene(objects=tuple(placed), relation=relation)


def _pair_words(pair: tuple[str, str]) -> str:
    return class_prompt(*pair)


def shapes_model_suite(seed: int = 1234, seeds_per_single: int = 8, pairs_per_category: int = 96) -> list[SuitePrompt]:
    """The suite the bundled shapes model is measured on.

    Categories:
        single: "a red circle" for every colour-shape combination seen in
            training, `seeds_per_single` times each (the caller draws one image
            per entry, each with its own seed).
        relation: "a red circle to the left of a blue square": two different
            seen combinations and one of the four relations, `pairs_per_category`
            prompts drawn from `seed`.
        two_objects: "a red circle and a blue square", drawn the same way.
        heldout_single: the combinations training never saw ("a green circle"),
            `seeds_per_single` times each; measures composition, not a goal.

    Prompts use one fixed wording; training captions vary their wording, and the
    two-object combinations are drawn independently of the training stream.
    """
    if seeds_per_single < 1 or pairs_per_category < 1:
        raise ValueError(
            f"seeds_per_single and pairs_per_category must be >= 1, got {seeds_per_single}, {pairs_per_category}"
        )
    rng = random.Random(f"clipcond.shapes_model_suite:{seed}")
    suite: list[SuitePrompt] = []
    for pair in train_pairs():
        suite += [SuitePrompt("single", _pair_words(pair), scene_from_spec([pair]))] * seeds_per_single
    seen = train_pairs()
    ordered_pairs = [p for p in itertools.permutations(seen, 2)]
    for _ in range(pairs_per_category):
        a, b = rng.choice(ordered_pairs)
        name = rng.choice(RELATIONS)
        prompt = f"{_pair_words(a)} {RELATION_WORDS[name]} {_pair_words(b)}"
        suite.append(SuitePrompt("relation", prompt, scene_from_spec([a, b], (0, name, 1))))
    for _ in range(pairs_per_category):
        a, b = rng.choice(ordered_pairs)
        suite.append(SuitePrompt("two_objects", f"{_pair_words(a)} and {_pair_words(b)}", scene_from_spec([a, b])))
    for pair in heldout_pairs():
        suite += [SuitePrompt("heldout_single", _pair_words(pair), scene_from_spec([pair]))] * seeds_per_single
    return suite


@dataclass(frozen=True)
class CategoryResult:
    """Pooled scores of one category.

    Attributes:
        images: how many images were scored.
        rates: fraction of images for which each check held: "objects" (every
            object found with its colour and shape bound right), "colour",
            "shape", "count", "relation" (only for prompts with a relation),
            "relation_if_found" (the relation among the images that found both
            objects: placement apart from binding), "exact" (`SceneScore.all_correct`: nothing missing, nothing extra).
    """

    images: int
    rates: Mapping[str, float]


@dataclass(frozen=True)
class SuiteReport:
    """Per-image scores of a suite and their pooling per category."""

    prompts: tuple[SuitePrompt, ...]
    scores: tuple[SceneScore, ...]
    categories: Mapping[str, CategoryResult] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.scores):
            raise ValueError(f"prompts ({len(self.prompts)}) and scores ({len(self.scores)}) must be as many")
        grouped: dict[str, list[SceneScore]] = {}
        for entry, score in zip(self.prompts, self.scores):
            grouped.setdefault(entry.category, []).append(score)
        object.__setattr__(self, "categories", {name: _pool(scores) for name, scores in grouped.items()})


def _pool(scores: list[SceneScore]) -> CategoryResult:
    checks = {
        "objects": [s.objects_found == s.expected for s in scores],
        "colour": [s.colour_correct for s in scores],
        "shape": [s.shape_correct for s in scores],
        "count": [s.count_correct for s in scores],
        "exact": [s.all_correct for s in scores],
    }
    with_relation = [s.relation_correct for s in scores if s.relation_correct is not None]
    if with_relation:
        checks["relation"] = with_relation
        # placement alone: of the images that drew both objects, how many placed them as stated
        placed = [
            s.relation_correct for s in scores if s.relation_correct is not None and s.objects_found == s.expected
        ]
        if placed:
            checks["relation_if_found"] = placed
    return CategoryResult(images=len(scores), rates={k: float(np.mean(v)) for k, v in checks.items()})


def judge_suite(images: Sequence[Image.Image | np.ndarray], suite: Sequence[SuitePrompt]) -> SuiteReport:
    """Score `images[k]` (PIL or (H, W, 3) uint8) against `suite[k].scene` with the shapes judge."""
    if len(images) != len(suite):
        raise ValueError(f"images ({len(images)}) and suite ({len(suite)}) must be as many")
    return SuiteReport(
        prompts=tuple(suite), scores=tuple(score_image(image, entry.scene) for image, entry in zip(images, suite))
    )


__all__ = [
    "CategoryResult",
    "RELATION_WORDS",
    "SuitePrompt",
    "SuiteReport",
    "judge_suite",
    "scene_from_spec",
    "shapes_model_suite",
]
