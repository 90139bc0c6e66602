"""Content digests of model folders, so an experiment knows when a model changed.

A folder's digest is a sha256 over the relative path and the content of every file in it
(weights, configs, tokenizer files; README and hidden files excluded; symlinked files and
folders followed). Reading multi-GB
weights on every run would be slow, so each file's content hash is cached by (path, size,
modification time): a file is read again only when one of those changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from clipcond.folder_walk import folder_files

# Files that describe a model without changing its outputs.
_IGNORED_SUFFIXES = {".md"}
_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(folder: str | Path) -> list[Path]:
    """The files of a model folder that a digest covers, sorted: those `folder_files` walks
    (symlinked folders followed, cycles and hidden names not), less README-like ones.

    Raises:
        FileNotFoundError: `folder` is not a folder.
    """
    return [path for path in folder_files(folder) if path.suffix.lower() not in _IGNORED_SUFFIXES]


def folder_digest(folder: str | Path, cache: dict[str, list] | None = None) -> str:
    """sha256 hex digest of a folder's files (names and contents).

    Args:
        folder: a model folder (a saved pipeline, a CLIP folder).
        cache: maps a file's absolute path to [size, mtime_ns, sha256]; read and updated, so
            that unchanged files are not read again. Keep it between runs (e.g. in JSON).
    """
    folder = Path(folder)
    cache = {} if cache is None else cache
    total = hashlib.sha256()
    for path in model_files(folder):
        stat = path.stat()
        key = str(path.resolve())
        known = cache.get(key)
        well_formed = isinstance(known, list) and len(known) == 3 and isinstance(known[2], str)
        if well_formed and known[:2] == [stat.st_size, stat.st_mtime_ns]:  # an edited entry: read again
            content = known[2]
        else:
            content = _file_sha256(path)
            cache[key] = [stat.st_size, stat.st_mtime_ns, content]
        total.update(f"{path.relative_to(folder).as_posix()}\0{content}\n".encode())
    return total.hexdigest()


__all__ = ["folder_digest", "model_files"]
