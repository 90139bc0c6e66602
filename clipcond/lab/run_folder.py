"""Refuse an experiment's output_dir when it holds something other than this experiment's run.

A run deletes what its plan does not hold: PNGs under ``images/``, ``plots/`` and ``grids/``,
and result lines of other keys (`clipcond.lab.runner`). That is how re-running the same
experiment with a lowered ``seeds`` or a removed setup cleans up; in a folder of the user's
own, or another experiment's run folder (a copied YAML that kept its output_dir), it would
delete their files. So before any work, `check_run_folder` accepts only:

- a missing or empty folder, or one that holds only what the command writes before the run's
  first record (``prepare-logs/``, ``run.lock``, a prepare step's output, hidden files);
- a folder whose ``experiment.json`` is this lab's record of an experiment of the same
  ``name`` (settings, setups, suites and seeds may have changed: stale results are dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

from clipcond.lab.config import ExperimentConfig

EXPERIMENT_NAME = "experiment.json"
# what `clipcond experiment` writes in output_dir before experiment.json (`clipcond.lab.prepare`)
# and the lock of a run killed before its record (`clipcond.training.run_lock`)
_BEFORE_RECORD = {"prepare-logs", "run.lock"}


def _recorded_name(record_path: Path) -> str | None:
    """The experiment name in a lab's experiment.json; None when the file is not such a record."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "fingerprint" not in record or not isinstance(record.get("name"), str):
        return None
    return record["name"]


def check_run_folder(config: ExperimentConfig, label: str = "output_dir") -> None:
    """Raise ValueError, before anything is written, when `config.output_dir` holds files the
    run could delete that are not this experiment's (module docstring).

    Args:
        label: names the setting in the message, e.g. ``"exp.yaml: output_dir"``.
    """
    output = Path(config.output_dir)
    if not output.is_dir():
        return
    record_path = output / EXPERIMENT_NAME
    if record_path.is_file():
        name = _recorded_name(record_path)
        if name is None:
            raise ValueError(
                f"{label} {output} holds an {EXPERIMENT_NAME} that is not a clipcond experiment record; "
                "choose an empty or new output_dir"
            )
        if name != config.name:
            raise ValueError(
                f"{label} {output} holds the run of experiment {name!r}, not {config.name!r}: running here "
                f"would drop its results and delete its images; choose another output_dir (or delete {output} "
                "to replace that run)"
            )
        return
    made = set(_BEFORE_RECORD)
    root = output.resolve()
    for step in (step for setup in config.setups for step in setup.prepare):
        created = Path(step.creates).resolve()
        if created != root and created.is_relative_to(root):
            made.add(created.relative_to(root).parts[0])
    others = sorted(
        entry.name for entry in output.iterdir() if entry.name not in made and not entry.name.startswith(".")
    )
    if others:
        raise ValueError(
            f"{label} {output} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) and holds "
            f"no {EXPERIMENT_NAME} of an experiment: the run could delete its PNGs; choose an empty or new output_dir"
        )


__all__ = ["EXPERIMENT_NAME", "check_run_folder"]
