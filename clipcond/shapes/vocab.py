"""The words of the shapes world: colours, shapes, sizes and spatial relations.

Everything here is an immutable constant; the rest of `clipcond.shapes` reads
these names and never keeps a vocabulary of its own.
"""

from __future__ import annotations

# Six saturated colours whose hues sit about 60 degrees apart (0, 56, 122, 178,
# 234 and 290 degrees). Hue survives mixing with a white (achromatic)
# background, so an anti-aliased edge pixel keeps the hue of its object and
# the judge can tell every colour apart by hue alone, even under pixel noise.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (219, 39, 39),
    "yellow": (224, 211, 22),
    "green": (29, 184, 35),
    "cyan": (24, 199, 193),
    "blue": (40, 59, 224),
    "purple": (181, 42, 209),
}

# Every shape is drawn inside a square box of side `diameter`: a disc, the
# filled box itself, and an upright isosceles triangle (apex at the top middle,
# base along the bottom edge). Their box fill ratios (pi/4, 1, 1/2) and their
# moments differ enough to be told apart at 32 px.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

SIZES: tuple[str, ...] = ("small", "large")

# Side of an object's box as a fraction of the image side.
SIZE_DIAMETERS: dict[str, float] = {"small": 0.2, "large": 0.36}

# `objects[i] <relation> objects[j]`; image y grows downwards, so "above"
# means a smaller y.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# The opposite of each relation: "A left of B" is "B right of A".
INVERSE_RELATIONS: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

# White: objects keep full chroma against it and edges fade along a straight
# line towards an achromatic colour, so hue stays readable.
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
