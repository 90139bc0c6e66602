"""Writing a folder whole or not at all (clipcond.training.folder_writes), each writer and
clean-up on its own: what is in place after the block ends, fails or finds the folder taken,
and which leftovers of killed writers the clean-ups delete (and which they keep)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipcond.training.folder_writes import (
    FolderTaken,
    remove_dead_writers_temporaries,
    remove_unfinished_results,
    writing_atomically,
    writing_new_folder,
)

PID = os.getpid()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write(folder: Path, text: str) -> None:
    folder.mkdir()
    (folder / "weights.txt").write_text(text, encoding="utf-8")


def _entries(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


def test_an_atomic_write_puts_a_new_folder_in_place(tmp_path) -> None:
    with writing_atomically(tmp_path / "model") as folder:
        assert folder == tmp_path / f".tmp-model-{PID}" and not folder.exists()
        _write(folder, "new")
    assert _entries(tmp_path) == ["model"]
    assert (tmp_path / "model" / "weights.txt").read_text(encoding="utf-8") == "new"


def test_an_atomic_write_replaces_an_older_folder_and_leaves_no_sibling(tmp_path) -> None:
    _write(tmp_path / "model", "old")
    _write(tmp_path / f".old-model-{PID}", "left by a killed save of this pid")
    with writing_atomically(tmp_path / "model") as folder:
        _write(folder, "new")
        assert (tmp_path / "model" / "weights.txt").read_text(encoding="utf-8") == "old"  # until the block ends
    assert _entries(tmp_path) == ["model"]
    assert _entries(tmp_path / "model") == ["weights.txt"]
    assert (tmp_path / "model" / "weights.txt").read_text(encoding="utf-8") == "new"


def test_a_failed_atomic_write_keeps_the_older_folder(tmp_path) -> None:
    _write(tmp_path / "model", "old")
    with pytest.raises(KeyError), writing_atomically(tmp_path / "model") as folder:
        _write(folder, "half")
        raise KeyError("failed mid-save")
    assert _entries(tmp_path) == ["model"]
    assert (tmp_path / "model" / "weights.txt").read_text(encoding="utf-8") == "old"


def test_a_new_folder_is_put_in_place_and_a_dead_writers_sibling_removed_first(tmp_path) -> None:
    dead = tmp_path / f".tmp-tower-{_dead_pid()}"
    _write(dead, "killed")
    alive = tmp_path / ".tmp-tower-1"  # init lives: a writer still at work
    _write(alive, "working")
    with writing_new_folder(tmp_path / "tower") as folder:
        assert not dead.exists() and folder == tmp_path / f".tmp-tower-{PID}"
        _write(folder, "new")
    assert _entries(tmp_path) == [".tmp-tower-1", "tower"]
    assert (tmp_path / "tower" / "weights.txt").read_text(encoding="utf-8") == "new"


def test_a_new_folder_replaces_an_empty_one(tmp_path) -> None:
    (tmp_path / "tower").mkdir()
    with writing_new_folder(tmp_path / "tower") as folder:
        _write(folder, "new")
    assert _entries(tmp_path) == ["tower"]
    assert (tmp_path / "tower" / "weights.txt").read_text(encoding="utf-8") == "new"


@pytest.mark.parametrize("taken_by", ["a_folder_with_files", "a_dangling_link"])
def test_a_new_folder_taken_meanwhile_is_kept_and_the_write_dropped(taken_by, tmp_path) -> None:
    final = tmp_path / "tower"
    with pytest.raises(FolderTaken) as raised, writing_new_folder(final) as folder:
        _write(folder, "mine")
        if taken_by == "a_folder_with_files":
            _write(final, "theirs")
        else:
            final.symlink_to(tmp_path / "nowhere")
    assert str(raised.value) == f"{final} was written by another run meanwhile"
    assert isinstance(raised.value, FileExistsError)
    assert _entries(tmp_path) == ["tower"]
    if taken_by == "a_folder_with_files":
        assert (final / "weights.txt").read_text(encoding="utf-8") == "theirs"
    else:
        assert final.is_symlink()


def test_a_rename_that_fails_otherwise_raises_its_own_error_and_drops_the_write(tmp_path, monkeypatch) -> None:
    refused = PermissionError(13, "Permission denied")

    def rename(source, target):
        raise refused

    with pytest.raises(PermissionError) as raised, writing_new_folder(tmp_path / "tower") as folder:
        _write(folder, "mine")
        monkeypatch.setattr(os, "rename", rename)
    assert raised.value is refused
    assert _entries(tmp_path) == []


def test_a_failed_new_folder_write_leaves_nothing(tmp_path) -> None:
    with pytest.raises(KeyError), writing_new_folder(tmp_path / "tower") as folder:
        _write(folder, "half")
        raise KeyError("failed")
    assert _entries(tmp_path) == []


def test_unfinished_results_of_one_name_are_removed_under_the_lock(tmp_path) -> None:
    for name in (".tmp-model-12", ".old-model-345", ".tmp-pipeline-12", ".tmp-model-x", "a.tmp-model-1"):
        _write(tmp_path / name, "left")
    (tmp_path / ".old-model-7").write_text("a file in its place", encoding="utf-8")
    removed = remove_unfinished_results(tmp_path, "model")
    assert removed == [tmp_path / ".old-model-345", tmp_path / ".old-model-7", tmp_path / ".tmp-model-12"]
    assert _entries(tmp_path) == [".tmp-model-x", ".tmp-pipeline-12", "a.tmp-model-1"]
    assert remove_unfinished_results(tmp_path / "missing", "model") == []


def test_only_dead_writers_temporaries_are_removed_without_a_lock(tmp_path) -> None:
    dead = _dead_pid()
    for name in (f".tmp-tower-{dead}", ".tmp-tower-1", f".old-tower-{dead}", f".tmp-other-{dead}", ".tmp-tower-x"):
        _write(tmp_path / name, "left")
    assert remove_dead_writers_temporaries(tmp_path / "tower") == [tmp_path / f".tmp-tower-{dead}"]
    assert _entries(tmp_path) == [f".old-tower-{dead}", f".tmp-other-{dead}", ".tmp-tower-1", ".tmp-tower-x"]
    assert remove_dead_writers_temporaries(tmp_path / "missing" / "tower") == []


LONGEST = "f" * 255  # NAME_MAX bytes: the hidden siblings' names cannot hold it whole


def test_folders_named_with_the_most_bytes_a_name_holds_are_written(tmp_path) -> None:
    """Before: ``.tmp-<name>-<pid>`` of such a name was over NAME_MAX bytes, and `init-clip -o`
    ended in "OSError: File name too long" after its work."""
    final = tmp_path / LONGEST
    with writing_new_folder(final) as temporary:
        assert len(os.fsencode(temporary.name)) <= 255 and temporary.name.startswith(".tmp-fff")
        _write(temporary, "first")
    with writing_atomically(final) as temporary:
        _write(temporary, "second")
    assert _entries(tmp_path) == [LONGEST] and (final / "weights.txt").read_text() == "second"
    with pytest.raises(RuntimeError, match="^stop$"), writing_atomically(final) as temporary:
        _write(temporary, "third")
        raise RuntimeError("stop")
    assert _entries(tmp_path) == [LONGEST] and (final / "weights.txt").read_text() == "second"


def test_the_leftovers_of_a_long_name_are_found_by_its_cut_name(tmp_path) -> None:
    from clipcond.folder_saves import hidden_sibling, sibling_stem

    final = tmp_path / LONGEST
    stem = sibling_stem(LONGEST)
    assert hidden_sibling(final, "tmp").name == f".tmp-{stem}-{PID}"
    dead, other = _dead_pid(), sibling_stem("f" * 254 + "g")
    assert other != stem  # names that begin alike differ
    for name in (f".tmp-{stem}-{dead}", f".tmp-{stem}-{PID}", f".tmp-{other}-{dead}"):
        (tmp_path / name).mkdir()
    assert remove_dead_writers_temporaries(final) == [tmp_path / f".tmp-{stem}-{dead}"]
    (tmp_path / f".old-{stem}-{dead}").mkdir()
    assert remove_unfinished_results(tmp_path, LONGEST) == [
        tmp_path / f".old-{stem}-{dead}",
        tmp_path / f".tmp-{stem}-{PID}",
    ]
    assert _entries(tmp_path) == [f".tmp-{other}-{dead}"]


def test_a_pipeline_folder_named_with_the_most_bytes_a_name_holds_is_saved_whole(tmp_path) -> None:
    from clipcond.folder_saves import saving_whole

    final = tmp_path / LONGEST
    for text in ("first", "second"):  # a new folder, then each entry moved in over the old one
        with saving_whole(final) as written:
            _write(written, text)
    assert _entries(tmp_path) == [LONGEST] and (final / "weights.txt").read_text() == "second"
