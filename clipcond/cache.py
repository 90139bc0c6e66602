"""Content-addressed cache of encoder outputs: an in-memory LRU and optional safetensors files.

Keys are hex digests the caller builds from everything the result depends on (encoder
weights, tokenizers, recipe settings, prompt text). Values are `EncodedPrompt` records.

On disk each entry is one ``<key>.safetensors`` file holding the record's tensors and, in
its metadata, its key. The disk level never raises and never returns a wrong record:
- reading: a file that does not parse, records another key, holds tensors whose bytes do not
  match the digest it records (`clipcond.tensor_digest`: a flipped byte inside the data), or
  holds other tensors than the caller's `RecordSpec` (names, shapes, dtype, finite values) is
  a miss, logged once as a
  warning naming the file; the caller recomputes and `put` overwrites it. So is what is no
  regular file (a named pipe or a device, a link to one): it is never read. A file that is
  missing or vanishes (another process deleted it) is a plain miss.
- writing: to a hidden temporary file created with the user's umask, renamed into place, so a
  crash or a concurrent reader never sees half an entry. A folder that cannot be created or
  written (permissions, a full disk) turns the cache to memory only, with one warning. An
  entry whose path something else holds (a folder: the rename onto it fails) is kept in memory
  only, with a warning naming it; the other entries are still written.

Threads may share a cache (a conditioner serving several requests): the in-memory LRU and the
hit and miss counts change under a lock, each file is read whole and written by rename.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from clipcond.output_paths import write_atomically
from clipcond.record_spec import RecordSpec
from clipcond.records import EncodedPrompt
from clipcond.tensor_digest import DIGEST_METADATA_KEY, digest_problem, tensor_digest

logger = logging.getLogger(__name__)

# How much of a prompt a file keeps in its metadata, for people reading the folder.
_TEXT_IN_METADATA = 4096


class EmbeddingCache:
    """LRU of at most `max_entries` records in memory, optionally backed by `directory`.

    Args:
        max_entries: records kept in memory (0 disables the memory level).
        directory: folder for safetensors files (created if missing), or None for memory only
            (a blank string is refused: it would be the current folder).
            A folder that cannot be created leaves the cache in memory only, with a warning.
    """

    def __init__(self, max_entries: int = 512, directory: str | os.PathLike | None = None) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 0:
            raise ValueError(f"`max_entries` must be an int >= 0, got {max_entries!r}")
        if isinstance(directory, str) and not directory.strip():  # Path("") is the current folder
            raise ValueError(f"`directory` must be a folder path or None (memory only), got {directory!r}")
        self.max_entries = max_entries
        self.directory = None if directory is None else _usable_directory(Path(directory))
        self._memory: OrderedDict[str, EncodedPrompt] = OrderedDict()
        self._lock = threading.Lock()  # guards `_memory`, `hits` and `misses`
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]  # a lock cannot be copied or pickled; a copy gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._memory)

    @staticmethod
    def _path(directory: Path, key: str) -> Path:
        return directory / f"{key}.safetensors"

    def get(self, key: str, expected: RecordSpec, device: torch.device | None = None) -> EncodedPrompt | None:
        """The record stored under `key` (memory first, then disk), or None.

        Args:
            expected: what a record under this key must hold; a file that differs is a miss.
            device: where a record read from disk is put (default: the CPU).
        """
        with self._lock:
            record = self._memory.get(key)
            if record is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return record
        directory = self.directory  # once: a failed write in another thread may set it to None
        if directory is not None:
            tensors = self._read(directory, key, expected)
            if tensors is not None:
                if device is not None:
                    tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
                record = EncodedPrompt.from_tensors(tensors)
                with self._lock:
                    self._remember(key, record)
                    self.hits += 1
                return record
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, record: EncodedPrompt, expected: RecordSpec, text: str = "") -> None:
        """Store `record` under `key` in memory and, when a directory is set, on disk
        (replacing what is there). A record that does not fit `expected` (NaNs from the
        encoder, say) stays in memory only, with a warning."""
        with self._lock:
            self._remember(key, record)
        directory = self.directory
        if directory is None:
            return
        path = self._path(directory, key)
        tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in record.tensors().items()}
        problem = expected.problem(tensors)
        if problem is not None:
            logger.warning("embedding cache: not writing %s: %s", path, problem)
            return
        # The text is only for people reading the folder: cut, and with lone surrogates escaped
        # (safetensors metadata must be valid UTF-8).
        text = text[:_TEXT_IN_METADATA].encode("utf-8", "backslashreplace").decode("utf-8")
        data = save(tensors, metadata={"key": key, "text": text, DIGEST_METADATA_KEY: tensor_digest(tensors)})
        try:
            write_atomically(path, data, remove_leftovers=False)  # one of many entries: no folder listing
        except OSError as error:
            if error.filename2 is not None:  # the rename onto `path` failed: that entry is blocked, not the folder
                logger.warning("embedding cache: cannot write %s (%s); keeping this entry in memory only", path, error)
                return
            logger.warning(
                "embedding cache: cannot write to %s (%s); caching in memory only from now on", directory, error
            )
            self.directory = None

    def _read(self, directory: Path, key: str, expected: RecordSpec) -> dict[str, torch.Tensor] | None:
        """The tensors of the file of `key` in `directory`, or None (with a warning when the file
        is damaged)."""
        path = self._path(directory, key)
        try:
            # What stands at an entry's path may be no file: reading a pipe would wait for a
            # writer forever, and a device (a link to /dev/zero) never ends.
            kind = path.stat().st_mode
            if not stat.S_ISREG(kind):
                logger.warning(
                    "embedding cache: %s is no regular file (%s); recomputing it",
                    path,
                    _KINDS.get(stat.S_IFMT(kind), "another kind"),
                )
                return None
            # One read of the whole file: a concurrent delete or replace cannot change it midway.
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            logger.warning("embedding cache: cannot read %s (%s); recomputing it", path, error)
            return None
        tensors, problem = _parse_entry(data, key, expected)
        if problem is not None:
            logger.warning("embedding cache: %s is damaged (%s); recomputing and overwriting it", path, problem)
        return tensors

    def _remember(self, key: str, record: EncodedPrompt) -> None:
        """Put `record` in the LRU (the caller holds the lock)."""
        if self.max_entries == 0:
            return
        self._memory[key] = record
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def clear_memory(self) -> None:
        """Forget every in-memory record (files on disk stay)."""
        with self._lock:
            self._memory.clear()


# what stands at a path that is no regular file, in words for a warning
_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _usable_directory(directory: Path) -> Path | None:
    """`directory`, created if missing; None (with a warning) when it cannot be created."""
    try:
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"`cache_dir` {directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("embedding cache: cannot create %s (%s); caching in memory only", directory, error)
        return None
    return directory


def _parse_entry(
    data: bytes, key: str, expected: RecordSpec
) -> tuple[dict[str, torch.Tensor], None] | tuple[None, str]:
    """The tensors of an entry file's bytes, or what is wrong with them."""
    try:
        # The safetensors layout: an 8-byte little-endian header length, then a JSON header.
        header_length = int.from_bytes(data[:8], "little")
        if len(data) < 8 or header_length > len(data) - 8:
            return None, f"truncated: {len(data)} bytes"
        header = json.loads(data[8 : 8 + header_length])
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        tensors = load(data)
    # json's and unicode's errors are ValueErrors; absurdly nested JSON is a RecursionError
    except (SafetensorError, ValueError, TypeError, RecursionError) as error:
        return None, f"not a safetensors file: {error}"
    recorded = metadata.get("key") if isinstance(metadata, dict) else None
    if recorded != key:
        shown = "no key" if recorded is None else f"key {str(recorded)[:16]}..."
        return None, f"it records {shown}, not its own"
    problem = digest_problem(tensors, metadata.get(DIGEST_METADATA_KEY)) or expected.problem(tensors)
    if problem is not None:
        return None, problem
    return tensors, None
