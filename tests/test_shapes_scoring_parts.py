"""Scoring detections against a scene, on its own, from hand-written detections: every field of
`SceneScore` for right, swapped, missing, extra, miscounted and misplaced objects, sizes paired
within a colour-shape group and counted only with `check_size`, the relation read between the
largest detections; `score_image` handing its arguments to the judge; `AttributeTally` sums and
pooled accuracies; `attribute_accuracy`'s matching by position (closest pairs first, within
0.15 inclusive) and its position tolerance (0.03 inclusive, per axis); the refusals whole."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from clipcond.shapes import scoring
from clipcond.shapes.judge import DetectedObject
from clipcond.shapes.render import render_scene
from clipcond.shapes.scene import Scene, ShapeObject
from clipcond.shapes.scoring import (
    ATTRIBUTES,
    AttributeTally,
    SceneScore,
    attribute_accuracy,
    score_detections,
    score_image,
)


def obj(colour: str, shape: str, size: str = "small", x: float = 0.5, y: float = 0.5) -> ShapeObject:
    return ShapeObject(shape, colour, size, x, y)


def det(
    colour: str, shape: str, size: str = "small", x: float = 0.5, y: float = 0.5, area: float = 0.03
) -> DetectedObject:
    # bbox, diameter and fit are never read by the scoring
    return DetectedObject(colour, shape, size, x, y, area, (0, 0, 1, 1), 0.2, 0.9)


RED = obj("red", "circle", "small", 0.25, 0.5)
BLUE = obj("blue", "square", "large", 0.75, 0.5)
# a small red circle left of a large blue square
SCENE = Scene((RED, BLUE), (0, "left of", 1))
RED_SEEN = det("red", "circle", "small", 0.25, 0.5)
BLUE_SEEN = det("blue", "square", "large", 0.75, 0.5, area=0.1)


def score(**fields) -> SceneScore:
    """The score of a two-object scene, all right unless `fields` say otherwise."""
    right = dict(
        expected=2,
        detected=2,
        objects_found=2,
        colour_correct=True,
        shape_correct=True,
        count_correct=True,
        size_correct=True,
        relation_correct=True,
        extra_objects=0,
        all_correct=True,
    )
    return SceneScore(**{**right, **fields})


def test_the_scene_read_back_is_right_in_every_field() -> None:
    assert score_detections([BLUE_SEEN, RED_SEEN], SCENE) == score()
    assert score_detections([BLUE_SEEN, RED_SEEN], SCENE, check_size=True) == score()


def test_swapped_colours_keep_colours_and_shapes_but_find_no_object() -> None:
    detected = [det("blue", "circle", "small", 0.25, 0.5), det("red", "square", "large", 0.75, 0.5)]
    assert score_detections(detected, SCENE) == score(
        objects_found=0,
        count_correct=False,
        size_correct=False,
        relation_correct=False,
        extra_objects=2,
        all_correct=False,
    )


def test_a_missing_object_fails_colour_shape_count_size_and_relation() -> None:
    assert score_detections([RED_SEEN], SCENE) == score(
        detected=1,
        objects_found=1,
        colour_correct=False,
        shape_correct=False,
        count_correct=False,
        size_correct=False,
        relation_correct=False,
        all_correct=False,
    )


def test_nothing_detected() -> None:
    assert score_detections([], Scene((RED,))) == SceneScore(
        expected=1,
        detected=0,
        objects_found=0,
        colour_correct=False,
        shape_correct=False,
        count_correct=False,
        size_correct=False,
        relation_correct=None,
        extra_objects=0,
        all_correct=False,
    )


def test_an_extra_object_of_another_kind_leaves_the_counts_right_but_not_all() -> None:
    detected = [RED_SEEN, BLUE_SEEN, det("green", "triangle", x=0.5, y=0.9)]
    assert score_detections(detected, SCENE) == score(detected=3, extra_objects=1, all_correct=False)


def test_one_too_many_of_a_group_is_a_wrong_count_and_an_extra_object() -> None:
    scene = Scene((obj("red", "circle", x=0.2), obj("red", "circle", x=0.5), obj("blue", "square", x=0.8)))
    detected = [det("red", "circle", x=x) for x in (0.2, 0.4, 0.6)] + [det("blue", "square", x=0.8)]
    assert score_detections(detected, scene) == SceneScore(
        expected=3,
        detected=4,
        objects_found=3,
        colour_correct=True,
        shape_correct=True,
        count_correct=False,
        size_correct=True,
        relation_correct=None,
        extra_objects=1,
        all_correct=False,
    )


def test_colour_and_shape_are_each_matched_one_to_one() -> None:
    # two red circles in the scene; one red square and one blue circle read: one red and one
    # circle short, each
    scene = Scene((obj("red", "circle", x=0.3), obj("red", "circle", x=0.7)))
    detected = [det("red", "circle", x=0.3), det("red", "circle", x=0.7)]
    assert score_detections(detected, scene).colour_correct
    detected = [det("red", "square", x=0.3), det("blue", "circle", x=0.7)]
    result = score_detections(detected, scene)
    assert (result.colour_correct, result.shape_correct, result.objects_found) == (False, False, 0)
    detected = [det("red", "square", x=0.3), det("red", "circle", x=0.7)]
    result = score_detections(detected, scene)
    assert (result.colour_correct, result.shape_correct, result.objects_found) == (True, False, 1)
    detected = [det("blue", "circle", x=0.3), det("red", "circle", x=0.7)]
    result = score_detections(detected, scene)
    assert (result.colour_correct, result.shape_correct, result.objects_found) == (False, True, 1)


def test_the_relation_reversed_in_the_image_is_wrong() -> None:
    detected = [det("red", "circle", "small", 0.75, 0.5), det("blue", "square", "large", 0.25, 0.5)]
    assert score_detections(detected, SCENE) == score(relation_correct=False, all_correct=False)


def test_the_relation_is_read_between_the_largest_detections_of_each_kind() -> None:
    small_wrong_side = det("red", "circle", "small", 0.9, 0.5, area=0.01)
    large_right_side = det("red", "circle", "small", 0.25, 0.5, area=0.05)
    for detected in ([small_wrong_side, large_right_side, BLUE_SEEN], [large_right_side, small_wrong_side, BLUE_SEEN]):
        result = score_detections(detected, SCENE)
        assert result.relation_correct is True and result.extra_objects == 1 and not result.all_correct
    large_wrong_side = det("red", "circle", "small", 0.9, 0.5, area=0.05)
    small_right_side = det("red", "circle", "small", 0.25, 0.5, area=0.01)
    assert score_detections([small_right_side, large_wrong_side, BLUE_SEEN], SCENE).relation_correct is False


def test_without_a_relation_it_is_none_and_does_not_count_against() -> None:
    detected = [det("blue", "square", "large", 0.25, 0.5), det("red", "circle", "small", 0.75, 0.5)]
    assert score_detections(detected, Scene((RED, BLUE))) == score(relation_correct=None)


def test_a_wrong_size_counts_only_when_sizes_are_checked() -> None:
    detected = [det("red", "circle", "large", 0.25, 0.5), BLUE_SEEN]
    assert score_detections(detected, SCENE) == score(size_correct=False)
    assert score_detections(detected, SCENE, check_size=True) == score(size_correct=False, all_correct=False)


def test_right_sizes_do_not_make_up_for_an_extra_object() -> None:
    detected = [RED_SEEN, BLUE_SEEN, det("green", "triangle", x=0.5, y=0.9)]
    expected = score(detected=3, extra_objects=1, all_correct=False)
    assert score_detections(detected, SCENE, check_size=True) == expected


def test_sizes_are_paired_within_a_group_in_any_order() -> None:
    scene = Scene((obj("red", "circle", "small", 0.2), obj("red", "circle", "large", 0.7)))
    crossed = [det("red", "circle", "large", 0.2), det("red", "circle", "small", 0.7)]
    assert score_detections(crossed, scene, check_size=True).size_correct
    both_small = [det("red", "circle", "small", 0.2), det("red", "circle", "small", 0.7)]
    result = score_detections(both_small, scene, check_size=True)
    assert (result.size_correct, result.all_correct, result.objects_found) == (False, False, 2)
    # a size read on an object of another kind does not count for the group
    elsewhere = [det("red", "circle", "small", 0.2), det("red", "square", "large", 0.7)]
    assert not score_detections(elsewhere, scene).size_correct


def test_score_detections_refuses_a_scene_that_is_no_scene_whole() -> None:
    with pytest.raises(TypeError, match=re.escape("scene must be a Scene, got tuple") + "$"):
        score_detections([], (RED, BLUE))


def test_score_image_judges_a_rendered_scene_as_right() -> None:
    scene = Scene(
        (obj("red", "circle", "large", 0.25, 0.5), obj("blue", "square", "small", 0.75, 0.5)), (0, "left of", 1)
    )
    assert score_image(render_scene(scene, 32), scene, check_size=True) == score()
    blank = score_image(np.full((32, 32, 3), 255, dtype=np.uint8), scene)
    assert blank == score(
        detected=0,
        objects_found=0,
        colour_correct=False,
        shape_correct=False,
        count_correct=False,
        size_correct=False,
        relation_correct=False,
        all_correct=False,
    )


def test_score_image_hands_the_image_and_min_fit_to_the_judge_and_checks_sizes_on_request(monkeypatch) -> None:
    calls = []

    def judge(image, min_fit):
        calls.append((image, min_fit))
        return [det("red", "circle", "large", 0.25, 0.5), BLUE_SEEN]

    monkeypatch.setattr(scoring, "judge_image", judge)
    image = Image.new("RGB", (16, 16))
    assert score_image(image, SCENE) == score(size_correct=False)
    assert score_image(image, SCENE, check_size=True, min_fit=0.25) == score(size_correct=False, all_correct=False)
    assert calls == [(image, 0.6), (image, 0.25)]


def test_an_empty_tally_counts_nothing_and_reads_as_all_right() -> None:
    tally = AttributeTally()
    assert tally.correct == tally.total == {name: 0 for name in ATTRIBUTES}
    assert tally.accuracy() == 1.0 and tally.accuracy("relation") == 1.0


def _tally(correct: list[int], total: list[int]) -> AttributeTally:
    return AttributeTally(correct=dict(zip(ATTRIBUTES, correct)), total=dict(zip(ATTRIBUTES, total)))


def test_tallies_add_per_attribute() -> None:
    first = _tally([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60])
    second = _tally([6, 5, 4, 3, 2, 1], [7, 8, 9, 10, 11, 12])
    assert first + second == _tally([7, 7, 7, 7, 7, 7], [17, 28, 39, 50, 61, 72])


def test_a_tally_adds_to_nothing_else() -> None:
    with pytest.raises(TypeError) as raised:
        _tally([0] * 6, [0] * 6) + 1
    assert str(raised.value) == "unsupported operand type(s) for +: 'AttributeTally' and 'int'"


def test_accuracy_per_attribute_and_pooled_over_all_counts() -> None:
    tally = _tally([1, 3, 0, 4, 1, 0], [2, 4, 4, 4, 1, 0])
    assert [tally.accuracy(name) for name in ATTRIBUTES] == [0.5, 0.75, 0.0, 1.0, 1.0, 1.0]
    assert tally.accuracy() == 9 / 15  # pooled counts, not the mean of the six fractions
    assert tally.accuracy(None) == 9 / 15


def test_accuracy_refuses_an_unknown_attribute_whole() -> None:
    message = "attribute must be one of ('colour', 'shape', 'size', 'position', 'count', 'relation') or None, got 'hue'"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        AttributeTally().accuracy("hue")


def counts(colour=0, shape=0, size=0, position=0, count=0, relation=0) -> dict[str, int]:
    return {"colour": colour, "shape": shape, "size": size, "position": position, "count": count, "relation": relation}


def test_every_attribute_read_back_is_counted_right() -> None:
    tally = attribute_accuracy([BLUE_SEEN, RED_SEEN], SCENE)
    assert tally == AttributeTally(correct=counts(2, 2, 2, 2, 1, 1), total=counts(2, 2, 2, 2, 1, 1))


def test_each_misread_attribute_counts_wrong_alone() -> None:
    detected = [det("green", "circle", "small", 0.25, 0.5), det("blue", "triangle", "small", 0.75, 0.5)]
    tally = attribute_accuracy(detected, SCENE)
    assert tally == AttributeTally(correct=counts(1, 1, 1, 2, 1, 1), total=counts(2, 2, 2, 2, 1, 1))


def test_an_undetected_object_has_every_attribute_wrong_and_the_relation_too() -> None:
    tally = attribute_accuracy([RED_SEEN], SCENE)
    assert tally == AttributeTally(correct=counts(1, 1, 1, 1, 0, 0), total=counts(2, 2, 2, 2, 1, 1))
    tally = attribute_accuracy([], Scene((RED,)))
    assert tally == AttributeTally(correct=counts(), total=counts(1, 1, 1, 1, 1, 0))


def test_an_extra_detection_only_spoils_the_count() -> None:
    detected = [RED_SEEN, BLUE_SEEN, det("green", "triangle", x=0.5, y=0.95)]
    assert attribute_accuracy(detected, SCENE) == AttributeTally(
        correct=counts(2, 2, 2, 2, 0, 1), total=counts(2, 2, 2, 2, 1, 1)
    )


def test_a_relation_false_between_the_matched_detections_is_wrong() -> None:
    # each detection matched to its object, but the red one only 0.05 left of the blue one
    scene = Scene((obj("red", "circle", x=0.4), obj("blue", "square", x=0.6)), (0, "left of", 1))
    detected = [det("red", "circle", x=0.45), det("blue", "square", x=0.5)]
    tally = attribute_accuracy(detected, scene)
    assert tally.correct["relation"] == 0 and tally.total["relation"] == 1
    assert tally.correct["colour"] == 2 and tally.correct["position"] == 0


def test_the_position_is_right_within_three_hundredths_on_each_axis() -> None:
    scene = Scene((obj("red", "circle", x=0.0, y=0.0),))
    for x, y, right in [
        (0.03, 0.03, 1),
        (0.03, 0.0, 1),
        (0.0, 0.03, 1),
        (np.nextafter(0.03, 1.0), 0.0, 0),
        (0.0, 0.031, 0),
    ]:
        tally = attribute_accuracy([det("red", "circle", x=x, y=y)], scene)
        assert tally.correct == counts(1, 1, 1, right, 1), (x, y)


def test_a_detection_matches_within_fifteen_hundredths_inclusive() -> None:
    scene = Scene((obj("red", "circle", x=0.0, y=0.0),))
    assert attribute_accuracy([det("red", "circle", x=0.15, y=0.0)], scene).correct["colour"] == 1
    assert attribute_accuracy([det("red", "circle", x=0.0, y=0.15)], scene).correct["colour"] == 1
    beyond = attribute_accuracy([det("red", "circle", x=float(np.nextafter(0.15, 1.0)), y=0.0)], scene)
    assert beyond.correct == counts(count=1)


def test_matching_takes_the_closest_pairs_first_one_to_one() -> None:
    # the green detection is closest to the blue square (0.04), so the red circle gets the red
    # one further away (0.1); in scene order the red circle would take the green one (0.06)
    scene = Scene((obj("red", "circle", x=0.2), obj("blue", "square", x=0.3)))
    detected = [det("red", "circle", x=0.1), det("green", "square", x=0.26)]
    tally = attribute_accuracy(detected, scene)
    assert tally.correct == counts(colour=1, shape=2, size=2, position=0, count=1)
    # one detection between two objects goes to the closer one only
    tally = attribute_accuracy([det("blue", "square", x=0.26)], scene)
    assert tally.correct == counts(colour=1, shape=1, size=1, position=0, count=0)


def test_attribute_accuracy_refuses_a_scene_that_is_no_scene_whole() -> None:
    with pytest.raises(TypeError, match=re.escape("scene must be a Scene, got list") + "$"):
        attribute_accuracy([], [RED])


def test_a_tallys_counts_are_whole_numbers_not_truth_values() -> None:
    # what a results file would record: 1, not true, for a right count and relation
    tally = attribute_accuracy([BLUE_SEEN, RED_SEEN], SCENE)
    assert json.dumps(tally.correct) == '{"colour": 2, "shape": 2, "size": 2, "position": 2, "count": 1, "relation": 1}'
