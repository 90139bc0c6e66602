"""The `clipcond` command.

Subcommands import their machinery lazily (training code is not part of the core), so
``clipcond --help`` is fast and the core never imports `clipcond.training` at import time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _train_clip(args: argparse.Namespace) -> int:
    from clipcond.training.train_clip import run

    return run(args)


def _eval_clip(args: argparse.Namespace) -> int:
    from clipcond.training.eval_clip import run

    return run(args)


def _convert_clip(args: argparse.Namespace) -> int:
    from clipcond.training.convert_clip import run

    return run(args)


def _train_diffusion(args: argparse.Namespace) -> int:
    from clipcond.training.train_diffusion import run

    return run(args)


def _generate(args: argparse.Namespace) -> int:
    from clipcond.pipelines.generate import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from clipcond.training import convert_clip, eval_clip, train_clip, train_diffusion

    parser = argparse.ArgumentParser(prog="clipcond", description="CLIP (and T5) text conditioning for diffusers")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train-clip", help="pretrain or fine-tune CLIP towers (contrastive)")
    train_clip.add_arguments(train)
    train.set_defaults(handler=_train_clip)
    evaluate = commands.add_parser("eval-clip", help="zero-shot and retrieval evaluation of a saved CLIP")
    eval_clip.add_arguments(evaluate)
    evaluate.set_defaults(handler=_eval_clip)
    convert = commands.add_parser("convert-clip", help="OpenAI / open_clip ViT checkpoint -> a clipcond model folder")
    convert_clip.add_arguments(convert)
    convert.set_defaults(handler=_convert_clip)
    diffusion = commands.add_parser("train-diffusion", help="train a UNet or LoRA against a frozen CLIP text tower")
    train_diffusion.add_arguments(diffusion)
    diffusion.set_defaults(handler=_train_diffusion)
    from clipcond.pipelines import generate

    make = commands.add_parser("generate", help="prompt -> PNG with a saved pipeline")
    generate.add_arguments(make)
    make.set_defaults(handler=_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `clipcond` console script."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
