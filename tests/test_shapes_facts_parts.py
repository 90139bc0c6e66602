"""What a caption claims about a scene, on its own: a group's and a claim's refusals whole,
the facts read from scenes (groups in order of first appearance, sizes stated only when a
group shares one), and whether a claim holds, each way it can fail."""

from __future__ import annotations

import pytest

from clipcond.shapes.facts import Group, SceneFacts, facts_hold, scene_facts
from clipcond.shapes.scene import Scene, ShapeObject


def obj(colour, shape, size="small", x=0.5, y=0.5) -> ShapeObject:
    return ShapeObject(shape, colour, size, x, y)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ("pink", "circle", 1),
            "colour must be one of ('red', 'yellow', 'green', 'cyan', 'blue', 'purple'), got 'pink'",
        ),
        (("red", "star", 1), "shape must be one of ('circle', 'square', 'triangle'), got 'star'"),
        (("red", "circle", 0), "count must be a positive int, got 0"),
        (("red", "circle", True), "count must be a positive int, got True"),
        (("red", "circle", 2.0), "count must be a positive int, got 2.0"),
        (("red", "circle", 1, "huge"), "size must be one of ('small', 'large') or None, got 'huge'"),
        (
            ("pink", "star", 0, "huge"),
            "colour must be one of ('red', 'yellow', 'green', 'cyan', 'blue', 'purple'), got 'pink'",
        ),
        (("red", "star", 0), "shape must be one of ('circle', 'square', 'triangle'), got 'star'"),
        (("red", "circle", 0, "huge"), "count must be a positive int, got 0"),
    ],
)
def test_a_groups_refusals_whole_the_first_named(arguments, message) -> None:
    with pytest.raises(ValueError) as raised:
        Group(*arguments)
    assert str(raised.value) == message


def test_a_groups_pair_and_default_size() -> None:
    group = Group("blue", "square", 2)
    assert group.pair == ("blue", "square") and group.size is None


RED, BLUE, GREEN = Group("red", "circle", 1), Group("blue", "square", 1), Group("green", "triangle", 2)


@pytest.mark.parametrize(
    "groups, relation, message",
    [
        ((), None, "groups must state at least one group"),
        (
            (RED, Group("red", "circle", 2)),
            None,
            "groups must have distinct (colour, shape) pairs, got [('red', 'circle'), ('red', 'circle')]",
        ),
        ((RED, BLUE), (0, "left of", 0), "relation indices must be two different groups, got (0, 'left of', 0)"),
        ((RED, BLUE), (0, "left of", 2), "relation indices must be two different groups, got (0, 'left of', 2)"),
        ((RED, BLUE), (-1, "left of", 1), "relation indices must be two different groups, got (-1, 'left of', 1)"),
        ((RED, BLUE), (2, "left of", 1), "relation indices must be two different groups, got (2, 'left of', 1)"),
        ((RED, BLUE), (0, "left of", -1), "relation indices must be two different groups, got (0, 'left of', -1)"),
        ((RED, BLUE), (0, "near", 1), "relation must be one of ('left of', 'right of', 'above', 'below'), got 'near'"),
        ((RED, GREEN), (0, "above", 1), "relation must join two groups of a single object each"),
        ((GREEN, RED), (0, "above", 1), "relation must join two groups of a single object each"),
    ],
)
def test_a_claims_refusals_whole(groups, relation, message) -> None:
    with pytest.raises(ValueError) as raised:
        SceneFacts(groups, relation)
    assert str(raised.value) == message


def test_the_facts_of_a_scene() -> None:
    scene = Scene(
        (
            obj("red", "circle", "large", 0.2, 0.5),
            obj("green", "triangle", "small", 0.5, 0.2),
            obj("blue", "square", "small", 0.8, 0.5),
            obj("green", "triangle", "large", 0.5, 0.8),
        ),
        relation=(2, "right of", 0),
    )
    facts = scene_facts(scene)
    assert facts.groups == (
        Group("red", "circle", 1, "large"),
        Group("green", "triangle", 2, None),
        Group("blue", "square", 1, "small"),
    )
    assert facts.relation == (2, "right of", 0)
    plain = scene_facts(scene, with_sizes=False)
    assert [group.size for group in plain.groups] == [None, None, None] and plain.relation == (2, "right of", 0)
    assert scene_facts(Scene((obj("cyan", "circle"),))) == SceneFacts((Group("cyan", "circle", 1, "small"),))
    assert facts_hold(facts, scene) and facts_hold(plain, scene)


def test_each_way_a_claim_fails() -> None:
    scene = Scene((obj("red", "circle", "large", 0.2, 0.5), obj("blue", "square", "small", 0.8, 0.5)))
    right = SceneFacts((Group("red", "circle", 1, "large"), Group("blue", "square", 1)), (0, "left of", 1))
    assert facts_hold(right, scene)
    assert not facts_hold(SceneFacts((Group("red", "circle", 1),)), scene)  # an object left out
    assert not facts_hold(SceneFacts((Group("red", "circle", 2), Group("blue", "square", 1))), scene)  # a count
    assert not facts_hold(SceneFacts((Group("red", "circle", 1, "small"), Group("blue", "square", 1))), scene)  # a size
    assert not facts_hold(SceneFacts((Group("red", "circle", 1), Group("blue", "square", 1, "large"))), scene)
    assert not facts_hold(
        SceneFacts((Group("red", "circle", 1), Group("blue", "square", 1)), (0, "right of", 1)), scene
    )
    assert facts_hold(SceneFacts((Group("blue", "square", 1), Group("red", "circle", 1)), (0, "right of", 1)), scene)
    mixed = Scene((obj("green", "triangle", "small", 0.2, 0.2), obj("green", "triangle", "large", 0.8, 0.8)))
    assert facts_hold(SceneFacts((Group("green", "triangle", 2),)), mixed)
    assert not facts_hold(SceneFacts((Group("green", "triangle", 2, "small"),)), mixed)  # every object of the group
    assert not facts_hold(SceneFacts((Group("green", "triangle", 2, "large"),)), mixed)
