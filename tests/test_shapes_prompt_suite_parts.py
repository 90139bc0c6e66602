"""The shapes prompt suite on its own, against values written out by hand: the canonical slots
(corners of a centred 2x2 grid) and the slots that make each relation true, `RELATION_WORDS`,
`SuitePrompt`'s checks, `scene_from_spec` on every relation, object count and index order (the
related pair first, the others filling the remaining slots in order), `shapes_model_suite`'s
categories, order, wording, repeats and seeded draws (checked against a reference draw written
here from the docstring), `SuiteReport`'s pooling per category (every rate, `relation` and
`relation_if_found` only where they apply), `judge_suite` pairing `images[k]` with `suite[k]`;
every refusal with its whole message."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re

import numpy as np
import pytest

from clipcond.shapes import prompt_suite
from clipcond.shapes.prompt_suite import (
    _RELATION_SLOTS,
    _SLOTS,
    RELATION_WORDS,
    CategoryResult,
    SuitePrompt,
    SuiteReport,
    _pair_words,
    _pool,
    judge_suite,
    scene_from_spec,
    shapes_model_suite,
)
from clipcond.shapes.render import render_scene
from clipcond.shapes.scene import Scene, ShapeObject
from clipcond.shapes.scoring import SceneScore

RELATIONS = ("left of", "right of", "above", "below")
# every colour-shape combination but the three held out (green circle, cyan triangle,
# purple square), sorted
TRAIN = [
    ("blue", "circle"),
    ("blue", "square"),
    ("blue", "triangle"),
    ("cyan", "circle"),
    ("cyan", "square"),
    ("green", "square"),
    ("green", "triangle"),
    ("purple", "circle"),
    ("purple", "triangle"),
    ("red", "circle"),
    ("red", "square"),
    ("red", "triangle"),
    ("yellow", "circle"),
    ("yellow", "square"),
    ("yellow", "triangle"),
]
HELDOUT = [("cyan", "triangle"), ("green", "circle"), ("purple", "square")]
WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
# the canonical centres, by slot number
TL, TR, BL, BR = (0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)


def small(colour: str, shape: str, at: tuple[float, float]) -> ShapeObject:
    return ShapeObject(shape, colour, "small", at[0], at[1])


def one(colour: str, shape: str) -> Scene:
    """A lone small object in the top-left slot."""
    return Scene((small(colour, shape, TL),))


def score(**fields) -> SceneScore:
    """A two-object score, all right and with no relation unless `fields` say otherwise."""
    right = dict(
        expected=2,
        detected=2,
        objects_found=2,
        colour_correct=True,
        shape_correct=True,
        count_correct=True,
        size_correct=True,
        relation_correct=None,
        extra_objects=0,
        all_correct=True,
    )
    return SceneScore(**{**right, **fields})


def refusal(message: str) -> str:
    return "^" + re.escape(message) + "$"


# ---- the layout tables and the wording


def test_slots_are_the_corners_of_a_centred_grid_and_relation_slots_make_each_relation_true() -> None:
    assert _SLOTS == (TL, TR, BL, BR)
    assert _RELATION_SLOTS == {"left of": (0, 1), "right of": (1, 0), "above": (0, 2), "below": (2, 0)}


def test_relation_words_are_one_fixed_wording_per_relation() -> None:
    assert RELATION_WORDS == WORDS
    assert tuple(RELATION_WORDS) == RELATIONS


def test_pair_words_are_the_plain_class_prompt() -> None:
    assert _pair_words(("red", "circle")) == "a red circle"
    assert _pair_words(("yellow", "triangle")) == "a yellow triangle"


# ---- SuitePrompt


def test_suite_prompt_keeps_its_fields_and_is_frozen() -> None:
    scene = one("red", "circle")
    entry = SuitePrompt("single", "a red circle", scene)
    assert (entry.category, entry.prompt, entry.scene) == ("single", "a red circle", scene)
    assert entry == SuitePrompt(category="single", prompt="a red circle", scene=one("red", "circle"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.prompt = "a blue square"  # type: ignore[misc]
    # one character each is enough
    assert SuitePrompt("x", "y", scene).category == "x"


@pytest.mark.parametrize(
    ("category", "prompt", "error", "message"),
    [
        ("", "a red circle", ValueError, "category must be a non-empty str, got ''"),
        (3, "a red circle", ValueError, "category must be a non-empty str, got 3"),
        (None, "a red circle", ValueError, "category must be a non-empty str, got None"),
        ("single", "", ValueError, "prompt must be a non-empty str, got ''"),
        ("single", " \t", ValueError, "prompt must be a non-empty str, got ' \\t'"),
        ("single", b"a red circle", ValueError, "prompt must be a non-empty str, got b'a red circle'"),
    ],
)
def test_suite_prompt_refuses_a_bad_category_or_prompt(category, prompt, error, message) -> None:
    with pytest.raises(error, match=refusal(message)):
        SuitePrompt(category, prompt, one("red", "circle"))


def test_suite_prompt_refuses_what_is_no_scene() -> None:
    with pytest.raises(TypeError, match=refusal("scene must be a Scene, got str")):
        SuitePrompt("single", "a red circle", "red circle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=refusal("scene must be a Scene, got NoneType")):
        SuitePrompt("single", "a red circle", None)  # type: ignore[arg-type]


# ---- scene_from_spec


def test_objects_without_a_relation_fill_the_slots_in_order() -> None:
    assert scene_from_spec([("red", "circle")]) == one("red", "circle")
    four = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "circle")]
    scene = scene_from_spec(four)
    assert scene == Scene(
        (
            small("red", "circle", TL),
            small("blue", "square", TR),
            small("green", "triangle", BL),
            small("red", "circle", BR),
        )
    )
    assert scene.relation is None


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [("left of", TL, TR), ("right of", TR, TL), ("above", TL, BL), ("below", BL, TL)],
)
def test_the_related_pair_takes_the_relation_slots(name, first, second) -> None:
    scene = scene_from_spec([("red", "circle"), ("blue", "square")], (0, name, 1))
    assert scene == Scene((small("red", "circle", first), small("blue", "square", second)), (0, name, 1))


def test_a_relation_from_a_later_object_and_the_others_take_the_rest_in_order() -> None:
    # (1, "left of", 0): object 1 takes slot 0, object 0 slot 1, object 2 the first free slot (2)
    pairs3 = [("red", "circle"), ("blue", "square"), ("green", "triangle")]
    assert scene_from_spec(pairs3, (1, "left of", 0)) == Scene(
        (small("red", "circle", TR), small("blue", "square", TL), small("green", "triangle", BL)),
        (1, "left of", 0),
    )
    # (2, "below", 0): object 2 takes slot 2, object 0 slot 0, then objects 1 and 3 take slots 1 and 3
    pairs4 = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle")]
    assert scene_from_spec(pairs4, (2, "below", 0)) == Scene(
        (
            small("red", "circle", TL),
            small("blue", "square", TR),
            small("green", "triangle", BL),
            small("yellow", "circle", BR),
        ),
        (2, "below", 0),
    )
    # (3, "right of", 1): object 3 takes slot 1, object 1 slot 0, then objects 0 and 2 take slots 2 and 3
    assert scene_from_spec(pairs4, (3, "right of", 1)) == Scene(
        (
            small("red", "circle", BL),
            small("blue", "square", TL),
            small("green", "triangle", BR),
            small("yellow", "circle", TR),
        ),
        (3, "right of", 1),
    )
    # (0, "above", 3): slots 0 and 2 taken, objects 1 and 2 take slots 1 and 3
    assert scene_from_spec(pairs4, (0, "above", 3)) == Scene(
        (
            small("red", "circle", TL),
            small("blue", "square", TR),
            small("green", "triangle", BR),
            small("yellow", "circle", BL),
        ),
        (0, "above", 3),
    )


@pytest.mark.parametrize("count", [0, 5])
def test_scene_from_spec_refuses_too_few_or_too_many_objects(count) -> None:
    message = f"objects must hold 1 to 4 (colour, shape) pairs, got {count}"
    with pytest.raises(ValueError, match=refusal(message)):
        scene_from_spec([("red", "circle")] * count)


def test_scene_from_spec_refuses_an_unknown_relation() -> None:
    message = "relation must be one of ('left of', 'right of', 'above', 'below'), got 'near'"
    with pytest.raises(ValueError, match=refusal(message)):
        scene_from_spec([("red", "circle"), ("blue", "square")], (0, "near", 1))


@pytest.mark.parametrize(
    "relation",
    [(0, "above", 0), (1, "above", 1), (-1, "above", 0), (0, "above", -1), (2, "above", 0), (0, "above", 2)],
)
def test_scene_from_spec_refuses_indices_that_are_not_two_different_objects(relation) -> None:
    message = f"relation indices must be two different objects of 2, got {relation!r}"
    with pytest.raises(ValueError, match=refusal(message)):
        scene_from_spec([("red", "circle"), ("blue", "square")], relation)


# ---- shapes_model_suite


def reference_draws(seed: int, n: int) -> tuple[list, list]:
    """The docstring's draws: ordered pairs of two different seen combinations and a relation,
    from `random.Random("clipcond.shapes_model_suite:<seed>")`, relations first."""
    rng = random.Random(f"clipcond.shapes_model_suite:{seed}")
    ordered = list(itertools.permutations(TRAIN, 2))
    relations = []
    for _ in range(n):
        a, b = rng.choice(ordered)
        relations.append((a, rng.choice(RELATIONS), b))
    two = [rng.choice(ordered) for _ in range(n)]
    return relations, two


def test_the_reference_draw_is_the_one_written_here() -> None:
    # pins the draw itself, so that the suite below is checked against fixed prompts too
    relations, two = reference_draws(1234, 2)
    assert relations == [
        (("yellow", "triangle"), "above", ("purple", "circle")),
        (("yellow", "circle"), "right of", ("blue", "square")),
    ]
    assert len(two) == 2 and all(a != b for a, b in two)


def test_the_suite_holds_each_category_in_order_with_its_wording_and_scenes() -> None:
    suite = shapes_model_suite(seed=1234, seeds_per_single=2, pairs_per_category=2)
    relations, two = reference_draws(1234, 2)
    expected = []
    for colour, shape in TRAIN:
        expected += [SuitePrompt("single", f"a {colour} {shape}", one(colour, shape))] * 2
    for (ca, sa), name, (cb, sb) in relations:
        first, second = {"left of": (TL, TR), "right of": (TR, TL), "above": (TL, BL), "below": (BL, TL)}[name]
        scene = Scene((small(ca, sa, first), small(cb, sb, second)), (0, name, 1))
        expected.append(SuitePrompt("relation", f"a {ca} {sa} {WORDS[name]} a {cb} {sb}", scene))
    for (ca, sa), (cb, sb) in two:
        scene = Scene((small(ca, sa, TL), small(cb, sb, TR)))
        expected.append(SuitePrompt("two_objects", f"a {ca} {sa} and a {cb} {sb}", scene))
    for colour, shape in HELDOUT:
        expected += [SuitePrompt("heldout_single", f"a {colour} {shape}", one(colour, shape))] * 2
    assert suite == expected
    assert suite[30].prompt == "a yellow triangle above a purple circle"
    assert suite[31].prompt == "a yellow circle to the right of a blue square"


def test_the_draws_follow_the_seed() -> None:
    relations, two = reference_draws(7, 20)
    suite = shapes_model_suite(seed=7, seeds_per_single=1, pairs_per_category=20)
    drawn = [entry for entry in suite if entry.category == "relation"]
    assert [(e.scene.objects[0].pair, e.scene.relation[1], e.scene.objects[1].pair) for e in drawn] == relations
    drawn = [entry for entry in suite if entry.category == "two_objects"]
    assert [(e.scene.objects[0].pair, e.scene.objects[1].pair) for e in drawn] == two


def test_the_default_suite_is_seed_1234_eight_seeds_and_96_pairs() -> None:
    suite = shapes_model_suite()
    assert len(suite) == 15 * 8 + 96 + 96 + 3 * 8
    relations, two = reference_draws(1234, 96)
    assert suite[: 8 * 15 : 8] == [SuitePrompt("single", f"a {c} {s}", one(c, s)) for c, s in TRAIN]
    drawn = suite[120:216]
    assert [(e.scene.objects[0].pair, e.scene.relation[1], e.scene.objects[1].pair) for e in drawn] == relations
    drawn = suite[216:312]
    assert [(e.category, e.scene.objects[0].pair, e.scene.objects[1].pair) for e in drawn] == [
        ("two_objects", a, b) for a, b in two
    ]
    assert [e.scene.objects[0].pair for e in suite[312:]] == [p for p in HELDOUT for _ in range(8)]


def test_the_smallest_suite_has_one_of_each() -> None:
    suite = shapes_model_suite(seed=3, seeds_per_single=1, pairs_per_category=1)
    assert [e.category for e in suite] == ["single"] * 15 + ["relation", "two_objects"] + ["heldout_single"] * 3


@pytest.mark.parametrize(("seeds", "pairs"), [(0, 96), (8, 0), (-1, -2)])
def test_the_suite_refuses_counts_below_one(seeds, pairs) -> None:
    message = f"seeds_per_single and pairs_per_category must be >= 1, got {seeds}, {pairs}"
    with pytest.raises(ValueError, match=refusal(message)):
        shapes_model_suite(seeds_per_single=seeds, pairs_per_category=pairs)


# ---- pooling and SuiteReport


def test_pooling_without_a_relation_gives_the_five_rates() -> None:
    scores = [
        score(),
        score(objects_found=1, colour_correct=False, all_correct=False),
        score(objects_found=1, shape_correct=False, count_correct=False, all_correct=False),
        score(objects_found=0, colour_correct=False, shape_correct=False, count_correct=False, all_correct=False),
    ]
    result = _pool(scores)
    assert result == CategoryResult(
        images=4, rates={"objects": 0.25, "colour": 0.5, "shape": 0.5, "count": 0.5, "exact": 0.25}
    )
    assert all(type(value) is float for value in result.rates.values())


def test_pooling_with_a_relation_adds_the_relation_and_its_rate_among_found_objects() -> None:
    scores = [
        score(relation_correct=True),
        score(relation_correct=False, all_correct=False),
        score(objects_found=1, relation_correct=False, count_correct=False, all_correct=False),
        score(objects_found=1, relation_correct=False, all_correct=False),
        # a prompt without a relation pooled in the same category counts for neither
        score(objects_found=1, relation_correct=None, all_correct=False),
    ]
    assert _pool(scores) == CategoryResult(
        images=5,
        rates={
            "objects": 0.4,
            "colour": 1.0,
            "shape": 1.0,
            "count": 0.8,
            "exact": 0.2,
            "relation": 0.25,
            "relation_if_found": 0.5,
        },
    )


def test_pooling_leaves_out_relation_if_found_when_no_image_found_both_objects() -> None:
    scores = [
        score(objects_found=1, relation_correct=False, all_correct=False),
        score(objects_found=0, relation_correct=False, all_correct=False),
        score(relation_correct=None),
    ]
    assert _pool(scores) == CategoryResult(
        images=3,
        rates={"objects": 1 / 3, "colour": 1.0, "shape": 1.0, "count": 1.0, "exact": 1 / 3, "relation": 0.0},
    )


def test_the_report_pools_each_category_in_order_of_first_appearance() -> None:
    red, blue = one("red", "circle"), one("blue", "square")
    prompts = (
        SuitePrompt("single", "a red circle", red),
        SuitePrompt("heldout_single", "a green circle", red),
        SuitePrompt("single", "a blue square", blue),
    )
    wrong = score(expected=1, detected=1, objects_found=0, shape_correct=False, all_correct=False)
    right = score(expected=1, detected=1, objects_found=1)
    report = SuiteReport(prompts, (right, wrong, wrong))
    assert report.prompts == prompts and report.scores == (right, wrong, wrong)
    assert list(report.categories) == ["single", "heldout_single"]
    assert report.categories == {
        "single": CategoryResult(
            images=2, rates={"objects": 0.5, "colour": 1.0, "shape": 0.5, "count": 1.0, "exact": 0.5}
        ),
        "heldout_single": CategoryResult(
            images=1, rates={"objects": 0.0, "colour": 1.0, "shape": 0.0, "count": 1.0, "exact": 0.0}
        ),
    }
    assert SuiteReport((), ()).categories == {}
    with pytest.raises(TypeError):
        SuiteReport(prompts, (right, wrong, wrong), categories={})  # type: ignore[call-arg]


def test_the_report_refuses_prompts_and_scores_of_different_lengths() -> None:
    prompts = (SuitePrompt("single", "a red circle", one("red", "circle")),) * 2
    with pytest.raises(ValueError, match=refusal("prompts (2) and scores (1) must be as many")):
        SuiteReport(prompts, (score(),))
    with pytest.raises(ValueError, match=refusal("prompts (1) and scores (3) must be as many")):
        SuiteReport(prompts[:1], (score(),) * 3)


# ---- judge_suite


def test_judge_suite_scores_each_image_against_its_own_scene(monkeypatch) -> None:
    calls = []
    marks = [score(detected=k) for k in range(3)]

    def fake_score_image(image, scene):
        calls.append((image, scene))
        return marks[len(calls) - 1]

    monkeypatch.setattr(prompt_suite, "score_image", fake_score_image)
    suite = [
        SuitePrompt("single", "a red circle", one("red", "circle")),
        SuitePrompt("two_objects", "two red circles", scene_from_spec([("red", "circle")] * 2)),
        SuitePrompt("single", "a blue square", one("blue", "square")),
    ]
    images = [np.full((4, 4, 3), k, dtype=np.uint8) for k in range(3)]
    report = judge_suite(images, suite)
    assert len(calls) == 3
    assert all(seen is given for (seen, _), given in zip(calls, images))
    assert [scene for _, scene in calls] == [entry.scene for entry in suite]
    assert report.prompts == tuple(suite)
    assert report.scores == tuple(marks)
    assert list(report.categories) == ["single", "two_objects"]
    assert report.categories["single"].images == 2


def test_judge_suite_reads_renders_with_the_judge() -> None:
    left = scene_from_spec([("red", "circle"), ("blue", "square")], (0, "left of", 1))
    right = scene_from_spec([("red", "circle"), ("blue", "square")], (0, "right of", 1))
    suite = [SuitePrompt("relation", "a red circle to the left of a blue square", left)] * 2
    # the first image is the scene, the second has the objects swapped round
    report = judge_suite([render_scene(left, 32), render_scene(right, 32)], suite)
    assert [s.relation_correct for s in report.scores] == [True, False]
    assert report.categories["relation"].rates["relation"] == 0.5
    assert report.categories["relation"].rates["objects"] == 1.0


def test_judge_suite_refuses_images_and_prompts_of_different_lengths() -> None:
    suite = [SuitePrompt("single", "a red circle", one("red", "circle"))]
    with pytest.raises(ValueError, match=refusal("images (0) and suite (1) must be as many")):
        judge_suite([], suite)
    with pytest.raises(ValueError, match=refusal("images (2) and suite (1) must be as many")):
        judge_suite([np.zeros((8, 8, 3), np.uint8)] * 2, suite)


def test_the_public_names() -> None:
    assert prompt_suite.__all__ == [
        "CategoryResult",
        "RELATION_WORDS",
        "SuitePrompt",
        "SuiteReport",
        "judge_suite",
        "scene_from_spec",
        "shapes_model_suite",
    ]
