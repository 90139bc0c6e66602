"""Hard negative captions: minimally changed, always false (NegCLIP-style).

A negative is written from the scene's true claim (`scene_facts`) with one
small edit, then checked with `facts_hold`: an edit that happens to stay true
is discarded, so a negative is never a true caption of its scene.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from clipcond.shapes.captions import write_caption
from clipcond.shapes.facts import Group, SceneFacts, facts_hold, scene_facts
from clipcond.shapes.scene import Scene
from clipcond.shapes.vocab import COLOURS, INVERSE_RELATIONS, SHAPES

NEGATIVE_KINDS: tuple[str, ...] = (
    "swap_colours",  # two objects trade colours: "a blue circle and a red square"
    "flip_relation",  # left of <-> right of, above <-> below
    "swap_relation_order",  # "A left of B" -> "B left of A"
    "change_colour",  # one group gets another colour
    "change_shape",  # one group gets another shape
    "change_count",  # one group gets one more or one fewer object
)

_MAX_COUNT = 4


def _with_groups(facts: SceneFacts, groups: list[Group]) -> SceneFacts | None:
    """`facts` with new groups, or None when two groups would share a colour and shape."""
    pairs = [g.pair for g in groups]
    if len(set(pairs)) != len(pairs):
        return None
    return replace(facts, groups=tuple(groups))


def _swap_colours(facts: SceneFacts) -> list[SceneFacts]:
    out = []
    groups = list(facts.groups)
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            ga, gb = groups[a], groups[b]
            if ga.colour == gb.colour or ga.shape == gb.shape:
                continue  # the swap would state the same objects
            edited = groups.copy()
            edited[a], edited[b] = replace(ga, colour=gb.colour), replace(gb, colour=ga.colour)
            out.append(_with_groups(facts, edited))
    return out


def _flip_relation(facts: SceneFacts) -> list[SceneFacts]:
    if facts.relation is None:
        return []
    a, name, b = facts.relation
    return [replace(facts, relation=(a, INVERSE_RELATIONS[name], b))]


def _swap_relation_order(facts: SceneFacts) -> list[SceneFacts]:
    if facts.relation is None:
        return []
    a, name, b = facts.relation
    return [replace(facts, relation=(b, name, a))]


def _change_attribute(facts: SceneFacts, field: str, values: Sequence[str]) -> list[SceneFacts]:
    out = []
    for k, group in enumerate(facts.groups):
        for value in values:
            if value == getattr(group, field):
                continue
            edited = list(facts.groups)
            edited[k] = replace(group, **{field: value})
            out.append(_with_groups(facts, edited))
    return out


def _change_colour(facts: SceneFacts) -> list[SceneFacts]:
    return _change_attribute(facts, "colour", list(COLOURS))


def _change_shape(facts: SceneFacts) -> list[SceneFacts]:
    return _change_attribute(facts, "shape", SHAPES)


def _change_count(facts: SceneFacts) -> list[SceneFacts]:
    out = []
    related = set() if facts.relation is None else {facts.relation[0], facts.relation[2]}
    for k, group in enumerate(facts.groups):
        for count in (group.count - 1, group.count + 1):
            if not 1 <= count <= _MAX_COUNT or (k in related and count != 1):
                continue  # a relation names single objects
            edited = list(facts.groups)
            edited[k] = replace(group, count=count)
            out.append(_with_groups(facts, edited))
    return out


_EDITS: dict[str, Callable[[SceneFacts], list[SceneFacts]]] = {
    "swap_colours": _swap_colours,
    "flip_relation": _flip_relation,
    "swap_relation_order": _swap_relation_order,
    "change_colour": _change_colour,
    "change_shape": _change_shape,
    "change_count": _change_count,
}


def negative_facts(scene: Scene, rng: random.Random, kinds: Sequence[str] | None = None) -> tuple[str, SceneFacts]:
    """A false claim one edit away from the truth of `scene`.

    Args:
        scene: the scene the claim must be false for.
        rng: picks the kind of edit (uniformly among the kinds that apply to
            this scene) and the edit itself.
        kinds: allowed kinds from `NEGATIVE_KINDS`; all when None.

    Returns:
        `(kind, facts)`: the kind of edit made and the edited claim.

    Raises:
        ValueError: if none of `kinds` can make a false claim for this scene
            (e.g. only "flip_relation" for a scene without a relation).
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    kinds = NEGATIVE_KINDS if kinds is None else tuple(kinds)
    unknown = [k for k in kinds if k not in _EDITS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty selection of {NEGATIVE_KINDS}, got {kinds!r}")
    truth = scene_facts(scene, with_sizes=True)
    # Sizes are stated at random, as in true captions, and always correctly, so
    # a size word never gives a negative away nor makes it false by itself.
    truth = replace(truth, groups=tuple(g if rng.random() < 0.5 else replace(g, size=None) for g in truth.groups))
    options: dict[str, list[SceneFacts]] = {}
    for kind in kinds:
        edited = [f for f in _EDITS[kind](truth) if f is not None and not facts_hold(f, scene)]
        if edited:
            options[kind] = edited
    if not options:
        raise ValueError(f"no edit of kinds {kinds!r} makes a false caption for this scene")
    kind = rng.choice(sorted(options))
    return kind, rng.choice(options[kind])


def negative_caption(scene: Scene, rng: random.Random, kinds: Sequence[str] | None = None) -> str:
    """A caption that is false for `scene` but differs from a true one by one
    small edit: two objects' colours swapped, a relation flipped or its objects
    swapped, one group's colour, shape or count changed (see `NEGATIVE_KINDS`).

    Example: for "a red circle to the left of a blue square" it may return
    "a blue square to the left of a red circle".
    """
    _, facts = negative_facts(scene, rng, kinds)
    return write_caption(facts, rng)
