"""`clipcond.lab.grids` part by part: the cell side for small and large images, how a cell is
resized (NEAREST up, LANCZOS down), the header's height, where labels and cells land (labels
compared with the same text drawn on a blank canvas here), the refusal whole, and a suite's grid
read from result lines and image files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from clipcond.lab.grids import GAP, MAX_CELL, MIN_CELL, cell_size, fit_cell, header_height, labelled_grid, suite_grid

LABEL_WIDTH = 220


def _solid(colour, size=(16, 16), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def _text_patch(text: str, width: int, height: int, origin: tuple[int, int], spacing: int) -> np.ndarray:
    """`text` drawn in black, default font, on a white canvas of the given size."""
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(canvas).multiline_text(origin, text, fill=(0, 0, 0), font=ImageFont.load_default(), spacing=spacing)
    return np.asarray(canvas)


# ---------------------------------------------------------------------------- sizes


def test_the_cell_limits() -> None:
    assert (MIN_CELL, MAX_CELL, GAP) == (96, 256, 4)


@pytest.mark.parametrize(
    "sides, expected",
    [([32], 96), ([16, 8], 96), ([50], 100), ([95], 190), ([96], 96), ([200, 64], 200), ([256], 256), ([300], 256)],
)
def test_small_images_grow_by_a_whole_factor_and_large_ones_are_capped(sides, expected) -> None:
    assert cell_size(sides) == expected


def test_one_line_labels_give_the_28_pixel_header_and_longer_ones_a_taller_one() -> None:
    one = header_height(["a s0", "b s1"], 96)
    two = header_height(["clip-random s0"], 96)  # 13 characters to the line at 96 px
    three = header_height(["aaaaaaaaaaaaa bbbbbbbbbbbbb ccccccccccccc"], 96)
    four = header_height(["aaaaaaaaaaaaa bbbbbbbbbbbbb ccccccccccccc ddddddddddddd"], 96)
    assert one == 28 < two < three == four  # at most three lines
    assert header_height(["clip-random s0"], 256) == 28  # 36 characters to the line at 256 px
    assert header_height([], 96) == 28 and header_height([""], 96) == 28


def test_the_header_fits_the_wrapped_labels_bottom_with_a_margin() -> None:
    """Two lines, 2 px apart, drawn 8 px from the top, then 8 px of margin."""
    draw = ImageDraw.Draw(Image.new("RGB", (300, 300)))
    bottom = draw.multiline_textbbox((0, 8), "clip-random\ns0", font=ImageFont.load_default(), spacing=2)[3]
    assert header_height(["clip-random s0"], 96) == bottom + 8


def test_a_column_label_wraps_at_a_seventh_of_the_cell_side() -> None:
    assert header_height(["abcdefghij s0"], 96) == 28  # 13 characters fit 96 // 7 = 13
    assert header_height(["abcdefghij s00"], 96) > 28
    # a word longer than a line is broken, not left to overflow
    assert header_height(["abcdefghijklmnopqrstuvwxyz"], 96) > 28


def test_narrow_columns_still_wrap_at_four_characters() -> None:
    assert header_height(["abcd"], 14) == 28  # 14 // 7 = 2, raised to 4: one line
    assert header_height(["abcde"], 14) > 28


# ---------------------------------------------------------------------------- fit_cell


def test_a_cell_of_the_right_size_is_only_made_rgb() -> None:
    grey = _solid(128, (96, 96), "L")
    cell = fit_cell(grey, 96)
    assert cell.mode == "RGB" and cell.size == (96, 96)
    assert np.asarray(cell)[0, 0].tolist() == [128, 128, 128]


def test_enlarging_repeats_pixels() -> None:
    small = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]], [[0, 255, 0], [9, 9, 9]]], dtype=np.uint8))
    cell = np.asarray(fit_cell(small, 6))
    expected = np.repeat(np.repeat(np.asarray(small), 3, axis=0), 3, axis=1)
    np.testing.assert_array_equal(cell, expected)


@pytest.mark.parametrize("shape", [(3, 6, 3), (6, 3, 3)])
def test_an_image_as_wide_or_as_tall_as_the_cell_is_enlarged_with_nearest(shape) -> None:
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(fit_cell(image, 6)), np.asarray(image.resize((6, 6), Image.NEAREST)))
    assert not np.array_equal(
        np.asarray(image.resize((6, 6), Image.NEAREST)), np.asarray(image.resize((6, 6), Image.LANCZOS))
    )


def test_shrinking_is_lanczos_and_a_long_thin_image_counts_as_shrinking() -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(fit_cell(noise, 96)), np.asarray(noise.resize((96, 96), Image.LANCZOS)))
    thin = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 10, 3), dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(fit_cell(thin, 96)), np.asarray(thin.resize((96, 96), Image.LANCZOS)))
    wide = Image.fromarray(np.random.default_rng(2).integers(0, 256, (10, 200, 3), dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(fit_cell(wide, 96)), np.asarray(wide.resize((96, 96), Image.LANCZOS)))


# ---------------------------------------------------------------------------- labelled_grid


@pytest.mark.parametrize(
    "cells, rows, columns",
    [([[None]], ["a", "b"], ["x"]), ([[None], [None]], ["a"], ["x"]), ([[None, None]], ["a"], ["x"])],
)
def test_cells_that_do_not_match_the_labels_are_refused_whole(cells, rows, columns) -> None:
    with pytest.raises(ValueError) as refused:
        labelled_grid(cells, rows, columns)
    assert str(refused.value) == "cells must have one row per row label and one column per column label"


def test_cells_land_at_their_corners_and_missing_ones_are_grey() -> None:
    red, blue = _solid((255, 0, 0), (32, 32)), _solid((0, 0, 255), (16, 16))
    grid = np.asarray(labelled_grid([[red, None], [None, blue]], ["p", "q"], ["a", "b"]))
    step = 96 + GAP
    assert grid.shape == (28 + 2 * step, LABEL_WIDTH + 2 * step, 3)
    corners = {(0, 0): (255, 0, 0), (0, 1): (200, 200, 200), (1, 0): (200, 200, 200), (1, 1): (0, 0, 255)}
    for (r, c), colour in corners.items():
        top, left = 28 + r * step, LABEL_WIDTH + c * step
        cell = grid[top : top + 96, left : left + 96]
        assert (cell == colour).all(), (r, c)
        # the gap right of and below each cell is white
        assert (grid[top : top + 96, left + 96 : left + step] == 255).all()
        assert (grid[top + 96 : top + step, left : left + 96] == 255).all()


def test_a_grid_of_only_missing_cells_uses_the_smallest_cell() -> None:
    grid = labelled_grid([[None]], ["p"], ["a"])
    assert grid.size == (LABEL_WIDTH + 96 + GAP, 28 + 96 + GAP) and grid.mode == "RGB"


def test_the_largest_image_sets_the_cell_for_all() -> None:
    grid = labelled_grid([[_solid((255, 0, 0), (16, 16)), _solid((0, 255, 0), (120, 60))]], ["p"], ["a", "b"])
    assert grid.size == (LABEL_WIDTH + 2 * (120 + GAP), 28 + 120 + GAP)


def test_column_labels_are_drawn_wrapped_at_the_top_of_their_column() -> None:
    grid = np.asarray(labelled_grid([[None, None]], ["p"], ["a s0", "clip-random s1"]))
    header = header_height(["clip-random s1"], 96)
    step = 96 + GAP
    first = grid[0:header, LABEL_WIDTH : LABEL_WIDTH + step]
    np.testing.assert_array_equal(first, _text_patch("a s0", step, header, (3, 8), 2))
    second = grid[0:header, LABEL_WIDTH + step : LABEL_WIDTH + 2 * step]
    np.testing.assert_array_equal(second, _text_patch("clip-random\ns1", step, header, (3, 8), 2))


def test_row_labels_are_wrapped_beside_their_row() -> None:
    label = "a red circle to the left of a blue square and a green triangle"
    grid = np.asarray(labelled_grid([[None], [None]], ["first", label], ["a"]))
    step = 96 + GAP
    row = grid[28 + step : 28 + step + 96, 0:LABEL_WIDTH]
    # 220 // 7 = 31 characters to the line
    expected = "a red circle to the left of a\nblue square and a green\ntriangle"
    np.testing.assert_array_equal(row, _text_patch(expected, LABEL_WIDTH, 96, (4, 4), 2))


def test_a_row_label_too_long_for_its_cell_keeps_its_first_lines_and_the_end_of_its_last() -> None:
    words = [f"word{n:03d}" for n in range(40)]  # 7 characters: four fill a 31-character line
    grid = np.asarray(labelled_grid([[None]], [" ".join(words)], ["a"]))
    row = grid[28 : 28 + 96, 0:LABEL_WIDTH]
    # a 96 px cell holds (96 - 6) // 12 = 7 lines: six whole, then "... " and the last
    # line's final 27 characters
    last = " ".join(words[36:40])
    assert len(last) == 31
    lines = [" ".join(words[i : i + 4]) for i in range(0, 24, 4)] + ["... " + last[-27:]]
    np.testing.assert_array_equal(row, _text_patch("\n".join(lines), LABEL_WIDTH, 96, (4, 4), 2))


def test_a_row_label_of_as_many_lines_as_fit_is_drawn_whole() -> None:
    words = [f"word{n:03d}" for n in range(28)]  # seven lines of four
    grid = np.asarray(labelled_grid([[None]], [" ".join(words)], ["a"]))
    lines = [" ".join(words[i : i + 4]) for i in range(0, 28, 4)]
    np.testing.assert_array_equal(
        grid[28 : 28 + 96, 0:LABEL_WIDTH], _text_patch("\n".join(lines), LABEL_WIDTH, 96, (4, 4), 2)
    )


def test_a_larger_cell_holds_more_label_lines() -> None:
    """A 51 px image gives a 102 px cell: (102 - 6) // 12 = 8 lines."""
    words = [f"word{n:03d}" for n in range(40)]
    grid = np.asarray(labelled_grid([[_solid((0, 0, 0), (51, 51))]], [" ".join(words)], ["a"]))
    last = " ".join(words[36:40])
    lines = [" ".join(words[i : i + 4]) for i in range(0, 28, 4)] + ["... " + last[-27:]]
    np.testing.assert_array_equal(
        grid[28 : 28 + 102, 0:LABEL_WIDTH], _text_patch("\n".join(lines), LABEL_WIDTH, 102, (4, 4), 2)
    )


