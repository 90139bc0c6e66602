"""The run folder (`config.output_dir`): what it holds and who may use it.

A run folder holds ``train_config.yaml`` (the config snapshot: the folder holds a run),
``metrics.jsonl`` (one JSON record per logged step or evaluation), ``checkpoints/``, what the
run saves at the end and, once that is saved, ``finished.json`` (the step it finished at).
While a run uses the folder it also holds ``run.lock`` (`clipcond.training.run_lock`).
`output_dir` must be named (not empty), be a folder or not exist yet, and be writable (or, when
it does not exist yet, the folder it would be made in) (`check_output_path`).

What the run saves at the end (``model/``, ``pipeline/``) is written as checkpoints are
(`folder_writes.writing_atomically`): into a hidden sibling ``.tmp-<name>-<pid>``, renamed into place once
complete, an older one replaced only then; what a killed save leaves is removed at the next
start (`folder_writes.remove_unfinished_results`), and the resumed run saves again.

A new run refuses a folder that holds another run, and a resume refuses a changed config (the
folder's own path is not part of what a config is: a moved or copied run folder resumes) or
a model at `frozen_inputs.FROZEN_INPUTS` replaced at the same path (``frozen_inputs.json``:
`check_frozen_inputs`). A
run that fails before its first checkpoint has nothing to keep or continue: its loop sets its
snapshot and metrics aside (`set_aside`, as ``*.failed.*``), so the folder no longer holds a
run and the retry, plain or with ``--resume``, needs no manual deletion. A resume keeps the
metrics records written up to the checkpoint it continues from (`keep_metrics`), so no step
is recorded twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from clipcond.training.frozen_inputs import frozen_input_fingerprints, replaced_input

CONFIG_SNAPSHOT = "train_config.yaml"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
FINISHED_MARKER = "finished.json"
FROZEN_INPUTS_FILE = "frozen_inputs.json"

# Where a run lives is not what it is: a run folder moved or copied elsewhere resumes.
_NOT_IDENTITY = ("output_dir",)


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (it holds another run, its config changed, another
    live run holds it, no checkpoint of it can be loaded); the message says why and what to do,
    in one line."""


class RunAlreadyFinished(Exception):
    """A resume found nothing to do: the run took all its steps and saved its result."""


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


def check_output_path(output_dir: str | os.PathLike) -> None:
    """Refuse an `output_dir` that is empty (``""``, or only spaces: `Path` reads it as the
    current folder, and the run would write among the user's files), that is not a folder (a
    file), that cannot be made because a folder it would be made in is a file, or where no file
    can be made: in the folder itself when it exists, else in the nearest folder above it
    (`_check_writable`) (a `RunFolderError`). Leaves nothing behind."""
    if not str(output_dir).strip():
        raise RunFolderError(
            "output_dir is empty; name the run's folder in output_dir (--output-dir), e.g. runs/my-run "
            "(an empty one would be the current folder, and the run would write among its files)"
        )
    path = Path(output_dir)
    for existing in (path, *path.parents):
        if not (existing.exists() or existing.is_symlink()):
            continue
        if existing.is_dir():
            _check_writable(path, existing)
            return
        what = "a file, not a folder" if existing.is_file() else "not a folder"
        problem = f"is {what}" if existing == path else f"cannot be made: {existing} is {what}"
        raise RunFolderError(
            f"output_dir {path} {problem}; choose a folder (new or existing) for output_dir (--output-dir)"
        )


def _check_writable(path: Path, folder: Path) -> None:
    """Refuse (`RunFolderError`) `folder`, where the run folder `path` is or will be made, when
    a nameless temporary file cannot be made in it: tried, not guessed from permission bits,
    which root ignores (and a read-only mount or an immutable folder refuses root too).

    Tried by the first process only: the others never write in the run folder, and the first
    one's refusal ends the launch (`_first_process`)."""
    if not _first_process():
        return
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise RunFolderError(
            f"output_dir {path}: cannot write in {folder} ({error.strerror or error}); "
            "choose a folder you can write for output_dir (--output-dir)"
        ) from error


