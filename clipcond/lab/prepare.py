"""Preparing setups: the training commands that make an experiment's models, run once.

A setup may list the commands that produce its pipeline (and the encoders it needs)::

    setups:
      - name: clip
        pipeline: runs/lab/clip/pipeline
        prepare:
          - command: train-clip
            args: [--config, configs/train/clip-tiny-shapes.yaml, --output-dir, runs/lab/clip]
            creates: runs/lab/clip/model
          - command: train-diffusion
            args: [--config, configs/experiments/encoders-shapes/diffusion.yaml,
                   --set, text_encoder=runs/lab/clip/model, --output-dir, runs/lab/clip-unet]
            creates: runs/lab/clip-unet/pipeline

A step's arguments are parsed by its command's own parser, and its config loaded with its
``--set`` overrides, when the experiment is checked (``--check`` too), so a typo fails before
the first step runs, not when its turn comes.
A step runs (as ``python -m clipcond.cli <command> <args>``, in its own process) only when
its `creates` path is missing, so one command reproduces a whole experiment and re-running it
skips what exists. Training commands get ``--resume``: a step stopped midway continues from
its last checkpoint. Steps shared by several setups (the same `creates`) run once.

With ``jobs > 1`` independent steps run side by side. A step waits for every earlier step
whose `creates` path it names, in its arguments or in the text of the config file it reads.
A step gets the cores shared among the steps that start or run beside it (``cpu_count // n``
torch threads, n <= jobs; a step that will run alone gets them all; ``OMP_NUM_THREADS``, when
set, wins) and writes its output to a log file, since interleaved progress logs cannot be read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn

from clipcond.errors import Terminated

# Commands a step may run; the training ones are resumable.
PREPARE_COMMANDS: tuple[str, ...] = ("init-clip", "train-clip", "train-t5", "train-diffusion")
_RESUMABLE = ("train-clip", "train-t5", "train-diffusion")


@dataclass
class PrepareStep:
    """One command that makes a model a setup needs.

    Attributes:
        command: a `clipcond` subcommand from `PREPARE_COMMANDS`.
        args: its arguments, as on the command line (paths relative to the working directory).
        creates: the path the command makes (a model or pipeline folder); the step is
            skipped when it exists.
    """

    command: Literal["init-clip", "train-clip", "train-t5", "train-diffusion"]
    creates: str
    args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.command not in PREPARE_COMMANDS:
            raise ValueError(f"prepare command must be one of {PREPARE_COMMANDS}, got {self.command!r}")
        if not self.creates.strip():
            raise ValueError(f"prepare step {self.command!r}: `creates` must name the path it makes")
        for flag in ("--config", "--model"):
            if flag in self.args:
                position = self.args.index(flag) + 1
                if position >= len(self.args):
                    raise ValueError(f"prepare step {self.command!r}: {flag} needs a value")

    def command_line(self) -> list[str]:
        """The process to run."""
        resume = ["--resume"] if self.command in _RESUMABLE else []
        return [sys.executable, "-m", "clipcond.cli", self.command, *self.args, *resume]

    def input_files(self) -> list[Path]:
        """The config or model YAML files the step names (checked before anything runs)."""
        return [Path(self.args[self.args.index(flag) + 1]) for flag in ("--config", "--model") if flag in self.args]


def unique_steps(step_lists: Sequence[Sequence[PrepareStep]]) -> list[PrepareStep]:
    """The steps of every setup in order, each `creates` once (a different command for the
    same path is an error)."""
    steps: dict[str, PrepareStep] = {}
    for step in (s for group in step_lists for s in group):
        known = steps.get(step.creates)
        if known is None:
            steps[step.creates] = step
        elif (known.command, known.args) != (step.command, step.args):
            raise ValueError(f"two different prepare steps create {step.creates}: {known.command} and {step.command}")
    return list(steps.values())


def check_steps(steps: Sequence[PrepareStep]) -> None:
    """Every step's arguments parse as its command parses them, every file the steps name
    exists, and each step's config loads with the step's overrides (before any training starts).

    Raises:
        ValueError: arguments the command would refuse (argparse's message, the step named),
            or a config key or value (an override's too) its command would refuse.
        FileNotFoundError: a config or model file the step names is missing.
    """
    for step in steps:
        where = f"prepare step {step.command} (creates {step.creates})"
        arguments = _parse_arguments(step, where)
        for path in step.input_files():
            if not path.is_file():
                raise FileNotFoundError(f"{where}: no such file {path}")
        _load_config(step, arguments, where)


class _StepParser(argparse.ArgumentParser):
    """A command's own parser that raises, where the command line's would print and exit."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _parse_arguments(step: PrepareStep, where: str) -> argparse.Namespace:
    """Parse the step's arguments with its command's own `add_arguments` (the parser the
    ``clipcond`` command builds for it)."""
    from clipcond.errors import add_debug_argument
    from clipcond.training import train_clip, train_diffusion, train_t5
    from clipcond.training.clip import random_init

    modules = {
        "init-clip": random_init,
        "train-clip": train_clip,
        "train-t5": train_t5,
        "train-diffusion": train_diffusion,
    }
    parser = _StepParser(prog=f"clipcond {step.command}", add_help=False, exit_on_error=False)
    modules[step.command].add_arguments(parser)
    add_debug_argument(parser, top_level=False)
    try:
        return parser.parse_args(step.command_line()[4:])  # after `python -m clipcond.cli <command>`
    except (ValueError, argparse.ArgumentError) as error:
        raise ValueError(f"{where}: {error} (in args: {' '.join(step.args)})") from error


def _load_config(step: PrepareStep, arguments: argparse.Namespace, where: str) -> None:
    """Load the step's config as its command will: a training config with the step's
    ``--set``, ``--steps`` and ``--output-dir`` applied, or init-clip's model YAML."""
    from clipcond.models.config import load_model_config
    from clipcond.training.clip.config import TrainClipConfig
    from clipcond.training.command import config_with_overrides
    from clipcond.training.diffusion.config import TrainDiffusionConfig
    from clipcond.training.t5.config import TrainT5Config

    classes = {"train-clip": TrainClipConfig, "train-t5": TrainT5Config, "train-diffusion": TrainDiffusionConfig}
    try:
        if step.command == "init-clip":
            load_model_config(arguments.model)
        else:
            config_with_overrides(classes[step.command].from_yaml(arguments.config), arguments)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from error


def pending_steps(steps: Sequence[PrepareStep]) -> list[PrepareStep]:
    """The steps whose `creates` path does not exist yet."""
    return [step for step in steps if not Path(step.creates).exists()]


def step_dependencies(steps: Sequence[PrepareStep]) -> list[set[int]]:
    """For each step, the indices of the earlier steps it needs.

    A step needs an earlier one when it names that step's `creates` path, in an argument
    (``text_encoder=runs/clip/model``) or in the text of a config file it reads (`input_files`).
    Only earlier steps count: the listed order is already one that works one at a time. A
    mention that is not really the path (``/elsewhere/runs/clip``) only makes a step wait.
    """
    needs: list[set[int]] = []
    for index, step in enumerate(steps):
        texts = list(step.args) + [path.read_text() for path in step.input_files() if path.is_file()]
        needs.append(
            {earlier for earlier in range(index) if any(_names_path(text, steps[earlier].creates) for text in texts)}
        )
    return needs


def _names_path(text: str, path: str) -> bool:
    """Whether `text` mentions `path` (as written, or normalised: ``./runs/x/`` is ``runs/x``)
    as a whole path or a folder above one: ``runs/clip`` is in ``runs/clip/model``, not in
    ``runs/clip-large``."""
    for spelling in {path, os.path.normpath(path)}:
        if re.search(rf"(?<![\w.-]){re.escape(spelling)}(?![\w.-])", text):
            return True
    return False


def run_steps(steps: Sequence[PrepareStep], jobs: int = 1, log_dir: str | Path | None = None) -> None:
    """Run every pending step, each in its own process, at most `jobs` at a time.

    Args:
        steps: from `unique_steps`, in an order that works one at a time.
        jobs: how many steps may run side by side (>= 1). With 1 the steps run in order and
            write to this terminal; with more, independent steps overlap (`step_dependencies`),
            sharing the cores (module docstring), each with its output in `log_dir`.
        log_dir: where the logs of side-by-side steps go (``<n>-<command>.log``); needed when
            ``jobs > 1``.

    Raises:
        ValueError: jobs < 1, or jobs > 1 without a log_dir.
        KeyboardInterrupt: Ctrl-C; the running steps, which the terminal's Ctrl-C reached as
            well, are given `STOP_GRACE_S` to end by themselves, then terminated. On a
            `clipcond.errors.Terminated` (SIGTERM) they are terminated at once; a step, a
            ``clipcond`` command, takes SIGTERM through its cleanup as it takes Ctrl-C.
        RuntimeError: a command failed (the others running are stopped; each resumes from its
            last checkpoint next time), or did not make its `creates` path.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if jobs > 1 and log_dir is None:
        raise ValueError("jobs > 1 needs a log_dir for the steps' output")
    check_steps(steps)
    todo = pending_steps(steps)
    needs = step_dependencies(todo)
    if jobs > 1:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    waiting = list(range(len(todo)))
    running: dict[int, tuple[subprocess.Popen, Path | None]] = {}
    done: set[int] = set()
    try:
        while waiting or running:
            # reap the steps that ended first, so a step started now shares the cores only with
            # those really still running
            for index, (process, log) in list(running.items()):
                status = process.poll() if jobs > 1 else process.wait()
                if status is None:
                    continue
                del running[index]
                _check_finished(todo[index], status, log)
                done.add(index)
                if jobs > 1:
                    print(
                        f"[prepare {index + 1}/{len(todo)}] done: clipcond {todo[index].command} "
                        f"(creates {todo[index].creates})",
                        flush=True,
                    )
            ready = [index for index in waiting if needs[index] <= done]
            while ready and len(running) < jobs:
                side_by_side = min(jobs, len(running) + len(ready))  # this step and those running beside it
                index = ready.pop(0)
                waiting.remove(index)
                env = _child_environment(jobs, side_by_side)
                running[index] = _start(todo[index], index + 1, len(todo), env, None if jobs == 1 else Path(log_dir))
            if running and jobs > 1:
                time.sleep(0.2)
    except KeyboardInterrupt as interrupt:
        if not isinstance(interrupt, Terminated):  # a SIGTERM reaches this process alone
            _let_end(running.values(), STOP_GRACE_S)
        raise
    finally:
        for process, _ in running.values():  # only after a failure or an interrupt
            if process.poll() is None:
                process.terminate()
        for process, _ in running.values():
            process.wait()


# How long a Ctrl-C waits for the running steps, which the terminal interrupted too, to end by
# themselves before they are terminated: their cleanup (a run lock released, a run that never
# checkpointed set aside) must not be cut short.
STOP_GRACE_S = 30.0


def _let_end(processes: Iterable[tuple[subprocess.Popen, Path | None]], seconds: float) -> None:
    """Wait until every process has ended, for at most `seconds` in all."""
    deadline = time.monotonic() + seconds
    for process, _ in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))


def _child_environment(jobs: int, side_by_side: int) -> dict[str, str] | None:
    """The environment of a step started with `side_by_side - 1` others running or ready to run
    beside it: the cores shared among them, unless the user chose (``OMP_NUM_THREADS``)."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, side_by_side)))}


def _start(step: PrepareStep, number: int, total: int, env: dict[str, str] | None, log_dir: Path | None):
    line = f"[prepare {number}/{total}] clipcond {step.command} {' '.join(step.args)}"
    if log_dir is None:
        print(line, flush=True)
        return subprocess.Popen(step.command_line()), None
    log = log_dir / f"{number}-{step.command}.log"
    print(f"{line}  (log: {log})", flush=True)
    with open(log, "w") as handle:  # the child keeps its own copy of the file descriptor
        process = subprocess.Popen(step.command_line(), stdout=handle, stderr=subprocess.STDOUT, env=env)
    return process, log


def _check_finished(step: PrepareStep, status: int, log: Path | None) -> None:
    if status != 0:
        tail = ""
        if log is not None:
            lines = log.read_text(errors="replace").splitlines()[-20:]
            tail = f"; its log {log} ends:\n" + "\n".join(lines)
        raise RuntimeError(f"prepare step `clipcond {step.command}` failed with status {status}{tail}")
    if not Path(step.creates).exists():
        raise RuntimeError(f"prepare step `clipcond {step.command}` finished but did not create {step.creates}")
