"""Fingerprints of the frozen models a training run reads, so a resume can tell they were replaced.

A run reads, at every start, resumed or not, the models its config names at `FROZEN_INPUTS`
(a diffusion run's text encoders and VAE, and the pipeline it starts from, whose VAE, scheduler
and tokenizer its checkpoints do not hold). Its checkpoints were trained against those: a
resume after one was replaced at the same path would go on against another model and end
somewhere no uninterrupted run goes. `frozen_input_fingerprints` hashes the files of each
(blake2b of the bytes: the same model copied or moved elsewhere on disk keeps its fingerprint,
whatever its files' times); `replaced_input` compares two such records. The run folder keeps
the record (`run_folder.record_frozen_inputs`) and refuses the resume (`check_frozen_inputs`).

Cost: a fresh start reads every file of these models once more (they were just loaded, so
mostly from the page cache); a resume reads again only the files whose size, time of last
write or inode changed, so a resume with nothing replaced reads no weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from clipcond.folder_walk import folder_files

# Config keys naming models a run reads and does not keep whole in its checkpoints.
FROZEN_INPUTS = ("text_encoder", "t5_encoder", "vae", "init_from")


def _input_files(path: Path) -> list[tuple[str, Path]]:
    """(name relative to `path`, file) of every file of the model at `path` (``"."`` for a
    single file), sorted; a component linked from another folder (``vae -> ../shared/vae``)
    included, hidden files and folders (a hub download's ``.cache/``) left out (`folder_files`)."""
    if path.is_file():
        return [(".", path)]
    if not path.is_dir():  # neither (a FIFO): no model files, left to the run's own loading
        return []
    return sorted((file.relative_to(path).as_posix(), file) for file in folder_files(path))


def _file_digest(path: Path) -> str:
    """blake2b (32 bytes, hex) of the file's bytes."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):  # 4 MiB at a time
            digest.update(block)
    return digest.hexdigest()


def recorded_files(record: dict[str, Any] | None, key: str) -> dict[str, dict[str, Any]]:
    """The files a record (`frozen_input_fingerprints`' result, as read back from JSON) holds
    for `key`: name -> entry; {} when it holds none (entries that are not mappings left out)."""
    entry = (record or {}).get(key)
    files = entry.get("files") if isinstance(entry, dict) else None
    return {name: value for name, value in files.items() if isinstance(value, dict)} if isinstance(files, dict) else {}


def frozen_input_fingerprints(config: Any, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """key -> {"path", "files": {name: {"size", "mtime_ns", "inode", "blake2b"}}} for each key of
    `FROZEN_INPUTS` that `config` sets to a path that exists (as the run reads it: relative to
    the working folder). A file whose size, time of last write and inode equal those `known`
    records (an earlier result of this function) keeps its recorded digest without being read
    again; any other is read whole."""
    fingerprints = {}
    for key in FROZEN_INPUTS:
        value = getattr(config, key, None)
        if not isinstance(value, str) or not value or not Path(value).exists():
            continue
        recorded = recorded_files(known, key)
        files = {}
        for name, file in _input_files(Path(value)):
            stat = file.stat()
            mark = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
            old = recorded.get(name, {})
            same = "blake2b" in old and all(old.get(field) == number for field, number in mark.items())
            files[name] = {**mark, "blake2b": old["blake2b"] if same else _file_digest(file)}
        fingerprints[key] = {"path": value, "files": files}
    return fingerprints


def replaced_input(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between the models of two records (`frozen_input_fingerprints`), in words
    (``"text_encoder runs/b/model was replaced since the run started (model.safetensors
    differs)"``), or None when nothing does. A key only one record holds is not compared: a
    model gone from its path is left to the run's own loading, which names it."""
    for key, now in current.items():
        if key not in recorded:
            continue
        old = {name: entry.get("blake2b") for name, entry in recorded_files(recorded, key).items()}
        new = {name: entry["blake2b"] for name, entry in now["files"].items()}
        changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
        if changed:
            name, more = changed[0], f" and {len(changed) - 1} more files" if len(changed) > 1 else ""
            what = "differs" if name in old and name in new else "was added" if name in new else "is gone"
            return f"{key} {now['path']} was replaced since the run started ({name} {what}{more})"
    return None
