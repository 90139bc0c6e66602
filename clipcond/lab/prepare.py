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

A step runs (as ``python -m clipcond.cli <command> <args>``, in its own process) only when
its `creates` path is missing, so one command reproduces a whole experiment and re-running it
skips what exists. Training commands get ``--resume``: a step stopped midway continues from
its last checkpoint. Steps shared by several setups (the same `creates`) run once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    """Every file the steps name exists (before any training starts)."""
    for step in steps:
        for path in step.input_files():
            if not path.is_file():
                raise FileNotFoundError(f"prepare step {step.command} (creates {step.creates}): no such file {path}")


def pending_steps(steps: Sequence[PrepareStep]) -> list[PrepareStep]:
    """The steps whose `creates` path does not exist yet."""
    return [step for step in steps if not Path(step.creates).exists()]


def run_steps(steps: Sequence[PrepareStep]) -> None:
    """Run every pending step in order, each in its own process.

    Raises:
        RuntimeError: a command failed, or did not make its `creates` path.
    """
    check_steps(steps)
    todo = pending_steps(steps)
    for number, step in enumerate(todo, start=1):
        print(f"[prepare {number}/{len(todo)}] clipcond {step.command} {' '.join(step.args)}", flush=True)
        status = subprocess.run(step.command_line()).returncode
        if status != 0:
            raise RuntimeError(f"prepare step `clipcond {step.command}` failed with status {status}")
        if not Path(step.creates).exists():
            raise RuntimeError(f"prepare step `clipcond {step.command}` finished but did not create {step.creates}")
