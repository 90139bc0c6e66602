"""Captions: varied wordings of exactly what a scene holds.

A caption names every object by colour and shape, counts identical objects
("two green triangles"), states the scene's relation when it has one, and may
state sizes (always correctly). The wording varies with the `rng`; the claim
does not.
"""

from __future__ import annotations

import random
from dataclasses import replace

from clipcond.shapes.facts import Group, SceneFacts, scene_facts
from clipcond.shapes.scene import Scene
from clipcond.shapes.vocab import COLOURS, INVERSE_RELATIONS, SHAPES, SIZES

# Fill "{}" with a class name such as "red circle" (see `class_name`).
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a {}.",
    "a photo of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a {} on a white background.",
)

_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}

_RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above",),
    "below": ("below", "under", "beneath"),
}

# Wrappers around the whole description; "{be}" becomes "is" or "are".
_FRAMES: tuple[str, ...] = (
    "{}",
    "{}",
    "an image of {}",
    "a picture of {}",
    "a drawing of {}",
    "there {be} {}",
)

_SIZE_PROBABILITY = 0.5


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def class_name(colour: str, shape: str) -> str:
    """The bare class name, e.g. "red circle"; fills `ZERO_SHOT_TEMPLATES`."""
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {colour!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    return f"{colour} {shape}"


def class_prompt(colour: str, shape: str) -> str:
    """The plain prompt for one object, e.g. "a red circle"."""
    name = class_name(colour, shape)
    return f"{_article(name)} {name}"


def group_phrase(group: Group) -> str:
    """Words for one group: "a red circle", "two small blue squares"."""
    words = ([group.size] if group.size else []) + [group.colour, group.shape + ("s" if group.count > 1 else "")]
    head = " ".join(words)
    if group.count == 1:
        return f"{_article(head)} {head}"
    if group.count not in _COUNT_WORDS:
        raise ValueError(f"count must be 1 to {max(_COUNT_WORDS)}, got {group.count}")
    return f"{_COUNT_WORDS[group.count]} {head}"


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def write_caption(facts: SceneFacts, rng: random.Random) -> str:
    """Word a claim as a caption; the wording is drawn from `rng`, the content is `facts`."""
    order = list(range(len(facts.groups)))
    rng.shuffle(order)
    if facts.relation is None:
        body = _join([group_phrase(facts.groups[k]) for k in order])
        first_count = facts.groups[order[0]].count
    else:
        a, name, b = facts.relation
        if rng.random() < 0.5:  # "B right of A" says the same as "A left of B"
            a, name, b = b, INVERSE_RELATIONS[name], a
        body = f"{group_phrase(facts.groups[a])} {rng.choice(_RELATION_PHRASES[name])} {group_phrase(facts.groups[b])}"
        rest = [group_phrase(facts.groups[k]) for k in order if k not in (a, b)]
        if rest:
            body = f"{body}, and {_join(rest)}"
        first_count = 1
    frame = rng.choice(_FRAMES)
    return frame.replace("{be}", "is" if first_count == 1 else "are").format(body)


def caption_scene(scene: Scene, rng: random.Random) -> str:
    """A true caption of `scene`: every object by colour and shape, counts, the
    relation if set, and (at random, per group) sizes.

    Example: "there is a large yellow circle above a small purple square".
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    facts = scene_facts(scene, with_sizes=True)
    groups = tuple(g if rng.random() < _SIZE_PROBABILITY else replace(g, size=None) for g in facts.groups)
    return write_caption(replace(facts, groups=groups), rng)


def caption_vocabulary(max_objects: int = max(_COUNT_WORDS)) -> frozenset[str]:
    """Every word a caption of `caption_scene` can contain (lower case, punctuation apart) for
    scenes of at most `max_objects` objects: what a model trained on that stream has read."""
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
        raise ValueError(f"`max_objects` must be an int >= 1, got {max_objects!r}")
    counts = [word for count, word in _COUNT_WORDS.items() if count <= max_objects]
    words = {"a", "an", "and", "is", "are", *counts, *COLOURS, *SIZES}
    words.update(shape + plural for shape in SHAPES for plural in ("", "s"))
    for phrases in (_FRAMES, *_RELATION_PHRASES.values()):
        for phrase in phrases:
            words.update(phrase.replace("{be}", "").replace("{}", "").split())
    return frozenset(words)
