"""Saving a pipeline folder whole or not at all, over an earlier save in the same folder.

diffusers' `DiffusionPipeline.save_pretrained` writes each component into the folder in turn.
When it fails partway (a full disk, Ctrl-C, a component that cannot be written), the folder
holds the new `model_index.json` and the components written so far beside the old ones: a
folder neither save wrote, which may load without error. `saving_whole` gives the writer a
hidden sibling ``.tmp-<name>-<pid>`` (a long `<name>` cut to fit a file name: `sibling_stem`)
to write into instead and puts its entries into the folder only once the writer has finished:

- a folder that does not exist yet is the sibling, renamed (one rename);
- in an existing folder, each top-level entry the writer wrote (``model_index.json``, a
  component's subfolder) replaces the entry of that name, the old one moved aside first and
  put back if a later move fails; entries the writer did not write (a README, a component
  this save lacks) stay as they are, as in diffusers;
- inside a component subfolder that is replaced, the old files the new save did not write are
  kept when they are no weights (a note, a license): weights (``.safetensors``, ``.bin``,
  ``.index.json``) of an earlier save are stale, as diffusers' and transformers' own savers
  treat their shards.

A kill between the moves (a handful of renames) can still leave a mix; the moved-aside entries
are then in the hidden sibling ``.old-<name>-<pid>``.

`written_sibling` (the hidden sibling, flushed when whole, deleted on an error) and
`remove_entry` are also the base of the training writers (`clipcond.training.folder_writes`,
`clipcond.training.checkpoint`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clipcond.output_paths import PID_DIGITS, fitted_name

# an earlier save's files of these kinds are not carried over into a replaced subfolder
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")


# what a hidden sibling's name adds to the folder's: ".tmp-" or ".old-", "-<pid>"
_SIBLING_ROOM = 5 + 1 + PID_DIGITS


def sibling_stem(name: str) -> str:
    """The part of the hidden siblings' names (``.tmp-<stem>-<pid>``, ``.old-<stem>-<pid>``)
    that stands for the folder `name`: `name`, cut to fit a file name when it is long
    (`clipcond.output_paths.fitted_name`)."""
    return fitted_name(name, _SIBLING_ROOM)


def hidden_sibling(final: Path, kind: str) -> Path:
    """This process's hidden sibling ``.<kind>-<stem>-<pid>`` of `final` (`kind`: "tmp" or "old")."""
    return final.with_name(f".{kind}-{sibling_stem(final.name)}-{os.getpid()}")


def remove_entry(path: Path) -> None:
    """Delete a folder entry: a folder with what it holds, or a file or link in its place."""
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _fsync_files(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


@contextmanager
def written_sibling(final: Path) -> Iterator[Path]:
    """The hidden sibling ``.tmp-<name>-<pid>`` of `final` for the block to write into (what a
    dead process with our pid left there is deleted first), its files flushed to disk when the
    block ends without error; deleted on an error (the error is raised again). The writers of
    `clipcond.training.folder_writes` and `saving_whole` build on it."""
    temporary = hidden_sibling(final, "tmp")
    if temporary.exists() or temporary.is_symlink():
        remove_entry(temporary)
    try:
        yield temporary
        if not temporary.is_dir():
            raise RuntimeError(f"nothing was written to {temporary} for {final}")
        _fsync_files(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _carry_over(old: Path, new: Path) -> None:
    """Copy into each subfolder of `new` the files of the same subfolder of `old` that `new`
    lacks and that are no weights (hard links where the file system allows them; a symbolic
    link as a link to the same place)."""
    for folder in sorted(new.iterdir()):
        before = old / folder.name
        if not folder.is_dir() or not before.is_dir():
            continue
        for path in sorted(before.rglob("*")):
            target = folder / path.relative_to(before)
            if target.exists() or target.is_symlink() or path.name.endswith(WEIGHT_SUFFIXES):
                continue
            if path.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(os.readlink(path))
            elif path.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError:  # another file system, or one without hard links
                    shutil.copy2(path, target)


def _move_in(written: Path, final: Path) -> None:
    """Move each entry of `written` into `final`, the entry of that name there moved aside
    first; if a move fails, the moved entries go back and the error is raised."""
    aside = hidden_sibling(final, "old")
    if aside.exists() or aside.is_symlink():
        remove_entry(aside)
    aside.mkdir()
    placed: list[str] = []
    try:
        for entry in sorted(written.iterdir()):
            target = final / entry.name
            if target.exists() or target.is_symlink():
                os.replace(target, aside / entry.name)
            os.replace(entry, target)
            placed.append(entry.name)
    except BaseException:
        for name in reversed(placed):
            os.replace(final / name, written / name)
        for entry in sorted(aside.iterdir()):
            os.replace(entry, final / entry.name)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def saving_whole(folder: str | os.PathLike, argument: str = "save_directory") -> Iterator[Path]:
    """Write a pipeline folder whole or not at all (see the module docstring).

    Args:
        folder: the folder to write.
        argument: the name the caller's users know `folder` by, for the messages.

    Yields:
        The hidden sibling to write into (not created: writers such as diffusers'
        `save_pretrained` create it). On an error in the block it is deleted and `folder` is
        as it was.

    Raises:
        TypeError: `folder` is no path (str or os.PathLike).
        ValueError: `folder` is a file.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a path (str or os.PathLike), got {type(folder).__name__}")
    final = Path(folder)
    if final.exists() and not final.is_dir():
        raise ValueError(f"`{argument}` must be a folder, got the file {final}")
    with written_sibling(final) as written:
        yield written
        if final.is_dir() and written.is_dir():
            _carry_over(final, written)  # before the flush: copies are flushed too
    try:
        if not final.exists():
            os.rename(written, final)
        else:
            _move_in(written, final)
    finally:
        if written.exists():  # what a failed move took back out
            shutil.rmtree(written, ignore_errors=True)


__all__ = ["WEIGHT_SUFFIXES", "hidden_sibling", "remove_entry", "saving_whole", "sibling_stem", "written_sibling"]
