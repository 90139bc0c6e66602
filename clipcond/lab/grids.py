"""Image grids that put setups side by side: one row per prompt, one column per (setup, seed),
so every row shows the same prompt and the same seeds under each setup.

Small images (the shapes world's 32 px) are enlarged by a whole factor with NEAREST
resampling, so pixels stay sharp and visible; large ones are shrunk to at most `MAX_CELL`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

MIN_CELL = 96
MAX_CELL = 256
_LABEL_WIDTH = 220
_HEADER_MARGIN = 8  # white pixels above and below the column labels
_MIN_HEADER = 28
_COLUMN_LINE_SPACING = 2  # extra pixels between the lines of a column label
GAP = 4  # white pixels between cells
_MISSING = (200, 200, 200)
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def cell_size(sides: Sequence[int]) -> int:
    """Side in pixels of a grid cell for images whose largest side is max(sides).

    Below `MIN_CELL` the side is the smallest whole multiple of the image side that reaches
    it (32 -> 96); above `MAX_CELL`, `MAX_CELL`.
    """
    side = max(sides)
    if side < MIN_CELL:
        return side * math.ceil(MIN_CELL / side)
    return min(side, MAX_CELL)


def _column_label_lines(label: str, size: int) -> list[str]:
    """`label` wrapped to the width of a `size` px column (about 7 px per character), at most
    three lines: "clip-random s0" over a 96 px cell is "clip-random" then "s0"."""
    lines = textwrap.wrap(label, max(4, size // 7)) or [""]
    return lines[:3]


def header_height(column_labels: Sequence[str], size: int) -> int:
    """Height in pixels of a grid's header row for `size` px columns: at least 28, and room for
    the tallest wrapped column label in the default font with a margin under it."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = ImageFont.load_default()
    bottoms = [
        draw.multiline_textbbox(
            (0, _HEADER_MARGIN), "\n".join(_column_label_lines(label, size)), font=font, spacing=_COLUMN_LINE_SPACING
        )[3]
        for label in column_labels
    ]
    return max([_MIN_HEADER] + [bottom + _HEADER_MARGIN for bottom in bottoms])


def fit_cell(image: Image.Image, size: int) -> Image.Image:
    """`image` as a `size` x `size` RGB cell: NEAREST when enlarging, LANCZOS when shrinking."""
    image = image.convert("RGB")
    if image.size == (size, size):
        return image
    enlarging = image.width <= size and image.height <= size
    return image.resize((size, size), Image.NEAREST if enlarging else Image.LANCZOS)


def labelled_grid(
    cells: Sequence[Sequence[Image.Image | None]], row_labels: Sequence[str], column_labels: Sequence[str]
) -> Image.Image:
    """A grid with a label column on the left and a header row on top.

    Args:
        cells: rows of images (None draws a grey "missing" cell); all rows equally long.
        row_labels: one per row (wrapped to fit); column_labels: one per column.

    Returns:
        An RGB image; the cell in row r, column c has its top left corner at
        (`_LABEL_WIDTH` + c * (cell + `GAP`), header + r * (cell + `GAP`)), cell from `cell_size`
        and header from `header_height` (28 px when every column label fits on one line).
    """
    if len(cells) != len(row_labels) or any(len(row) != len(column_labels) for row in cells):
        raise ValueError("cells must have one row per row label and one column per column label")
    present = [image for row in cells for image in row if image is not None]
    size = cell_size([max(image.size) for image in present] or [MIN_CELL])
    step = size + GAP
    header = header_height(column_labels, size)
    grid = Image.new("RGB", (_LABEL_WIDTH + step * len(column_labels), header + step * len(cells)), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, label in enumerate(column_labels):
        lines = _column_label_lines(label, size)
        draw.multiline_text(
            (_LABEL_WIDTH + c * step + 3, _HEADER_MARGIN),
            "\n".join(lines),
            fill=_TEXT,
            font=font,
            spacing=_COLUMN_LINE_SPACING,
        )
    line_chars = _LABEL_WIDTH // 7
    max_lines = max(1, (size - 6) // 12)
    for r, (row, label) in enumerate(zip(cells, row_labels)):
        top = header + r * step
        lines = textwrap.wrap(label, line_chars)
        if len(lines) > max_lines:
            lines = lines[: max_lines - 1] + ["... " + lines[-1][-(line_chars - 4) :]]
        draw.multiline_text((4, top + 4), "\n".join(lines), fill=_TEXT, font=font, spacing=2)
        for c, image in enumerate(row):
            left = _LABEL_WIDTH + c * step
            if image is None:
                draw.rectangle((left, top, left + size - 1, top + size - 1), fill=_MISSING)
            else:
                grid.paste(fit_cell(image, size), (left, top))
    return grid


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def suite_grid(
    run_folder: str | Path,
    lines: Sequence[dict],
    suite: str,
    setups: Sequence[str],
    seeds: Sequence[int],
    max_prompts: int = 8,
) -> Image.Image:
    """The grid of one suite from an experiment's result lines.

    Args:
        run_folder: the experiment's output folder (image paths in `lines` are relative to it).
        lines: result lines (`clipcond.lab.results`).
        suite: which suite; its first `max_prompts` entries (by index) become the rows.
        setups: column groups, in this order; seeds: the columns within each group.
    """
    run_folder = Path(run_folder)
    found = {(line["setup"], line["index"], line["seed"]): line["image"] for line in lines if line["suite"] == suite}
    prompts = {line["index"]: line["prompt"] for line in lines if line["suite"] == suite}
    rows = sorted(prompts)[:max_prompts]
    cells = []
    for index in rows:
        row = []
        for setup in setups:
            for seed in seeds:
                relative = found.get((setup, index, seed))
                row.append(_read_rgb(run_folder / relative) if relative else None)
        cells.append(row)
    columns = [f"{setup} s{seed}" for setup in setups for seed in seeds]
    return labelled_grid(cells, [f"{index}: {prompts[index]}" for index in rows], columns)


__all__ = ["GAP", "MAX_CELL", "MIN_CELL", "cell_size", "fit_cell", "header_height", "labelled_grid", "suite_grid"]
