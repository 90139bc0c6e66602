"""Scenes of the shapes world: what objects an image holds and where.

A `Scene` is the ground truth behind one image: its objects (shape, colour,
size and centre) and optionally one spatial relation between two of them that
is true in the geometry. `random_scene` draws scenes with non-overlapping
objects; `relation_holds` is the one definition of "left of", "above", ... that
both the scene sampler and the judge use.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clipcond.shapes.vocab import COLOURS, RELATIONS, SHAPES, SIZE_DIAMETERS, SIZES

MAX_OBJECTS = 4

# A relation holds when the centres are at least this far apart (fraction of
# the image side) along the relation's axis, and further apart along that axis
# than across it.
RELATION_MARGIN = 0.1

# Sampled relations are clearer than the check above: this much separation
# along the axis, and at most half of it across.
_SAMPLED_RELATION_SEPARATION = 0.25

# Free space kept between two objects' boxes and between a box and the border,
# as fractions of the image side; keeps anti-aliased edges from touching.
_GAP = 0.06
_BORDER = 0.03


@dataclass(frozen=True)
class ShapeObject:
    """One coloured shape.

    Attributes:
        shape: one of `SHAPES`.
        colour: a key of `COLOURS`.
        size: one of `SIZES`; the side of the object's box is
            `SIZE_DIAMETERS[size]` of the image side.
        x, y: centre of the object's box in [0, 1] image coordinates
            (x to the right, y downwards).
    """

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {self.colour!r}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        for name in ("x", "y"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float in [0, 1], got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")

    @property
    def pair(self) -> tuple[str, str]:
        """The object's `(colour, shape)` combination."""
        return (self.colour, self.shape)

    @property
    def diameter(self) -> float:
        """Side of the object's box as a fraction of the image side."""
        return SIZE_DIAMETERS[self.size]


def relation_holds(
    first: tuple[float, float], second: tuple[float, float], relation: str, margin: float = RELATION_MARGIN
) -> bool:
    """Whether `first <relation> second` is true for two centres.

    Args:
        first, second: `(x, y)` centres in [0, 1] image coordinates, y downwards.
        relation: one of `RELATIONS`.
        margin: least separation along the relation's axis (fraction of the
            image side). The separation along that axis must also be at least
            the separation across it, so "left of" means mostly to the left.
    """
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    dx = second[0] - first[0]
    dy = second[1] - first[1]
    if relation == "left of":
        along, across = dx, dy
    elif relation == "right of":
        along, across = -dx, dy
    elif relation == "above":
        along, across = dy, dx
    else:  # below
        along, across = -dy, dx
    return along >= margin and along >= abs(across)


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image.

    Attributes:
        objects: 1 to `MAX_OBJECTS` objects. Objects sharing colour and shape
            form a counted group ("two red circles").
        relation: `(i, relation, j)` meaning `objects[i] <relation> objects[j]`,
            or None. Both objects must be the only one of their colour and
            shape in the scene (so a caption can name them) and the relation
            must hold for their centres (`relation_holds`).
    """

    objects: tuple[ShapeObject, ...]
    relation: tuple[int, str, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple) or not all(isinstance(o, ShapeObject) for o in self.objects):
            raise TypeError(f"objects must be a tuple of ShapeObject, got {self.objects!r}")
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"objects must hold 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        if self.relation is None:
            return
        if not (isinstance(self.relation, tuple) and len(self.relation) == 3):
            raise TypeError(f"relation must be a tuple (i, relation, j) or None, got {self.relation!r}")
        i, name, j = self.relation
        n = len(self.objects)
        for label, index in (("i", i), ("j", j)):
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                raise ValueError(f"relation index {label} must be an int in [0, {n}), got {index!r}")
        if i == j:
            raise ValueError(f"relation must join two different objects, got i == j == {i}")
        if name not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {name!r}")
        counts = self.pair_counts()
        for index in (i, j):
            if counts[self.objects[index].pair] != 1:
                raise ValueError(
                    f"relation object {index} ({' '.join(self.objects[index].pair)}) is not the only one "
                    "of its colour and shape, so no caption could name it"
                )
        a, b = self.objects[i], self.objects[j]
        if not relation_holds((a.x, a.y), (b.x, b.y), name):
            raise ValueError(f"relation {self.relation!r} is not true for centres {(a.x, a.y)} and {(b.x, b.y)}")

    def pair_counts(self) -> dict[tuple[str, str], int]:
        """How many objects of each `(colour, shape)`, in order of first appearance."""
        counts: dict[tuple[str, str], int] = {}
        for obj in self.objects:
            counts[obj.pair] = counts.get(obj.pair, 0) + 1
        return counts


def _boxes_apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Whether two boxes `(x, y, diameter)` are separated by at least `_GAP` along some axis."""
    reach = (a[2] + b[2]) / 2 + _GAP
    return abs(a[0] - b[0]) >= reach or abs(a[1] - b[1]) >= reach


