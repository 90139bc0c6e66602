"""Hard negative captions on their own: each kind of edit on a hand-written claim (every
candidate, in order, a collision left as None), the relation and count rules, and
`negative_facts` / `negative_caption` on hand-built scenes: sizes stated at random and always
correctly, the kind drawn uniformly among those that apply whatever their edit counts and
order, every result false, the refusals whole."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from clipcond.shapes.facts import Group, SceneFacts, facts_hold
from clipcond.shapes.negatives import (
    NEGATIVE_KINDS,
    _change_colour,
    _change_count,
    _change_shape,
    _flip_relation,
    _swap_colours,
    _swap_relation_order,
    _with_groups,
    negative_caption,
    negative_facts,
)
from clipcond.shapes.scene import Scene, ShapeObject

ALL_KINDS = "('swap_colours', 'flip_relation', 'swap_relation_order', 'change_colour', 'change_shape', 'change_count')"

RED_CIRCLE = Group("red", "circle", 1, "small")
BLUE_SQUARE = Group("blue", "square", 1, "large")
# "a small red circle left of a large blue square"
LEFT_OF = SceneFacts((RED_CIRCLE, BLUE_SQUARE), (0, "left of", 1))


def G(colour: str, shape: str, count: int = 1, size: str | None = None) -> Group:
    return Group(colour, shape, count, size)


def obj(colour: str, shape: str, size: str = "small", x: float = 0.5, y: float = 0.5) -> ShapeObject:
    return ShapeObject(shape, colour, size, x, y)


# the scene LEFT_OF states, sizes included
LEFT_OF_SCENE = Scene(
    (obj("red", "circle", "small", 0.25, 0.5), obj("blue", "square", "large", 0.75, 0.5)), (0, "left of", 1)
)


def test_new_groups_keep_the_relation_and_a_shared_pair_gives_none() -> None:
    edited = _with_groups(LEFT_OF, [G("green", "circle", 1, "small"), BLUE_SQUARE])
    assert edited == SceneFacts((G("green", "circle", 1, "small"), BLUE_SQUARE), (0, "left of", 1))
    assert _with_groups(LEFT_OF, [G("blue", "square"), BLUE_SQUARE]) is None


def test_swap_colours_trades_the_two_colours_and_keeps_sizes_counts_and_relation() -> None:
    assert _swap_colours(LEFT_OF) == [
        SceneFacts((G("blue", "circle", 1, "small"), G("red", "square", 1, "large")), (0, "left of", 1))
    ]
    counted = SceneFacts((G("red", "circle", 2), G("blue", "square", 1)))
    assert _swap_colours(counted) == [SceneFacts((G("blue", "circle", 2), G("red", "square", 1)))]


def test_swap_colours_makes_every_pair_in_order() -> None:
    facts = SceneFacts((G("red", "circle"), G("blue", "square"), G("green", "triangle")))
    assert _swap_colours(facts) == [
        SceneFacts((G("blue", "circle"), G("red", "square"), G("green", "triangle"))),
        SceneFacts((G("green", "circle"), G("blue", "square"), G("red", "triangle"))),
        SceneFacts((G("red", "circle"), G("green", "square"), G("blue", "triangle"))),
    ]


def test_swap_colours_goes_on_past_a_skipped_pair_in_the_order_of_the_first_group() -> None:
    # red circle + yellow circle share a shape: skipped, and the red circle's other pairs follow;
    # pairs come (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), not by their second group
    facts = SceneFacts((G("red", "circle"), G("yellow", "circle"), G("blue", "square"), G("green", "triangle")))
    assert _swap_colours(facts) == [
        SceneFacts((G("blue", "circle"), G("yellow", "circle"), G("red", "square"), G("green", "triangle"))),
        SceneFacts((G("green", "circle"), G("yellow", "circle"), G("blue", "square"), G("red", "triangle"))),
        SceneFacts((G("red", "circle"), G("blue", "circle"), G("yellow", "square"), G("green", "triangle"))),
        SceneFacts((G("red", "circle"), G("green", "circle"), G("blue", "square"), G("yellow", "triangle"))),
        SceneFacts((G("red", "circle"), G("yellow", "circle"), G("green", "square"), G("blue", "triangle"))),
    ]


def test_swap_colours_skips_a_shared_colour_or_shape_and_gives_none_for_a_collision() -> None:
    # red circle + red square: same colour; red circle + blue circle: same shape; red square +
    # blue circle swap to blue square + red circle, and a red circle is already there
    facts = SceneFacts((G("red", "circle"), G("red", "square"), G("blue", "circle")))
    assert _swap_colours(facts) == [None]
    assert _swap_colours(SceneFacts((G("red", "circle"),))) == []


@pytest.mark.parametrize(
    "name, inverse", [("left of", "right of"), ("right of", "left of"), ("above", "below"), ("below", "above")]
)
def test_flip_relation_states_the_inverse_between_the_same_groups(name, inverse) -> None:
    facts = SceneFacts((RED_CIRCLE, BLUE_SQUARE), (1, name, 0))
    assert _flip_relation(facts) == [SceneFacts((RED_CIRCLE, BLUE_SQUARE), (1, inverse, 0))]


def test_swap_relation_order_exchanges_the_two_groups() -> None:
    assert _swap_relation_order(LEFT_OF) == [SceneFacts((RED_CIRCLE, BLUE_SQUARE), (1, "left of", 0))]


def test_relation_edits_make_nothing_without_a_relation() -> None:
    facts = SceneFacts((RED_CIRCLE, BLUE_SQUARE))
    assert _flip_relation(facts) == [] and _swap_relation_order(facts) == []


def test_change_colour_tries_every_other_colour_for_each_group_in_order() -> None:
    first = ["yellow", "green", "cyan", "blue", "purple"]
    second = ["red", "yellow", "green", "cyan", "purple"]
    assert _change_colour(LEFT_OF) == [
        SceneFacts((G(c, "circle", 1, "small"), BLUE_SQUARE), (0, "left of", 1)) for c in first
    ] + [SceneFacts((RED_CIRCLE, G(c, "square", 1, "large")), (0, "left of", 1)) for c in second]


def test_change_colour_gives_none_where_the_new_colour_meets_another_group() -> None:
    facts = SceneFacts((G("red", "circle", 2), G("blue", "circle")))
    assert _change_colour(facts) == [
        SceneFacts((G("yellow", "circle", 2), G("blue", "circle"))),
        SceneFacts((G("green", "circle", 2), G("blue", "circle"))),
        SceneFacts((G("cyan", "circle", 2), G("blue", "circle"))),
        None,
        SceneFacts((G("purple", "circle", 2), G("blue", "circle"))),
        None,
        SceneFacts((G("red", "circle", 2), G("yellow", "circle"))),
        SceneFacts((G("red", "circle", 2), G("green", "circle"))),
        SceneFacts((G("red", "circle", 2), G("cyan", "circle"))),
        SceneFacts((G("red", "circle", 2), G("purple", "circle"))),
    ]


def test_change_shape_tries_every_other_shape_for_each_group_in_order() -> None:
    assert _change_shape(LEFT_OF) == [
        SceneFacts((G("red", "square", 1, "small"), BLUE_SQUARE), (0, "left of", 1)),
        SceneFacts((G("red", "triangle", 1, "small"), BLUE_SQUARE), (0, "left of", 1)),
        SceneFacts((RED_CIRCLE, G("blue", "circle", 1, "large")), (0, "left of", 1)),
        SceneFacts((RED_CIRCLE, G("blue", "triangle", 1, "large")), (0, "left of", 1)),
    ]
    facts = SceneFacts((G("red", "circle"), G("red", "square", 3)))
    assert _change_shape(facts) == [
        None,
        SceneFacts((G("red", "triangle"), G("red", "square", 3))),
        None,
        SceneFacts((G("red", "circle"), G("red", "triangle", 3))),
    ]


def test_change_count_goes_one_down_and_one_up_within_one_to_four() -> None:
    assert _change_count(SceneFacts((G("red", "circle", 1, "large"),))) == [
        SceneFacts((G("red", "circle", 2, "large"),))
    ]
    assert _change_count(SceneFacts((G("red", "circle", 2),))) == [
        SceneFacts((G("red", "circle", 1),)),
        SceneFacts((G("red", "circle", 3),)),
    ]
    assert _change_count(SceneFacts((G("red", "circle", 3),))) == [
        SceneFacts((G("red", "circle", 2),)),
        SceneFacts((G("red", "circle", 4),)),
    ]
    assert _change_count(SceneFacts((G("red", "circle", 4),))) == [SceneFacts((G("red", "circle", 3),))]


def test_change_count_leaves_the_groups_of_a_relation_single() -> None:
    facts = SceneFacts((RED_CIRCLE, G("green", "triangle", 2), BLUE_SQUARE), (0, "above", 2))
    assert _change_count(facts) == [
        SceneFacts((RED_CIRCLE, G("green", "triangle", 1), BLUE_SQUARE), (0, "above", 2)),
        SceneFacts((RED_CIRCLE, G("green", "triangle", 3), BLUE_SQUARE), (0, "above", 2)),
    ]
    # without the relation the single groups may become two
    assert _change_count(SceneFacts((RED_CIRCLE, BLUE_SQUARE))) == [
        SceneFacts((G("red", "circle", 2, "small"), BLUE_SQUARE)),
        SceneFacts((RED_CIRCLE, G("blue", "square", 2, "large"))),
    ]


def _without_sizes(facts: SceneFacts) -> SceneFacts:
    return SceneFacts(tuple(Group(g.colour, g.shape, g.count) for g in facts.groups), facts.relation)


def test_a_relation_edit_of_a_scene_with_sizes_stated_at_random_and_always_right() -> None:
    seen = Counter()
    for seed in range(200):
        kind, facts = negative_facts(LEFT_OF_SCENE, random.Random(seed), kinds=["flip_relation"])
        assert kind == "flip_relation"
        seen[facts] += 1
    stated = [(small, large) for small in ("small", None) for large in ("large", None)]
    assert set(seen) == {
        SceneFacts((G("red", "circle", 1, small), G("blue", "square", 1, large)), (0, "right of", 1))
        for small, large in stated
    }
    assert min(seen.values()) >= 30  # each group's size stated about half the time


def test_the_kind_is_uniform_among_those_that_apply_not_weighted_by_their_edits() -> None:
    # no relation: four kinds apply, with 1 (swap colours), 10, 4 and 2 edits
    scene = Scene((obj("red", "circle", x=0.3), obj("blue", "square", x=0.7)))
    kinds = Counter(negative_facts(scene, random.Random(seed))[0] for seed in range(800))
    assert set(kinds) == {"swap_colours", "change_colour", "change_shape", "change_count"}
    assert all(140 <= n <= 260 for n in kinds.values()), kinds


def test_every_edit_of_a_kind_can_be_drawn() -> None:
    edits = {
        _without_sizes(negative_facts(LEFT_OF_SCENE, random.Random(seed), ["change_shape"])[1]) for seed in range(100)
    }
    assert edits == {
        SceneFacts((G("red", "square"), G("blue", "square")), (0, "left of", 1)),
        SceneFacts((G("red", "triangle"), G("blue", "square")), (0, "left of", 1)),
        SceneFacts((G("red", "circle"), G("blue", "circle")), (0, "left of", 1)),
        SceneFacts((G("red", "circle"), G("blue", "triangle")), (0, "left of", 1)),
    }


def test_the_order_of_kinds_and_none_for_all_kinds_draw_the_same_negative() -> None:
    forward = list(NEGATIVE_KINDS)
    for seed in range(40):
        drawn = negative_facts(LEFT_OF_SCENE, random.Random(seed))
        assert negative_facts(LEFT_OF_SCENE, random.Random(seed), forward) == drawn
        assert negative_facts(LEFT_OF_SCENE, random.Random(seed), forward[::-1]) == drawn


def test_collisions_are_never_drawn_and_every_negative_is_false() -> None:
    # red circle, two blue circles, red square: many colour and shape edits collide
    scene = Scene(
        (
            obj("red", "circle", x=0.2),
            obj("blue", "circle", x=0.4),
            obj("blue", "circle", x=0.6),
            obj("red", "square", x=0.8),
        )
    )
    kinds = Counter()
    for seed in range(300):
        kind, facts = negative_facts(scene, random.Random(seed), ["swap_colours", "change_colour", "change_shape"])
        kinds[kind] += 1
        assert isinstance(facts, SceneFacts) and not facts_hold(facts, scene), facts
    # swap_colours has only a collision to offer (red square + blue circle -> blue square + red circle)
    assert set(kinds) == {"change_colour", "change_shape"}


def test_four_of_a_kind_only_lose_one() -> None:
    scene = Scene(tuple(obj("green", "triangle", x=x) for x in (0.2, 0.4, 0.6, 0.8)))
    for seed in range(20):
        _, facts = negative_facts(scene, random.Random(seed), ["change_count"])
        assert _without_sizes(facts) == SceneFacts((G("green", "triangle", 3),))


def test_negative_caption_words_the_one_possible_edit_in_every_frame() -> None:
    scene = Scene((obj("red", "circle", "large"),))
    captions = {negative_caption(scene, random.Random(seed), ["change_count"]) for seed in range(150)}
    frames = ["{}", "an image of {}", "a picture of {}", "a drawing of {}", "there are {}"]
    assert captions == {f.format(body) for f in frames for body in ("two red circles", "two large red circles")}


def test_negative_caption_is_false_for_its_scene() -> None:
    # "a large blue square right of a small red circle" and its wordings are true: a negative never is
    true_bodies = {"a small red circle", "a red circle", "a large blue square", "a blue square"}
    for seed in range(50):
        caption = negative_caption(LEFT_OF_SCENE, random.Random(seed), ["swap_colours"])
        assert "blue circle" in caption and "red square" in caption
        assert not any(body in caption for body in true_bodies), caption


def test_a_scene_that_is_no_scene_is_refused_whole() -> None:
    with pytest.raises(TypeError, match=re.escape("scene must be a Scene, got SceneFacts") + "$"):
        negative_facts(LEFT_OF, random.Random(0))


@pytest.mark.parametrize(
    "kinds, shown",
    [
        (["rotate"], "('rotate',)"),
        ([], "()"),
        (("flip_relation", "rotate"), "('flip_relation', 'rotate')"),
    ],
)
def test_unknown_or_no_kinds_are_refused_whole(kinds, shown) -> None:
    message = f"kinds must be a non-empty selection of {ALL_KINDS}, got {shown}"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        negative_facts(LEFT_OF_SCENE, random.Random(0), kinds)
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        negative_caption(LEFT_OF_SCENE, random.Random(0), kinds)


def test_kinds_that_cannot_apply_are_refused_whole() -> None:
    scene = Scene((obj("red", "circle"),))
    message = (
        "no edit of kinds ('flip_relation', 'swap_relation_order', 'swap_colours') makes a false caption for this scene"
    )
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        negative_facts(scene, random.Random(0), ["flip_relation", "swap_relation_order", "swap_colours"])


class _Draws(random.Random):
    """A Random whose `random()` always returns `value`."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_a_size_is_stated_for_draws_below_one_half_exactly() -> None:
    # [0, 0.5) is exactly half of random()'s values: 0.5 itself leaves the size unstated
    _, facts = negative_facts(LEFT_OF_SCENE, _Draws(0.5), ["flip_relation"])
    assert facts.groups == (G("red", "circle"), G("blue", "square"))
    _, facts = negative_facts(LEFT_OF_SCENE, _Draws(0.5 - 2**-53), ["flip_relation"])
    assert facts.groups == (RED_CIRCLE, BLUE_SQUARE)
