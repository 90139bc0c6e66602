"""``clipcond experiment CONFIG.yaml``: run prompt suites through conditioning setups and
write the report (`clipcond.lab.runner`, `clipcond.lab.report`).

First the setups' prepare steps run (`clipcond.lab.prepare`: the training commands that make
missing models, each resumable). Every check (config keys and values, suite files, prepare
steps' arguments, configs and inputs, pipeline and CLIP folders, image sizes, ``--device``)
runs before the first training step or image, and ``--check`` runs them all. Re-running the
same command resumes: made models and finished images are not made again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clipcond.errors import RunFailed, interrupt_exit_code, one_line, stopped_by, user_errors

if TYPE_CHECKING:
    from clipcond.lab.config import ExperimentConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `experiment`."""
    parser.add_argument("config", help="experiment YAML (clipcond.lab.config.ExperimentConfig)")
    parser.add_argument("--device", help='where pipelines run, e.g. "cpu" or "cuda" (default: cuda when available)')
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="draw no progress bars (the run's, and diffusers' and transformers' loading bars)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="prepare steps that do not need each other run this many at a time, sharing the CPU "
        "cores; their logs go to OUTPUT_DIR/prepare-logs (default: 1, in order)",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--check",
        action="store_true",
        help="check the config, its files, the prepare steps' arguments and --device, print the plan "
        "(prepare steps and images), run nothing",
    )
    what.add_argument("--report-only", action="store_true", help="rewrite the report from the results so far")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _check_models(config: ExperimentConfig) -> None:
    """`check_loadable` on every model folder of `config` that exists (a prepare step makes the others)."""
    from clipcond.lab.loading import check_loadable

    folders = {f"setup {setup.name}: pipeline": setup.pipeline for setup in config.setups}
    if "clip_score" in config.metrics:
        folders["clip_score_model"] = config.clip_score_model
    for what, folder in folders.items():
        if Path(folder).is_dir():
            check_loadable(folder, what)


def run(args: argparse.Namespace) -> int:
    """Check the config, then generate, measure and report. Returns the exit status."""

    from clipcond.devices import resolve_device
    from clipcond.lab.config import check_experiment, load_experiment_config
    from clipcond.lab.loading import ModelLoadFailed
    from clipcond.lab.prepare import check_steps, pending_steps, run_steps, unique_steps
    from clipcond.lab.report import check_report_dependencies, write_report
    from clipcond.lab.results import RESULTS_NAME, read_results
    from clipcond.lab.run_folder import check_run_folder
    from clipcond.lab.runner import run_experiment
    from clipcond.output_paths import check_output_location
    from clipcond.training.run_lock import RunFolderInUse

    # the config, its files and the install: the message says what to fix
    with user_errors(FileNotFoundError, ValueError, ImportError):
        config = load_experiment_config(Path(args.config))
        if args.report_only:
            print(f"wrote {write_report(config.output_dir)}")
            return 0
        steps = unique_steps([setup.prepare for setup in config.setups])
        check_steps(steps)
        if Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
            raise ValueError(f"{args.config}: output_dir {config.output_dir} is a file, not a run folder")
        check_output_location(Path(config.output_dir), f"{args.config}: output_dir")
        check_run_folder(config, f"{args.config}: output_dir")
        suites = check_experiment(config, allow_pending=True)
        if not args.check:
            check_report_dependencies()
    with user_errors(ValueError, context="--device: "):
        device = resolve_device(args.device)
    if args.check:
        with user_errors(ModelLoadFailed):
            _check_models(config)
        for step in pending_steps(steps):
            print(f"prepare: clipcond {step.command} {' '.join(step.args)}  (creates {step.creates})")
        prompts = sum(len(suite.prompts) for suite in suites)
        total = prompts * len(config.seeds) * len(config.setups)
        print(
            f"{config.name}: {len(suites)} suite(s), {prompts} prompts x {len(config.seeds)} seed(s) x "
            f"{len(config.setups)} setup(s) = {total} images -> {config.output_dir}"
        )
        return 0
    try:
        with user_errors(RuntimeError, error=RunFailed):  # a prepare step failed; its own error is above
            run_steps(steps, jobs=args.jobs, log_dir=Path(config.output_dir) / "prepare-logs")
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: the steps are stopped (`run_steps`)
        # each runs with --resume, so it goes on from its last checkpoint
        print(f"{stopped_by(interrupt)} during the prepare steps; re-run to resume them", file=sys.stderr)
        return interrupt_exit_code(interrupt)
    try:
        # a damaged model, found before any result is dropped; another live run in the folder
        with user_errors(ModelLoadFailed, RunFolderInUse, error=RunFailed):
            output = run_experiment(config, show_progress=not args.no_progress, device=device)
    except KeyboardInterrupt as interrupt:  # results.jsonl holds every finished batch, whole (`clipcond.lab.results`)
        kept = len(read_results(Path(config.output_dir) / RESULTS_NAME)[0])
        print(f"{stopped_by(interrupt)}; {kept} results kept, re-run to continue", file=sys.stderr)
        return interrupt_exit_code(interrupt)
    except OSError as error:  # a full disk or a read-only folder: what is on disk stays whole
        where = error.filename or config.output_dir  # a failed write() names no file: the run folder
        raise RunFailed(f"{where}: {error.strerror or one_line(error)} (writing the experiment's results)") from error
    print(f"wrote {output / 'report.md'}")
    return 0
