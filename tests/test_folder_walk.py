"""The files of a model folder (clipcond.folder_walk.folder_files): symlinked files and folders
followed, a link back to a folder above not, hidden names left out, sorted; anything but a
folder refused whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipcond.folder_walk import folder_files


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(path.name, encoding="utf-8")
    return path


def test_the_files_of_a_folder_with_links_and_hidden_names(tmp_path) -> None:
    shared = tmp_path / "shared" / "vae"
    _file(shared / "config.json")
    _file(shared / "deep" / "weights.safetensors")
    pipe = tmp_path / "pipe"
    _file(pipe / "unet" / "config.json")
    _file(pipe / "model_index.json")
    _file(pipe / ".cache" / "download.lock")
    _file(pipe / "unet" / ".hidden")
    (pipe / "vae").symlink_to(shared)  # a shared component: followed
    (pipe / "unet" / "loop").symlink_to(pipe)  # back to a folder above: not followed
    (pipe / "unet" / "self").symlink_to(pipe / "unet")  # to the folder it sits in: not followed
    (pipe / "notes.txt").symlink_to(shared / "config.json")  # a linked file: read
    (pipe / "gone.txt").symlink_to(tmp_path / "missing")  # a dangling link: no file
    assert folder_files(pipe) == [
        pipe / "model_index.json",
        pipe / "notes.txt",
        pipe / "unet" / "config.json",
        pipe / "vae" / "config.json",
        pipe / "vae" / "deep" / "weights.safetensors",
    ]
    assert folder_files(str(pipe)) == folder_files(pipe)


def test_a_folder_reached_twice_by_links_is_read_under_each_path(tmp_path) -> None:
    _file(tmp_path / "pipe" / "a" / "w.bin")
    (tmp_path / "pipe" / "b").symlink_to(tmp_path / "pipe" / "a")
    assert folder_files(tmp_path / "pipe") == [tmp_path / "pipe" / "a" / "w.bin", tmp_path / "pipe" / "b" / "w.bin"]


def test_an_empty_folder_has_no_files(tmp_path) -> None:
    assert folder_files(tmp_path) == []


@pytest.mark.parametrize("what", ["a_file", "nothing"])
def test_anything_but_a_folder_is_refused_whole(what, tmp_path) -> None:
    path = _file(tmp_path / "weights.bin") if what == "a_file" else tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as raised:
        folder_files(path)
    assert str(raised.value) == f"not a folder: {path}"
