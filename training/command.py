"""What the training commands (``train-clip``, ``train-diffusion``, ``train-t5``) share: their
options (`add_training_arguments`: ``--config``, ``--resume``, ``--no-progress`` and the
overrides ``--output-dir``, ``--steps``, ``--set KEY=VALUE`` with any config key, dotted for
nested sections, value read as YAML) and the body of their `run` (`run_training_command`).

One config file can then drive several runs, e.g. the setups of an experiment:
``clipcond train-diffusion --config base.yaml --set text_encoder=runs/clip-b/model --output-dir runs/b``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from clipcond.config import apply_overrides
from clipcond.errors import RunFailed, UsageError, refused_write, user_errors

T = TypeVar("T")


def add_training_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """The options of a training command: ``--config`` (described by `config_help`),
    ``--resume``, ``--no-progress`` and the overrides."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="draw no progress bars (the run's, and diffusers' and transformers' loading bars)",
    )
    add_override_arguments(parser)


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--output-dir``, ``--steps`` and ``--set`` to a training command's parser."""
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument("--steps", type=int, help="override the config's steps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key (dotted for nested sections; VALUE is YAML); repeatable",
    )


def config_with_overrides(config: T, args: argparse.Namespace) -> T:
    """`config` with the command line's overrides applied and validated; an error names the
    options that were given (``--steps: ...``, not ``--set`` when no ``--set`` was)."""
    assignments = list(args.set)
    options = ["--set"] if assignments else []
    if args.output_dir:
        assignments.append(f"output_dir={args.output_dir}")
        options.append("--output-dir")
    if args.steps is not None:
        assignments.append(f"steps={args.steps}")
        options.append("--steps")
    return apply_overrides(config, assignments, source="/".join(options)) if assignments else config


def run_training_command(
    args: argparse.Namespace,
    config_class: type,
    train: Callable[[Any, Path], Any],
    report: Callable[[Any], list[str]],
) -> int:
    """The body of every training command: load `--config` as `config_class`, apply the
    overrides, check the data files it names and the run folder, call `train(config,
    config_dir)`, print `report(result)`.

    Returns 0, also when a resumed run had already finished (said in one line).

    Raises:
        UsageError: (exit 2, before any work) the config file is missing, is not valid YAML
            (or holds a tag such as ``!!python``), has a wrong key or value, or names missing
            data files; an override is wrong; the machine cannot run it (`check_runtime`: fp16
            without a CUDA GPU, log_with tensorboard without tensorboard installed); the run
            folder cannot be used as asked (it holds another run and ``--resume`` is not given,
            the config changed, another live run holds it, no checkpoint of it can be loaded:
            `RunFolderError`); a file or folder
            the config names does not exist, or the run's parts cannot be built as it asks
            (`RunSetupError`, before the first step: LoRA targets matching no module; parts
            that do not fit together, such as `train: adapter` without a projection or a UNet
            that reads tokens of another width or needs inputs the loop does not give (SDXL's
            pooled embeddings and time ids); or a model folder it names that cannot be read,
            with truncated or empty weights or a config that does not parse, the key and the
            folder named; the run folder is left as it was).
        RunFailed: (exit 1) the loss diverged; the message names the last good checkpoint. Or
            the run folder was removed while the run wrote in it (`refused_write`).
    """

    from clipcond.progress_bars import library_progress_bars
    from clipcond.training.loop import RunSetupError, TrainingDiverged, check_runtime
    from clipcond.training.run_folder import RunAlreadyFinished, RunFolderError, check_output_dir

    path = Path(args.config)
    if not path.is_file():
        raise UsageError(f"--config: no such file {path}")
    with user_errors(FileNotFoundError, ValueError, TypeError):  # their messages name the file
        config = config_with_overrides(config_class.from_yaml(path), args)
        config.data.check_files()
        # what the machine lacks for this config (fp16 without a GPU, tensorboard not installed)
        check_runtime(config.mixed_precision, getattr(config, "log_with", None))
    # The run folder is the user's too: another run in it, a changed config on --resume, or a
    # config snapshot that is not YAML any more (each a `RunFolderError`).
    with user_errors(RunFolderError):
        check_output_dir(config, args.resume)
    # A path the config names (a text encoder, a checkpoint to start from) is checked as the
    # objective builds its parts, before the first step; a live run holding the folder, or no
    # loadable checkpoint, shows once the run starts.
    try:
        with (
            user_errors(FileNotFoundError, RunFolderError, RunSetupError),
            user_errors(TrainingDiverged, error=RunFailed),
            library_progress_bars(not args.no_progress),
        ):
            try:
                result = train(config, path.parent)
            except FileNotFoundError as error:  # the run folder removed under the run: not a usage error
                gone = refused_write(error, args)
                if gone is None:
                    raise
                raise gone from error
    except RunAlreadyFinished as done:
        _print_once(str(done))
        return 0
    for line in report(result):
        _print_once(line)
    return 0


def _print_once(line: str) -> None:
    """Print `line` from the main process only (under ``accelerate launch`` every process runs
    the command; one report is enough)."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(line)
