"""Where a command's output goes, each function on its own in a temporary folder: the checks
before any work (their messages whole), the atomic write (the file complete or absent, its
mode, `replace=False`), the leftovers of killed writers and how a process is told alive.
The commands' own refusals are in tests/test_output_path_names.py and tests/test_write_failures.py."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clipcond import output_paths
from clipcond.config import NAME_MAX
from clipcond.errors import UsageError
from clipcond.output_paths import (
    check_new_file,
    check_output_location,
    fitted_name,
    nameable_path,
    process_alive,
    remove_dead_writers_files,
    write_atomically,
)
from clipcond.quoting import quoted


def refusal(call) -> str:
    with pytest.raises(UsageError) as raised:
        call()
    return str(raised.value)


def test_a_new_path_in_a_folder_that_takes_files_is_given_back_and_nothing_is_made(tmp_path) -> None:
    assert check_output_location(tmp_path / "out.png", "-o") == tmp_path / "out.png"
    nested = tmp_path / "a" / "b" / "grid"
    assert check_output_location(str(nested), "--output") == nested
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "there.png").write_bytes(b"x")  # whether it may exist is the caller's rule
    assert check_output_location(tmp_path / "there.png", "-o") == tmp_path / "there.png"
    (tmp_path / "run").mkdir()
    assert check_output_location(tmp_path / "run", "--run-dir") == tmp_path / "run"


def test_a_tilde_is_expanded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_output_location("~/out.png", "-o") == tmp_path / "out.png"
    assert nameable_path("~/in.txt", "--prompts") == tmp_path / "in.txt"
    assert check_new_file("~/new.png", "-o", force=False) == tmp_path / "new.png"


def test_a_broken_symlink_in_the_way_is_refused_naming_its_target(tmp_path) -> None:
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert refusal(lambda: check_output_location(tmp_path / "gone", "-o")) == (
        f"-o {tmp_path / 'gone'}: {tmp_path / 'gone'} is a broken symlink (it points to {tmp_path / 'nowhere'}, "
        "which is not there)"
    )
    assert refusal(lambda: check_output_location(tmp_path / "gone" / "x" / "out.png", "--out")) == (
        f"--out {tmp_path / 'gone' / 'x' / 'out.png'}: {tmp_path / 'gone'} is a broken symlink (it points to "
        f"{tmp_path / 'nowhere'}, which is not there)"
    )


def test_a_file_where_a_folder_must_be_is_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    path = tmp_path / "notes.txt" / "run" / "out.png"
    assert (
        refusal(lambda: check_output_location(path, "-o"))
        == f"-o {path}: {tmp_path / 'notes.txt'} is a file, not a folder"
    )


def test_a_folder_that_takes_no_file_is_refused_with_the_systems_reason(tmp_path, monkeypatch) -> None:
    tried = []

    def refused(dir):
        tried.append(dir)
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(output_paths.tempfile, "TemporaryFile", refused)
    path = tmp_path / "new" / "out.png"
    assert (
        refusal(lambda: check_output_location(path, "-o"))
        == f"-o {path}: cannot write in {tmp_path} (Permission denied)"
    )
    assert tried == [tmp_path]
    # an existing path: its folder is the one tried
    (tmp_path / "there.png").write_bytes(b"x")
    assert refusal(lambda: check_output_location(tmp_path / "there.png", "-o")).endswith(
        f"cannot write in {tmp_path} (Permission denied)"
    )
    monkeypatch.setattr(output_paths.tempfile, "TemporaryFile", lambda dir: (_ for _ in ()).throw(OSError("no reason")))
    assert refusal(lambda: check_output_location(path, "-o")) == f"-o {path}: cannot write in {tmp_path} (no reason)"


def test_a_real_temporary_file_is_made_and_removed(tmp_path, monkeypatch) -> None:
    made = []
    real = tempfile.TemporaryFile

    def recording(dir):
        handle = real(dir=dir)
        made.append(handle)
        return handle

    monkeypatch.setattr(output_paths.tempfile, "TemporaryFile", recording)
    check_output_location(tmp_path / "out.png", "-o")
    assert len(made) == 1 and made[0].closed and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, problem",
    [
        ("r\x00un", "a path cannot hold a NUL byte"),
        ("a" * 300, "a file or folder name is at most 255 bytes, and this path has one of 300"),
    ],
)
def test_a_path_no_file_system_takes_is_refused_quoted(name, problem, tmp_path) -> None:
    path = str(tmp_path / name)
    for check in (nameable_path, check_output_location, lambda p, o: check_new_file(p, o, force=True)):
        assert refusal(lambda check=check: check(path, "--out")) == f"--out {quoted(path)}: {problem}"
    assert quoted(str(tmp_path / "r\x00un")) == repr(str(tmp_path / "r\x00un"))  # short: the whole repr


def test_a_new_file_may_not_be_a_folder_or_there_without_force(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    assert (
        refusal(lambda: check_new_file(tmp_path / "run", "-o", force=True))
        == f"-o {tmp_path / 'run'} is a folder; name a file"
    )
    assert refusal(lambda: check_new_file(tmp_path / "run", "-o", force=False, kind=".png file")) == (
        f"-o {tmp_path / 'run'} is a folder; name a .png file"
    )
    (tmp_path / "out.png").write_bytes(b"x")
    assert refusal(lambda: check_new_file(tmp_path / "out.png", "-o", force=False)) == (
        f"-o {tmp_path / 'out.png'} already exists; pass --force to replace it, or choose another file"
    )
    assert check_new_file(str(tmp_path / "out.png"), "-o", force=True) == tmp_path / "out.png"
    (tmp_path / "notes").write_text("x")
    assert refusal(lambda: check_new_file(tmp_path / "notes" / "out.png", "-o", force=False)) == (
        f"-o {tmp_path / 'notes' / 'out.png'}: {tmp_path / 'notes'} is a file, not a folder"
    )


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_an_atomic_write_leaves_the_file_whole_with_the_users_mode(tmp_path, umask) -> None:
    path = tmp_path / "grid.png"
    write_atomically(path, b"first")
    assert path.read_bytes() == b"first" and os.stat(path).st_mode & 0o777 == 0o644
    write_atomically(str(path), b"second")
    assert path.read_bytes() == b"second"
    os.umask(0o077)
    write_atomically(tmp_path / "private", b"x")
    assert os.stat(tmp_path / "private").st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "private"]


def test_a_write_without_replace_keeps_a_file_already_there(tmp_path) -> None:
    path = tmp_path / "record.json"
    write_atomically(path, b"new", replace=False)
    assert path.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        write_atomically(path, b"other", replace=False)
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


@pytest.mark.parametrize("replace", [True, False])
def test_a_write_that_fails_at_the_last_step_leaves_no_temporary_file(replace, tmp_path, monkeypatch) -> None:
    path = tmp_path / "out.bin"
    if replace:
        path.write_bytes(b"old")

    def refused(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output_paths.os, "replace", refused)
    monkeypatch.setattr(output_paths.os, "link", refused)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, b"new", replace=replace)
    assert [p.name for p in tmp_path.iterdir()] == (["out.bin"] if replace else [])
    assert not replace or path.read_bytes() == b"old"


def test_without_hard_links_a_write_without_replace_checks_then_renames(tmp_path, monkeypatch) -> None:
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(output_paths.os, "link", no_links)
    path = tmp_path / "record.json"
    write_atomically(path, b"new", replace=False)
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["record.json"]
    with pytest.raises(FileExistsError) as raised:
        write_atomically(path, b"other", replace=False)
    assert (raised.value.errno, raised.value.filename) == (errno.EEXIST, str(path))
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["record.json"]
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")  # a broken link is there too
    with pytest.raises(FileExistsError):
        write_atomically(tmp_path / "link", b"other", replace=False)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_dead_writers_go_and_the_rest_stays(tmp_path, dead_pid) -> None:
    path = tmp_path / "grid.png"
    dead = tmp_path / f".grid.png.{dead_pid}.0a1b2c3d.tmp"
    live = tmp_path / f".grid.png.{os.getpid()}.0a1b2c3d.tmp"
    folder = tmp_path / f".grid.png.{dead_pid}.ffff.tmp"
    others = [
        tmp_path / f".other.png.{dead_pid}.0a1b.tmp",  # another file's
        tmp_path / f".grid.png.{dead_pid}.XYZ.tmp",  # not hex
        tmp_path / f"grid.png.{dead_pid}.0a1b.tmp",  # not hidden
        tmp_path / f".gridXpng.{dead_pid}.0a1b.tmp",  # the dot is no wildcard
    ]
    for leftover in [dead, live, *others]:
        leftover.write_bytes(b"half")
    folder.mkdir()
    assert remove_dead_writers_files(path) == [dead]
    assert sorted(tmp_path.iterdir()) == sorted([live, folder, *others])
    assert remove_dead_writers_files(tmp_path / "missing" / "grid.png") == []


def test_an_atomic_write_removes_dead_writers_leftovers_unless_told_not_to(tmp_path, dead_pid) -> None:
    dead = tmp_path / f".grid.png.{dead_pid}.0a1b2c3d.tmp"
    dead.write_bytes(b"half")
    write_atomically(tmp_path / "grid.png", b"x", remove_leftovers=False)
    assert dead.exists()
    write_atomically(tmp_path / "grid.png", b"y")
    assert not dead.exists() and (tmp_path / "grid.png").read_bytes() == b"y"


def test_a_process_is_alive_unless_it_is_known_gone(dead_pid, monkeypatch) -> None:
    assert process_alive(os.getpid()) is True
    assert process_alive(dead_pid) is False
    for error in (PermissionError(errno.EPERM, "not ours"), OverflowError("too big"), OSError(errno.EINVAL, "bad")):

        def kill(pid, signal, error=error):
            raise error

        monkeypatch.setattr(output_paths.os, "kill", kill)
        assert process_alive(12345) is True
    sent = []
    monkeypatch.setattr(output_paths.os, "kill", lambda pid, signal: sent.append((pid, signal)))
    assert process_alive(777) is True and sent == [(777, 0)]  # signal 0: a check, nothing sent


def test_a_siblings_part_is_the_name_or_its_start_and_a_hash(tmp_path) -> None:
    assert fitted_name("grid.png", 25) == "grid.png"
    assert fitted_name("c" * 230, 25) == "c" * 230  # 230 + 25 bytes: fits
    long = fitted_name("c" * 231, 25)
    assert long[:221] == "c" * 221 and re.fullmatch(r"~[0-9a-f]{8}", long[221:]) and len(long) == 230
    assert fitted_name("c" * 231, 25) == long  # the same name, the same part
    assert fitted_name("c" * 230 + "d", 25) != long  # names that begin alike differ
    accents = fitted_name("é" * 200, 25)  # 400 bytes, 2 a character: cut between characters
    assert accents[:110] == "é" * 110 and accents[110] == "~" and len(os.fsencode(accents)) == 229
    assert fitted_name("b" * NAME_MAX, 0) == "b" * NAME_MAX


def test_a_file_named_with_the_most_bytes_a_name_holds_is_written(tmp_path, dead_pid) -> None:
    path = tmp_path / ("b" * NAME_MAX)
    assert check_new_file(path, "-o", force=False) == path  # the check before any work takes it
    leftover = tmp_path / f".{fitted_name(path.name, 25)}.{dead_pid}.0a1b2c3d.tmp"
    leftover.write_bytes(b"half")
    write_atomically(path, b"whole")
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.read_bytes() == b"whole"
    write_atomically(tmp_path / ("é" * 127), b"x", replace=False)  # 254 bytes
    assert (tmp_path / ("é" * 127)).read_bytes() == b"x"


def test_the_temporary_file_is_hidden_named_by_pid_and_8_hex_digits(tmp_path, monkeypatch) -> None:
    renamed = []
    real = os.replace
    monkeypatch.setattr(
        output_paths.os, "replace", lambda source, target: renamed.append(source) or real(source, target)
    )
    write_atomically(tmp_path / "grid.png", b"x")
    assert re.fullmatch(rf"\.grid\.png\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", renamed[0].name)


def test_a_failed_write_raises_its_own_error_even_when_the_cleanup_fails(tmp_path, monkeypatch) -> None:
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def busy(path):
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(output_paths.os, "replace", full)
    monkeypatch.setattr(output_paths.os, "unlink", busy)
    with pytest.raises(OSError) as raised:
        write_atomically(tmp_path / "out.bin", b"x")
    assert raised.value.errno == errno.ENOSPC


def test_without_hard_links_an_existing_file_is_named_in_the_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(
        output_paths.os, "link", lambda source, target: (_ for _ in ()).throw(OSError(errno.EPERM, "no"))
    )
    (tmp_path / "record.json").write_bytes(b"old")
    with pytest.raises(FileExistsError) as raised:
        write_atomically(tmp_path / "record.json", b"new", replace=False)
    assert str(raised.value) == f"[Errno 17] File exists: '{tmp_path / 'record.json'}'"


def test_a_leftover_another_writer_removes_first_is_counted_and_the_rest_still_go(
    tmp_path, dead_pid, monkeypatch
) -> None:
    first = tmp_path / f".grid.png.{dead_pid}.0a.tmp"
    second = tmp_path / f".grid.png.{dead_pid}.0b.tmp"
    first.write_bytes(b"half")
    second.write_bytes(b"half")
    real_unlink = Path.unlink

    def raced(self, missing_ok=False):
        real_unlink(self)
        if self.name == first.name:
            raise FileNotFoundError(errno.ENOENT, "gone", str(self))  # as if another writer had been first

    monkeypatch.setattr(Path, "unlink", raced)
    assert remove_dead_writers_files(tmp_path / "grid.png") == [first, second]
    assert list(tmp_path.iterdir()) == []
