"""What a caption claims about a scene, and whether the claim is true.

A caption of the shapes world states a list of groups ("two red circles",
"a small blue square") and at most one relation between two single objects.
`SceneFacts` is that claim without the wording; captions and hard negatives
are both written from it, and `facts_hold` decides whether it is true for a
scene. Captions claim completeness: the groups must list every object.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipcond.shapes.scene import Scene, relation_holds
from clipcond.shapes.vocab import COLOURS, RELATIONS, SHAPES, SIZES


@dataclass(frozen=True)
class Group:
    """`count` objects of one colour and shape; `size` is stated only when not None."""

    colour: str
    shape: str
    count: int
    size: str | None = None

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {self.colour!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count must be a positive int, got {self.count!r}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES} or None, got {self.size!r}")

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class SceneFacts:
    """A claim about a scene.

    Attributes:
        groups: every stated group, distinct `(colour, shape)` each.
        relation: `(a, relation, b)`: the single object of `groups[a]` is
            `<relation>` the single object of `groups[b]`; or None.
    """

    groups: tuple[Group, ...]
    relation: tuple[int, str, int] | None = None

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("groups must state at least one group")
        pairs = [g.pair for g in self.groups]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"groups must have distinct (colour, shape) pairs, got {pairs}")
        if self.relation is not None:
            a, name, b = self.relation
            if not (0 <= a < len(self.groups) and 0 <= b < len(self.groups) and a != b):
                raise ValueError(f"relation indices must be two different groups, got {self.relation!r}")
            if name not in RELATIONS:
                raise ValueError(f"relation must be one of {RELATIONS}, got {name!r}")
            if self.groups[a].count != 1 or self.groups[b].count != 1:
                raise ValueError("relation must join two groups of a single object each")


def scene_facts(scene: Scene, with_sizes: bool = True) -> SceneFacts:
    """Everything a caption may state about `scene`.

    Groups follow the order of first appearance in `scene.objects`. A group's
    size is stated when `with_sizes` is set and all its objects share a size.
    """
    counts = scene.pair_counts()
    index = {pair: k for k, pair in enumerate(counts)}
    groups = []
    for pair, count in counts.items():
        sizes = {o.size for o in scene.objects if o.pair == pair}
        size = sizes.pop() if with_sizes and len(sizes) == 1 else None
        groups.append(Group(colour=pair[0], shape=pair[1], count=count, size=size))
    relation = None
    if scene.relation is not None:
        i, name, j = scene.relation
        relation = (index[scene.objects[i].pair], name, index[scene.objects[j].pair])
    return SceneFacts(groups=tuple(groups), relation=relation)


def facts_hold(facts: SceneFacts, scene: Scene) -> bool:
    """Whether the claim `facts` is true for `scene`.

    True when the groups list exactly the scene's objects by colour, shape and
    count, every stated size matches every object of its group, and a stated
    relation holds for the two objects' centres (`relation_holds`).
    """
    counts = scene.pair_counts()
    if {g.pair: g.count for g in facts.groups} != counts:
        return False
    for g in facts.groups:
        if g.size is not None and any(o.size != g.size for o in scene.objects if o.pair == g.pair):
            return False
    if facts.relation is not None:
        a, name, b = facts.relation
        first = next(o for o in scene.objects if o.pair == facts.groups[a].pair)
        second = next(o for o in scene.objects if o.pair == facts.groups[b].pair)
        if not relation_holds((first.x, first.y), (second.x, second.y), name):
            return False
    return True
