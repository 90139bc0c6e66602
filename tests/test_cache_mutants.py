"""`EmbeddingCache` on its own, with records written in the test (no model): memory and disk
levels, hit and miss counts, what an entry file holds, and each way a file or folder can fail.
Written against the mutation run of issue 24 (benchmarks/results/mutation.md)."""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

import clipcond.output_paths
from clipcond.cache import EmbeddingCache
from clipcond.record_spec import RecordSpec, TensorSpec
from clipcond.records import EncodedPrompt
from clipcond.tensor_digest import tensor_digest

SPEC = RecordSpec({"clip_tokens": TensorSpec((None, 3, 2), torch.float32), "pooled": TensorSpec((2,), torch.float32)})


def _record(value: float, windows: int = 1) -> EncodedPrompt:
    return EncodedPrompt(clip_tokens=torch.full((windows, 3, 2), value), pooled=torch.full((2,), value))


def _assert_same(record: EncodedPrompt, value: float, windows: int = 1) -> None:
    expected = _record(value, windows)
    assert record.tensors().keys() == expected.tensors().keys()
    for name, tensor in expected.tensors().items():
        assert torch.equal(record.tensors()[name], tensor), name


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "clipcond.cache"]


def _file(directory, key: str = "k1"):
    return directory / f"{key}.safetensors"


@pytest.mark.parametrize("max_entries", [-1, True, 2.0, "3"])
def test_max_entries_must_be_a_whole_number_of_at_least_zero(max_entries):
    with pytest.raises(ValueError, match=rf"`max_entries` must be an int >= 0, got {max_entries!r}"):
        EmbeddingCache(max_entries=max_entries)


def test_the_default_memory_keeps_512_records():
    cache = EmbeddingCache()
    for index in range(513):
        cache.put(str(index), _record(float(index)), SPEC)
    assert len(cache) == 512 and cache.directory is None
    assert cache.get("0", SPEC) is None
    _assert_same(cache.get("1", SPEC), 1.0)


def test_memory_hits_and_misses_are_counted():
    cache = EmbeddingCache(max_entries=2)
    assert cache.get("k1", SPEC) is None
    cache.put("k1", _record(1.0), SPEC)
    _assert_same(cache.get("k1", SPEC), 1.0)
    _assert_same(cache.get("k1", SPEC), 1.0)
    assert (cache.hits, cache.misses) == (2, 1)


def test_hits_and_misses_accumulate_on_both_levels(tmp_path):
    """Counts add up over calls: two misses, then two hits read from disk (nothing in memory)."""
    cache = EmbeddingCache(max_entries=0, directory=tmp_path)
    assert cache.get("k1", SPEC) is None and cache.get("k2", SPEC) is None
    cache.put("k1", _record(1.0), SPEC)
    _assert_same(cache.get("k1", SPEC), 1.0)
    _assert_same(cache.get("k1", SPEC), 1.0)
    assert (cache.hits, cache.misses) == (2, 2)


def test_a_read_refreshes_a_record_and_the_oldest_goes_first():
    cache = EmbeddingCache(max_entries=2)
    cache.put("k1", _record(1.0), SPEC)
    cache.put("k2", _record(2.0), SPEC)
    assert cache.get("k1", SPEC) is not None
    cache.put("k3", _record(3.0), SPEC)
    assert cache.get("k2", SPEC) is None
    _assert_same(cache.get("k1", SPEC), 1.0)
    _assert_same(cache.get("k3", SPEC), 3.0)
    cache.put("k3", _record(4.0), SPEC)  # a put refreshes too, and replaces the record
    cache.get("k1", SPEC)
    cache.put("k5", _record(5.0), SPEC)
    assert len(cache) == 2 and cache.get("k3", SPEC) is None


