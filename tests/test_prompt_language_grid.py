"""The README's prompt-language picture (benchmarks/results/prompt_language_grid.png): each
prompt under its image reads word by word, with a visible gap between words (PIL's default font
draws a 2-pixel space, and "AND a" once rendered as "ANDa").

A word gap is a run of at least 4 blank pixel columns in the label strip; letters within a word
are at most 2 apart in the default font (measured on the picture), so the runs count the gaps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
PICTURE = REPO / "benchmarks" / "results" / "prompt_language_grid.png"
CELL, LABEL, COLUMN = 128, 14, 256  # the script's layout: 32x32 images enlarged 4 times
WORD_GAP = 4


def word_gaps(strip: np.ndarray) -> int:
    """Runs of >= WORD_GAP blank columns between inked columns of a (height, width) grey strip."""
    inked = np.flatnonzero((strip < 128).any(axis=0))
    return int((np.diff(inked) - 1 >= WORD_GAP).sum())


def test_every_label_of_the_readme_picture_keeps_its_words_apart() -> None:
    from test_benchmark_cli import load_script

    rows = load_script("benchmarks/prompt_language_grid.py").ROWS
    grey = np.asarray(Image.open(PICTURE).convert("L"))
    assert grey.shape == ((CELL + LABEL) * len(rows), COLUMN * len(rows[0]))
    for row, prompts in enumerate(rows):
        for column, prompt in enumerate(prompts):
            top = row * (CELL + LABEL) + CELL
            strip = grey[top : top + LABEL, column * COLUMN : (column + 1) * COLUMN]
            assert word_gaps(strip) == len(prompt.split()) - 1, prompt


@pytest.mark.parametrize("text", ["a red circle :1.5 AND a blue square :0.5", "AND a"])
def test_write_label_leaves_a_gap_between_words(text: str) -> None:
    from test_benchmark_cli import load_script

    image = Image.new("L", (COLUMN, LABEL), 255)
    load_script("benchmarks/prompt_language_grid.py").write_label(ImageDraw.Draw(image), (4, 1), text)
    assert word_gaps(np.asarray(image)) == len(text.split()) - 1
