"""Writing a folder whole or not at all: a hidden sibling ``.tmp-<name>-<pid>`` filled, flushed
and renamed into place when complete. `writing_atomically` replaces an older folder only then (a
run's final ``model/`` or ``pipeline/``, under the run folder's lock); `writing_new_folder` never
replaces one (``init-clip``, ``convert-clip``, which hold no lock: of two writers of one folder the
first to finish keeps it). What a killed writer leaves is removed by the next:
`remove_unfinished_results` under a lock, `remove_dead_writers_temporaries` without one (only the
siblings whose process is gone).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clipcond.folder_saves import hidden_sibling, remove_entry, sibling_stem, written_sibling
from clipcond.output_paths import process_alive


@contextmanager
def writing_atomically(folder: str | os.PathLike) -> Iterator[Path]:
    """Write a folder whole or not at all: the block writes into the folder yielded, a hidden
    sibling ``.tmp-<name>-<pid>``; when it ends without error, the files are flushed to disk and
    the sibling renamed to `folder`. An existing `folder` (an older save) is replaced only then:
    renamed aside to ``.old-<name>-<pid>``, the new one renamed into place, the old one deleted.
    On an error the sibling is deleted. A kill leaves at most the hidden siblings (and, between
    the two renames, no `folder`), which `remove_unfinished_results` removes.

    Yields:
        The temporary folder to write into (not created: writers such as diffusers'
        ``save_pretrained`` create it).
    """
    final = Path(folder)
    with written_sibling(final) as temporary:
        yield temporary
    older = hidden_sibling(final, "old")
    if final.exists():
        if older.exists():
            shutil.rmtree(older)
        os.replace(final, older)
    os.replace(temporary, final)
    if older.exists():
        shutil.rmtree(older)


class FolderTaken(FileExistsError):
    """Another writer put the folder in place while this one wrote (`writing_new_folder`)."""


@contextmanager
def writing_new_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Write a folder that must not exist yet, whole or not at all, for writers that hold no run
    lock (``init-clip``, ``convert-clip``): the block writes into a hidden sibling
    ``.tmp-<name>-<pid>`` (the pid makes it this process's own; siblings that dead processes left
    are deleted first, `remove_dead_writers_temporaries`), flushed to disk and renamed to `folder`
    when the block ends without error. The rename never replaces a folder that holds files: of
    two writers of one `folder` at once, the first to finish keeps it and the other gets
    `FolderTaken`. On any error the sibling is deleted.

    Yields:
        The temporary folder to write into (not created: writers create it).

    Raises:
        FolderTaken: `folder` was put in place by another writer meanwhile (it is kept).
    """
    final = Path(folder)
    remove_dead_writers_temporaries(final)
    with written_sibling(final) as temporary:
        yield temporary
    try:
        os.rename(temporary, final)  # onto a folder with files it fails; an empty one it replaces
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if final.exists() or final.is_symlink():
            raise FolderTaken(f"{final} was written by another run meanwhile") from error
        raise


def remove_unfinished_results(output_dir: str | os.PathLike, name: str) -> list[Path]:
    """Delete what a `writing_atomically` of ``output_dir/<name>`` killed mid-way left: its
    ``.tmp-<name>-<pid>`` and ``.old-<name>-<pid>`` siblings. Call it only while holding the run
    folder's lock: a live writer's folders look the same. Returns what was deleted."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    pattern = re.compile(rf"\.(tmp|old)-{re.escape(sibling_stem(name))}-\d+")
    removed = []
    for path in sorted(root.iterdir()):
        if pattern.fullmatch(path.name):
            remove_entry(path)
            removed.append(path)
    return removed


def remove_dead_writers_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.tmp-<name>-<pid>`` siblings of `folder` that a `writing_atomically` killed
    mid-save left, for writers that hold no run lock (``init-clip``): only those whose process
    is no longer alive, so a live writer's folder is kept. Returns what was deleted."""
    final = Path(folder)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"\.tmp-{re.escape(sibling_stem(final.name))}-(\d+)")
    removed = []
    for path in sorted(final.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if match and not process_alive(int(match.group(1))):
            remove_entry(path)
            removed.append(path)
    return removed