def test_zero_entries_keep_nothing_in_memory_and_still_use_the_disk(tmp_path):
    cache = EmbeddingCache(max_entries=0, directory=tmp_path)
    cache.put("k1", _record(1.0), SPEC)
    assert len(cache) == 0
    _assert_same(cache.get("k1", SPEC), 1.0)
    assert len(cache) == 0 and (cache.hits, cache.misses) == (1, 0)


def test_a_record_read_from_disk_is_counted_remembered_and_put_on_the_device(tmp_path):
    EmbeddingCache(directory=tmp_path).put("k1", _record(1.5, windows=2), SPEC)
    cache = EmbeddingCache(directory=str(tmp_path))
    record = cache.get("k1", SPEC)
    _assert_same(record, 1.5, windows=2)
    assert record.clip_tokens.device == torch.device("cpu")
    assert (cache.hits, cache.misses, len(cache)) == (1, 0, 1)
    _file(tmp_path).unlink()
    assert cache.get("k1", SPEC) is record  # from memory now

    EmbeddingCache(directory=tmp_path).put("k2", _record(2.0), SPEC)
    on_meta = EmbeddingCache(directory=tmp_path).get("k2", SPEC, device=torch.device("meta"))
    assert {tensor.device.type for tensor in on_meta.tensors().values()} == {"meta"}


def test_clear_memory_forgets_records_and_keeps_files(tmp_path):
    cache = EmbeddingCache(directory=tmp_path)
    cache.put("k1", _record(1.0), SPEC)
    cache.clear_memory()
    assert len(cache) == 0 and _file(tmp_path).is_file()
    _assert_same(cache.get("k1", SPEC), 1.0)


def test_an_entry_file_holds_the_record_its_key_and_the_prompts_start(tmp_path):
    text = "a red circle " + "x" * 5000 + "\ud800"
    EmbeddingCache(directory=tmp_path).put("k1", _record(1.0), SPEC, text=text)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["k1.safetensors"]  # no temporary left
    with safe_open(str(_file(tmp_path)), framework="pt") as handle:
        metadata = handle.metadata()
        assert sorted(handle.keys()) == ["clip_tokens", "pooled"]
    assert metadata == {"key": "k1", "text": text[:4096], "tensor_digest": tensor_digest(_record(1.0).tensors())}
    EmbeddingCache(directory=tmp_path).put("k2", _record(1.0), SPEC, text="\ud800 lone")
    with safe_open(str(_file(tmp_path, "k2")), framework="pt") as handle:
        assert handle.metadata()["text"] == "\\ud800 lone"
    EmbeddingCache(directory=tmp_path).put("k3", _record(1.0), SPEC)  # no text given: an empty one
    with safe_open(str(_file(tmp_path, "k3")), framework="pt") as handle:
        assert handle.metadata()["text"] == ""


def test_a_record_that_does_not_fit_stays_in_memory_with_a_warning(tmp_path, caplog):
    cache = EmbeddingCache(directory=tmp_path)
    bad = EncodedPrompt(clip_tokens=torch.full((1, 3, 2), float("nan")), pooled=torch.zeros(2))
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        cache.put("k1", bad, SPEC)
    assert _warnings(caplog) == [
        f"embedding cache: not writing {_file(tmp_path)}: `clip_tokens` holds NaN or infinite values"
    ]
    assert list(tmp_path.iterdir()) == [] and cache.get("k1", SPEC) is bad


