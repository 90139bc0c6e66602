"""Model folder digests of the lab on their own: which files they cover, the digest against a
sha256 of each file's relative path and content computed here, and the cache that spares
reading unchanged files (an edited or malformed entry read again)."""

from __future__ import annotations

import hashlib
import os

import pytest

from clipcond.lab import digests
from clipcond.lab.digests import folder_digest, model_files


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "weights.bin").write_bytes(os.urandom((1 << 20) + 17))  # more than one read
    (folder / "model_index.json").write_text("{}")
    (folder / "README.md").write_text("notes")
    (folder / "unet" / "NOTES.MD").write_text("notes")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.json").write_text("{}")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "config.json").write_text('{"a": 1}')
    (folder / "vae").symlink_to(shared)
    return folder


def expected_digest(folder, names) -> str:
    total = hashlib.sha256()
    for name in names:
        content = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        total.update(f"{name}\0{content}\n".encode())
    return total.hexdigest()


NAMES = ["model_index.json", "unet/weights.bin", "vae/config.json"]


def test_the_files_covered_leave_out_readmes_and_hidden_names_and_follow_links(model) -> None:
    assert [path.relative_to(model).as_posix() for path in model_files(model)] == NAMES
    with pytest.raises(FileNotFoundError):
        model_files(model / "missing")


def test_the_digest_is_a_sha256_of_each_files_name_and_content(model) -> None:
    cache = {}
    assert folder_digest(model, cache) == expected_digest(model, NAMES)
    assert folder_digest(str(model)) == expected_digest(model, NAMES)
    for name in NAMES:
        stat = (model / name).stat()
        entry = cache[str((model / name).resolve())]
        assert entry == [stat.st_size, stat.st_mtime_ns, hashlib.sha256((model / name).read_bytes()).hexdigest()]
    assert len(cache) == 3


def test_unchanged_files_are_not_read_again_and_changed_or_malformed_entries_are(model, monkeypatch) -> None:
    cache = {}
    before = folder_digest(model, cache)
    read = []
    real = digests._file_sha256
    monkeypatch.setattr(digests, "_file_sha256", lambda path: read.append(path.name) or real(path))
    assert folder_digest(model, cache) == before and read == []
    (model / "model_index.json").write_text('{"changed": 1}')
    after = folder_digest(model, cache)
    assert after != before and read == ["model_index.json"] and after == expected_digest(model, NAMES)
    key = str((model / "unet" / "weights.bin").resolve())
    for malformed in ([1, 2], "x", [cache[key][0], cache[key][1], 5], [cache[key][0], cache[key][1], None, "more"]):
        read.clear()
        cache[key] = malformed
        assert folder_digest(model, cache) == after and read == ["weights.bin"]
    read.clear()
    stale = cache[key]
    cache[key] = [stale[0], stale[1] + 1, "0" * 64]  # another time of last write: read again
    assert folder_digest(model, cache) == after and read == ["weights.bin"]
    read.clear()
    cache[key] = [stale[0], stale[1], "f" * 64]  # size and time as recorded: the recorded content is trusted
    assert folder_digest(model, cache) != after and read == []


def test_a_file_is_read_one_mib_at_a_time(tmp_path, monkeypatch) -> None:
    path = tmp_path / "weights.bin"
    data = os.urandom((2 << 20) + 3)
    path.write_bytes(data)
    sizes = []

    class Recording:
        def __init__(self, handle) -> None:
            self.handle = handle

        def read(self, size=-1):
            sizes.append(size)
            return self.handle.read(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(digests, "open", lambda p, mode: Recording(open(p, mode)), raising=False)
    assert digests._file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert sizes == [1 << 20] * 4  # 1, 1, 3 bytes, then the empty end
