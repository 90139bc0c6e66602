"""``clipcond init-clip``: a CLIP two-tower with fresh random weights, saved as a model folder.

The control of a text-encoder comparison: the same architecture as a trained tower, never
trained. ``clipcond init-clip --model configs/models/clip-tiny.yaml --seed 0 -o runs/clip-random/model``
writes the folder layout `save_clip` writes (its `text_encoder/` conditions a UNet like any other).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipcond.errors import UsageError, user_errors
from clipcond.output_paths import check_output_location, nameable_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `init-clip`."""
    parser.add_argument("--model", required=True, help="model YAML (e.g. configs/models/clip-tiny.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("-o", "--output", required=True, help="model folder to write (must not exist)")


def init_clip(model_yaml: str | Path, output: str | Path, seed: int = 0) -> Path:
    """Build the two-tower described by `model_yaml` with weights drawn from `seed` and save it
    to `output` (refused if it exists). Returns the folder.

    The folder is written whole or not at all (`folder_writes.writing_new_folder`: a hidden
    sibling renamed into place when complete), so an interrupted save leaves no `output` to
    block a rerun or to pass for a finished prepare step of an experiment; of two runs into one
    `output` at once, the first to finish keeps it and the other raises `FolderTaken` (a
    `FileExistsError`). The hidden siblings that killed saves left (their process gone) are
    deleted first.
    """
    import torch

    from clipcond.models import ClipTwoTower, save_clip
    from clipcond.models.config import load_model_config
    from clipcond.training.folder_writes import writing_new_folder

    output = Path(output)
    if output.exists():
        raise FileExistsError(f"-o/--output: {output} already exists; choose another folder")
    config = load_model_config(model_yaml)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = ClipTwoTower(config)
    finally:
        torch.random.set_rng_state(generator_state)
    with writing_new_folder(output) as temporary:
        save_clip(model.eval(), temporary)
    return output


def run(args: argparse.Namespace) -> int:
    """Check the arguments, build, save. Returns the exit status."""

    from clipcond.models.config import load_model_config

    if not -(2**63) <= args.seed <= 2**64 - 1:  # what torch.manual_seed takes
        raise UsageError(f"--seed must be in [-2**63, 2**64 - 1], got {args.seed}")
    if not nameable_path(args.model, "--model").is_file():
        raise UsageError(f"--model: no such file {args.model}")
    with user_errors(ValueError, TypeError):  # the messages name the file and the key
        load_model_config(args.model)
    output = check_output_location(args.output, "-o/--output")
    if output.exists():
        raise UsageError(f"-o/--output {output} already exists; choose another folder")
    with user_errors(FileExistsError, context="-o/--output: "):  # another run put it in place meanwhile
        folder = init_clip(args.model, args.output, args.seed)
    print(f"random-init CLIP saved to {folder}")
    return 0
