"""Where a command's output goes: checked before any work, so that a long run never ends on a
place it cannot write; and any path a command is given, refused in one line when no file system
could take it (`nameable_path`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path

from clipcond.config import NAME_MAX, path_problem
from clipcond.errors import UsageError
from clipcond.quoting import quoted


def check_output_location(path: str | Path, option: str) -> Path:
    """Check that the file or folder `path`, which a command will create (with the folders
    above it that are missing), can be created: the nearest existing path above it must be a
    folder where a new file can be made (tried with a nameless temporary file, not guessed
    from permission bits, which root ignores). Whether `path` itself may exist is the caller's
    rule, but neither it nor a folder above it may be a broken symlink: creating it would fail
    (a folder) or replace the link (a file). Returns `path` as a `Path`, ``~`` expanded.

    Raises:
        UsageError: naming `option` and the path that stands in the way, or the reason no file
            system takes `path` (`clipcond.config.path_problem`: a NUL byte, a name too long).
    """
    path = nameable_path(path, option)
    folder = path.absolute()
    while not folder.exists():
        if folder.is_symlink():
            target = os.readlink(folder)
            raise UsageError(
                f"{option} {path}: {folder} is a broken symlink (it points to {target}, which is not there)"
            )
        folder = folder.parent
    if folder == path.absolute():  # `path` exists: the caller's rule; check its folder
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({error.strerror or error})") from error
    return path


def nameable_path(path: str | Path, option: str) -> Path:
    """`path` (an input or an output of a command) as a `Path`, ``~`` expanded, if a file
    system can take it (else `Path.exists()` and the like raise OSError or ValueError).

    Raises:
        UsageError: naming `option`, `path` (quoted short) and what is wrong with it.
    """
    problem = path_problem(str(path))
    if problem:
        raise UsageError(f"{option} {quoted(str(path))}: {problem}")
    return Path(path).expanduser()


# the most bytes a process id takes in a file name (2**32 - 1 has 10 digits)
PID_DIGITS = 10
# what `write_atomically`'s temporary name adds to the file's: ".", ".<pid>.<8 hex>.tmp"
_TEMPORARY_FILE_ROOM = 1 + 1 + PID_DIGITS + 1 + 8 + 4


def fitted_name(name: str, room: int) -> str:
    """`name` as the part of a sibling's name that adds `room` bytes to it (a hidden temporary
    ``.<name>.<pid>.<hex>.tmp``, ``.tmp-<name>-<pid>``): `name` itself when the sibling's name
    fits in `NAME_MAX` bytes, else its first whole characters that leave 9 bytes for "~" and 8
    hex digits of a hash of the whole `name` (so the siblings of two long names that begin alike
    differ). The same `name` gives the same part, so a writer's leftovers are found by it.

    Without it an output named near `NAME_MAX` bytes, which the checks before any work take,
    failed at its write with "File name too long".
    """
    limit = NAME_MAX - room
    if len(os.fsencode(name)) <= limit:
        return name
    kept, size = [], 0
    for character in name:
        size += len(os.fsencode(character))
        if size > limit - 9:
            break
        kept.append(character)
    digest = hashlib.blake2b(os.fsencode(name), digest_size=4).hexdigest()
    return "".join(kept) + "~" + digest


def check_new_file(path: str | Path, option: str, force: bool, kind: str = "file") -> Path:
    """Check, before any work, that the file `path` may be written: not a folder, not already
    there unless `force`, and its folder takes a new file (`check_output_location`).

    Args:
        kind: what the file is, for the message ("file", ".png file").

    Raises:
        UsageError: naming `option`, saying which of these fails and what to do.
    """
    path = nameable_path(path, option)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; name a {kind}")
    if path.exists() and not force:
        raise UsageError(f"{option} {path} already exists; pass --force to replace it, or choose another file")
    return check_output_location(path, option)


def write_atomically(path: str | Path, data: bytes, remove_leftovers: bool = True, replace: bool = True) -> None:
    """Write `data` to `path` through a hidden temporary file in the same folder and a rename: a
    reader, or a kill midway, never sees half a file, and an existing file is replaced only by
    a complete one. With ``replace=False`` the last step is a hard link that the kernel refuses
    when `path` exists (`FileExistsError`, the temporary file removed): a file another process
    wrote there since the caller checked is kept, not replaced.

    The temporary file is created with mode 0o666, which the kernel narrows by the umask, as
    for any file the user writes (`tempfile.mkstemp` would make it 0o600). With
    `remove_leftovers`, the temporary files of earlier writes of `path` whose process is dead (a
    SIGKILL, or a SIGTERM before ``clipcond`` handled it, between the write and the rename) are
    deleted first; that lists the folder, so writers of many files into one folder (the
    embedding cache, the lab's images) pass False: each write would cost a listing of them all."""
    path = Path(path)
    if remove_leftovers:
        remove_dead_writers_files(path)
    temporary = path.with_name(
        f".{fitted_name(path.name, _TEMPORARY_FILE_ROOM)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(handle, "wb") as stream:
            stream.write(data)
        if replace:
            os.replace(temporary, path)
        else:
            _link_new(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _link_new(temporary: Path, path: Path) -> None:
    """Put the written `temporary` at `path` unless `path` exists (`FileExistsError`): a hard
    link, which the kernel refuses at an existing name; on a file system without hard links,
    a check and then a rename."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FAT file systems)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(temporary, path)
    else:
        os.unlink(temporary)


def remove_dead_writers_files(path: Path) -> list[Path]:
    """Delete the ``.<name>.<pid>.<hex>.tmp`` siblings of `path` that a `write_atomically`
    killed between its write and its rename left, those whose process `pid` is no longer alive
    (a live writer's file is kept). Returns what was deleted."""
    pattern = re.compile(rf"\.{re.escape(fitted_name(path.name, _TEMPORARY_FILE_ROOM))}\.(\d+)\.[0-9a-f]+\.tmp")
    removed = []
    with contextlib.suppress(OSError):  # no folder (yet), or one that cannot be listed: the write says so
        for sibling in sorted(path.parent.iterdir()):
            match = pattern.fullmatch(sibling.name)
            if match and not process_alive(int(match.group(1))) and not sibling.is_dir():
                with contextlib.suppress(FileNotFoundError):  # another writer removed it first
                    sibling.unlink()
                removed.append(sibling)
    return removed


def process_alive(pid: int) -> bool:
    """Whether the process `pid` runs (on this machine); True when that cannot be told: another
    user's process, or a number no process can have."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True
