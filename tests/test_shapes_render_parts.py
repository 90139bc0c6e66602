"""Drawing the shapes world on its own: each shape's pixel coverage against areas and edges
worked out by hand, the anti-aliasing's sub-pixel grid, clipping at the image border, the
refusals whole, and scenes blended over the white background in drawing order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipcond.shapes.render import (
    MIN_IMAGE_SIZE,
    _default_supersample,
    render_scene,
    render_scene_array,
    shape_coverage,
)
from clipcond.shapes.scene import Scene, ShapeObject
from clipcond.shapes.vocab import COLOURS


def test_a_square_on_the_pixel_grid_covers_its_pixels_whole() -> None:
    coverage = shape_coverage("square", 4.0, 4.0, 4.0, 8, 10)
    assert coverage.dtype == np.float32 and coverage.shape == (8, 10)
    expected = np.zeros((8, 10), dtype=np.float32)
    expected[2:6, 2:6] = 1
    assert np.array_equal(coverage, expected)


def test_a_square_half_a_pixel_off_covers_its_edge_pixels_half() -> None:
    coverage = shape_coverage("square", 4.5, 3.0, 2.0, 6, 8)  # x in [3.5, 5.5], y in [2, 4]
    assert coverage[2].tolist() == [0, 0, 0, 0.5, 1, 0.5, 0, 0] and coverage[3].tolist() == coverage[2].tolist()
    assert coverage[[0, 1, 4, 5]].sum() == 0


@pytest.mark.parametrize("shape, area", [("circle", math.pi * 25), ("square", 100.0), ("triangle", 50.0)])
def test_each_shapes_area_is_its_geometry(shape, area) -> None:
    coverage = shape_coverage(shape, 8.0, 8.0, 10.0, 16, 16, supersample=32)
    assert abs(float(coverage.sum()) - area) < 0.2
    assert coverage.min() >= 0 and coverage.max() <= 1


def test_the_triangles_apex_is_at_the_top_and_its_base_at_the_bottom() -> None:
    coverage = shape_coverage("triangle", 8.0, 8.0, 8.0, 16, 16, supersample=16)  # box rows 4 to 11
    rows = coverage.sum(axis=1)
    assert rows[3] == 0 and rows[12] == 0
    assert all(rows[r] < rows[r + 1] for r in range(4, 11))  # wider row by row downwards
    assert abs(rows[4] - 0.5) < 0.05 and abs(rows[11] - 7.5) < 0.05  # a row's width is at its middle height
    assert np.allclose(coverage, coverage[:, ::-1])  # upright: symmetric about its vertical axis


def test_shapes_are_clipped_at_the_border_and_one_outside_covers_nothing() -> None:
    corner = shape_coverage("square", 0.0, 0.0, 4.0, 8, 8)
    assert corner[:2, :2].tolist() == [[1, 1], [1, 1]] and corner.sum() == 4
    assert shape_coverage("circle", -10.0, 4.0, 4.0, 8, 8).sum() == 0
    assert shape_coverage("circle", 4.0, 20.0, 4.0, 8, 8).sum() == 0


def test_one_sample_per_pixel_reads_the_pixel_centre() -> None:
    coverage = shape_coverage("circle", 4.0, 4.0, 3.0, 8, 8, supersample=1)
    centres = [(r, c) for r in range(8) for c in range(8) if (c + 0.5 - 4) ** 2 + (r + 0.5 - 4) ** 2 <= 2.25]
    assert sorted(zip(*np.nonzero(coverage))) == centres and set(coverage.ravel().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("star", 4.0, 4.0, 2.0, 8, 8), "shape must be one of ('circle', 'square', 'triangle'), got 'star'"),
        (("circle", 4.0, 4.0, 0.0, 8, 8), "diameter must be positive, got 0.0"),
        (("circle", 4.0, 4.0, -1, 8, 8), "diameter must be positive, got -1"),
        (("circle", 4.0, 4.0, 2.0, 8, 8, 0), "supersample must be >= 1, got 0"),
    ],
)
def test_coverage_refusals_whole(arguments, message) -> None:
    with pytest.raises(ValueError) as raised:
        shape_coverage(*arguments)
    assert str(raised.value) == message


RED_SQUARE = ShapeObject("square", "red", "small", 0.5, 0.5)  # 4 px wide at 20 px: pixels 8 to 11


def test_a_scene_is_its_objects_blended_over_white_in_drawing_order() -> None:
    image = render_scene_array(Scene((RED_SQUARE,)), size=20)
    assert image.dtype == np.float32 and image.shape == (20, 20, 3)
    assert (image[8:12, 8:12] == COLOURS["red"]).all()
    mask = np.ones((20, 20), dtype=bool)
    mask[8:12, 8:12] = False
    assert (image[mask] == 255).all()
    blue = ShapeObject("square", "blue", "large", 0.5, 0.5)  # 7.2 px: drawn second, over the red
    both = render_scene_array(Scene((RED_SQUARE, blue)), size=20)
    assert (both[8:12, 8:12] == COLOURS["blue"]).all()
    under = render_scene_array(Scene((blue, RED_SQUARE)), size=20)
    assert (under[8:12, 8:12] == COLOURS["red"]).all()


def test_the_default_supersampling_follows_the_size() -> None:
    assert (_default_supersample(16), _default_supersample(128), _default_supersample(129)) == (8, 8, 4)
    scene = Scene((ShapeObject("circle", "green", "large", 0.43, 0.61),))
    assert np.array_equal(render_scene_array(scene, 32), render_scene_array(scene, 32, supersample=8))
    assert np.array_equal(render_scene_array(scene, 130), render_scene_array(scene, 130, supersample=4))
    assert not np.array_equal(render_scene_array(scene, 32), render_scene_array(scene, 32, supersample=4))


def test_scene_refusals_whole() -> None:
    for call, error, message in [
        (lambda: render_scene_array("scene"), TypeError, "scene must be a Scene, got str"),
        (lambda: render_scene_array(Scene((RED_SQUARE,)), 32.0), TypeError, "size must be an int, got 32.0"),
        (lambda: render_scene_array(Scene((RED_SQUARE,)), True), TypeError, "size must be an int, got True"),
        (lambda: render_scene_array(Scene((RED_SQUARE,)), 15), ValueError, "size must be at least 16 pixels, got 15"),
    ]:
        with pytest.raises(error) as raised:
            call()
        assert str(raised.value) == message
    assert MIN_IMAGE_SIZE == 16 and render_scene_array(Scene((RED_SQUARE,)), 16).shape == (16, 16, 3)


def test_the_image_is_the_float_render_rounded() -> None:
    scene = Scene((ShapeObject("triangle", "purple", "large", 0.37, 0.52),))
    image = render_scene(scene, 24)
    assert image.mode == "RGB" and image.size == (24, 24)
    assert np.array_equal(np.asarray(image), np.rint(render_scene_array(scene, 24)).astype(np.uint8))
    assert render_scene(scene).size == (32, 32)


@pytest.mark.parametrize(
    "shape, cx, cy, diameter",
    [
        ("square", 4.0, 4.0, 3.0),  # edges at 2.5 and 5.5: pixel centres
        ("circle", 4.0, 4.5, 5.0),  # (±2.5, 0) and (±1.5, ±2) from the centre lie on the circle
        ("triangle", 4.0, 4.0, 3.0),  # the base's row and its two ends are pixel centres
    ],
)
def test_shapes_are_closed_a_sample_on_the_edge_is_inside(shape, cx, cy, diameter) -> None:
    half = diameter / 2
    inside = {
        "square": lambda px, py: abs(px) <= half and abs(py) <= half,
        "circle": lambda px, py: px * px + py * py <= half * half,
        "triangle": lambda px, py: py <= half and abs(px) <= (py + half) / 2,
    }[shape]
    expected = [[float(inside(c + 0.5 - cx, r + 0.5 - cy)) for c in range(9)] for r in range(9)]
    assert shape_coverage(shape, cx, cy, diameter, 9, 9, supersample=1).tolist() == expected
    on_edge = sum(
        1
        for r in range(9)
        for c in range(9)
        if expected[r][c] and not inside_strictly(shape, c + 0.5 - cx, r + 0.5 - cy, half)
    )
    assert on_edge >= 2  # the case holds samples exactly on the edge


def inside_strictly(shape: str, px: float, py: float, half: float) -> bool:
    if shape == "square":
        return abs(px) < half and abs(py) < half
    if shape == "circle":
        return px * px + py * py < half * half
    return py < half and abs(px) < (py + half) / 2


def test_a_diameter_of_a_pixel_or_less_is_drawn_and_the_default_size_is_32() -> None:
    assert shape_coverage("square", 4.0, 4.0, 1.0, 8, 8).sum() == 1
    assert abs(shape_coverage("square", 4.0, 4.0, 0.5, 8, 8).sum() - 0.25) < 1e-6
    assert render_scene_array(Scene((RED_SQUARE,))).shape == (32, 32, 3)