def _first_process() -> bool:
    """Whether this is rank 0: of the process group when one is set up (accelerate's
    ``debug_launcher`` and notebook launches set up the group and no ``RANK``), else as
    ``RANK`` says (``accelerate launch`` and torchrun set it in each process before the group
    exists); a process no launcher started is the first."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _filled_snapshot(previous: dict[str, Any], config: Any) -> dict[str, Any]:
    """`previous` (a snapshot's mapping) with the keys it lacks, for `config`'s dataclass and
    each dataclass section of it: a field added since the snapshot was written reads as its
    default, or as what its absence meant then where the section says so
    (``meaning_of_missing_keys(section)``, e.g. `DataConfig`'s `shuffle`)."""
    filled = {**_defaults(type(config)), **previous}
    meaning = getattr(type(config), "meaning_of_missing_keys", None)
    if meaning is not None:
        filled = {**filled, **{key: value for key, value in meaning(previous).items() if key not in previous}}
    for field in dataclasses.fields(config):
        section = getattr(config, field.name)
        if dataclasses.is_dataclass(section) and isinstance(filled.get(field.name), dict):
            filled[field.name] = _filled_snapshot(filled[field.name], section)
    return filled


def _changed_keys(current: dict[str, Any], previous: dict[str, Any], keys: set[str], prefix: str = "") -> list[str]:
    """The keys (dotted within sections: ``data.shuffle``) whose values differ."""
    changed = []
    for key in keys:
        now, before = current.get(key), previous.get(key)
        if now == before:
            continue
        if isinstance(now, dict) and isinstance(before, dict):
            changed += _changed_keys(now, before, set(now) | set(before), f"{prefix}{key}.")
        else:
            changed.append(f"{prefix}{key}")
    return changed


def check_output_dir(config: Any, resume: bool) -> None:
    """Refuse `config.output_dir` (a `RunFolderError`) when it is not a folder
    (`check_output_path`), when its ``checkpoints`` is not a folder, when it holds a run and
    `resume` is not set, or when `resume` is set and that run's config snapshot is damaged (does
    not parse, is not a mapping, or was cut short: it does not end with the line break every
    snapshot ends with) or differs from `config` (a dataclass) in anything but `output_dir`.
    Leaves nothing behind."""
    check_output_path(config.output_dir)
    output_dir = Path(config.output_dir)
    checkpoints = output_dir / CHECKPOINTS_DIR
    if (checkpoints.exists() or checkpoints.is_symlink()) and not checkpoints.is_dir():
        raise RunFolderError(
            f"{checkpoints} is not a folder, where the run keeps its checkpoints; move it out of {output_dir}"
        )
    snapshot = output_dir / CONFIG_SNAPSHOT
    if not snapshot.is_file():
        return
    if not resume:
        raise RunFolderError(
            f"{output_dir} already holds a run; pass --resume to continue it or choose another output_dir"
        )
    raw = snapshot.read_bytes()
    try:
        previous = yaml.safe_load(raw)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise _damaged_snapshot(output_dir, f"does not parse ({' '.join(str(error).split())})") from None
    if not isinstance(previous, dict):
        raise _damaged_snapshot(output_dir, "is not a mapping of config keys")
    if not raw.endswith(b"\n"):  # `prepare_output_dir` writes it whole, and yaml.safe_dump ends every line
        raise _damaged_snapshot(output_dir, f"was cut short (it ends mid-line, after {len(raw)} bytes)")
    previous = _filled_snapshot(previous, config)
    current = dataclasses.asdict(config)
    keys = (set(current) | set(previous)) - set(_NOT_IDENTITY)
    changed = sorted(_changed_keys(current, previous, keys))
    if changed:
        raise RunFolderError(f"cannot resume {output_dir}: the config changed ({', '.join(changed)})")
    check_frozen_inputs(config)


def _damaged_snapshot(output_dir: Path, problem: str) -> RunFolderError:
    """The error of a config snapshot that cannot be compared with the config: what is wrong with
    it, and what to do."""
    snapshot = output_dir / CONFIG_SNAPSHOT
    return RunFolderError(
        f"cannot resume {output_dir}: its {CONFIG_SNAPSHOT} {problem}: the snapshot is damaged, so whether "
        f"the config changed cannot be told; if --config is the run's config, delete {snapshot} and resume "
        "again (the checkpoints are still checked against the models the config builds)"
    )


def prepare_output_dir(config: Any, resume: bool) -> Path:
    """Check the folder (`check_output_dir`), create it and snapshot `config` (a dataclass) in it, atomically."""
    check_output_dir(config, resume)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    snapshot = output_dir / CONFIG_SNAPSHOT
    temporary = snapshot.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    temporary.replace(snapshot)
    record_frozen_inputs(config, resume)
    return output_dir


def _recorded_inputs(output_dir: Path) -> dict[str, Any] | None:
    """The run's ``frozen_inputs.json``; None when it has none (a run from before it was written)."""
    path = output_dir / FROZEN_INPUTS_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_bytes())
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict):
        raise RunFolderError(
            f"cannot resume {output_dir}: its {FROZEN_INPUTS_FILE} is damaged, so whether the models the config "
            f"names were replaced cannot be told; if they were not, delete {path} and resume again"
        )
    return recorded


