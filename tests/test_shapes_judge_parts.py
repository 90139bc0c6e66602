"""The judge on its own, from hand-painted pixel arrays: `_to_rgb`'s inputs and its refusals
whole (shape, dtype, type, floats within a thousandth of [0, 1] clipped); hue and chroma by
hand (each branch, the wrap at 360 degrees, grey); 4-connected labels along a winding path and
across a gap; the 8-neighbour dilation; `_fit_shape` on an exact block; and `judge_image` on
exact squares, every field by hand: the least component size (11 pixels at 32 x 32, never under
3), the background ring (70 % inclusive, each channel within 64 of white inclusive), the least fit
(inclusive), coverage as chroma over the palette colour's chroma (clipped at 1, half covered is an
object pixel), hue nearest across 0 degrees, neighbours of another colour or another component
left out, the size split, positions in a non-square image and at the corners, the order by
position; rendered circles and triangles by shape and place."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipcond.shapes.judge import (
    DetectedObject,
    _dilate,
    _fit_shape,
    _hue_chroma,
    _label_components,
    _to_rgb,
    judge_image,
)
from clipcond.shapes.render import render_scene
from clipcond.shapes.scene import Scene, ShapeObject

# the palette, written out: the judge must read these exact colours as themselves
RED = (219, 39, 39)
GREEN = (29, 184, 35)
BLUE = (40, 59, 224)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def canvas(height: int = 32, width: int = 32, fill: tuple[int, int, int] = WHITE) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = fill
    return image


def paint(image: np.ndarray, colour: tuple[int, int, int], top: int, left: int, rows: int, cols: int) -> np.ndarray:
    image[top : top + rows, left : left + cols] = colour
    return image


def square(colour: str, size: str, x: float, y: float, side: int, bbox: tuple, image_side: int = 32):
    """The exact read of a solid `side` x `side` block of a palette colour on white."""
    return DetectedObject(
        colour=colour,
        shape="square",
        size=size,
        x=x,
        y=y,
        area_fraction=side * side / image_side**2,
        bbox=bbox,
        diameter=side / image_side,
        fit=1.0,
    )


# ---------------------------------------------------------------- _to_rgb


def test_an_array_must_be_height_by_width_by_three() -> None:
    with pytest.raises(ValueError) as err:
        judge_image(np.zeros((32, 32), dtype=np.uint8))
    assert str(err.value) == "image array must have shape (height, width, 3), got (32, 32)"
    with pytest.raises(ValueError) as err:
        judge_image(np.zeros((8, 8, 4), dtype=np.uint8))
    assert str(err.value) == "image array must have shape (height, width, 3), got (8, 8, 4)"


def test_only_pil_images_and_numpy_arrays_are_images() -> None:
    with pytest.raises(TypeError) as err:
        judge_image([[[0, 0, 0]]])
    assert str(err.value) == "image must be a PIL.Image.Image or a numpy array, got list"


def test_integer_arrays_other_than_uint8_are_refused() -> None:
    with pytest.raises(TypeError) as err:
        judge_image(np.full((8, 8, 3), 255, dtype=np.int64))
    assert str(err.value) == "image array must be uint8 in [0, 255] or float in [0, 1], got dtype int64"


def test_float_arrays_beyond_a_thousandth_outside_zero_one_are_refused_with_their_range() -> None:
    low = np.full((4, 4, 3), 0.5)
    low[0, 0, 0] = -1.0
    with pytest.raises(ValueError) as err:
        judge_image(low)
    assert str(err.value) == "image float array must hold values in [0, 1], got [-1, 0.5]"
    with pytest.raises(ValueError) as err:
        judge_image(np.full((4, 4, 3), -0.0011))
    assert str(err.value) == "image float array must hold values in [0, 1], got [-0.0011, -0.0011]"
    high = np.full((4, 4, 3), 0.25)
    high[3, 3, 2] = 1.0011
    with pytest.raises(ValueError) as err:
        judge_image(high)
    assert str(err.value) == "image float array must hold values in [0, 1], got [0.25, 1]"


def test_float_arrays_within_a_thousandth_of_zero_one_are_clipped_and_scaled_to_255() -> None:
    image = np.array([[[-1e-3, 0.5, 1.0 + 1e-3], [0.0, 0.2, 1.0]]], dtype=np.float64)
    rgb = _to_rgb(image)
    assert rgb.dtype == np.float64
    np.testing.assert_array_equal(rgb, [[[0.0, 127.5, 255.0], [0.0, 0.2 * 255.0, 255.0]]])
    half = _to_rgb(np.full((1, 1, 3), 0.5, dtype=np.float32))
    assert half.dtype == np.float64 and half.tolist() == [[[127.5, 127.5, 127.5]]]


def test_uint8_arrays_and_pil_images_of_any_mode_read_as_float_rgb() -> None:
    pixels = np.array([[[0, 128, 255], [7, 8, 9]]], dtype=np.uint8)
    for image in (pixels, Image.fromarray(pixels, mode="RGB")):
        rgb = _to_rgb(image)
        assert rgb.dtype == np.float64 and rgb.tolist() == [[[0.0, 128.0, 255.0], [7.0, 8.0, 9.0]]]
    grey = Image.new("L", (2, 1), 100)
    assert _to_rgb(grey).tolist() == [[[100.0] * 3, [100.0] * 3]]
    rgba = Image.new("RGBA", (1, 1), (10, 20, 30, 40))
    assert _to_rgb(rgba).tolist() == [[[10.0, 20.0, 30.0]]]


# ---------------------------------------------------------------- hue and chroma


def test_hue_and_chroma_of_the_primaries_and_secondaries() -> None:
    rgb = np.array(
        [[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255], [0, 0, 255], [255, 0, 255]], dtype=np.float64
    )
    hue, chroma = _hue_chroma(rgb)
    assert hue.tolist() == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
    assert chroma.tolist() == [255.0] * 6


def test_hue_between_primaries_on_each_branch() -> None:
    # max red: 60 (g - b) / c; max green: 60 ((b - r) / c + 2); max blue: 60 ((r - g) / c + 4)
    rgb = np.array([[200, 100, 50], [200, 50, 100], [50, 200, 100], [100, 50, 200]], dtype=np.float64)
    hue, chroma = _hue_chroma(rgb)
    np.testing.assert_allclose(hue, [20.0, 340.0, 140.0, 260.0], rtol=0, atol=1e-12)
    assert chroma.tolist() == [150.0] * 4


def test_grey_has_no_chroma_and_hue_zero() -> None:
    hue, chroma = _hue_chroma(np.array([[128.0, 128.0, 128.0], [0.0, 0.0, 0.0], [255.0, 255.0, 255.0]]))
    assert hue.tolist() == [0.0, 0.0, 0.0]
    assert chroma.tolist() == [0.0, 0.0, 0.0]


def test_a_hue_a_rounding_step_below_a_full_turn_is_zero() -> None:
    # (g - b) / c is -1e-16: modulo 6 rounds to 6.0, a full turn, which must read as 0 degrees
    blue = np.nextafter(127.5, 255.0)
    hue, chroma = _hue_chroma(np.array([255.0, 127.5, blue]))
    assert float(hue) == 0.0
    assert float(chroma) == 127.5


# ---------------------------------------------------------------- components and dilation


def test_components_are_four_connected_and_named_by_their_first_pixel() -> None:
    mask = np.array(
        [
            [1, 1, 0, 0],
            [0, 0, 1, 0],
            [1, 0, 1, 0],
            [1, 0, 0, 1],
        ],
        dtype=bool,
    )
    # (0, 1) and (1, 2) touch only diagonally; (2, 2) and (3, 3) likewise
    expected = [
        [0, 0, -1, -1],
        [-1, -1, 6, -1],
        [8, -1, 6, -1],
        [8, -1, -1, 15],
    ]
    labels = _label_components(mask)
    assert labels.dtype == np.int64
    assert labels.tolist() == expected


def test_a_label_follows_a_winding_path_in_every_direction() -> None:
    # from its first pixel (0, 2) the path runs down, left, down, right and up to (0, 4)
    mask = np.array(
        [
            [0, 0, 1, 0, 1],
            [1, 1, 1, 0, 1],
            [1, 0, 0, 0, 1],
            [1, 1, 1, 1, 1],
        ],
        dtype=bool,
    )
    assert _label_components(mask).tolist() == np.where(mask, 2, -1).tolist()


def test_a_one_pixel_gap_keeps_two_components_apart() -> None:
    mask = np.array([[1, 1, 0, 1, 1], [1, 1, 0, 1, 1]], dtype=bool)
    assert _label_components(mask).tolist() == [[0, 0, -1, 3, 3], [0, 0, -1, 3, 3]]
    assert _label_components(np.zeros((2, 3), dtype=bool)).tolist() == [[-1, -1, -1], [-1, -1, -1]]


def test_dilation_adds_the_eight_neighbours() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 2] = True
    expected = np.zeros((5, 5), dtype=bool)
    expected[1:4, 1:4] = True
    assert _dilate(mask).tolist() == expected.tolist()
    assert mask.sum() == 1  # the input is left as it was
    corner = np.zeros((3, 4), dtype=bool)
    corner[2, 3] = True
    assert _dilate(corner).tolist() == [
        [False, False, False, False],
        [False, False, True, True],
        [False, False, True, True],
    ]


# ---------------------------------------------------------------- _fit_shape


def test_an_exact_block_fits_the_square_at_its_centre_in_image_pixels() -> None:
    soft = np.zeros((8, 8))
    soft[2:6, 2:6] = 1.0
    # centroid (4, 4) in the window, which starts at row 10, column 20; side sqrt(16)
    assert _fit_shape(soft, (10, 20)) == ("square", 1.0, 24.0, 14.0, 4.0)


# ---------------------------------------------------------------- judge_image


@pytest.mark.parametrize("min_fit", [-0.1, 1.5])
def test_min_fit_outside_zero_one_is_refused(min_fit: float) -> None:
    with pytest.raises(ValueError) as err:
        judge_image(canvas(), min_fit=min_fit)
    assert str(err.value) == f"min_fit must be in [0, 1], got {min_fit!r}"


def test_a_blank_image_or_one_colour_everywhere_holds_nothing() -> None:
    assert judge_image(canvas()) == []
    # a block with no background around it is not an object
    assert judge_image(canvas(fill=BLUE)) == []


def test_a_solid_square_reads_exactly() -> None:
    image = paint(canvas(), BLUE, top=8, left=20, rows=4, cols=4)
    # centre (22, 10) of 32 x 32; 16 of 1024 pixels
    assert judge_image(image) == [square("blue", "small", 22 / 32, 10 / 32, 4, (20, 8, 24, 12))]


def test_a_pil_image_and_a_float_array_read_like_the_uint8_array() -> None:
    image = paint(canvas(), BLUE, top=8, left=20, rows=4, cols=4)
    expected = [square("blue", "small", 22 / 32, 10 / 32, 4, (20, 8, 24, 12))]
    assert judge_image(Image.fromarray(image)) == expected
    (found,) = judge_image(image / 255.0)
    assert (found.colour, found.shape, found.size, found.bbox) == ("blue", "square", "small", (20, 8, 24, 12))
    assert found.area_fraction == pytest.approx(16 / 1024, rel=1e-12)


def test_an_exact_fit_meets_a_least_fit_of_one() -> None:
    image = paint(canvas(), RED, top=4, left=4, rows=5, cols=5)
    assert judge_image(image, min_fit=1.0) == [square("red", "small", 6.5 / 32, 6.5 / 32, 5, (4, 4, 9, 9))]
    assert judge_image(image, min_fit=0.0) == judge_image(image, min_fit=1.0)


def test_a_shape_that_fits_poorly_is_dropped_below_the_least_fit() -> None:
    image = canvas()
    paint(image, GREEN, top=10, left=4, rows=2, cols=12)  # a plus: no shape explains it
    paint(image, GREEN, top=5, left=9, rows=12, cols=2)
    paint(image, BLUE, top=24, left=24, rows=4, cols=4)
    exact = square("blue", "small", 26 / 32, 26 / 32, 4, (24, 24, 28, 28))
    assert judge_image(image, min_fit=0.9) == [exact]
    loose = judge_image(image, min_fit=0.0)
    assert [o.colour for o in loose] == ["green", "blue"]
    assert loose[0].bbox == (4, 5, 16, 17) and loose[0].fit < 0.9


def test_corner_squares_read_exactly() -> None:
    image = paint(canvas(), BLUE, top=0, left=0, rows=4, cols=4)
    paint(image, RED, top=28, left=28, rows=4, cols=4)
    assert judge_image(image) == [
        square("blue", "small", 2 / 32, 2 / 32, 4, (0, 0, 4, 4)),
        square("red", "small", 30 / 32, 30 / 32, 4, (28, 28, 32, 32)),
    ]


def test_sizes_split_between_eight_and_nine_pixels_at_32() -> None:
    # the split is sqrt(0.2 * 0.36) = 0.268 of the side: 8.59 pixels
    image = paint(canvas(), BLUE, top=2, left=2, rows=8, cols=8)
    paint(image, RED, top=18, left=18, rows=9, cols=9)
    assert judge_image(image) == [
        square("blue", "small", 6 / 32, 6 / 32, 8, (2, 2, 10, 10)),
        square("red", "large", 22.5 / 32, 22.5 / 32, 9, (18, 18, 27, 27)),
    ]


def test_a_component_needs_eleven_pixels_at_32_by_32() -> None:
    # half the smallest object (a small triangle): 0.5 * 0.5 * (0.2 * 32) ** 2 = 10.24, so 11
    eleven = paint(canvas(), BLUE, top=10, left=10, rows=2, cols=5)
    eleven[12, 10] = BLUE
    (found,) = judge_image(eleven, min_fit=0.0)
    assert (found.colour, found.bbox, found.area_fraction) == ("blue", (10, 10, 15, 13), 11 / 1024)
    ten = paint(canvas(), BLUE, top=10, left=10, rows=2, cols=5)
    assert judge_image(ten, min_fit=0.0) == []


def test_a_component_needs_three_pixels_even_in_a_small_image() -> None:
    # at 10 x 10 half the smallest object is a single pixel; three are still needed
    three = paint(canvas(10, 10), BLUE, top=4, left=3, rows=1, cols=3)
    (found,) = judge_image(three, min_fit=0.0)
    assert (found.colour, found.bbox, found.area_fraction) == ("blue", (3, 4, 6, 5), 0.03)
    two = paint(canvas(10, 10), BLUE, top=4, left=3, rows=1, cols=2)
    assert judge_image(two, min_fit=0.0) == []


def test_two_small_pieces_of_one_colour_are_not_one_object() -> None:
    # 8 + 8 pixels of blue, 11 needed for each component
    image = paint(canvas(), BLUE, top=4, left=4, rows=2, cols=4)
    paint(image, BLUE, top=20, left=20, rows=2, cols=4)
    assert judge_image(image, min_fit=0.0) == []


def _ringed_block(non_background: int) -> np.ndarray:
    """A 4 x 5 blue block whose ring (two steps out, 30 pixels) has `non_background` black pixels."""
    image = paint(canvas(), BLUE, top=10, left=10, rows=4, cols=5)
    ring = [(8, c) for c in range(8, 17)] + [(r, 8) for r in range(9, 15)]
    for r, c in ring[:non_background]:
        image[r, c] = BLACK
    return image


def test_a_ring_of_seventy_percent_background_is_enough() -> None:
    (found,) = judge_image(_ringed_block(9))  # 21 of 30
    assert (found.colour, found.bbox, found.area_fraction) == ("blue", (10, 10, 15, 14), 20 / 1024)
    assert judge_image(_ringed_block(10)) == []  # 20 of 30


def test_background_is_every_channel_within_64_of_white() -> None:
    within = paint(canvas(fill=(191, 191, 191)), BLUE, top=8, left=20, rows=4, cols=4)
    assert judge_image(within) == [square("blue", "small", 22 / 32, 10 / 32, 4, (20, 8, 24, 12))]
    beyond = paint(canvas(fill=(255, 190, 255)), BLUE, top=8, left=20, rows=4, cols=4)
    assert judge_image(beyond) == []


def test_a_pale_edge_pixel_adds_its_coverage_to_area_and_centre() -> None:
    # (209, 226, 255): blue hue, chroma 46 of blue's 184, so a quarter covered; it sits above the block
    image = paint(canvas(), BLUE, top=8, left=20, rows=4, cols=4)
    image[7, 20] = (209, 226, 255)
    (found,) = judge_image(image)
    assert (found.colour, found.shape, found.bbox) == ("blue", "square", (20, 8, 24, 12))
    assert found.area_fraction == 16.25 / 1024
    assert found.x == pytest.approx((16 * 22 + 0.25 * 20.5) / 16.25 / 32, rel=0, abs=1e-12)
    assert found.y == pytest.approx((16 * 10 + 0.25 * 7.5) / 16.25 / 32, rel=0, abs=1e-12)
    assert found.diameter == pytest.approx(np.sqrt(16.25) / 32, rel=0, abs=1e-12)


def test_a_half_covered_pixel_is_an_object_pixel() -> None:
    # (163, 180, 255): blue hue, chroma 92 of 184; it widens the box by one row
    image = paint(canvas(), BLUE, top=8, left=20, rows=4, cols=4)
    image[7, 20] = (163, 180, 255)
    (found,) = judge_image(image)
    assert (found.colour, found.bbox, found.area_fraction) == ("blue", (20, 7, 24, 12), 16.5 / 1024)


def test_colours_purer_than_the_palette_count_as_fully_covered() -> None:
    image = paint(canvas(), (0, 0, 255), top=8, left=20, rows=4, cols=4)
    assert judge_image(image) == [square("blue", "small", 22 / 32, 10 / 32, 4, (20, 8, 24, 12))]


def test_a_hue_just_below_360_is_nearest_red_across_zero() -> None:
    # (219, 39, 69): hue 350, ten degrees from red (0), sixty from purple (290)
    image = paint(canvas(), (219, 39, 69), top=8, left=20, rows=4, cols=4)
    assert judge_image(image) == [square("red", "small", 22 / 32, 10 / 32, 4, (20, 8, 24, 12))]


def test_a_pixel_of_another_colour_beside_an_object_stays_out_of_its_fit() -> None:
    image = paint(canvas(), BLUE, top=8, left=20, rows=4, cols=4)
    image[7, 21] = RED
    assert judge_image(image) == [square("blue", "small", 22 / 32, 10 / 32, 4, (20, 8, 24, 12))]


def test_a_diagonal_neighbour_of_the_same_colour_stays_out_of_the_fit() -> None:
    # two blocks meeting corner to corner: two 4-connected components, each read exactly
    image = paint(canvas(), BLUE, top=8, left=8, rows=4, cols=4)
    paint(image, BLUE, top=12, left=12, rows=4, cols=4)
    assert judge_image(image) == [
        square("blue", "small", 10 / 32, 10 / 32, 4, (8, 8, 12, 12)),
        square("blue", "small", 14 / 32, 14 / 32, 4, (12, 12, 16, 16)),
    ]


def test_objects_come_top_to_bottom_then_left_to_right() -> None:
    image = canvas()
    paint(image, RED, top=20, left=8, rows=4, cols=4)  # bottom, middle
    paint(image, GREEN, top=4, left=20, rows=4, cols=4)  # top, right
    paint(image, BLUE, top=4, left=2, rows=4, cols=4)  # top, left
    assert judge_image(image) == [
        square("blue", "small", 4 / 32, 6 / 32, 4, (2, 4, 6, 8)),
        square("green", "small", 22 / 32, 6 / 32, 4, (20, 4, 24, 8)),
        square("red", "small", 10 / 32, 22 / 32, 4, (8, 20, 12, 24)),
    ]


def test_a_wide_image_gives_x_by_width_y_by_height_and_sizes_by_the_mean_side() -> None:
    image = paint(canvas(20, 40), BLUE, top=4, left=30, rows=4, cols=4)
    (found,) = judge_image(image)
    side = np.sqrt(20 * 40)
    assert found == DetectedObject("blue", "square", "small", 32 / 40, 6 / 20, 16 / 800, (30, 4, 34, 8), 4 / side, 1.0)


def test_a_wide_image_needs_a_hundredth_of_its_pixels() -> None:
    # 24 x 48: half the smallest object is 0.25 * (0.2 * sqrt(1152)) ** 2 = 11.52 pixels, so 12
    twelve = paint(canvas(24, 48), BLUE, top=4, left=10, rows=2, cols=6)
    assert [o.bbox for o in judge_image(twelve, min_fit=0.0)] == [(10, 4, 16, 6)]
    eleven = paint(canvas(24, 48), BLUE, top=4, left=10, rows=1, cols=11)
    assert judge_image(eleven, min_fit=0.0) == []


@pytest.mark.parametrize(
    ("shape", "size", "x", "y"),
    [("circle", "large", 0.3, 0.4), ("triangle", "large", 0.6, 0.55), ("triangle", "small", 0.25, 0.7)],
)
def test_rendered_circles_and_triangles_read_by_shape_size_and_place(shape: str, size: str, x: float, y: float) -> None:
    obj = ShapeObject(shape, "purple", size, x, y)
    (found,) = judge_image(render_scene(Scene((obj,)), 64))
    assert (found.colour, found.shape, found.size) == ("purple", shape, size)
    assert abs(found.x - x) < 0.004 and abs(found.y - y) < 0.004
    assert found.diameter == pytest.approx(obj.diameter, rel=0.03)
    assert found.fit > 0.9


# ---------------------------------------------------------------- after the mutation run


def test_hue_of_a_float_colour_with_chroma_below_one() -> None:
    # chroma 0.5: the hue divides by it, (0.75 - 0.5) / 0.5 = 0.5 of a sixth, 30 degrees
    hue, chroma = _hue_chroma(np.array([[1.0, 0.75, 0.5], [0.5, 0.5, 0.25]]))
    np.testing.assert_allclose(hue, [30.0, 60.0], rtol=0, atol=1e-12)
    assert chroma.tolist() == [0.5, 0.25]


def test_a_hue_nearer_red_across_360_than_purple_is_red() -> None:
    # (255, 0, 148): hue 360 - 60 * 148 / 255 = 325.18, 34.82 degrees from red (across 360)
    # and 35.24 from purple (289.94): red, by less than a degree
    image = paint(canvas(), (255, 0, 148), top=8, left=20, rows=4, cols=4)
    assert judge_image(image) == [square("red", "small", 22 / 32, 10 / 32, 4, (20, 8, 24, 12))]


def _best_fit_in_window(window: np.ndarray) -> float:
    """The least L1 disagreement, as a fit (1 - |soft - ideal| / (soft + ideal) summed), of `window`
    with each shape of its area at its centroid, drawn by `shape_coverage` at 4 x 4 samples a pixel
    (a triangle's box a sixth of its side above the centroid)."""
    from clipcond.shapes.render import shape_coverage

    area = window.sum()
    rows, cols = np.indices(window.shape)
    cy, cx = (window * (rows + 0.5)).sum() / area, (window * (cols + 0.5)).sum() / area
    fits = []
    for shape, fill in (("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)):
        side = np.sqrt(area / fill)
        centre_y = cy - side / 6 if shape == "triangle" else cy
        ideal = shape_coverage(shape, cx, centre_y, side, *window.shape, supersample=4)
        fits.append(1.0 - np.abs(window - ideal).sum() / (window.sum() + ideal.sum()))
    return max(fits)


def test_a_poor_fit_is_measured_in_a_window_two_pixels_around_the_component() -> None:
    # a 2 x 20 bar: every ideal shape of its area (side 6.3 to 8.9) is taller than the
    # 6 rows of the window, which cuts it
    image = paint(canvas(), GREEN, top=10, left=6, rows=2, cols=20)
    (found,) = judge_image(image, min_fit=0.0)
    window = np.zeros((6, 24))
    window[2:4, 2:22] = 1.0
    assert found.fit == pytest.approx(_best_fit_in_window(window), rel=0, abs=1e-12)
    assert found.fit < 0.6
    wider = np.zeros((8, 26))
    wider[3:5, 3:23] = 1.0
    assert abs(_best_fit_in_window(wider) - found.fit) > 1e-3  # the window's size is seen


def test_a_component_refused_by_its_ring_does_not_hide_the_next_one() -> None:
    # two blue blocks: the first (by its first pixel) ringed with black, the second clean;
    # then a red block ringed with black before a clean blue one (red comes first in the palette)
    image = _ringed_block(10)
    paint(image, BLUE, top=24, left=24, rows=4, cols=4)
    assert judge_image(image) == [square("blue", "small", 26 / 32, 26 / 32, 4, (24, 24, 28, 28))]
    image = _ringed_block(10)
    image[image[..., 0] == BLUE[0]] = RED  # the ringed block is red now (no other pixel is 40 red)
    paint(image, BLUE, top=24, left=24, rows=4, cols=4)
    assert judge_image(image) == [square("blue", "small", 26 / 32, 26 / 32, 4, (24, 24, 28, 28))]


def test_a_component_below_the_least_fit_does_not_hide_the_next_one_of_its_colour() -> None:
    image = canvas()
    paint(image, BLUE, top=6, left=4, rows=2, cols=12)  # a plus, first in raster order
    paint(image, BLUE, top=1, left=9, rows=12, cols=2)
    paint(image, BLUE, top=24, left=24, rows=4, cols=4)
    assert judge_image(image, min_fit=0.9) == [square("blue", "small", 26 / 32, 26 / 32, 4, (24, 24, 28, 28))]


def test_a_box_exactly_at_the_size_split_is_large() -> None:
    # 25 x 45: the side is sqrt(1125), and a 9 x 9 box is 9 / sqrt(1125) = sqrt(0.2 * 0.36) of it,
    # equal in float64 to the split (the geometric mean of the two sizes)
    image = paint(canvas(25, 45), BLUE, top=8, left=18, rows=9, cols=9)
    (found,) = judge_image(image)
    assert (found.shape, found.size, found.bbox) == ("square", "large", (18, 8, 27, 17))
    assert found.diameter == 9 / np.sqrt(1125) == np.sqrt(0.2 * 0.36)
