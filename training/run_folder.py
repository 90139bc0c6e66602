"""The run folder (`config.output_dir`): what it holds and who may use it.

A run folder holds ``train_config.yaml`` (the config snapshot: the folder holds a run),
``metrics.jsonl`` (one JSON record per logged step or evaluation), ``checkpoints/`` and what
the run saves at the end. A new run refuses a folder that holds another run, and a resume
refuses a changed config. A run that fails before its first checkpoint has nothing to keep or
continue: its loop sets its snapshot and metrics aside (`set_aside`, as ``*.failed.*``), so the
folder no longer holds a run and the retry, plain or with ``--resume``, needs no manual deletion.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

CONFIG_SNAPSHOT = "train_config.yaml"
METRICS_FILE = "metrics.jsonl"


def _defaults(config_class: type) -> dict[str, Any]:
    """Field -> default value (as `dataclasses.asdict` writes it) for fields that have one."""
    defaults = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
            defaults[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return defaults


def check_output_dir(config: Any, resume: bool) -> None:
    """Refuse `config.output_dir` (a `ValueError`) when it holds a run and `resume` is not set,
    or when `resume` is set and that run's config differs from `config` (a dataclass).
    Writes nothing."""
    output_dir = Path(config.output_dir)
    snapshot = output_dir / CONFIG_SNAPSHOT
    if not snapshot.is_file():
        return
    if not resume:
        raise ValueError(f"{output_dir} already holds a run; pass --resume to continue it or choose another output_dir")
    previous = yaml.safe_load(snapshot.read_text())
    # A key missing from the snapshot (a field added since it was written) reads as its default.
    previous = {**_defaults(type(config)), **previous}
    current = dataclasses.asdict(config)
    changed = sorted(key for key in set(current) | set(previous) if current.get(key) != previous.get(key))
    if changed:
        raise ValueError(f"cannot resume {output_dir}: the config changed ({', '.join(changed)})")


def prepare_output_dir(config: Any, resume: bool) -> Path:
    """Check the folder (`check_output_dir`), create it and snapshot `config` (a dataclass) in it, atomically."""
    check_output_dir(config, resume)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    snapshot = output_dir / CONFIG_SNAPSHOT
    temporary = snapshot.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    temporary.replace(snapshot)
    return output_dir


def set_aside(output_dir: Path, *names: str) -> list[Path]:
    """Rename the files `names` of `output_dir` that exist to ``<stem>.failed<suffix>``
    (replacing an older one), keeping what a failed attempt wrote out of the next one's way.
    Returns the new paths."""
    moved = []
    for name in names:
        path = Path(output_dir) / name
        if path.is_file():
            target = path.with_name(f"{path.stem}.failed{path.suffix}")
            path.replace(target)
            moved.append(target)
    return moved
