"""Command-line entry of the diffusion loop (``clipcond train-diffusion`` and
``accelerate launch -m clipcond.training.train_diffusion``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clipcond.errors import add_debug_argument, run_command
from clipcond.training.command import add_training_arguments, run_training_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `train-diffusion`."""
    add_training_arguments(parser, "run config YAML (TrainDiffusionConfig)")


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print where the pipeline went. Returns the exit status."""
    from clipcond.errors import RunFailed, user_errors
    from clipcond.training.data.embedding_shards import EmbeddingShardError, MissingRecord
    from clipcond.training.diffusion.config import TrainDiffusionConfig
    from clipcond.training.diffusion.loop import train_diffusion

    def train(config: TrainDiffusionConfig, _: object) -> object:
        # data.embeddings, data.latents: stale or unreadable shards are found before any step (a
        # usage error); a caption or image missing from them stops the run at its step (resumable
        # once encoded)
        with user_errors(EmbeddingShardError), user_errors(MissingRecord, error=RunFailed):
            return train_diffusion(config, resume=args.resume, show_progress=not args.no_progress)

    return run_training_command(
        args,
        TrainDiffusionConfig,
        train,
        lambda result: [f"pipeline saved to {result.pipeline_dir} after {result.steps} steps (loss {result.loss:.4f})"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m clipcond.training.train_diffusion --config ...`."""
    parser = argparse.ArgumentParser(
        prog="train_diffusion", description="diffusion training against a frozen conditioner"
    )
    add_arguments(parser)
    add_debug_argument(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
