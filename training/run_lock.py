"""One live run per run folder: `RunFolderLock`, the file ``<output_dir>/run.lock``.

The file names its holder (pid, host, start time) and the holder keeps an exclusive
`fcntl.flock` on it while it runs. The kernel drops that lock when its process dies, however it
dies (SIGKILL included), so a lock left behind by a dead run is taken over by the next one, and
two runs starting at once cannot both take it (the flock decides, not a read of the pid that
another process could be taking over at the same moment). A lock file that names another host
is refused even when its flock is free: over a network file system this host cannot tell
whether that run still lives; the message says which file to delete if it does not.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from clipcond.training.run_folder import RunFolderError

LOCK_FILE = "run.lock"


class RunFolderInUse(RunFolderError):
    """Another live run holds the run folder."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a run folder's lock: `pid` on `host`, since `started` (ISO time)."""

    pid: int
    host: str
    started: str

    def is_alive_here(self) -> bool:
        """Whether this is a process of this host that still exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, as another user
            return True
        return True

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started}"


def _holder_of(text: bytes) -> LockHolder | None:
    """The holder a lock file names; None for an empty or unreadable one (a writer killed mid-write)."""
    try:
        fields = json.loads(text)
        holder = LockHolder(int(fields["pid"]), str(fields["host"]), str(fields.get("started", "?")))
    except (ValueError, KeyError, TypeError):
        return None
    return holder


class RunFolderLock:
    """The lock of the run folder `output_dir` (created when missing).

    Use as a context manager, or `acquire` then `release` (also after an exception).

    Args:
        output_dir: the run folder.
        option: what the user sets to choose another folder, in the message when it is in use
            (``clipcond encode``'s ``--out``).
    """

    def __init__(self, output_dir: str | os.PathLike, option: str = "output_dir") -> None:
        self.output_dir = Path(output_dir)
        self.option = option
        self.path = self.output_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> LockHolder | None:
        """Take the lock, or raise `RunFolderInUse` naming the live holder.

        Returns:
            The dead holder whose lock was taken over, or None when the folder was free.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_of(os.pread(fd, 4096, 0))
                os.close(fd)
                raise RunFolderInUse(self._busy(holder)) from None
            if not self._is_current_file(fd):  # its holder released (unlinked) it between our open and flock
                os.close(fd)
                continue
            previous = _holder_of(os.pread(fd, 4096, 0))
            if previous is not None and previous.host != socket.gethostname():
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise RunFolderInUse(
                    f"{self.output_dir} is locked by a run on another host ({previous}); if that run has ended, "
                    f"delete {self.path} and retry"
                )
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, mine, 0)
            os.fsync(fd)
            self._fd = fd
            return previous
        raise RunFolderInUse(f"{self.output_dir}: could not take {self.path} (it keeps being replaced)")

    def release(self) -> None:
        """Give the lock back and delete the file (nothing when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._is_current_file(fd):
                self.path.unlink()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _is_current_file(self, fd: int) -> bool:
        try:
            on_disk = self.path.stat()
        except FileNotFoundError:
            return False
        opened = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)

    def _busy(self, holder: LockHolder | None) -> str:
        if holder is None:
            return f"{self.output_dir} is in use by another run (its lock {self.path} is held); wait for it to end"
        if holder.host == socket.gethostname() and not holder.is_alive_here():
            return (
                f"{self.output_dir} is in use: its run ({holder}) has ended but a process it started (a data "
                "loader worker?) still holds its lock; retry in a few seconds"
            )
        return (
            f"{self.output_dir} is in use by another run ({holder}); wait for it to end or choose another {self.option}"
        )