def test_an_empty_column_label_draws_nothing() -> None:
    grid = np.asarray(labelled_grid([[None]], ["p"], [""]))
    assert (grid[0:28, LABEL_WIDTH:] == 255).all()


# ---------------------------------------------------------------------------- suite_grid


def _line(setup, index, seed, image, suite="mini", prompt=None):
    return {
        "setup": setup,
        "suite": suite,
        "index": index,
        "seed": seed,
        "image": image,
        "prompt": prompt or f"p{index}",
    }


def test_a_suite_grid_has_rows_by_index_and_columns_by_setup_then_seed(tmp_path) -> None:
    colours = {"a0": (255, 0, 0), "a1": (0, 255, 0), "b0": (0, 0, 255)}
    for name, colour in colours.items():
        _solid(colour, (32, 32)).save(tmp_path / f"{name}.png")
    _solid((7, 7, 7), (32, 32)).save(tmp_path / "other.png")
    lines = [
        _line("b", 5, 0, "b0.png", prompt="later"),
        _line("a", 5, 1, "a1.png", prompt="later"),
        _line("a", 2, 0, "a0.png", prompt="first"),
        _line("a", 2, 1, "other.png", suite="other"),
    ]
    grid = suite_grid(tmp_path, lines, "mini", setups=["a", "b"], seeds=[0, 1])
    expected = labelled_grid(
        [
            [_solid(colours["a0"], (32, 32)), None, None, None],
            [None, _solid(colours["a1"], (32, 32)), _solid(colours["b0"], (32, 32)), None],
        ],
        ["2: first", "5: later"],
        ["a s0", "a s1", "b s0", "b s1"],
    )
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(expected))


def test_a_suite_grid_keeps_the_first_prompts_by_index(tmp_path) -> None:
    lines = [_line("a", index, 0, None) for index in (9, 3, 7, 1)]
    grid = suite_grid(tmp_path, lines, "mini", setups=["a"], seeds=[0], max_prompts=2)
    expected = labelled_grid([[None], [None]], ["1: p1", "3: p3"], ["a s0"])
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(expected))
    default = suite_grid(tmp_path, [_line("a", index, 0, None) for index in range(10)], "mini", ["a"], [0])
    assert default.height == 28 + 8 * (96 + GAP)  # eight rows by default


def test_a_suite_grid_reads_images_as_rgb(tmp_path) -> None:
    _solid(90, (32, 32), "L").save(tmp_path / "grey.png")
    grid = np.asarray(suite_grid(tmp_path, [_line("a", 0, 0, "grey.png")], "mini", ["a"], [0]))
    assert (grid[28 : 28 + 96, LABEL_WIDTH : LABEL_WIDTH + 96] == 90).all()
