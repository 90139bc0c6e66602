"""The shapes world: synthetic scenes of coloured shapes with exact captions,
hard negative captions, and a judge that reads images back into objects.

Public API:
    COLOURS, SHAPES, SIZES, RELATIONS, BACKGROUND    the vocabulary
    ShapeObject, Scene, random_scene, single_object_scene, relation_holds
    HELDOUT_PAIRS, train_pairs, heldout_pairs, colour_shape_classes
    render_scene                                      Scene -> anti-aliased PIL image
    caption_scene, class_prompt, class_name, ZERO_SHOT_TEMPLATES
    SceneFacts, Group, scene_facts, facts_hold        what a caption claims, and its truth
    negative_caption, negative_facts, NEGATIVE_KINDS  minimally false captions
    ShapesStream, ShapesSample                        deterministic training data
    judge_image, DetectedObject                       image -> objects
    score_image, score_detections, SceneScore         image vs. the scene it should show
    attribute_accuracy, AttributeTally, ATTRIBUTES    validating the judge on rendered scenes
"""

from clipcond.shapes.captions import ZERO_SHOT_TEMPLATES, caption_scene, class_name, class_prompt
from clipcond.shapes.facts import Group, SceneFacts, facts_hold, scene_facts
from clipcond.shapes.judge import DetectedObject, judge_image
from clipcond.shapes.negatives import NEGATIVE_KINDS, negative_caption, negative_facts
from clipcond.shapes.render import render_scene, render_scene_array
from clipcond.shapes.scene import Scene, ShapeObject, random_scene, relation_holds, single_object_scene
from clipcond.shapes.scoring import (
    ATTRIBUTES,
    AttributeTally,
    SceneScore,
    attribute_accuracy,
    score_detections,
    score_image,
)
from clipcond.shapes.splits import HELDOUT_PAIRS, colour_shape_classes, heldout_pairs, train_pairs
from clipcond.shapes.stream import ShapesSample, ShapesStream
from clipcond.shapes.vocab import BACKGROUND, COLOURS, RELATIONS, SHAPES, SIZE_DIAMETERS, SIZES

__all__ = [
    "ATTRIBUTES",
    "AttributeTally",
    "BACKGROUND",
    "COLOURS",
    "DetectedObject",
    "Group",
    "HELDOUT_PAIRS",
    "NEGATIVE_KINDS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SIZE_DIAMETERS",
    "Scene",
    "SceneFacts",
    "SceneScore",
    "ShapeObject",
    "ShapesSample",
    "ShapesStream",
    "ZERO_SHOT_TEMPLATES",
    "attribute_accuracy",
    "caption_scene",
    "class_name",
    "class_prompt",
    "colour_shape_classes",
    "facts_hold",
    "heldout_pairs",
    "judge_image",
    "negative_caption",
    "negative_facts",
    "random_scene",
    "relation_holds",
    "render_scene",
    "render_scene_array",
    "scene_facts",
    "score_detections",
    "score_image",
    "single_object_scene",
    "train_pairs",
]