def _damaged(tmp_path, data: bytes, caplog) -> list[str]:
    """The warnings of reading `data` as the entry of k1 (which must be a miss)."""
    _file(tmp_path).write_bytes(data)
    cache = EmbeddingCache(directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        assert cache.get("k1", SPEC) is None
    assert (cache.hits, cache.misses) == (0, 1)
    return _warnings(caplog)


def _entry(key: str | None, tensors=None, digest: str | None = "true") -> bytes:
    """An entry's bytes: its tensors, and its key and digest ("true": the tensors' own) unless None."""
    tensors = _record(1.0).tensors() if tensors is None else tensors
    metadata = {} if key is None else {"key": key}
    if digest is not None:
        metadata["tensor_digest"] = tensor_digest(tensors) if digest == "true" else digest
    return save(tensors, metadata=metadata or None)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "truncated: 0 bytes"),
        (b"\x02\x00\x00\x00\x00\x00\x00", "truncated: 7 bytes"),
        (struct.pack("<Q", 8) + b"{}", "truncated: 10 bytes"),
        (struct.pack("<Q", 2) + b"{}", "it records no key, not its own"),
        (_entry("0123456789abcdef0123"), "it records key 0123456789abcdef..., not its own"),
        (_entry(None), "it records no key, not its own"),
        (_entry("k1", {"pooled": torch.zeros(2)}), "missing tensors ['clip_tokens']"),
        (_entry("k1", digest=None), "it records no digest of its tensors"),
        (_entry("k1", digest="0" * 32), "its tensor bytes do not match the digest it records"),
    ],
    ids=[
        "empty",
        "short header length",
        "header past the end",
        "no metadata",
        "other key",
        "no key",
        "tensor missing",
        "no digest",
        "other digest",
    ],
)
def test_a_damaged_entry_is_a_miss_with_one_warning_naming_the_problem(tmp_path, caplog, data, problem):
    assert _damaged(tmp_path, data, caplog) == [
        f"embedding cache: {_file(tmp_path)} is damaged ({problem}); recomputing and overwriting it"
    ]


def test_a_file_that_is_not_safetensors_is_a_miss_naming_the_parser_error(tmp_path, caplog):
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    for data in (
        struct.pack("<Q", 5) + b"[[[[[garbage",
        struct.pack("<Q", len(header)) + header,
        struct.pack("<Q", 0),  # eight bytes: an empty header
        struct.pack("<Q", 2) + b"[]",  # a header that is no JSON object
    ):
        caplog.clear()
        (warning,) = _damaged(tmp_path, data, caplog)
        assert warning.startswith(f"embedding cache: {_file(tmp_path)} is damaged (not a safetensors file: ")


def test_an_unreadable_entry_is_a_miss_with_a_warning(tmp_path, caplog, monkeypatch):
    EmbeddingCache(directory=tmp_path).put("k1", _record(1.0), SPEC)
    cache = EmbeddingCache(directory=tmp_path)

    def unreadable(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(_file(tmp_path)), "read_bytes", unreadable)
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        assert cache.get("k1", SPEC) is None
    assert _warnings(caplog) == [
        f"embedding cache: cannot read {_file(tmp_path)} ([Errno 13] Permission denied); recomputing it"
    ]


def _put_in_place(path, kind: str) -> None:
    if kind == "a named pipe":
        os.mkfifo(path)
    elif kind == "a character device":
        os.symlink(os.devnull, path)  # a link is followed: what it names stands there
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["a named pipe", "a character device", "a folder"])
def test_what_is_no_regular_file_is_never_read_but_named_and_recomputed(tmp_path, caplog, kind):
    """A pipe at an entry's path made the read wait for a writer forever (a device such as a
    link to /dev/zero would never end): it is a miss with a warning naming what stands there,
    and the next `put` replaces it (not a folder, which keeps the entry in memory only)."""
    path = _file(tmp_path)
    _put_in_place(path, kind)

    def unblock() -> None:  # ends a read stuck on the pipe, so the test fails instead of hanging
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    guard = threading.Timer(5.0, unblock)
    guard.start()
    try:
        cache = EmbeddingCache(directory=tmp_path)
        with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
            assert cache.get("k1", SPEC) is None
    finally:
        guard.cancel()
    assert _warnings(caplog) == [f"embedding cache: {path} is no regular file ({kind}); recomputing it"]
    assert (cache.hits, cache.misses) == (0, 1)
    cache.put("k1", _record(1.0), SPEC)
    if kind != "a folder":
        assert path.is_file() and not path.is_symlink()
        _assert_same(EmbeddingCache(directory=tmp_path).get("k1", SPEC), 1.0)
    if kind == "a character device":
        assert os.path.exists(os.devnull)  # the link was replaced, not what it named


