"""Pretrain clip-tiny from scratch on the shapes stream on this CPU and record zero-shot accuracy.

    python benchmarks/clip_tiny_shapes.py            # trains (configs/train/clip-tiny-shapes.yaml), then evaluates
    python benchmarks/clip_tiny_shapes.py --reuse    # evaluates the run already in runs/clip-tiny-shapes
    python benchmarks/clip_tiny_shapes.py --output benchmarks/results/clip_tiny_shapes.md   # update the recorded result

Writes runs/benchmarks/clip_tiny_shapes.md (or --output): wall time, the zero-shot curve logged during
training, and a final evaluation on 50 fresh images per colour-shape class (all 18 classes in
the classifier; accuracy over the 15 seen and over the 3 held-out combinations).
Goals (issue 3): >= 90% top-1 on the colour x shape classes, >= 80% on held-out combinations,
in at most 15 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from result_paths import REPO, add_output_argument, write_result

CONFIG = REPO / "configs" / "train" / "clip-tiny-shapes.yaml"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help="evaluate the existing run instead of training")
    parser.add_argument("--train-seconds", type=float, help="with --reuse: the wall time the run took")
    parser.add_argument(
        "--images-per-class", type=int, default=50, help="fresh images per class in the final evaluation (default 50)"
    )
    add_output_argument(parser, "clip_tiny_shapes.md", "report")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train_seconds is not None and not args.reuse:
        parser.error("--train-seconds goes with --reuse (without it, the training run is timed)")
    if args.images_per_class < 1:
        parser.error(f"--images-per-class must be >= 1, got {args.images_per_class}")
    run_dir = REPO / "runs" / "clip-tiny-shapes"
    seconds = args.train_seconds
    if not args.reuse:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "clipcond.cli", "train-clip", "--config", str(CONFIG), "--no-progress"],
            cwd=REPO,
            check=True,
        )
        seconds = time.perf_counter() - start
    evaluation = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipcond.cli",
            "eval-clip",
            "--model",
            str(run_dir / "model"),
            "--images-per-class",
            str(args.images_per_class),
            "--seed",
            "2026",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    metrics = json.loads(evaluation.stdout)
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "eval/top1" in line]
    zero_shot = metrics["zero_shot"]
    lines = [
        "# clip-tiny pretrained from scratch on the shapes stream (CPU)",
        "",
        f"config: `configs/train/clip-tiny-shapes.yaml` (model `configs/models/clip-tiny.yaml`), "
        f"wall time of the training command: {seconds / 60:.1f} min"
        if seconds
        else "wall time: not measured",
        "",
        "zero-shot during training (20 images per class):",
        "",
        "| step | top-1 (18 classes) | seen combinations | held-out combinations |",
        "|---|---|---|---|",
        *(
            f"| {r['step']} | {r['eval/top1']:.3f} | {r['eval/seen_top1']:.3f} | {r['eval/heldout_top1']:.3f} |"
            for r in curve
        ),
        "",
        f"final evaluation, {args.images_per_class} fresh images per class (seed 2026):",
        "",
        f"- top-1 over all 18 colour x shape classes: **{zero_shot['top1']:.3f}** (goal >= 0.90), "
        f"top-5 {zero_shot['top5']:.3f}, mean per-class recall {zero_shot['mean_per_class_recall']:.3f}",
        f"- seen combinations: {zero_shot['seen_top1']:.3f}; held-out combinations: **{zero_shot['heldout_top1']:.3f}** (goal >= 0.80)",
        "- retrieval on the shapes stream (1000 pairs, captions repeat so recall is bounded): "
        + ", ".join(f"{k} {v:.3f}" for k, v in metrics["retrieval"].items() if "@" in k),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    print(f"wrote {write_result(args.output, text)}")


if __name__ == "__main__":
    main()