def _random_centre(rng: random.Random, diameter: float) -> tuple[float, float]:
    low = _BORDER + diameter / 2
    high = 1.0 - low
    return (rng.uniform(low, high), rng.uniform(low, high))


def _clear_relation(first: tuple[float, float], second: tuple[float, float], relation: str) -> bool:
    """The stricter relation test used when sampling: far along the axis, little across it."""
    if not relation_holds(first, second, relation, margin=_SAMPLED_RELATION_SEPARATION):
        return False
    if relation in ("left of", "right of"):
        along, across = abs(second[0] - first[0]), abs(second[1] - first[1])
    else:
        along, across = abs(second[1] - first[1]), abs(second[0] - first[0])
    return across <= along / 2


def _place(
    rng: random.Random, diameters: Sequence[float], relation: tuple[int, str, int] | None, tries: int = 40
) -> list[tuple[float, float]] | None:
    """Non-overlapping centres for boxes of the given diameters, or None if none were found."""
    order = list(range(len(diameters)))
    if relation is not None:
        i, _, j = relation
        order = [i, j] + [k for k in order if k not in (i, j)]
    placed: dict[int, tuple[float, float, float]] = {}
    for k in order:
        for _ in range(tries):
            x, y = _random_centre(rng, diameters[k])
            box = (x, y, diameters[k])
            if not all(_boxes_apart(box, other) for other in placed.values()):
                continue
            if relation is not None and k == relation[2]:
                first = placed[relation[0]]
                if not _clear_relation((first[0], first[1]), (x, y), relation[1]):
                    continue
            placed[k] = box
            break
        else:
            return None
    return [(placed[k][0], placed[k][1]) for k in range(len(diameters))]


def _check_pairs(pairs: Iterable[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    given = list(pairs)
    for pair in given:  # each checked as given, before hashing and sorting (a list, a number)
        if not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(isinstance(word, str) for word in pair)
            and pair[0] in COLOURS
            and pair[1] in SHAPES
        ):
            raise ValueError(f"{name} must hold (colour, shape) tuples from COLOURS and SHAPES, got {pair!r}")
    checked = sorted(set(given))
    if not checked:
        raise ValueError(f"{name} must hold at least one (colour, shape) pair")
    return checked


def check_count_weights(
    weights: Sequence[float] | None, min_objects: int, max_objects: int, name: str = "count_weights"
) -> tuple[float, ...] | None:
    """Validate relative weights of the object counts `min_objects..max_objects`.

    Returns them as a tuple of floats (None stays None: counts are uniform).
    Raises ValueError/TypeError naming `name` unless there is one finite weight
    >= 0 per count and at least one of them is > 0.
    """
    if weights is None:
        return None
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"{name} must be a list of numbers, got {type(weights).__name__}")
    expected = max_objects - min_objects + 1
    if len(weights) != expected:
        raise ValueError(
            f"{name} must hold one weight per object count {min_objects}..{max_objects} "
            f"({expected} numbers), got {len(weights)}: {list(weights)!r}"
        )
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"{name} must hold numbers, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{name} must hold finite numbers >= 0, got {weight!r}")
    if not any(weight > 0 for weight in weights):
        raise ValueError(f"{name} must give at least one object count a weight > 0, got {list(weights)!r}")
    return tuple(float(weight) for weight in weights)


