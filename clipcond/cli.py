"""The `clipcond` command.

Each subcommand lives in a module with `add_arguments(parser)` and `run(args) -> int`; the
modules import their machinery inside `run`, so ``clipcond --help`` loads neither torch nor
diffusers (tests/test_imports.py) and the core never imports training code at import time.

A mistake the user can fix is raised as a `clipcond.errors.UserError` and printed here as one
line, ``error: ...``, with exit status 2 for a wrong command line or file (as argparse's own
errors) and 1 for a run that failed; ``--debug`` shows its traceback. Ctrl-C and SIGTERM print
the command's own cleanup line, then ``interrupted`` or ``terminated``, and exit 130 or 143
(`clipcond.errors.run_command`). A write the machine refused (a full disk, a quota, an
unwritable folder) is one line too, exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from clipcond.errors import add_debug_argument, run_command

# (name, module, one-line help)
SUBCOMMANDS = (
    ("train-clip", "clipcond.training.train_clip", "pretrain or fine-tune CLIP towers (contrastive)"),
    ("eval-clip", "clipcond.training.clip.eval_command", "zero-shot and retrieval evaluation of a saved CLIP"),
    (
        "convert-clip",
        "clipcond.training.clip.convert",
        "OpenAI / open_clip / Long-CLIP checkpoint -> a clipcond folder",
    ),
    ("init-clip", "clipcond.training.clip.random_init", "a CLIP with fresh random weights (the untrained control)"),
    (
        "encode",
        "clipcond.training.encode_command",
        "pre-encode a dataset's captions (data.embeddings) and images (data.latents) for train-diffusion",
    ),
    (
        "train-diffusion",
        "clipcond.training.train_diffusion",
        "train a UNet, LoRA or a projection adapter against frozen text encoders",
    ),
    ("train-t5", "clipcond.training.train_t5", "pretrain a small T5 encoder on captions (span corruption)"),
    ("generate", "clipcond.pipelines.generate", "prompt (and --image / --mask) -> PNG with a saved pipeline"),
    ("experiment", "clipcond.lab.experiment", "run a prompt suite through conditioning setups and write a report"),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="clipcond", description="CLIP (and T5) text conditioning for diffusers")
    add_debug_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module_name, summary in SUBCOMMANDS:
        module = importlib.import_module(module_name)
        subparser = commands.add_parser(name, help=summary)
        module.add_arguments(subparser)
        add_debug_argument(subparser, top_level=False)
        subparser.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `clipcond` console script: the subcommand's exit status."""
    args = build_parser().parse_args(argv)
    return run_command(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
