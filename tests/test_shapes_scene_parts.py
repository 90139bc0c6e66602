"""Scenes of the shapes world on their own: `ShapeObject`'s and `Scene`'s refusals whole (each
check in its order, the index and count edges inclusive/exclusive), `pair_counts` in order of
first appearance; `relation_holds` for every relation at the margin's edge (inclusive, one ulp
short refused), along equal to across either way (inclusive), the default margin of 0.1; the
sampler's helpers by hand: `_boxes_apart` at the gap's edge on each axis for each pair of sizes,
`_random_centre`'s border bounds, `_clear_relation` at 0.25 along and half of it across,
`_place` from scripted centres (overlap and relation refusals, the relation's pair placed first,
the 40 tries, None when they run out), `_check_pairs`, `check_count_weights`; and `random_scene`
with `single_object_scene`: their refusals whole, properties of many seeded draws (inside the
border, apart by the gap, the relation clear, identical objects sharing a size, the counts'
support and the relation and counted-group rates worked out from the sampler's definition),
the shrinking of crowded scenes, and a few draws pinned to literal values."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from clipcond.shapes import scene as scene_module
from clipcond.shapes.scene import (
    Scene,
    ShapeObject,
    _boxes_apart,
    _check_pairs,
    _clear_relation,
    _place,
    _random_centre,
    check_count_weights,
    random_scene,
    relation_holds,
    single_object_scene,
)

COLOURS_TEXT = "('red', 'yellow', 'green', 'cyan', 'blue', 'purple')"
RELATIONS_TEXT = "('left of', 'right of', 'above', 'below')"
ALL_PAIRS = {
    (c, s) for c in ("red", "yellow", "green", "cyan", "blue", "purple") for s in ("circle", "square", "triangle")
}
SMALL, LARGE = 0.2, 0.36  # SIZE_DIAMETERS, written out
TINY = 2.0**-20  # a step off an exact binary edge


def below(value: float) -> float:
    """The float just under `value`."""
    return math.nextafter(value, -math.inf)


def above_(value: float) -> float:
    """The float just over `value`."""
    return math.nextafter(value, math.inf)


def obj(colour="red", shape="circle", size="small", x=0.5, y=0.5) -> ShapeObject:
    return ShapeObject(shape, colour, size, x, y)


# ---------------------------------------------------------------- ShapeObject


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (
            ("star", "red", "small", 0.5, 0.5),
            ValueError,
            "shape must be one of ('circle', 'square', 'triangle'), got 'star'",
        ),
        (("circle", "pink", "small", 0.5, 0.5), ValueError, f"colour must be one of {COLOURS_TEXT}, got 'pink'"),
        (("circle", "red", "huge", 0.5, 0.5), ValueError, "size must be one of ('small', 'large'), got 'huge'"),
        (("circle", "red", "small", True, 0.5), TypeError, "x must be a float in [0, 1], got True"),
        (("circle", "red", "small", "0.5", 0.5), TypeError, "x must be a float in [0, 1], got '0.5'"),
        (("circle", "red", "small", None, 0.5), TypeError, "x must be a float in [0, 1], got None"),
        (("circle", "red", "small", 0.5, False), TypeError, "y must be a float in [0, 1], got False"),
        (("circle", "red", "small", 0.5, [0.5]), TypeError, "y must be a float in [0, 1], got [0.5]"),
        (("circle", "red", "small", below(0.0), 0.5), ValueError, "x must be in [0, 1], got -5e-324"),
        (("circle", "red", "small", above_(1.0), 0.5), ValueError, "x must be in [0, 1], got 1.0000000000000002"),
        (("circle", "red", "small", -1, 0.5), ValueError, "x must be in [0, 1], got -1"),
        (("circle", "red", "small", math.nan, 0.5), ValueError, "x must be in [0, 1], got nan"),
        (("circle", "red", "small", 0.5, below(0.0)), ValueError, "y must be in [0, 1], got -5e-324"),
        (("circle", "red", "small", 0.5, 2), ValueError, "y must be in [0, 1], got 2"),
        # the first fault is the one named: shape, colour, size, x, y
        (
            ("star", "pink", "huge", 2.0, 2.0),
            ValueError,
            "shape must be one of ('circle', 'square', 'triangle'), got 'star'",
        ),
        (("circle", "pink", "huge", 2.0, 2.0), ValueError, f"colour must be one of {COLOURS_TEXT}, got 'pink'"),
        (("circle", "red", "huge", 2.0, 2.0), ValueError, "size must be one of ('small', 'large'), got 'huge'"),
        (("circle", "red", "small", 2.0, True), ValueError, "x must be in [0, 1], got 2.0"),
        (("circle", "red", "small", 0.5, True), TypeError, "y must be a float in [0, 1], got True"),
    ],
)
def test_a_shape_objects_refusals_whole(arguments, error, message) -> None:
    with pytest.raises(error) as raised:
        ShapeObject(*arguments)
    assert str(raised.value) == message


@pytest.mark.parametrize("x, y", [(0.0, 0.0), (1.0, 1.0), (0, 1), (1, 0), (0.5, 0.25)])
def test_a_shape_object_takes_the_unit_squares_edges_ints_included(x, y) -> None:
    made = ShapeObject("triangle", "cyan", "large", x, y)
    assert (made.x, made.y) == (x, y)


@pytest.mark.parametrize(
    "shape, colour, size, pair, diameter",
    [
        ("circle", "red", "small", ("red", "circle"), 0.2),
        ("triangle", "purple", "large", ("purple", "triangle"), 0.36),
        ("square", "yellow", "small", ("yellow", "square"), 0.2),
    ],
)
def test_a_shape_objects_pair_and_diameter(shape, colour, size, pair, diameter) -> None:
    made = ShapeObject(shape, colour, size, 0.5, 0.5)
    assert made.pair == pair and made.diameter == diameter


# ---------------------------------------------------------------- relation_holds


@pytest.mark.parametrize(
    "first, second, relation, holds",
    [
        # at the margin (0.1) along the axis, nothing across: inclusive; one ulp short: refused
        ((0.0, 0.0), (0.1, 0.0), "left of", True),
        ((0.0, 0.0), (below(0.1), 0.0), "left of", False),
        ((0.1, 0.0), (0.0, 0.0), "right of", True),
        ((below(0.1), 0.0), (0.0, 0.0), "right of", False),
        ((0.0, 0.0), (0.0, 0.1), "above", True),
        ((0.0, 0.0), (0.0, below(0.1)), "above", False),
        ((0.0, 0.1), (0.0, 0.0), "below", True),
        ((0.0, below(0.1)), (0.0, 0.0), "below", False),
        # the wrong way round along the axis
        ((0.1, 0.0), (0.0, 0.0), "left of", False),
        ((0.0, 0.0), (0.1, 0.0), "right of", False),
        ((0.0, 0.1), (0.0, 0.0), "above", False),
        ((0.0, 0.0), (0.0, 0.1), "below", False),
        # along == |across| holds, either side across; a hair more across does not
        ((0.25, 0.25), (0.75, 0.75), "left of", True),
        ((0.25, 0.75), (0.75, 0.25), "left of", True),
        ((0.25, 0.25), (0.75, 0.75 + TINY), "left of", False),
        ((0.25, 0.75), (0.75, 0.25 - TINY), "left of", False),
        ((0.75, 0.25), (0.25, 0.75), "right of", True),
        ((0.75, 0.75), (0.25, 0.25), "right of", True),
        ((0.75, 0.25), (0.25, 0.75 + TINY), "right of", False),
        ((0.75, 0.75), (0.25, 0.25 - TINY), "right of", False),
        ((0.25, 0.25), (0.75, 0.75), "above", True),
        ((0.75, 0.25), (0.25, 0.75), "above", True),
        ((0.25, 0.25), (0.75 + TINY, 0.75), "above", False),
        ((0.75, 0.25), (0.25 - TINY, 0.75), "above", False),
        ((0.25, 0.75), (0.75, 0.25), "below", True),
        ((0.75, 0.75), (0.25, 0.25), "below", True),
        ((0.25, 0.75), (0.75 + TINY, 0.25), "below", False),
        ((0.75, 0.75), (0.25 - TINY, 0.25), "below", False),
        # far along the wrong axis: only the relation's own axis counts as along
        ((0.0, 0.0), (0.0, 0.5), "left of", False),
        ((0.0, 0.5), (0.0, 0.0), "right of", False),
        ((0.0, 0.0), (0.5, 0.0), "above", False),
        ((0.5, 0.0), (0.0, 0.0), "below", False),
        # the same point is in no relation to itself
        ((0.5, 0.5), (0.5, 0.5), "left of", False),
    ],
)
def test_relation_holds_at_each_edge(first, second, relation, holds) -> None:
    assert relation_holds(first, second, relation) is holds


def test_relation_holds_takes_a_margin_inclusive() -> None:
    assert relation_holds((0.0, 0.0), (0.25, 0.0), "left of", margin=0.25)
    assert not relation_holds((0.0, 0.0), (below(0.25), 0.0), "left of", margin=0.25)
    assert relation_holds((0.0, 0.0), (0.0, 0.0), "below", margin=0.0)  # nothing apart, nothing asked
    assert relation_holds((0.0, 0.5), (0.0, 0.0), "below", margin=0.5)
    assert not relation_holds((0.0, 0.5), (0.0, 0.0), "below", margin=above_(0.5))


@pytest.mark.parametrize("relation", ["near", "Left of", "", None])
def test_relation_holds_refuses_an_unknown_relation_whole(relation) -> None:
    with pytest.raises(ValueError) as raised:
        relation_holds((0.0, 0.0), (0.5, 0.0), relation)
    assert str(raised.value) == f"relation must be one of {RELATIONS_TEXT}, got {relation!r}"


# ---------------------------------------------------------------- Scene


LEFT, RIGHT = obj("red", "circle", x=0.25), obj("blue", "square", x=0.75)


@pytest.mark.parametrize(
    "objects, relation, error, message",
    [
        (
            [obj()],
            None,
            TypeError,
            "objects must be a tuple of ShapeObject, got "
            "[ShapeObject(shape='circle', colour='red', size='small', x=0.5, y=0.5)]",
        ),
        (
            (obj(), "red circle"),
            None,
            TypeError,
            "objects must be a tuple of ShapeObject, got "
            "(ShapeObject(shape='circle', colour='red', size='small', x=0.5, y=0.5), 'red circle')",
        ),
        ((), None, ValueError, "objects must hold 1 to 4 objects, got 0"),
        ((obj(),) * 5, None, ValueError, "objects must hold 1 to 4 objects, got 5"),
        (
            (LEFT, RIGHT),
            [0, "left of", 1],
            TypeError,
            "relation must be a tuple (i, relation, j) or None, got [0, 'left of', 1]",
        ),
        (
            (LEFT, RIGHT),
            (0, "left of"),
            TypeError,
            "relation must be a tuple (i, relation, j) or None, got (0, 'left of')",
        ),
        (
            (LEFT, RIGHT),
            (0, "left of", 1, 2),
            TypeError,
            "relation must be a tuple (i, relation, j) or None, got (0, 'left of', 1, 2)",
        ),
        ((LEFT, RIGHT), (-1, "left of", 1), ValueError, "relation index i must be an int in [0, 2), got -1"),
        ((LEFT, RIGHT), (2, "left of", 1), ValueError, "relation index i must be an int in [0, 2), got 2"),
        ((LEFT, RIGHT), (False, "left of", 1), ValueError, "relation index i must be an int in [0, 2), got False"),
        ((LEFT, RIGHT), (0.0, "left of", 1), ValueError, "relation index i must be an int in [0, 2), got 0.0"),
        ((LEFT, RIGHT), (0, "left of", 2), ValueError, "relation index j must be an int in [0, 2), got 2"),
        ((LEFT, RIGHT), (0, "left of", -1), ValueError, "relation index j must be an int in [0, 2), got -1"),
        ((LEFT, RIGHT), (0, "left of", True), ValueError, "relation index j must be an int in [0, 2), got True"),
        ((LEFT, RIGHT), (0, "left of", "1"), ValueError, "relation index j must be an int in [0, 2), got '1'"),
        (
            (LEFT, RIGHT, obj("green")),
            (0, "left of", 3),
            ValueError,
            "relation index j must be an int in [0, 3), got 3",
        ),
        ((LEFT, RIGHT), (1, "left of", 1), ValueError, "relation must join two different objects, got i == j == 1"),
        ((LEFT, RIGHT), (0, "near", 1), ValueError, f"relation must be one of {RELATIONS_TEXT}, got 'near'"),
        (
            (LEFT, RIGHT, obj("red", "circle", x=0.5, y=0.9)),
            (0, "left of", 1),
            ValueError,
            "relation object 0 (red circle) is not the only one of its colour and shape, so no caption could name it",
        ),
        (
            (LEFT, RIGHT, obj("blue", "square", x=0.5, y=0.9)),
            (0, "left of", 1),
            ValueError,
            "relation object 1 (blue square) is not the only one of its colour and shape, so no caption could name it",
        ),
        (
            (LEFT, RIGHT),
            (0, "right of", 1),
            ValueError,
            "relation (0, 'right of', 1) is not true for centres (0.25, 0.5) and (0.75, 0.5)",
        ),
        (
            (LEFT, RIGHT),
            (1, "left of", 0),
            ValueError,
            "relation (1, 'left of', 0) is not true for centres (0.75, 0.5) and (0.25, 0.5)",
        ),
        # the first fault is the one named
        ((LEFT, RIGHT), (2, "near", 2), ValueError, "relation index i must be an int in [0, 2), got 2"),
        ((LEFT, RIGHT), (0, "near", 0), ValueError, "relation must join two different objects, got i == j == 0"),
        ((LEFT, LEFT), (0, "near", 1), ValueError, f"relation must be one of {RELATIONS_TEXT}, got 'near'"),
        (
            (LEFT, LEFT),
            (0, "right of", 1),
            ValueError,
            "relation object 0 (red circle) is not the only one of its colour and shape, so no caption could name it",
        ),
    ],
)
def test_a_scenes_refusals_whole(objects, relation, error, message) -> None:
    with pytest.raises(error) as raised:
        Scene(objects, relation)
    assert str(raised.value) == message


def test_a_scene_takes_one_to_four_objects_and_its_last_index() -> None:
    assert Scene((obj(),)).relation is None
    four = (obj("red", x=0.1), obj("blue", x=0.9), obj("green", y=0.1), obj("cyan", y=0.9))
    assert Scene(four, (3, "below", 2)).relation == (3, "below", 2)
    assert Scene(four, (0, "left of", 1)).objects == four


def test_a_scenes_relation_uses_the_default_margin_inclusive() -> None:
    a, b = obj("red", x=0.0), obj("blue", x=0.1)
    assert Scene((a, b), (0, "left of", 1)).relation == (0, "left of", 1)
    assert Scene((b, a), (1, "left of", 0)).relation == (1, "left of", 0)
    short = obj("blue", x=below(0.1))
    with pytest.raises(ValueError, match="is not true for centres"):
        Scene((a, short), (0, "left of", 1))


def test_a_relation_object_may_share_its_colour_or_its_shape_with_another() -> None:
    objects = (obj("red", "circle", x=0.2), obj("blue", "circle", x=0.8), obj("red", "square", x=0.5, y=0.9))
    assert Scene(objects, (0, "left of", 1)).relation == (0, "left of", 1)


def test_pair_counts_in_order_of_first_appearance() -> None:
    scene = Scene(
        (
            obj("blue", "square", x=0.1),
            obj("red", "circle", x=0.3),
            obj("blue", "square", x=0.5),
            obj("blue", "circle", x=0.7),
        )
    )
    assert list(scene.pair_counts().items()) == [
        (("blue", "square"), 2),
        (("red", "circle"), 1),
        (("blue", "circle"), 1),
    ]
    assert Scene((obj(),) * 4).pair_counts() == {("red", "circle"): 4}


# ---------------------------------------------------------------- layout helpers


@pytest.mark.parametrize(
    "da, db, reach",
    [(SMALL, SMALL, 0.26), (LARGE, SMALL, 0.34), (SMALL, LARGE, 0.34), (LARGE, LARGE, 0.42)],
)
def test_boxes_are_apart_from_half_their_sides_plus_the_gap_inclusive(da, db, reach) -> None:
    # reach = (da + db) / 2 + 0.06, worked out by hand above
    assert _boxes_apart((0.0, 0.0, da), (reach, 0.0, db))
    assert _boxes_apart((reach, 0.0, da), (0.0, 0.0, db))
    assert _boxes_apart((0.0, 0.0, da), (0.0, reach, db))
    assert _boxes_apart((0.0, reach, da), (0.0, 0.0, db))
    assert not _boxes_apart((0.0, 0.0, da), (below(reach), 0.0, db))
    assert not _boxes_apart((below(reach), 0.0, da), (0.0, 0.0, db))
    assert not _boxes_apart((0.0, 0.0, da), (0.0, below(reach), db))
    assert not _boxes_apart((0.0, below(reach), da), (0.0, 0.0, db))
    # close along both axes: touching; apart along one axis is enough however close the other
    assert not _boxes_apart((0.0, 0.0, da), (below(reach), below(reach), db))
    assert _boxes_apart((0.0, 0.0, da), (reach, 0.0 + below(reach), db))
    assert _boxes_apart((0.0, 0.0, da), (0.0, reach, db))
    assert not _boxes_apart((0.5, 0.5, da), (0.5, 0.5, db))


class Scripted(random.Random):
    """An rng whose `uniform` hands out the given values in order and records the bounds asked."""

    def __init__(self, values) -> None:
        super().__init__(0)
        self.values = list(values)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a, b):  # noqa: D102
        self.bounds.append((a, b))
        return self.values.pop(0)


def centres(*points: tuple[float, float]) -> Scripted:
    return Scripted([v for point in points for v in point])


@pytest.mark.parametrize("diameter, low, high", [(SMALL, 0.13, 0.87), (LARGE, 0.21, 0.79)])
def test_a_random_centre_keeps_the_box_inside_the_border(diameter, low, high) -> None:
    # low = border 0.03 + half the side; high = 1 - low
    rng = Scripted([0.4, 0.6])
    assert _random_centre(rng, diameter) == (0.4, 0.6)  # x first, then y
    assert rng.bounds == [(low, high), (low, high)]
    drawn = [_random_centre(random.Random(seed), diameter) for seed in range(400)]
    assert all(low <= v <= high for point in drawn for v in point)
    assert min(v for point in drawn for v in point) < low + 0.01
    assert max(v for point in drawn for v in point) > high - 0.01


def test_a_random_centre_is_two_uniform_draws_of_the_rng() -> None:
    rng = random.Random(5)
    expected = random.Random(5)
    assert _random_centre(rng, LARGE) == (expected.uniform(0.21, 0.79), expected.uniform(0.21, 0.79))
    assert rng.random() == expected.random()


@pytest.mark.parametrize(
    "first, second, relation, clear",
    [
        # 0.25 along, nothing across: inclusive; one ulp short: refused
        ((0.0, 0.0), (0.25, 0.0), "left of", True),
        ((0.0, 0.0), (below(0.25), 0.0), "left of", False),
        ((0.25, 0.0), (0.0, 0.0), "right of", True),
        ((below(0.25), 0.0), (0.0, 0.0), "right of", False),
        ((0.0, 0.0), (0.0, 0.25), "above", True),
        ((0.0, 0.0), (0.0, below(0.25)), "above", False),
        ((0.0, 0.25), (0.0, 0.0), "below", True),
        ((0.0, below(0.25)), (0.0, 0.0), "below", False),
        # across at half the along, either side: inclusive; a hair more: refused
        ((0.0, 0.5), (0.5, 0.75), "left of", True),
        ((0.0, 0.5), (0.5, 0.25), "left of", True),
        ((0.0, 0.5), (0.5, 0.75 + TINY), "left of", False),
        ((0.0, 0.5), (0.5, 0.25 - TINY), "left of", False),
        ((0.5, 0.5), (0.0, 0.75), "right of", True),
        ((0.5, 0.5), (0.0, 0.25), "right of", True),
        ((0.5, 0.5), (0.0, 0.75 + TINY), "right of", False),
        ((0.5, 0.5), (0.0, 0.25 - TINY), "right of", False),
        ((0.5, 0.0), (0.75, 0.5), "above", True),
        ((0.5, 0.0), (0.25, 0.5), "above", True),
        ((0.5, 0.0), (0.75 + TINY, 0.5), "above", False),
        ((0.5, 0.0), (0.25 - TINY, 0.5), "above", False),
        ((0.5, 0.5), (0.75, 0.0), "below", True),
        ((0.5, 0.5), (0.25, 0.0), "below", True),
        ((0.5, 0.5), (0.75 + TINY, 0.0), "below", False),
        ((0.5, 0.5), (0.25 - TINY, 0.0), "below", False),
        # true with the plain margin (0.1) yet not clear: too short, or too much across
        ((0.0, 0.0), (0.2, 0.0), "left of", False),
        ((0.0, 0.0), (0.5, 0.5), "left of", False),
        ((0.0, 0.0), (0.0, 0.2), "above", False),
        # the wrong way round
        ((0.5, 0.0), (0.0, 0.0), "left of", False),
        ((0.0, 0.0), (0.0, 0.5), "below", False),
    ],
)
def test_a_clear_relation_at_each_edge(first, second, relation, clear) -> None:
    assert _clear_relation(first, second, relation) is clear


def test_place_skips_centres_too_close_and_keeps_the_index_order() -> None:
    rng = centres((0.2, 0.2), (0.3, 0.2), (0.2, 0.4), (0.7, 0.2))
    assert _place(rng, [SMALL, SMALL], None) == [(0.2, 0.2), (0.7, 0.2)]
    assert rng.values == [] and rng.bounds == [(0.13, 0.87)] * 8
    rng = centres((0.5, 0.5), (0.25, 0.25), (0.2, 0.5), (0.15, 0.5))
    assert _place(rng, [LARGE, SMALL], None) == [(0.5, 0.5), (0.15, 0.5)]  # 0.35 along x passes 0.34
    assert rng.values == [] and rng.bounds == [(0.21, 0.79)] * 2 + [(0.13, 0.87)] * 6


def test_place_puts_the_relations_pair_first_and_keeps_the_relation_clear() -> None:
    rng = centres(
        (0.2, 0.5),  # object 1, placed first
        (0.3, 0.5),  # object 0: too close
        (0.2, 0.85),  # apart, but under object 1 rather than right of it
        (0.6, 0.75),  # right of it, but 0.25 across is more than half of 0.4 along
        (0.6, 0.6),  # clear
    )
    assert _place(rng, [SMALL, SMALL], (1, "left of", 0)) == [(0.6, 0.6), (0.2, 0.5)]
    assert rng.values == []


def test_place_checks_the_relation_only_for_its_second_object() -> None:
    rng = centres(
        (0.5, 0.2),  # object 2, the relation's first
        (0.5, 0.6),  # object 0, clearly below it
        (0.5, 0.4),  # object 1: too close to both
        (0.85, 0.15),  # apart from both, in no relation to anything: kept
    )
    assert _place(rng, [SMALL, SMALL, SMALL], (2, "above", 0)) == [(0.5, 0.6), (0.85, 0.15), (0.5, 0.2)]
    assert rng.values == []


def test_place_tries_forty_centres_per_object_then_gives_up() -> None:
    taken = (0.5, 0.5)
    rng = centres(taken, *[taken] * 39, (0.1, 0.1))
    assert _place(rng, [SMALL, SMALL], None) == [taken, (0.1, 0.1)]
    assert rng.values == []
    rng = centres(taken, *[taken] * 40, (0.1, 0.1))
    assert _place(rng, [SMALL, SMALL], None) is None
    assert rng.values == [0.1, 0.1]  # the 41st centre is never drawn
    rng = centres(taken, taken, taken, (0.1, 0.1))
    assert _place(rng, [SMALL, SMALL], None, tries=2) is None
    assert rng.values == [0.1, 0.1]
    rng = centres(taken, taken, (0.1, 0.1))
    assert _place(rng, [SMALL, SMALL], None, tries=2) == [taken, (0.1, 0.1)]


def test_place_gives_up_when_the_relation_cannot_be_made_clear() -> None:
    rng = centres((0.5, 0.5), *[(0.5, 0.8)] * 40)  # apart, but below rather than right of it
    assert _place(rng, [SMALL, SMALL], (0, "left of", 1)) is None
    assert rng.values == []


def test_check_pairs_sorts_and_deduplicates() -> None:
    pairs = [("red", "circle"), ("blue", "square"), ("red", "circle"), ("blue", "circle")]
    assert _check_pairs(pairs, "pairs") == [("blue", "circle"), ("blue", "square"), ("red", "circle")]
    assert _check_pairs(iter([("cyan", "triangle")]), "x") == [("cyan", "triangle")]


@pytest.mark.parametrize(
    "pairs, name, message",
    [
        ([], "pairs", "pairs must hold at least one (colour, shape) pair"),
        ((), "must_include", "must_include must hold at least one (colour, shape) pair"),
        (
            [("pink", "circle")],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ('pink', 'circle')",
        ),
        (
            [("red", "star")],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ('red', 'star')",
        ),
        (
            [("circle", "red")],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ('circle', 'red')",
        ),
        ([("red",)], "pairs", "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ('red',)"),
        (
            [("red", "circle", "small")],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ('red', 'circle', 'small')",
        ),
        (
            ["red circle"],
            "must_include",
            "must_include must hold (colour, shape) tuples from COLOURS and SHAPES, got 'red circle'",
        ),
        # checked in the order given: the first bad one is named
        (
            [("red", "star"), ("blue", "star")],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ('red', 'star')",
        ),
        # entries that cannot be sorted or hashed are named too, not a TypeError of sorting
        (
            [("red", "circle"), "red circle"],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got 'red circle'",
        ),
        (
            [("red", "circle"), ("red", 1)],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ('red', 1)",
        ),
        (
            [["red", "circle"]],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ['red', 'circle']",
        ),
        (
            [(["red"], "circle")],
            "pairs",
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got (['red'], 'circle')",
        ),
    ],
)
def test_check_pairs_refusals_whole(pairs, name, message) -> None:
    with pytest.raises(ValueError) as raised:
        _check_pairs(pairs, name)
    assert str(raised.value) == message


def test_count_weights_come_back_as_floats() -> None:
    assert check_count_weights(None, 1, 4) is None
    weights = check_count_weights([1, 2.5, 0], 1, 3)
    assert weights == (1.0, 2.5, 0.0) and all(type(w) is float for w in weights)
    assert check_count_weights((3,), 2, 2) == (3.0,)
    assert check_count_weights([0, -0.0, 1e-300, 0], 1, 4) == (0.0, 0.0, 1e-300, 0.0)


@pytest.mark.parametrize(
    "weights, low, high, name, error, message",
    [
        ("113", 1, 3, "count_weights", TypeError, "count_weights must be a list of numbers, got str"),
        (b"11", 1, 2, "count_weights", TypeError, "count_weights must be a list of numbers, got bytes"),
        (3, 1, 1, "w", TypeError, "w must be a list of numbers, got int"),
        ({1, 2}, 1, 2, "count_weights", TypeError, "count_weights must be a list of numbers, got set"),
        (
            [1, 1],
            1,
            3,
            "count_weights",
            ValueError,
            "count_weights must hold one weight per object count 1..3 (3 numbers), got 2: [1, 1]",
        ),
        (
            (1, 1, 1, 1),
            2,
            4,
            "w",
            ValueError,
            "w must hold one weight per object count 2..4 (3 numbers), got 4: [1, 1, 1, 1]",
        ),
        ([], 4, 4, "w", ValueError, "w must hold one weight per object count 4..4 (1 numbers), got 0: []"),
        ([1, True], 1, 2, "count_weights", TypeError, "count_weights must hold numbers, got True"),
        ([1, "2"], 1, 2, "count_weights", TypeError, "count_weights must hold numbers, got '2'"),
        ([1, None], 1, 2, "w", TypeError, "w must hold numbers, got None"),
        ([1, -1], 1, 2, "count_weights", ValueError, "count_weights must hold finite numbers >= 0, got -1"),
        ([1, -TINY], 1, 2, "w", ValueError, "w must hold finite numbers >= 0, got -9.5367431640625e-07"),
        ([math.nan, 1], 1, 2, "w", ValueError, "w must hold finite numbers >= 0, got nan"),
        ([math.inf, 1], 1, 2, "w", ValueError, "w must hold finite numbers >= 0, got inf"),
        (
            [0, 0.0, 0],
            1,
            3,
            "count_weights",
            ValueError,
            "count_weights must give at least one object count a weight > 0, got [0, 0.0, 0]",
        ),
        # the first fault is the one named: length before entries, entries in order, all-zero last
        (
            ["a", -1],
            1,
            3,
            "w",
            ValueError,
            "w must hold one weight per object count 1..3 (3 numbers), got 2: ['a', -1]",
        ),
        ([-1, "a"], 1, 2, "w", ValueError, "w must hold finite numbers >= 0, got -1"),
        (["a", -1], 1, 2, "w", TypeError, "w must hold numbers, got 'a'"),
        ([0, -1], 1, 2, "w", ValueError, "w must hold finite numbers >= 0, got -1"),
    ],
)
def test_count_weights_refusals_whole(weights, low, high, name, error, message) -> None:
    with pytest.raises(error) as raised:
        check_count_weights(weights, low, high, name)
    assert str(raised.value) == message


# ---------------------------------------------------------------- random_scene: refusals


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((0,), {}, TypeError, "rng must be a random.Random, got int"),
        ((None,), {"min_objects": 0}, TypeError, "rng must be a random.Random, got NoneType"),
        ((random.Random(0), 0), {}, ValueError, "min_objects must be an int in [1, 4], got 0"),
        ((random.Random(0), 5), {}, ValueError, "min_objects must be an int in [1, 4], got 5"),
        ((random.Random(0), True), {}, ValueError, "min_objects must be an int in [1, 4], got True"),
        ((random.Random(0), 1.0), {}, ValueError, "min_objects must be an int in [1, 4], got 1.0"),
        ((random.Random(0), 1, 0), {}, ValueError, "max_objects must be an int in [1, 4], got 0"),
        ((random.Random(0), 1, 5), {}, ValueError, "max_objects must be an int in [1, 4], got 5"),
        ((random.Random(0), 1, "4"), {}, ValueError, "max_objects must be an int in [1, 4], got '4'"),
        ((random.Random(0), 0, 5), {}, ValueError, "min_objects must be an int in [1, 4], got 0"),
        ((random.Random(0), 3, 2), {}, ValueError, "min_objects (3) must not exceed max_objects (2)"),
        ((random.Random(0), 4, 1), {"pairs": []}, ValueError, "min_objects (4) must not exceed max_objects (1)"),
        ((random.Random(0),), {"pairs": []}, ValueError, "pairs must hold at least one (colour, shape) pair"),
        (
            (random.Random(0),),
            {"pairs": [("pink", "circle")], "must_include": []},
            ValueError,
            "pairs must hold (colour, shape) tuples from COLOURS and SHAPES, got ('pink', 'circle')",
        ),
        (
            (random.Random(0),),
            {"must_include": [("red", "star")], "count_weights": []},
            ValueError,
            "must_include must hold (colour, shape) tuples from COLOURS and SHAPES, got ('red', 'star')",
        ),
        (
            (random.Random(0),),
            {"must_include": []},
            ValueError,
            "must_include must hold at least one (colour, shape) pair",
        ),
        (
            (random.Random(0), 2, 3),
            {"count_weights": [1]},
            ValueError,
            "count_weights must hold one weight per object count 2..3 (2 numbers), got 1: [1]",
        ),
        (
            (random.Random(0), 2, 3),
            {"count_weights": [0, 0]},
            ValueError,
            "count_weights must give at least one object count a weight > 0, got [0, 0]",
        ),
    ],
)
def test_random_scenes_refusals_whole(args, kwargs, error, message) -> None:
    with pytest.raises(error) as raised:
        random_scene(*args, **kwargs)
    assert str(raised.value) == message


# ---------------------------------------------------------------- random_scene: crowded scenes
# These come before the many draws: a sampler that never stops shrinking fails here, at a
# bounded number of tries, rather than looping for ever in a real draw.


def test_a_crowded_scene_shrinks_one_whole_large_group_per_thirty_tries(monkeypatch) -> None:
    real_place = scene_module._place
    seen_two_large_groups = False
    for seed in range(40):
        calls: list[list[float]] = []

        def place_only_small(rng, diameters, relation, calls=calls):
            calls.append(list(diameters))
            assert len(calls) <= 30 * 4 + 1, "the scene never stopped shrinking"
            if LARGE in diameters:
                return None
            placed = None
            while placed is None:  # four small boxes always fit, given enough tries
                placed = real_place(rng, diameters, relation)
            return placed

        monkeypatch.setattr(scene_module, "_place", place_only_small)
        scene = random_scene(
            random.Random(seed), 4, 4, pairs=[("red", "circle"), ("blue", "square"), ("green", "triangle")]
        )
        pairs = [o.pair for o in scene.objects]
        large_groups = {p for p, d in zip(pairs, calls[0]) if d == LARGE}
        seen_two_large_groups |= len(large_groups) >= 2
        assert len(calls) == 30 * len(large_groups) + 1
        rounds = calls[::30]
        assert all(calls[k] == rounds[k // 30] for k in range(len(calls)))
        for before, after in zip(rounds, rounds[1:]):
            shrunk = {p for p, b, a in zip(pairs, before, after) if b != a}
            assert len(shrunk) == 1  # one group at a time, every member of it
            assert all((a == SMALL) if p in shrunk else (a == b) for p, b, a in zip(pairs, before, after))
        assert rounds[-1] == [SMALL] * 4 and all(o.size == "small" for o in scene.objects)
        assert_scene_is_laid_out(scene)
    assert seen_two_large_groups


def test_a_scene_that_never_fits_is_refused_after_every_group_is_small(monkeypatch) -> None:
    calls: list[list[float]] = []

    def place_nothing(rng, diameters, relation):
        calls.append(list(diameters))
        assert len(calls) <= 30 * 2, "the scene never gave up"
        return None

    monkeypatch.setattr(scene_module, "_place", place_nothing)
    first_sizes = set()
    for seed in range(6):
        calls.clear()
        with pytest.raises(RuntimeError) as raised:
            random_scene(random.Random(seed), 3, 3, pairs=[("red", "circle")])
        assert str(raised.value) == "could not place 3 small objects; the layout constants are inconsistent"
        # one group: 30 tries as drawn, and 30 more after shrinking it when it was large
        first_sizes.add(calls[0][0])
        assert calls == [calls[0]] * (30 if calls[0] == [SMALL] * 3 else 0) + (
            [[LARGE] * 3] * 30 + [[SMALL] * 3] * 30 if calls[0] == [LARGE] * 3 else []
        )
    assert first_sizes == {SMALL, LARGE}
    calls.clear()
    with pytest.raises(RuntimeError) as raised:
        random_scene(random.Random(0), 1, 1)
    assert str(raised.value) == "could not place 1 small objects; the layout constants are inconsistent"


# ---------------------------------------------------------------- random_scene: many draws


def assert_scene_is_laid_out(scene: Scene) -> None:
    """Inside the border, apart by the gap, identical objects of one size, the relation clear."""
    for k, a in enumerate(scene.objects):
        half = a.diameter / 2
        assert 0.03 + half - 1e-12 <= a.x <= 0.97 - half + 1e-12 and 0.03 + half - 1e-12 <= a.y <= 0.97 - half + 1e-12
        for b in scene.objects[k + 1 :]:
            reach = (a.diameter + b.diameter) / 2 + 0.06
            assert abs(a.x - b.x) >= reach - 1e-12 or abs(a.y - b.y) >= reach - 1e-12
            if a.pair == b.pair:
                assert a.size == b.size
    if scene.relation is not None:
        i, name, j = scene.relation
        a, b = scene.objects[i], scene.objects[j]
        counts = Counter(o.pair for o in scene.objects)
        assert counts[a.pair] == 1 and counts[b.pair] == 1
        dx, dy = b.x - a.x, b.y - a.y
        along = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[name]
        across = abs(dy) if name in ("left of", "right of") else abs(dx)
        assert along >= 0.25 and across <= along / 2


def draws(n: int, seed: int, *args, **kwargs) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng, *args, **kwargs) for _ in range(n)]


def test_many_draws_are_laid_out_and_cover_the_whole_support() -> None:
    scenes = draws(2000, 11)
    for scene in scenes:
        assert_scene_is_laid_out(scene)
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3, 4} and all(400 < counts[n] < 600 for n in counts)  # uniform, 500 each
    assert {o.pair for s in scenes for o in s.objects} == ALL_PAIRS
    assert {s.relation[1] for s in scenes if s.relation} == {"left of", "right of", "above", "below"}
    assert {(s.relation[0], s.relation[2]) for s in scenes if s.relation and len(s.objects) == 4} == {
        (i, j) for i in range(4) for j in range(4) if i != j
    }
    group_sizes = Counter(n for s in scenes for n in s.pair_counts().values())
    assert set(group_sizes) == {1, 2, 3, 4}
    objects = [o for s in scenes for o in s.objects]
    # the layout is tight: boxes reach the border and come within a hair of the gap
    assert min(min(o.x, o.y) - o.diameter / 2 for o in objects) < 0.031
    assert max(max(o.x, o.y) + o.diameter / 2 for o in objects) > 0.969
    closest = min(
        max(abs(a.x - b.x), abs(a.y - b.y)) - (a.diameter + b.diameter) / 2
        for s in scenes
        for k, a in enumerate(s.objects)
        for b in s.objects[k + 1 :]
    )
    assert 0.06 - 1e-12 <= closest < 0.061
    relations = [s for s in scenes if s.relation]
    alongs = []
    for s in relations:
        i, name, j = s.relation
        a, b = s.objects[i], s.objects[j]
        alongs.append(abs(b.x - a.x) if name in ("left of", "right of") else abs(b.y - a.y))
    assert min(alongs) < 0.27


def test_one_object_scenes_draw_each_size_half_the_time_and_no_relation() -> None:
    scenes = draws(2000, 12, 1, 1)
    assert all(len(s.objects) == 1 and s.relation is None for s in scenes)
    large = sum(s.objects[0].size == "large" for s in scenes)
    assert 900 < large < 1100  # 1000 expected, sd ~22


def test_two_object_scenes_carry_a_relation_and_a_group_at_their_rates() -> None:
    # Two objects: a group of two 3 times in 10; otherwise two singles, related 8 times in 10:
    # a relation in 0.7 * 0.8 = 0.56 of scenes.
    scenes = draws(2000, 13, 2, 2)
    for scene in scenes:
        assert_scene_is_laid_out(scene)
    grouped = sum(len(s.pair_counts()) == 1 for s in scenes)
    related = sum(s.relation is not None for s in scenes)
    assert 520 < grouped < 680  # 600 expected, sd ~20
    assert 1020 < related < 1220  # 1120 expected, sd ~22
    assert all(s.relation is None for s in scenes if len(s.pair_counts()) == 1)
    assert {s.relation[::2] for s in scenes if s.relation} == {(0, 1), (1, 0)}


def test_three_object_scenes_carry_a_relation_at_their_rate() -> None:
    # Three objects: two or more singles 0.7 * 0.7 = 0.49 of the time, related 3 times in 10: 0.147.
    scenes = draws(2000, 14, 3, 3)
    related = sum(s.relation is not None for s in scenes)
    assert 234 < related < 354  # 294 expected, sd ~16
    grouped = Counter(tuple(sorted(s.pair_counts().values())) for s in scenes)
    # (1, 2) after a single then a pair (0.7 * 0.3) or a pair then a single (0.15): 0.36;
    # (3,) 0.15; (1, 1, 1) 0.49
    assert set(grouped) == {(1, 1, 1), (1, 2), (3,)}
    assert 620 < grouped[(1, 2)] < 820 and 220 < grouped[(3,)] < 380 and 880 < grouped[(1, 1, 1)] < 1080


def test_four_object_scenes_carry_a_relation_at_their_rate() -> None:
    # Four objects: two or more singles 0.665 of the time (by hand over the group draws), related
    # 3 times in 10: 0.1995.
    scenes = draws(2000, 15, 4, 4)
    for scene in scenes:
        assert_scene_is_laid_out(scene)
    related = sum(s.relation is not None for s in scenes)
    assert 330 < related < 470  # 399 expected, sd ~18


def test_count_weights_draw_only_the_counts_weighted() -> None:
    scenes = draws(400, 16, 1, 4, count_weights=[1, 0, 0, 1])
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 4} and 150 < counts[4] < 250
    assert {len(s.objects) for s in draws(100, 17, 2, 4, count_weights=[0, 0, 5])} == {4}
    assert {len(s.objects) for s in draws(100, 18, 3, 4, count_weights=(2, 0))} == {3}


def test_uniform_counts_are_one_randint_of_the_rng() -> None:
    for seed in range(30):
        expected = random.Random(seed).randint(2, 4)
        assert len(random_scene(random.Random(seed), 2, 4).objects) == expected


def test_pairs_bound_the_draws_and_one_pair_makes_one_group() -> None:
    allowed = [("red", "circle"), ("blue", "square")]
    scenes = draws(300, 19, 3, 4, pairs=allowed)
    assert {o.pair for s in scenes for o in s.objects} == set(allowed)
    for scene in scenes:
        assert_scene_is_laid_out(scene)
    for n in (1, 2, 3, 4):
        for scene in draws(40, 20 + n, n, n, pairs=[("green", "triangle")]):
            assert len(scene.objects) == n and scene.relation is None
            assert scene.pair_counts() == {("green", "triangle"): n}
            assert len({o.size for o in scene.objects}) == 1


def test_must_include_gives_the_first_group_and_nothing_more() -> None:
    allowed = [("red", "circle"), ("blue", "square")]
    required = [("green", "triangle"), ("yellow", "square")]
    scenes = draws(300, 30, 1, 4, pairs=allowed, must_include=required)
    for scene in scenes:
        counts = scene.pair_counts()
        assert sum(pair in required for pair in counts) == 1  # one required group
        assert set(counts) <= set(allowed) | set(required)
        assert_scene_is_laid_out(scene)
    assert {p for s in scenes for p in s.pair_counts() if p in required} == set(required)
    # a required pair that is also allowed is not drawn again
    for scene in draws(50, 31, 4, 4, pairs=[("red", "circle")], must_include=[("red", "circle")]):
        assert scene.pair_counts() == {("red", "circle"): 4}


def test_four_small_objects_always_fit() -> None:
    for scene in draws(
        300, 32, 4, 4, pairs=[("red", "circle"), ("blue", "square"), ("green", "triangle"), ("cyan", "circle")]
    ):
        assert len(scene.objects) == 4
        assert_scene_is_laid_out(scene)


def test_the_sampled_relation_is_what_place_is_asked_to_keep(monkeypatch) -> None:
    asked = []
    real_place = scene_module._place

    def spy(rng, diameters, relation):
        asked.append(relation)
        return real_place(rng, diameters, relation)

    monkeypatch.setattr(scene_module, "_place", spy)
    rng = random.Random(33)
    for _ in range(200):
        asked.clear()
        scene = random_scene(rng, 2, 2)
        assert asked and all(relation == scene.relation for relation in asked)


# ---------------------------------------------------------------- pinned draws

# These pin this version's draws: a change to how random_scene uses its rng changes them (and
# every stream built on it), which is what they are here to notice.


def test_pinned_draws() -> None:
    assert random_scene(random.Random(1)) == Scene(
        (
            ShapeObject("triangle", "red", "large", 0.7419622616826541, 0.38277028733066043),
            ShapeObject("square", "yellow", "large", 0.25102158917440737, 0.2543387702108242),
        ),
        (1, "left of", 0),
    )
    assert random_scene(random.Random(0)) == Scene(
        (
            ShapeObject("circle", "blue", "large", 0.7857193848458575, 0.41098517497147424),
            ShapeObject("square", "blue", "small", 0.843830227281711, 0.866933432673372),
            ShapeObject("circle", "blue", "large", 0.2993283921900004, 0.21285202427525357),
            ShapeObject("circle", "blue", "large", 0.21608179797925894, 0.727598740831439),
        )
    )
    assert random_scene(random.Random(9)) == Scene(
        (
            ShapeObject("triangle", "red", "large", 0.2513256046604532, 0.572946910741189),
            ShapeObject("triangle", "cyan", "small", 0.7511137101147278, 0.7145666409518929),
            ShapeObject("triangle", "cyan", "small", 0.6408291068818244, 0.18459065297120722),
            ShapeObject("triangle", "green", "small", 0.7163548748802079, 0.4491358774047835),
        ),
        (3, "right of", 0),
    )
    options = {
        "pairs": [("red", "circle"), ("blue", "square"), ("green", "triangle")],
        "must_include": [("yellow", "square")],
        "count_weights": [0, 1, 3],
    }
    assert random_scene(random.Random(3), 2, 4, **options) == Scene(
        (
            ShapeObject("square", "blue", "small", 0.832182664916402, 0.8488572070142085),
            ShapeObject("square", "yellow", "large", 0.3649092455601344, 0.2821722052753503),
            ShapeObject("circle", "red", "large", 0.4403380546767974, 0.709392822886687),
        ),
        (2, "below", 1),
    )
    assert random_scene(random.Random(12), 2, 4, **options) == Scene(
        (
            ShapeObject("square", "yellow", "small", 0.6238734854736536, 0.38253614141156467),
            ShapeObject("square", "blue", "small", 0.5796837812474575, 0.6878642105544421),
            ShapeObject("square", "blue", "small", 0.8407832592819331, 0.6825764443403817),
            ShapeObject("triangle", "green", "large", 0.22426314042697587, 0.38888022664703875),
        ),
        (0, "right of", 3),
    )


# ---------------------------------------------------------------- single_object_scene


def test_a_single_object_scene_is_one_size_draw_then_one_centre() -> None:
    expected = random.Random(9)
    size = expected.choice(("small", "large"))
    low = {"small": 0.13, "large": 0.21}[size]
    x, y = expected.uniform(low, 1 - low), expected.uniform(low, 1 - low)
    assert single_object_scene("cyan", "square", random.Random(9)) == Scene(
        (ShapeObject("square", "cyan", size, x, y),)
    )
    # pinned: this version's draw for seed 9
    assert single_object_scene("cyan", "square", random.Random(9)) == Scene(
        (ShapeObject("square", "cyan", "large", 0.5656648352482984, 0.364937964531428),)
    )


@pytest.mark.parametrize("size, low", [("small", 0.13), ("large", 0.21)])
def test_a_single_object_scene_of_a_given_size_draws_only_its_centre(size, low) -> None:
    expected = random.Random(4)
    x, y = expected.uniform(low, 1 - low), expected.uniform(low, 1 - low)
    assert single_object_scene("red", "triangle", random.Random(4), size=size) == Scene(
        (ShapeObject("triangle", "red", size, x, y),)
    )


def test_single_object_scenes_draw_both_sizes_inside_the_border() -> None:
    rng = random.Random(34)
    scenes = [single_object_scene("blue", "circle", rng) for _ in range(200)]
    assert {s.objects[0].size for s in scenes} == {"small", "large"}
    for scene in scenes:
        assert_scene_is_laid_out(scene)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (("red", "circle", "huge"), ValueError, "size must be one of ('small', 'large') or None, got 'huge'"),
        (("red", "circle", ""), ValueError, "size must be one of ('small', 'large') or None, got ''"),
        (("pink", "circle", None), ValueError, f"colour must be one of {COLOURS_TEXT}, got 'pink'"),
        (("red", "star", "small"), ValueError, "shape must be one of ('circle', 'square', 'triangle'), got 'star'"),
        (("pink", "star", "huge"), ValueError, "size must be one of ('small', 'large') or None, got 'huge'"),
    ],
)
def test_a_single_object_scenes_refusals_whole(arguments, error, message) -> None:
    colour, shape, size = arguments
    with pytest.raises(error) as raised:
        single_object_scene(colour, shape, random.Random(0), size=size)
    assert str(raised.value) == message
