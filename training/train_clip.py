"""Command-line entry of the contrastive loop, for ``accelerate launch -m clipcond.training.train_clip``.

``clipcond train-clip`` runs the same function; both take ``--config`` and ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clipcond.errors import add_debug_argument, run_command
from clipcond.training.command import add_training_arguments, run_training_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `train-clip`."""
    add_training_arguments(parser, "run config YAML (e.g. configs/train/clip-tiny-shapes.yaml)")


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print where the model went. Returns the exit status."""
    from clipcond.training.clip.config import TrainClipConfig
    from clipcond.training.clip.loop import train_clip

    def report(result) -> list[str]:
        lines = [f"model saved to {result.model_dir} after {result.steps} steps (loss {result.loss:.4f})"]
        if result.evaluation:
            lines.append("zero-shot: " + ", ".join(f"{key} {value:.3f}" for key, value in result.evaluation.items()))
        return lines

    return run_training_command(
        args,
        TrainClipConfig,
        lambda config, folder: train_clip(
            config, resume=args.resume, config_dir=folder, show_progress=not args.no_progress
        ),
        report,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m clipcond.training.train_clip --config ...`."""
    parser = argparse.ArgumentParser(prog="train_clip", description="contrastive CLIP training")
    add_arguments(parser)
    add_debug_argument(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
