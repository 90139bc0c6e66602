"""Measure a shapes diffusion model with the shapes judge on the fixed prompt suite.

    python benchmarks/shapes_model_judge.py                          # the bundled model
    python benchmarks/shapes_model_judge.py --model runs/shapes-tiny-diffusion/pipeline
    python benchmarks/shapes_model_judge.py --guidance 3 5 7.5       # one table per guidance scale
    python benchmarks/shapes_model_judge.py --checkpoint runs/shapes-tiny-diffusion/checkpoints/step-000003000 \
        --config configs/diffusion/shapes-tiny.yaml --output /tmp/midway.md   # a run midway (EMA weights)
    python benchmarks/shapes_model_judge.py --category relation --grid '' --output /tmp/relation.md
    python benchmarks/shapes_model_judge.py --output benchmarks/results/shapes_model.md \
        --grid benchmarks/results/shapes_model_grid.png       # update the recorded result and the README picture

Generates one image per suite entry (`clipcond.shapes.prompt_suite.shapes_model_suite`), image k
with seed k, scores it with the judge, and writes runs/benchmarks/shapes_model.md plus a grid of
example prompts (runs/benchmarks/shapes_model_grid.png); the recorded result and the README
picture in benchmarks/results/ change only when their paths are given.
Goals (issue 4): single object colour+shape >= 90%, relation (position) >= 80%, two objects with
both bindings right >= 50%.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from result_paths import REPO, add_output_argument, default_output, write_result

if TYPE_CHECKING:
    from PIL import Image

GRID_PROMPTS = (
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "a red circle to the left of a blue square",
    "a yellow triangle above a green square",
    "a cyan circle to the right of a purple triangle",
    "a blue triangle and a red square",
    "a green circle",
)
GOALS = {"single": ("objects", 0.90), "relation": ("relation", 0.80), "two_objects": ("objects", 0.50)}


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int) -> list[Image.Image]:
    import torch

    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch):
        chunk = slice(start, start + batch)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[chunk]]
        images += pipe(prompts[chunk], num_inference_steps=steps, guidance_scale=guidance, generator=generators).images
    return images


def table(report) -> list[str]:
    columns = ("objects", "colour", "shape", "count", "relation", "relation_if_found", "exact")
    lines = ["| category | images | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, result in report.categories.items():
        cells = [f"{result.rates[c]:.1%}" if c in result.rates else "" for c in columns]
        lines.append(f"| {name} | {result.images} | " + " | ".join(cells) + " |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a saved pipeline folder (default: the bundled model)")
    parser.add_argument("--checkpoint", help="judge this training checkpoint instead of --model (needs --config)")
    parser.add_argument("--config", help="the run config of --checkpoint")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps per image (default 50)")
    parser.add_argument(
        "--scheduler",
        help="a diffusers scheduler class to sample with instead of the model's "
        "(e.g. DDPMScheduler, EulerAncestralDiscreteScheduler), built from its scheduler config",
    )
    parser.add_argument(
        "--guidance", type=float, nargs="+", default=[3.0], help="guidance scales, one table each (default 3)"
    )
    parser.add_argument("--batch", type=int, default=64, help="images per pipeline call (default 64)")
    parser.add_argument(
        "--category",
        action="append",
        help="judge only this suite category (repeatable; "
        "each image keeps the seed it has in the whole suite, so figures match a full run's)",
    )
    add_output_argument(parser, "shapes_model.md", "report")
    parser.add_argument(
        "--grid",
        default=str(default_output("shapes_model_grid.png")),
        help="the example grid (default: runs/benchmarks/shapes_model_grid.png; '' for none; "
        "give benchmarks/results/shapes_model_grid.png to update the README picture)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint and not args.config:
        parser.error("--checkpoint needs --config (the run's config)")
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    import torch
    from diffusers.utils import make_image_grid
    from PIL import Image

    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL, load_pipeline
    from clipcond.shapes.prompt_suite import judge_suite, shapes_model_suite

    args.model = args.model or str(BUNDLED_MODEL)
    categories = sorted({entry.category for entry in shapes_model_suite()})
    for name in args.category or []:
        if name not in categories:
            parser.error(f"--category must be one of {categories}, got {name!r}")

    torch.manual_seed(0)
    if args.checkpoint:
        from clipcond.training.diffusion.config import TrainDiffusionConfig
        from clipcond.training.diffusion.setup import pipeline_from_checkpoint

        pipe = pipeline_from_checkpoint(TrainDiffusionConfig.from_yaml(args.config), args.checkpoint)
        args.model = args.checkpoint
    else:
        pipe = load_pipeline(args.model, torch_dtype=torch.float32)
    if args.scheduler:
        from clipcond.training.diffusion.config import scheduler_class

        pipe.scheduler = scheduler_class(args.scheduler, "--scheduler").from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    indexed = [
        (k, entry)
        for k, entry in enumerate(shapes_model_suite())
        if not args.category or entry.category in args.category
    ]
    suite = [entry for _, entry in indexed]
    prompts, seeds = [entry.prompt for entry in suite], [k for k, _ in indexed]
    lines = [
        "# The shapes diffusion model, judged",
        "",
        f"model: `{Path(args.model).resolve().relative_to(REPO) if Path(args.model).resolve().is_relative_to(REPO) else args.model}`, "
        f"{args.steps} steps of {type(pipe.scheduler).__name__}, one image per suite entry (seed = entry index), "
        f"suite `shapes_model_suite()`{' (categories: ' + ', '.join(args.category) + ')' if args.category else ''}: "
        f"{len(suite)} prompts. Rates are fractions of images.",
        "",
        "Goals (issue 4): single object colour+shape >= 90% (`single`, objects), relation >= 80% "
        "(`relation`, relation: both objects found and placed as stated), two objects with both bindings "
        ">= 50% (`two_objects`, objects). `heldout_single` asks for the three colour-shape combinations "
        "training never showed (composition; no goal).",
    ]
    for guidance in args.guidance:
        start = time.perf_counter()
        images = generate(pipe, prompts, seeds, args.steps, guidance, args.batch)
        seconds = time.perf_counter() - start
        report = judge_suite(images, suite)
        verdicts = [
            f"{name} {report.categories[name].rates[check]:.1%} (goal {goal:.0%}: "
            f"{'met' if report.categories[name].rates[check] >= goal else 'NOT met'})"
            for name, (check, goal) in GOALS.items()
            if name in report.categories
        ]
        lines += [
            "",
            f"## guidance {guidance:g}",
            "",
            f"{len(images)} images in {seconds:.0f} s on this machine's CPU",
            "",
            *table(report),
            "",
            "; ".join(verdicts),
        ]
        print("\n".join(lines[-len(report.categories) - 5 :]), flush=True)

    if not args.grid:
        write_result(args.output, "\n".join(lines) + "\n")
        print(f"wrote {args.output}")
        return
    guidance = args.guidance[0]
    rows = [generate(pipe, [prompt] * 6, list(range(6)), args.steps, guidance, 6) for prompt in GRID_PROMPTS]
    grid = make_image_grid(
        [image.resize((96, 96), Image.NEAREST) for row in rows for image in row], rows=len(GRID_PROMPTS), cols=6
    )
    Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.grid)
    lines += [
        "",
        f"grid (`{Path(args.grid).name}`, guidance {guidance:g}, seeds 0-5, rows): " + "; ".join(GRID_PROMPTS),
    ]
    write_result(args.output, "\n".join(lines) + "\n")
    print(f"wrote {args.output} and {args.grid}")


if __name__ == "__main__":
    main()
