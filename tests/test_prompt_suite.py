"""The shapes prompt suite: its scenes are what its prompts say, and the judge scores
renders of them right and wrong images wrong."""

from __future__ import annotations

from collections import Counter

import pytest

from clipcond.shapes import RELATIONS, facts_hold, heldout_pairs, render_scene, scene_facts, train_pairs
from clipcond.shapes.prompt_suite import SuitePrompt, judge_suite, scene_from_spec, shapes_model_suite


def test_suite_is_deterministic_and_has_every_category():
    suite = shapes_model_suite()
    assert suite == shapes_model_suite()
    counts = Counter(entry.category for entry in suite)
    assert counts == {"single": 8 * 15, "relation": 96, "two_objects": 96, "heldout_single": 8 * 3}
    assert shapes_model_suite(seed=1) != suite
    singles = {entry.scene.objects[0].pair for entry in suite if entry.category == "single"}
    assert singles == set(train_pairs())
    held = {entry.scene.objects[0].pair for entry in suite if entry.category == "heldout_single"}
    assert held == set(heldout_pairs())
    # only seen combinations outside heldout_single
    for entry in suite:
        if entry.category != "heldout_single":
            assert all(o.pair in set(train_pairs()) for o in entry.scene.objects)
    assert {entry.scene.relation[1] for entry in suite if entry.category == "relation"} == set(RELATIONS)


def test_prompts_state_their_scenes():
    for entry in shapes_model_suite(pairs_per_category=24):
        words = entry.prompt
        for obj in entry.scene.objects:
            assert f"{obj.colour} {obj.shape}" in words
        if entry.scene.relation is not None:
            i, name, j = entry.scene.relation
            first, second = entry.scene.objects[i], entry.scene.objects[j]
            assert words.index(f"{first.colour} {first.shape}") < words.index(f"{second.colour} {second.shape}")
            assert name.split()[0] in words
        # the scene is the claim: its facts hold for itself
        assert facts_hold(scene_facts(entry.scene, with_sizes=False), entry.scene)


@pytest.mark.parametrize("relation", RELATIONS)
def test_scene_from_spec_makes_each_relation_true(relation):
    scene = scene_from_spec([("red", "circle"), ("blue", "square"), ("green", "triangle")], (1, relation, 0))
    assert scene.relation == (1, relation, 0)
    assert len(scene.objects) == 3


def test_judge_scores_renders_of_the_suite_correct():
    suite = shapes_model_suite(seeds_per_single=1, pairs_per_category=30)
    report = judge_suite([render_scene(entry.scene, 32) for entry in suite], suite)
    for name, result in report.categories.items():
        assert result.rates["objects"] == 1.0, name
        assert result.rates["exact"] == 1.0, name
    assert report.categories["relation"].rates["relation"] == 1.0
    assert "relation" not in report.categories["single"].rates


def test_judge_scores_wrong_images_wrong():
    suite = shapes_model_suite(seeds_per_single=1, pairs_per_category=20)
    relations = [entry for entry in suite if entry.category == "relation"]
    # the same two objects with the relation reversed: objects right, relation wrong
    flipped = []
    for entry in relations:
        i, name, j = entry.scene.relation
        swapped = scene_from_spec([o.pair for o in entry.scene.objects], (j, name, i))
        flipped.append(render_scene(swapped, 32))
    report = judge_suite(flipped, relations)
    assert report.categories["relation"].rates["objects"] == 1.0
    assert report.categories["relation"].rates["relation"] == 0.0
    assert report.categories["relation"].rates["relation_if_found"] == 0.0
    # colours swapped between the two objects: both bindings wrong, colours and shapes still right
    two = [entry for entry in suite if entry.category == "two_objects"]
    two = [
        e
        for e in two
        if e.scene.objects[0].colour != e.scene.objects[1].colour
        and e.scene.objects[0].shape != e.scene.objects[1].shape
    ]
    crossed = []
    for entry in two:
        a, b = entry.scene.objects
        crossed.append(render_scene(scene_from_spec([(b.colour, a.shape), (a.colour, b.shape)]), 32))
    report = judge_suite(crossed, two)
    rates = report.categories["two_objects"].rates
    assert rates["objects"] == 0.0 and rates["colour"] == 1.0 and rates["shape"] == 1.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="objects"):
        scene_from_spec([])
    with pytest.raises(ValueError, match="relation must be one of"):
        scene_from_spec([("red", "circle"), ("blue", "square")], (0, "near", 1))
    with pytest.raises(ValueError, match="relation indices"):
        scene_from_spec([("red", "circle"), ("blue", "square")], (0, "above", 0))
    with pytest.raises(ValueError, match="prompt"):
        SuitePrompt("single", " ", scene_from_spec([("red", "circle")]))
    with pytest.raises(TypeError, match="scene"):
        SuitePrompt("single", "a red circle", "red circle")
    suite = shapes_model_suite(seeds_per_single=1, pairs_per_category=1)
    with pytest.raises(ValueError, match="as many"):
        judge_suite([], suite)
    with pytest.raises(ValueError, match="seeds_per_single"):
        shapes_model_suite(seeds_per_single=0)
