"""Where a command's output goes: checked before any work, so that a long run never ends on a
place it cannot write."""

from __future__ import annotations

import tempfile
from pathlib import Path

from clipcond.errors import UsageError


def check_output_location(path: str | Path, option: str) -> Path:
    """Check that the file or folder `path`, which a command will create (with the folders
    above it that are missing), can be created: the nearest existing path above it must be a
    folder where a new file can be made (tried with a nameless temporary file, not guessed
    from permission bits, which root ignores). Whether `path` itself may exist is the caller's
    rule. Returns `path` as a `Path`, ``~`` expanded.

    Raises:
        UsageError: naming `option` and the path that stands in the way.
    """
    path = Path(path).expanduser()
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({error.strerror or error})") from error
    return path
