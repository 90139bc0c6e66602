"""The words of the shapes world: each constant checked against what `clipcond.shapes.vocab` says of
it (hues about 60 degrees apart, sizes and their diameters, relations and their opposites, a white
background), with hues computed here through `colorsys`."""

from __future__ import annotations

import colorsys
import types

import pytest

from clipcond.shapes import vocab

# The hues vocab.py's comment names, in its order, in degrees.
STATED_HUES = {"red": 0, "yellow": 56, "green": 122, "cyan": 178, "blue": 234, "purple": 290}


def _hue_saturation_value(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    hue, saturation, value = colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))
    return hue * 360, saturation, value


def test_the_colours_are_the_six_named_ones_in_order_as_8_bit_rgb() -> None:
    assert list(vocab.COLOURS) == list(STATED_HUES)
    for name, rgb in vocab.COLOURS.items():
        assert isinstance(rgb, tuple) and len(rgb) == 3, name
        assert all(isinstance(channel, int) and 0 <= channel <= 255 for channel in rgb), name


@pytest.mark.parametrize("name", list(STATED_HUES))
def test_each_colour_has_the_stated_hue_and_is_saturated(name: str) -> None:
    hue, saturation, value = _hue_saturation_value(vocab.COLOURS[name])
    distance = min(abs(hue - STATED_HUES[name]), 360 - abs(hue - STATED_HUES[name]))
    assert distance < 1.0, (name, hue)
    assert saturation > 0.75 and value > 0.7, (name, saturation, value)


def test_the_colour_values_are_pinned() -> None:
    # Every rendered shapes image, every stored shapes shard and what a CLIP trained on them
    # learned depend on these exact values: a change here is a new world, not a refactor.
    assert vocab.COLOURS == {
        "red": (219, 39, 39),
        "yellow": (224, 211, 22),
        "green": (29, 184, 35),
        "cyan": (24, 199, 193),
        "blue": (40, 59, 224),
        "purple": (181, 42, 209),
    }


def test_neighbouring_hues_sit_about_60_degrees_apart() -> None:
    hues = sorted(_hue_saturation_value(rgb)[0] for rgb in vocab.COLOURS.values())
    gaps = [later - earlier for earlier, later in zip(hues, hues[1:])] + [360 - hues[-1] + hues[0]]
    assert all(50 < gap < 71 for gap in gaps), gaps  # 56 to 70


def test_the_shapes_sizes_and_their_diameters() -> None:
    assert vocab.SHAPES == ("circle", "square", "triangle")
    assert vocab.SIZES == ("small", "large")
    assert list(vocab.SIZE_DIAMETERS) == list(vocab.SIZES)
    assert vocab.SIZE_DIAMETERS == {"small": 0.2, "large": 0.36}
    assert 0 < vocab.SIZE_DIAMETERS["small"] < vocab.SIZE_DIAMETERS["large"] < 0.5


def test_the_relations_and_each_ones_opposite() -> None:
    assert vocab.RELATIONS == ("left of", "right of", "above", "below")
    assert set(vocab.INVERSE_RELATIONS) == set(vocab.RELATIONS)
    for relation, opposite in vocab.INVERSE_RELATIONS.items():
        assert opposite != relation
        assert vocab.INVERSE_RELATIONS[opposite] == relation
    assert vocab.INVERSE_RELATIONS["left of"] == "right of"
    assert vocab.INVERSE_RELATIONS["above"] == "below"


def test_the_background_is_white_and_far_from_every_colour() -> None:
    assert vocab.BACKGROUND == (255, 255, 255)
    for name, rgb in vocab.COLOURS.items():
        assert max(255 - channel for channel in rgb) > 150, name


def test_the_module_keeps_constants_only() -> None:
    public = {name: value for name, value in vars(vocab).items() if not name.startswith("_")}
    assert not [name for name, value in public.items() if isinstance(value, types.FunctionType)]
    assert {name for name in public if name.isupper()} == {
        "COLOURS",
        "SHAPES",
        "SIZES",
        "SIZE_DIAMETERS",
        "RELATIONS",
        "INVERSE_RELATIONS",
        "BACKGROUND",
    }