def random_scene(
    rng: random.Random,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    pairs: Iterable[tuple[str, str]] | None = None,
    must_include: Iterable[tuple[str, str]] | None = None,
    count_weights: Sequence[float] | None = None,
) -> Scene:
    """Draw a scene of non-overlapping objects.

    The object count is uniform in `[min_objects, max_objects]`, or drawn with
    `count_weights` (relative weights of `min_objects, ..., max_objects`; e.g.
    `[1, 3]` with counts 1..2 gives two-object scenes 3 times in 4). Objects come
    in groups of one `(colour, shape)` each; a group is sometimes two or more
    identical objects (same colour, shape and size) for counting. When two or
    more objects are alone in their group, the scene usually (most 2-object
    scenes, some larger ones) carries a relation between two of them, clearly
    true in the geometry.

    Args:
        rng: the only source of randomness; the same state gives the same scene.
        min_objects, max_objects: bounds on the object count, within [1, 4].
        pairs: allowed `(colour, shape)` combinations; all of them when None.
        must_include: if given, at least one object's combination is drawn
            from these (they need not be in `pairs`).
        count_weights: see above; None (uniform) draws exactly the scenes it
            always did for the same `rng` state.
    """
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    for name, value in (("min_objects", min_objects), ("max_objects", max_objects)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OBJECTS:
            raise ValueError(f"{name} must be an int in [1, {MAX_OBJECTS}], got {value!r}")
    if min_objects > max_objects:
        raise ValueError(f"min_objects ({min_objects}) must not exceed max_objects ({max_objects})")
    allowed = _check_pairs(pairs, "pairs") if pairs is not None else [(c, s) for c in COLOURS for s in SHAPES]
    required = _check_pairs(must_include, "must_include") if must_include is not None else None
    weights = check_count_weights(count_weights, min_objects, max_objects)

    if weights is None:
        n = rng.randint(min_objects, max_objects)
    else:
        n = rng.choices(range(min_objects, max_objects + 1), weights=weights)[0]
    groups: list[list] = []  # [pair, count, size]
    remaining = n
    while remaining:
        if not groups and required is not None:
            candidates = required
        else:
            used = {g[0] for g in groups}
            candidates = [p for p in allowed if p not in used]
        if not candidates:  # every allowed pair is taken: grow the last group instead
            groups[-1][1] += remaining
            break
        count = rng.randint(2, remaining) if remaining >= 2 and rng.random() < 0.3 else 1
        groups.append([rng.choice(candidates), count, rng.choice(SIZES)])
        remaining -= count

    objects_spec = [(pair, size) for pair, count, size in groups for _ in range(count)]
    rng.shuffle(objects_spec)

    relation = None
    singles = [k for k, (pair, _) in enumerate(objects_spec) if sum(p == pair for p, _ in objects_spec) == 1]
    if len(singles) >= 2 and rng.random() < (0.8 if n == 2 else 0.3):
        i, j = rng.sample(singles, 2)
        relation = (i, rng.choice(RELATIONS), j)

    sizes = [size for _, size in objects_spec]
    while True:
        centres = None
        for _ in range(30):
            centres = _place(rng, [SIZE_DIAMETERS[s] for s in sizes], relation)
            if centres is not None:
                break
        if centres is not None:
            break
        # Too crowded: shrink one large object and try again (ends: four small always fit).
        large = [k for k, s in enumerate(sizes) if s == "large"]
        if not large:
            raise RuntimeError(f"could not place {n} small objects; the layout constants are inconsistent")
        k = rng.choice(large)
        shrunk_pair = objects_spec[k][0]
        sizes = ["small" if objects_spec[m][0] == shrunk_pair else s for m, s in enumerate(sizes)]

    objects = tuple(
        ShapeObject(shape=pair[1], colour=pair[0], size=size, x=x, y=y)
        for (pair, _), size, (x, y) in zip(objects_spec, sizes, centres)
    )
    return Scene(objects=objects, relation=relation)


def single_object_scene(colour: str, shape: str, rng: random.Random, size: str | None = None) -> Scene:
    """A scene of one object of the given colour and shape at a random place.

    Args:
        colour: a key of `COLOURS`; shape: one of `SHAPES`.
        rng: source of the position (and of the size when `size` is None).
        size: one of `SIZES`, or None to draw it.
    """
    if size is None:
        size = rng.choice(SIZES)
    elif size not in SIZES:
        raise ValueError(f"size must be one of {SIZES} or None, got {size!r}")
    x, y = _random_centre(rng, SIZE_DIAMETERS[size])
    return Scene(objects=(ShapeObject(shape=shape, colour=colour, size=size, x=x, y=y),))
