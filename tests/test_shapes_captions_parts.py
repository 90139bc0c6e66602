"""Caption wording on its own: the article, the refusals whole, the vocabulary for a number of
objects, and over many draws of a seeded generator the variations a caption may take (sizes
stated or not, a relation said either way round) with the verb of "there is / are" agreeing."""

from __future__ import annotations

import random

import pytest

from clipcond.shapes.captions import (
    _article,
    caption_scene,
    caption_vocabulary,
    class_name,
    group_phrase,
    write_caption,
)
from clipcond.shapes.facts import Group, SceneFacts
from clipcond.shapes.scene import Scene, ShapeObject


def test_the_article_follows_the_first_letter() -> None:
    assert _article("xylophone") == "a" and _article("Xenon") == "a"
    assert [_article(word) for word in ("orange", "apple", "ice", "umber", "egg", "red", "yellow", "Orange")] == [
        "an",
        "an",
        "an",
        "an",
        "an",
        "a",
        "a",
        "a",
    ]


def test_refusals_whole() -> None:
    for call, error, message in [
        (
            lambda: class_name("pink", "circle"),
            ValueError,
            "colour must be one of ('red', 'yellow', 'green', 'cyan', 'blue', 'purple'), got 'pink'",
        ),
        (
            lambda: class_name("red", "star"),
            ValueError,
            "shape must be one of ('circle', 'square', 'triangle'), got 'star'",
        ),
        (lambda: group_phrase(Group("red", "circle", 5)), ValueError, "count must be 1 to 4, got 5"),
        (lambda: caption_scene("a scene", random.Random(0)), TypeError, "scene must be a Scene, got str"),
        (lambda: caption_vocabulary(0), ValueError, "`max_objects` must be an int >= 1, got 0"),
        (lambda: caption_vocabulary(True), ValueError, "`max_objects` must be an int >= 1, got True"),
        (lambda: caption_vocabulary(2.0), ValueError, "`max_objects` must be an int >= 1, got 2.0"),
    ]:
        with pytest.raises(error) as raised:
            call()
        assert str(raised.value) == message


def test_the_vocabulary_of_one_object_has_no_count_words() -> None:
    one, two, four = caption_vocabulary(1), caption_vocabulary(2), caption_vocabulary()
    assert not {"two", "three", "four"} & one and {"a", "an", "and", "is", "are", "circles", "beneath", "there"} <= one
    assert two - one == {"two"} and four - two == {"three", "four"}


# a red circle left of a blue square, and two small green triangles
OBJECTS = [("circle", "red", "large", 0.2, 0.5), ("square", "blue", "small", 0.8, 0.5)]
OBJECTS += [("triangle", "green", "small", 0.5, y) for y in (0.15, 0.85)]
SCENE = Scene(tuple(ShapeObject(*fields) for fields in OBJECTS), relation=(0, "left of", 1))


def captions(scene: Scene, draws: int = 400) -> list[str]:
    rng = random.Random(0)
    return [caption_scene(scene, rng) for _ in range(draws)]


def test_sizes_are_stated_for_some_groups_and_not_for_others() -> None:
    drawn = captions(SCENE)
    assert any("large red circle" in caption for caption in drawn)
    assert any("large" not in caption and "red circle" in caption for caption in drawn)
    assert any("two small green triangles" in caption for caption in drawn)
    assert any("two green triangles" in caption for caption in drawn)


def test_a_relation_is_said_either_way_round() -> None:
    drawn = captions(SCENE)
    left = [caption for caption in drawn if "left of" in caption]
    right = [caption for caption in drawn if "right of" in caption]
    assert left and right and len(left) + len(right) == len(drawn)
    assert all(caption.index("red circle") < caption.index("blue square") for caption in left)
    assert all(caption.index("blue square") < caption.index("red circle") for caption in right)


def test_there_is_before_one_object_and_there_are_before_several() -> None:
    without_relation = Scene(SCENE.objects)
    for scene in (SCENE, without_relation):
        framed = [caption for caption in captions(scene, 600) if caption.startswith("there ")]
        assert framed
        for caption in framed:
            verb, following = caption.split()[1:3]
            assert verb == ("are" if following == "two" else "is"), caption
    several_first = [caption for caption in captions(without_relation, 600) if caption.startswith("there are two")]
    assert several_first and any(caption.startswith("there is ") for caption in captions(without_relation, 600))


def test_write_caption_states_exactly_the_facts() -> None:
    facts = SceneFacts((Group("cyan", "square", 3, "large"),))
    assert {write_caption(facts, random.Random(seed)).split("three large cyan squares")[1] for seed in range(30)} == {
        ""
    }