def test_a_missing_entry_is_a_silent_miss(tmp_path, caplog):
    cache = EmbeddingCache(directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        assert cache.get("k1", SPEC) is None
    assert _warnings(caplog) == [] and (cache.hits, cache.misses) == (0, 1)


def test_a_cache_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "cache"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match=f"`cache_dir` {path} exists and is not a directory"):
        EmbeddingCache(directory=path)


def test_a_nested_cache_dir_is_created(tmp_path):
    cache = EmbeddingCache(directory=tmp_path / "a" / "b")
    assert cache.directory == tmp_path / "a" / "b" and cache.directory.is_dir()


def test_a_cache_dir_that_cannot_be_created_leaves_memory_only(tmp_path, caplog, monkeypatch):
    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(tmp_path), "mkdir", refused)
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        cache = EmbeddingCache(directory=tmp_path / "cache")
    assert cache.directory is None
    assert _warnings(caplog) == [
        f"embedding cache: cannot create {tmp_path / 'cache'} ([Errno 13] Permission denied); caching in memory only"
    ]


def test_a_failed_write_leaves_no_temporary_file_and_turns_to_memory(tmp_path, caplog, monkeypatch):
    cache = EmbeddingCache(directory=tmp_path)

    def failing_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        cache.put("k1", _record(1.0), SPEC)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [] and cache.directory is None
    assert _warnings(caplog) == [
        f"embedding cache: cannot write to {tmp_path} ([Errno 28] No space left on device); "
        "caching in memory only from now on"
    ]
    _assert_same(cache.get("k1", SPEC), 1.0)


def test_temporary_names_differ_between_writes(tmp_path, monkeypatch):
    """Two writers of one key (threads, processes) never share a temporary file."""
    opened = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777):
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", recording_open)
    cache = EmbeddingCache(directory=tmp_path)
    cache.put("k1", _record(1.0), SPEC)
    cache.put("k1", _record(2.0), SPEC)
    monkeypatch.undo()
    (first, flags, mode), (second, _, _) = opened
    assert first != second
    for name in (first, second):
        assert os.path.basename(name).startswith(f".k1.safetensors.{os.getpid()}.") and name.endswith(".tmp")
    assert flags == os.O_WRONLY | os.O_CREAT | os.O_EXCL and mode == 0o666
    _assert_same(EmbeddingCache(directory=tmp_path).get("k1", SPEC), 2.0)


