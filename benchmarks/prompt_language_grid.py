"""A 2x3 grid from the bundled shapes model: prompt editing and AND next to their plain prompts.

    python benchmarks/prompt_language_grid.py            # writes runs/benchmarks/prompt_language_grid.png
    python benchmarks/prompt_language_grid.py --output benchmarks/results/prompt_language_grid.png
                                                         # update the README picture

Row 1: "a red circle", then "a [red:blue:0.2] circle" and "a [red:blue:0.3] circle" (red for
the first 20% or 30% of the steps, then blue): the toy model settles the colour early, so the
switch at 0.2 gives a blue circle and the one at 0.3 a red one. Row 2: "a red circle AND a blue
square" (composable diffusion) with the weights 1.5/0.5, 1/1 and 0.5/1.5: the toy model draws
one shape, and the weights decide which. Same seed in every cell; the bundled model's sampler (Euler
ancestral), 50 steps, guidance 3; each 32x32 image enlarged 4 times, nearest neighbour, with its
prompt written under it, its words 4 pixels apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from result_paths import default_output

if TYPE_CHECKING:
    from PIL import ImageDraw

ROWS = [
    ["a red circle", "a [red:blue:0.2] circle", "a [red:blue:0.3] circle"],
    [
        "a red circle :1.5 AND a blue square :0.5",
        "a red circle AND a blue square",
        "a red circle :0.5 AND a blue square :1.5",
    ],
]


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=3, help="the seed of every cell (default 3)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument(
        "--output",
        type=Path,
        default=default_output("prompt_language_grid.png"),
        help="the PNG (default: runs/benchmarks/prompt_language_grid.png; give "
        "benchmarks/results/prompt_language_grid.png to update the README picture)",
    )
    return parser


def write_label(draw: ImageDraw.ImageDraw, origin: tuple[int, int], text: str, gap: int = 4) -> None:
    """Write `text` at `origin` (x, y in pixels) word by word, `gap` pixels between words:
    PIL's default font draws a space 2 pixels wide, which ran "AND a" together as "ANDa"."""
    x, y = origin
    for word in text.split():
        draw.text((x, y), word, fill="black")
        x += round(draw.textlength(word)) + gap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    import torch
    from PIL import Image, ImageDraw

    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL, load_pipeline

    pipe = load_pipeline(BUNDLED_MODEL, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    scale, label = 4, 14
    cell = 32 * scale
    width = 256  # room for the longest prompt under its image
    grid = Image.new("RGB", (width * 3, (cell + label) * 2), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompts in enumerate(ROWS):
        for column, prompt in enumerate(prompts):
            image = pipe(
                prompt,
                num_inference_steps=args.steps,
                guidance_scale=3.0,
                generator=torch.Generator().manual_seed(args.seed),
            ).images[0]
            left = column * width + (width - cell) // 2
            top = row * (cell + label)
            grid.paste(image.resize((cell, cell), Image.NEAREST), (left, top))
            write_label(draw, (column * width + 4, top + cell + 1), prompt)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
