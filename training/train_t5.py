"""Command-line entry of T5 pretraining, for ``accelerate launch -m clipcond.training.train_t5``.

``clipcond train-t5`` runs the same function; both take ``--config`` and ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clipcond.errors import add_debug_argument, run_command
from clipcond.training.command import add_training_arguments, run_training_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `train-t5`."""
    add_training_arguments(parser, "run config YAML (e.g. configs/train/t5-tiny-shapes.yaml)")


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print where the encoder went and its held-out scores. Returns the exit status."""
    from clipcond.training.t5.config import TrainT5Config
    from clipcond.training.t5.loop import train_t5

    return run_training_command(
        args,
        TrainT5Config,
        lambda config, _: train_t5(config, resume=args.resume, show_progress=not args.no_progress),
        lambda result: [
            f"T5 encoder and tokenizer saved to {result.model_dir} after {result.steps} steps (loss {result.loss:.4f})",
            "held-out: " + ", ".join(f"{key} {value:.4f}" for key, value in result.evaluation.items()),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m clipcond.training.train_t5 --config ...`."""
    parser = argparse.ArgumentParser(prog="train_t5", description="span-corruption pretraining of a small T5")
    add_arguments(parser)
    add_debug_argument(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