def check_frozen_inputs(config: Any) -> None:
    """Refuse (`RunFolderError`, naming the key, the path and a file) resuming the run in
    `config.output_dir` when a model it recorded (`record_frozen_inputs`) has other files or
    other bytes in a file now (`frozen_inputs.replaced_input`). A run without a record (from
    before it was written) is not checked. Writes nothing."""
    recorded = _recorded_inputs(Path(config.output_dir))
    if recorded:
        replaced = replaced_input(recorded, frozen_input_fingerprints(config, known=recorded))
        if replaced:
            raise RunFolderError(
                f"cannot resume {config.output_dir}: {replaced}; its checkpoints were trained against the model "
                "that was there: put it back, or start a new run in another output_dir"
            )


def record_frozen_inputs(config: Any, resume: bool) -> None:
    """Write ``frozen_inputs.json`` (`frozen_input_fingerprints`) in `config.output_dir`,
    atomically; on a resume, from the record already there (checked by `check_frozen_inputs`),
    reading again only the files whose size, time of last write or inode changed."""
    output_dir = Path(config.output_dir)
    known = _recorded_inputs(output_dir) if resume else None
    path = output_dir / FROZEN_INPUTS_FILE
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(frozen_input_fingerprints(config, known), indent=1, sort_keys=True) + "\n")
    temporary.replace(path)


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


def keep_metrics(output_dir: Path, records: int | None, step: int) -> list[dict[str, Any]]:
    """Cut ``metrics.jsonl`` back to what it held when the checkpoint of `step` was written:
    its first `records` lines, or, for a checkpoint that did not count them (None), the records
    of steps up to `step`. A run killed after logging steps past its last checkpoint takes those
    steps again when resumed, and logs them again. The file is replaced atomically.

    Returns:
        The records kept, parsed (lines that do not parse are dropped).
    """
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    if records is not None:
        lines = lines[:records]
    kept_lines, kept = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill, or not ours
            continue
        if not isinstance(record, dict) or (records is None and not _at_or_before(record, step)):
            continue
        kept_lines.append(line if line.endswith(b"\n") else line + b"\n")
        kept.append(record)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(b"".join(kept_lines))
    temporary.replace(path)
    return kept


def _at_or_before(record: dict[str, Any], step: int) -> bool:
    return isinstance(record.get("step"), int) and record["step"] <= step


def mark_finished(output_dir: Path, step: int) -> None:
    """Record that the run took its last step, `step`, and saved its result."""
    path = Path(output_dir) / FINISHED_MARKER
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"step": step}))
    temporary.replace(path)


def finished_step(output_dir: Path) -> int | None:
    """The step `mark_finished` recorded, or None (none recorded, or unreadable)."""
    try:
        step = json.loads((Path(output_dir) / FINISHED_MARKER).read_bytes()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
