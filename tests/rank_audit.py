"""Which process wrote in a run folder: a witness for "only rank 0 writes checkpoints".

Two marks, because a file can be written by Python or by native code (safetensors writes its
files from Rust, where no Python hook sees them):

- every rank runs under its own umask: rank 0 under `MAIN_UMASK`, the others under
  `OTHER_UMASK`, so whatever another rank creates (by any means) lacks the owner-write bit
  (`files_from_other_ranks`). The owner bits are the only ones every file of rank 0 has:
  some writers create theirs 0600 whatever the umask (temporary files renamed into place);
- ranks other than 0 run under a Python audit hook (`record_writes`) that logs every event that
  writes, renames or removes something under the folder (`open` for writing, `os.mkdir`,
  `os.rename` (also `os.replace`), `os.remove`, `os.rmdir`, `shutil.rmtree`, ...), so that an
  append to an existing file or a removal shows too.

Run as a script, it wraps a module the way `accelerate launch` runs one::

    accelerate launch ... tests/rank_audit.py RUN_DIR LOG_PREFIX clipcond.training.train_clip --config ...

Rank `r` (from the ``RANK`` that the launcher sets) logs to ``LOG_PREFIX.rank<r>``.
"""

from __future__ import annotations

import os
import runpy
import stat
import sys
from pathlib import Path

MAIN_UMASK = 0o022
OTHER_UMASK = 0o222  # no write bit for anyone, the owner included

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_CHANGING_EVENTS = {
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.chmod",
    "os.utime",
    "shutil.rmtree",
    "shutil.copyfile",
    "shutil.copymode",
    "shutil.copystat",
    "shutil.move",
    "shutil.make_archive",
}


def _opens_for_writing(args: tuple) -> bool:
    mode, flags = args[1], args[2]
    if isinstance(mode, str):
        return any(letter in mode for letter in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _paths(args: tuple) -> list[str]:
    paths = []
    for value in args:
        if isinstance(value, (str, bytes, os.PathLike)):
            paths.append(os.path.abspath(os.fsdecode(value)))
    return paths


def record_writes(folder: str | os.PathLike, log: str | os.PathLike) -> None:
    """From now on, this process appends a line to `log` for every write-like event on a path
    inside `folder` (the folder itself included). An audit hook cannot be removed: call it in a
    process that ends with the run (a launched or forked rank)."""
    watched = os.path.abspath(os.fspath(folder))
    handle = open(log, "a", encoding="utf-8")  # opened before the hook: its own writes are not events

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            if not _opens_for_writing(args):
                return
            paths = _paths(args[:1])
        elif event in _CHANGING_EVENTS:
            paths = _paths(args)
        else:
            return
        for path in paths:
            if path == watched or path.startswith(watched + os.sep):
                handle.write(f"{event} {path}\n")
                handle.flush()

    sys.addaudithook(hook)


def files_from_other_ranks(folder: str | os.PathLike) -> list[Path]:
    """Files and folders under `folder` created under `OTHER_UMASK` (no owner-write bit)."""
    return sorted(path for path in Path(folder).rglob("*") if not path.lstat().st_mode & stat.S_IWUSR)


def mark_rank(rank: int, folder: str | os.PathLike, log_prefix: str) -> None:
    """Set this process's umask for `rank` and, on a rank other than 0, record its writes in `folder`."""
    os.umask(MAIN_UMASK if rank == 0 else OTHER_UMASK)
    if rank != 0:
        record_writes(folder, f"{log_prefix}.rank{rank}")


def main() -> None:
    """``rank_audit.py RUN_DIR LOG_PREFIX MODULE [ARGS...]``: mark this rank, then run MODULE as ``-m`` would."""
    folder, log_prefix, module, *arguments = sys.argv[1:]
    mark_rank(int(os.environ["RANK"]), folder, log_prefix)
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