def test_the_tensor_digest_sees_every_byte_name_dtype_and_shape_but_not_layout() -> None:
    """Equal for equal tensors (another insertion order, a transposed copy made contiguous);
    different for one flipped bit, a renamed tensor, another dtype of the same bytes or
    another shape of the same elements; bfloat16 and bool digest too."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"a": base, "b": torch.ones(2, dtype=torch.bfloat16), "c": torch.tensor([True, False])}
    digest = tensor_digest(tensors)
    assert len(digest) == 8 and digest == tensor_digest(dict(reversed(list(tensors.items()))))
    assert tensor_digest({**tensors, "a": base.t().contiguous().t()}) == digest  # strides differ, values equal
    flipped = base.clone()
    flipped.view(torch.int32)[2, 3] ^= 1
    others = [
        {**tensors, "a": flipped},
        {"z": base, "b": tensors["b"], "c": tensors["c"]},
        {**tensors, "a": base.view(torch.int32)},
        {**tensors, "a": base.reshape(4, 3)},
    ]
    assert len({digest, *(tensor_digest(other) for other in others)}) == 5


def test_a_blank_directory_is_refused_with_what_is_expected():
    with pytest.raises(ValueError) as error:
        EmbeddingCache(directory=" ")
    assert str(error.value) == "`directory` must be a folder path or None (memory only), got ' '"


def test_one_entry_of_memory_keeps_the_latest_record():
    cache = EmbeddingCache(max_entries=1)
    cache.put("k1", _record(1.0), SPEC)
    _assert_same(cache.get("k1", SPEC), 1.0)
    cache.put("k2", _record(2.0), SPEC)
    assert len(cache) == 1 and cache.get("k1", SPEC) is None
    _assert_same(cache.get("k2", SPEC), 2.0)


def test_a_put_writes_its_entry_without_listing_the_folder(tmp_path, monkeypatch):
    """Looking for dead writers' leftovers lists the folder; a cache of many entries would pay a
    listing of them all at each write, so its writes skip it."""

    def listing(path):
        raise AssertionError(f"the cache listed the folder of {path}")

    monkeypatch.setattr(clipcond.output_paths, "remove_dead_writers_files", listing)
    EmbeddingCache(directory=tmp_path).put("k1", _record(1.0), SPEC)
    _assert_same(EmbeddingCache(directory=tmp_path).get("k1", SPEC), 1.0)


def test_an_entry_that_cannot_be_replaced_stays_in_memory_and_the_folder_stays_in_use(tmp_path, caplog):
    """A folder in an entry's place blocks that entry's rename only: the warning names the entry,
    the record is kept in memory, and other entries are still written."""
    _file(tmp_path).mkdir()
    cache = EmbeddingCache(directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        cache.put("k1", _record(1.0), SPEC)
    (warning,) = _warnings(caplog)
    prefix = f"embedding cache: cannot write {_file(tmp_path)} ([Errno {errno.EISDIR}] {os.strerror(errno.EISDIR)}: "
    assert warning.startswith(prefix), warning
    assert warning.endswith(f" -> '{_file(tmp_path)}'); keeping this entry in memory only"), warning
    assert cache.directory == tmp_path and sorted(path.name for path in tmp_path.iterdir()) == ["k1.safetensors"]
    _assert_same(cache.get("k1", SPEC), 1.0)
    cache.put("k2", _record(2.0), SPEC)
    assert _file(tmp_path, "k2").is_file()


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "disk"])
def test_threads_sharing_the_cache_never_fail_and_every_lookup_is_counted(tmp_path, frequent_thread_switches, on_disk):
    """Eight threads reading and writing twelve keys through a memory level of two entries, the
    interpreter switching threads about every microsecond: each read gives its key's record or
    a miss, no call raises (an entry evicted between two steps of `get` or `put` raised
    KeyError before the cache took a lock), no hit or miss is lost, and the LRU keeps its size."""
    import random

    from thread_runs import run_in_threads

    cache = EmbeddingCache(max_entries=2, directory=tmp_path if on_disk else None)
    rounds, wrong, threads = 300 if on_disk else 3000, [], 8

    def serve(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            key = rng.randrange(12)
            record = cache.get(str(key), SPEC)
            if record is None:
                cache.put(str(key), _record(float(key)), SPEC)
            elif not torch.equal(record.pooled, torch.full((2,), float(key))):
                wrong.append(key)

    failures = run_in_threads(serve, threads)
    assert not failures and not wrong, (failures[:3], wrong[:3])
    assert cache.hits + cache.misses == rounds * threads
    assert len(cache) <= 2 and (cache.directory is not None) == on_disk


def test_a_copied_or_pickled_cache_holds_the_same_entries_and_a_lock_of_its_own():
    import copy
    import pickle

    cache = EmbeddingCache(max_entries=2)
    cache.put("k1", _record(1.0), SPEC)
    for twin in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert twin._lock is not cache._lock
        _assert_same(twin.get("k1", SPEC), 1.0)
        twin.put("k2", _record(2.0), SPEC)
        assert len(twin) == 2 and len(cache) == 1
