"""The run folder's lock (clipcond.training.run_lock) in its parts: what a lock file says of its
holder, whether that holder lives, and each message whole. The lock taken and refused across
processes is tested in test_run_folder.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from clipcond.training.run_lock import LOCK_FILE, LockHolder, RunFolderInUse, RunFolderLock, _holder_of

HERE = socket.gethostname()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_lock_file_names_its_holder():
    text = json.dumps({"pid": 42, "host": "box", "started": "2026-12-03T10:00:00+00:00"}).encode()
    assert _holder_of(text) == LockHolder(42, "box", "2026-12-03T10:00:00+00:00")
    assert _holder_of(json.dumps({"pid": "7", "host": "box"}).encode()) == LockHolder(7, "box", "?")


@pytest.mark.parametrize(
    "text",
    [b"", b'{"pi', b"[1, 2]", b'{"host": "box"}', b'{"pid": 1}', b'{"pid": "x", "host": "box"}', b"\xff"],
    ids=["empty", "cut", "a-list", "no-pid", "no-host", "pid-not-a-number", "not-utf8"],
)
def test_a_lock_file_that_names_no_holder_gives_none(text):
    assert _holder_of(text) is None


def test_a_holder_reads_as_who_where_and_since_when():
    assert str(LockHolder(42, "box", "2026-12-03T10:00:00+00:00")) == "pid 42 on box, since 2026-12-03T10:00:00+00:00"


def test_whether_a_holder_lives_here():
    assert LockHolder(os.getpid(), HERE, "?").is_alive_here()
    assert not LockHolder(_dead_pid(), HERE, "?").is_alive_here()
    assert not LockHolder(os.getpid(), "elsewhere.example", "?").is_alive_here()  # this pid, another host
    assert LockHolder(1, HERE, "?").is_alive_here()  # init: alive, another user's (PermissionError) or ours


def test_the_three_busy_messages_whole(tmp_path):
    lock = RunFolderLock(tmp_path / "run", option="--out")
    assert lock._busy(None) == (
        f"{tmp_path / 'run'} is in use by another run (its lock {tmp_path / 'run' / LOCK_FILE} is held); "
        "wait for it to end"
    )
    dead = LockHolder(_dead_pid(), HERE, "then")
    assert lock._busy(dead) == (
        f"{tmp_path / 'run'} is in use: its run ({dead}) has ended but a process it started (a data loader "
        "worker?) still holds its lock; retry in a few seconds"
    )
    for live in (LockHolder(os.getpid(), HERE, "now"), LockHolder(_dead_pid(), "elsewhere.example", "now")):
        assert lock._busy(live) == (
            f"{tmp_path / 'run'} is in use by another run ({live}); wait for it to end or choose another --out"
        )
    assert RunFolderLock(tmp_path).option == "output_dir"


def test_a_lock_of_another_host_is_refused_whole_and_kept(tmp_path):
    holder = {"pid": 1, "host": "elsewhere.example", "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))
    lock = RunFolderLock(tmp_path)
    with pytest.raises(RunFolderInUse) as refused:
        lock.acquire()
    assert str(refused.value) == (
        f"{tmp_path} is locked by a run on another host (pid 1 on elsewhere.example, since "
        f"2026-01-01T00:00:00+00:00); if that run has ended, delete {tmp_path / LOCK_FILE} and retry"
    )
    assert not lock.held
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == holder
    with RunFolderLock(tmp_path / "free") as other:  # nothing of the refused lock is left held
        assert other.held


def test_a_lock_records_this_process_and_is_taken_once_per_object(tmp_path):
    lock = RunFolderLock(tmp_path / "new" / "run")  # folders made
    assert lock.acquire() is None  # a free folder: no previous holder
    written = json.loads(lock.path.read_text())
    assert (written["pid"], written["host"]) == (os.getpid(), HERE)
    assert written["started"][:4].isdigit() and written["started"][-6] in "+-"  # ISO time with its offset
    with pytest.raises(RuntimeError, match=rf"^{lock.path} is already held by this object$"):
        lock.acquire()
    lock.release()
    assert not lock.held and not lock.path.exists()
    lock.release()  # not held: nothing
    assert not lock.path.exists()


def test_a_lock_file_replaced_after_its_holder_released_is_left_to_its_new_owner(tmp_path):
    """A release that finds another lock file in place (written after this one was unlinked
    and re-created) deletes nothing: it is not this lock's file."""
    lock = RunFolderLock(tmp_path)
    lock.acquire()
    lock.path.unlink()
    lock.path.write_text(json.dumps({"pid": 5, "host": HERE, "started": "?"}))
    lock.release()
    assert json.loads(lock.path.read_text())["pid"] == 5


def test_a_holder_that_is_another_users_process_lives(monkeypatch):
    def kill_refused(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill_refused)
    assert LockHolder(12345, HERE, "?").is_alive_here()


def test_a_lock_file_is_readable_by_all_and_writable_by_its_owner(tmp_path):
    previous_umask = os.umask(0)
    try:
        with RunFolderLock(tmp_path) as lock:
            assert stat.S_IMODE(lock.path.stat().st_mode) == 0o644
    finally:
        os.umask(previous_umask)


def test_a_release_after_the_lock_file_was_deleted_deletes_nothing(tmp_path):
    lock = RunFolderLock(tmp_path)
    lock.acquire()
    lock.path.unlink()
    lock.release()  # no FileNotFoundError
    assert not lock.held and not lock.path.exists()
    with RunFolderLock(tmp_path) as again:  # and its flock was let go
        assert again.held


def test_a_lock_file_that_keeps_being_replaced_is_given_up_after_100_tries(tmp_path, monkeypatch):
    checks = []

    def never_current(self, fd):
        checks.append(fd)
        return False

    monkeypatch.setattr(RunFolderLock, "_is_current_file", never_current)
    lock = RunFolderLock(tmp_path)
    with pytest.raises(RunFolderInUse) as refused:
        lock.acquire()
    assert str(refused.value) == f"{tmp_path}: could not take {tmp_path / LOCK_FILE} (it keeps being replaced)"
    assert len(checks) == 100 and not lock.held
    for fd in set(checks):  # every descriptor opened was closed
        with pytest.raises(OSError):
            os.fstat(fd)
