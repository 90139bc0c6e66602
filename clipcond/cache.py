"""Content-addressed cache of encoder outputs: an in-memory LRU and optional safetensors files.

Keys are hex digests the caller builds from everything the result depends on (encoder
weights, recipe settings, prompt text). Values are `EncodedPrompt` records. On disk each
entry is one ``<key>.safetensors`` file holding the record's tensors, written to a temporary file and renamed into place, so a
crash never leaves a half-written entry under a valid name.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clipcond.records import EncodedPrompt


class EmbeddingCache:
    """LRU of at most `max_entries` records in memory, optionally backed by `directory`.

    Args:
        max_entries: records kept in memory (0 disables the memory level).
        directory: folder for safetensors files (created if missing), or None for memory only.
    """

    def __init__(self, max_entries: int = 512, directory: str | os.PathLike | None = None) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 0:
            raise ValueError(f"`max_entries` must be an int >= 0, got {max_entries!r}")
        self.max_entries = max_entries
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            if self.directory.exists() and not self.directory.is_dir():
                raise ValueError(f"`cache_dir` {self.directory} exists and is not a directory")
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[str, EncodedPrompt] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, key: str, device: torch.device | None = None) -> EncodedPrompt | None:
        """The record stored under `key` (memory first, then disk), or None."""
        record = self._memory.get(key)
        if record is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return record
        if self.directory is not None:
            path = self._path(key)
            if path.is_file():
                tensors = load_file(path, device=str(device) if device is not None else "cpu")
                record = EncodedPrompt.from_tensors(tensors)
                self._remember(key, record)
                self.hits += 1
                return record
        self.misses += 1
        return None

    def put(self, key: str, record: EncodedPrompt, text: str = "") -> None:
        """Store `record` under `key` in memory and, when a directory is set, on disk."""
        self._remember(key, record)
        if self.directory is not None and not self._path(key).exists():
            tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in record.tensors().items()}
            handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            os.close(handle)
            try:
                save_file(tensors, temporary, metadata={"text": text[:4096]})
                os.replace(temporary, self._path(key))
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)

    def _remember(self, key: str, record: EncodedPrompt) -> None:
        if self.max_entries == 0:
            return
        self._memory[key] = record
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def clear_memory(self) -> None:
        """Forget every in-memory record (files on disk stay)."""
        self._memory.clear()
