"""Scoring judged images against the scene they should show.

Two views of the same comparison:

* `score_image` asks what a prompt-following experiment asks: does the image
  hold the scene's objects (colour and shape), in the right counts, with the
  relation true, and nothing else? Absolute positions are not checked (a
  prompt does not state them); sizes only on request.
* `attribute_accuracy` asks what validating the judge asks: for an image
  rendered from `scene`, is every attribute of every object read back
  correctly, position included?
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from clipcond.shapes.judge import DEFAULT_MIN_FIT, DetectedObject, judge_image
from clipcond.shapes.scene import Scene, ShapeObject, relation_holds

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position", "count", "relation")

# A detection belongs to a scene object when their centres are this close
# (fraction of the image side); the position attribute is correct when they
# are within `POSITION_TOLERANCE`.
_MATCH_DISTANCE = 0.15
POSITION_TOLERANCE = 0.03


@dataclass(frozen=True)
class SceneScore:
    """How well an image shows a scene.

    Attributes:
        expected: objects in the scene; detected: objects the judge found.
        objects_found: scene objects matched one-to-one by a detection of the
            same colour and shape.
        colour_correct: every scene object has a detection of its colour
            (one-to-one, shape ignored).
        shape_correct: the same for shape, colour ignored.
        count_correct: for each colour and shape of the scene, exactly as many
            detections as scene objects (other combinations ignored).
        size_correct: each colour-shape group's detections can be paired with
            its objects so that every size agrees (False if any is missing).
        relation_correct: None without a relation; else whether it holds
            between the largest detection of each of the two objects'
            colour and shape (False if either is missing).
        extra_objects: detections not matched to any scene object.
        all_correct: all objects found, no extra ones, the relation (if any)
            true, and the sizes right when scored with `check_size`.
    """

    expected: int
    detected: int
    objects_found: int
    colour_correct: bool
    shape_correct: bool
    count_correct: bool
    size_correct: bool
    relation_correct: bool | None
    extra_objects: int
    all_correct: bool


def _covered(expected: Counter, detected: Counter) -> int:
    return sum(min(n, detected[key]) for key, n in expected.items())


def score_detections(detected: list[DetectedObject], scene: Scene, check_size: bool = False) -> SceneScore:
    """Score judge output against a scene; see `SceneScore` for each field."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    objects = scene.objects
    expected_pairs = Counter(o.pair for o in objects)
    detected_pairs = Counter((d.colour, d.shape) for d in detected)
    found = _covered(expected_pairs, detected_pairs)
    colours_found = _covered(Counter(o.colour for o in objects), Counter(d.colour for d in detected))
    shapes_found = _covered(Counter(o.shape for o in objects), Counter(d.shape for d in detected))
    size_correct = True
    for pair, n in expected_pairs.items():
        wanted = Counter(o.size for o in objects if o.pair == pair)
        got = Counter(d.size for d in detected if (d.colour, d.shape) == pair)
        size_correct &= _covered(wanted, got) == n
    relation_correct = None
    if scene.relation is not None:
        i, name, j = scene.relation
        largest = []
        for obj in (objects[i], objects[j]):
            candidates = [d for d in detected if (d.colour, d.shape) == obj.pair]
            largest.append(max(candidates, key=lambda d: d.area_fraction) if candidates else None)
        a, b = largest
        relation_correct = a is not None and b is not None and relation_holds((a.x, a.y), (b.x, b.y), name)
    extra = len(detected) - found
    all_correct = found == len(objects) and extra == 0 and relation_correct is not False
    if check_size:
        all_correct &= size_correct
    return SceneScore(
        expected=len(objects),
        detected=len(detected),
        objects_found=found,
        colour_correct=colours_found == len(objects),
        shape_correct=shapes_found == len(objects),
        count_correct=all(detected_pairs[pair] == n for pair, n in expected_pairs.items()),
        size_correct=size_correct,
        relation_correct=relation_correct,
        extra_objects=extra,
        all_correct=bool(all_correct),
    )


def score_image(
    image: Image.Image | np.ndarray, scene: Scene, check_size: bool = False, min_fit: float = DEFAULT_MIN_FIT
) -> SceneScore:
    """Judge `image` (PIL or (H, W, 3) array, see `judge_image`) and score it against `scene`."""
    return score_detections(judge_image(image, min_fit=min_fit), scene, check_size=check_size)


@dataclass(frozen=True)
class AttributeTally:
    """Counts of correctly read attributes; add tallies to pool images.

    `correct[name]` of `total[name]` for each name in `ATTRIBUTES`: per scene
    object for colour, shape, size and position; per scene for count; per
    scene with a relation for relation.
    """

    correct: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    total: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))

    def __add__(self, other: AttributeTally) -> AttributeTally:
        if not isinstance(other, AttributeTally):
            return NotImplemented
        return AttributeTally(
            correct={k: self.correct[k] + other.correct[k] for k in ATTRIBUTES},
            total={k: self.total[k] + other.total[k] for k in ATTRIBUTES},
        )

    def accuracy(self, attribute: str | None = None) -> float:
        """Fraction correct for one attribute, or over all attributes pooled (1.0 when nothing was counted)."""
        if attribute is not None and attribute not in ATTRIBUTES:
            raise ValueError(f"attribute must be one of {ATTRIBUTES} or None, got {attribute!r}")
        names = ATTRIBUTES if attribute is None else (attribute,)
        total = sum(self.total[k] for k in names)
        return 1.0 if total == 0 else sum(self.correct[k] for k in names) / total


def _match_by_position(detected: list[DetectedObject], objects: tuple[ShapeObject, ...]) -> dict[int, DetectedObject]:
    """Scene object index -> nearest detection, one-to-one, closest pairs first."""
    pairs = sorted(
        (float(np.hypot(d.x - o.x, d.y - o.y)), k, m) for k, o in enumerate(objects) for m, d in enumerate(detected)
    )
    matched: dict[int, DetectedObject] = {}
    used: set[int] = set()
    for distance, k, m in pairs:
        if distance > _MATCH_DISTANCE:
            break
        if k not in matched and m not in used:
            matched[k] = detected[m]
            used.add(m)
    return matched


def attribute_accuracy(detected: list[DetectedObject], scene: Scene) -> AttributeTally:
    """Tally which attributes of `scene` the detections read back correctly.

    Detections are paired with scene objects by position. A scene object
    without a detection has all its attributes wrong; count is right when
    there are exactly as many detections as objects; the relation is right
    when it holds between the two objects' detections.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    matched = _match_by_position(detected, scene.objects)
    correct = dict.fromkeys(ATTRIBUTES, 0)
    total = dict.fromkeys(ATTRIBUTES, 0)
    for k, obj in enumerate(scene.objects):
        d = matched.get(k)
        checks = {
            "colour": d is not None and d.colour == obj.colour,
            "shape": d is not None and d.shape == obj.shape,
            "size": d is not None and d.size == obj.size,
            "position": d is not None and max(abs(d.x - obj.x), abs(d.y - obj.y)) <= POSITION_TOLERANCE,
        }
        for name, ok in checks.items():
            total[name] += 1
            correct[name] += ok
    total["count"] += 1
    correct["count"] += len(detected) == len(scene.objects)
    if scene.relation is not None:
        i, name, j = scene.relation
        a, b = matched.get(i), matched.get(j)
        total["relation"] += 1
        correct["relation"] += a is not None and b is not None and relation_holds((a.x, a.y), (b.x, b.y), name)
    return AttributeTally(correct=correct, total=total)
