"""Which colour-shape combinations training may see.

Six of the 18 combinations are held out: each colour is held out with exactly
one shape and each shape with exactly two colours, so every colour and every
shape still appears in training with other partners. A model that draws a
held-out combination correctly has composed words it only saw apart.
"""

from __future__ import annotations

from clipcond.shapes.vocab import COLOURS, SHAPES

HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "triangle"),
        ("yellow", "square"),
        ("green", "circle"),
        ("cyan", "triangle"),
        ("blue", "circle"),
        ("purple", "square"),
    }
)


def colour_shape_classes() -> list[tuple[str, str]]:
    """All `(colour, shape)` combinations, colours in `COLOURS` order, then shapes in `SHAPES` order."""
    return [(colour, shape) for colour in COLOURS for shape in SHAPES]


def train_pairs() -> list[tuple[str, str]]:
    """The combinations training may see, sorted."""
    return sorted(pair for pair in colour_shape_classes() if pair not in HELDOUT_PAIRS)


def heldout_pairs() -> list[tuple[str, str]]:
    """The combinations training never sees, sorted."""
    return sorted(HELDOUT_PAIRS)
