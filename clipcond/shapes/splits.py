"""Which colour-shape combinations training may see.

Three of the 18 combinations are held out, one per shape and each with a
different colour, so every colour and every shape still appears in training
with other partners (each shape with five colours). A model that recognises or
draws a held-out combination correctly has composed words it only saw apart.

Why three and not six: with six held out (each colour missing one shape), a
tiny CLIP trained from scratch learns shape features tied to colour (a yellow
object on white differs from the background in the blue channel only) and
recognises the held-out combinations at about 50%, falling as training goes on;
with three, each shape is seen in enough colours to be read apart from colour.
"""

from __future__ import annotations

from clipcond.shapes.vocab import COLOURS, SHAPES

HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("green", "circle"),
        ("cyan", "triangle"),
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
