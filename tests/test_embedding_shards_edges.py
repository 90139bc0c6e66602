"""Edges of the pre-encoded caption shards that the encode and training tests do not reach (found
by mutation testing of embedding_shards.py): damaged digest tables, the reader's device, captions
that are not valid UTF-8 text, the reader's checks and open-shard bound, temporary files and
failed writes, shard order. No conditioner: hand-made records of one (1, 77, 32) tensor."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from clipcond.record_spec import RecordSpec, TensorSpec
from clipcond.records import EncodedPrompt
from clipcond.training.data import embedding_shards
from clipcond.training.data.embedding_shards import (
    DamagedRecord,
    EmbeddingIdentity,
    EmbeddingShards,
    caption_hash,
    remove_temporary_files,
    shard_path,
    write_shard,
)

IDENTITY = EmbeddingIdentity("w" * 64, "v4|settings")
SPEC = RecordSpec({"clip_tokens": TensorSpec((None, 77, 32), torch.float32)})


def _record(seed: int) -> EncodedPrompt:
    return EncodedPrompt.from_tensors(
        {"clip_tokens": torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(seed))}
    )


def _folder(tmp_path: Path, captions=("a red circle", "a blue square")) -> Path:
    folder = tmp_path / "emb"
    folder.mkdir()
    write_shard(folder, 0, {caption_hash(c): _record(i) for i, c in enumerate(captions)}, IDENTITY)
    return folder


def _rewrite_metadata(path: Path, **changes: str) -> None:
    with safe_open(str(path), "pt") as shard:
        metadata = dict(shard.metadata())
    save_file(load_file(str(path)), str(path), metadata={**metadata, **changes})


def test_a_flipped_bit_is_refused_by_a_reader_with_a_spec(tmp_path):
    # the spec's verdict must not replace the digest's: a finite flipped bit passes any spec check
    folder = _folder(tmp_path)
    path, key = shard_path(folder, 0), caption_hash("a red circle")
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    begin = 8 + header + json.loads(data[8 : 8 + header])[f"{key}.clip_tokens"]["data_offsets"][0]
    data[begin + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedRecord, match="tensor bytes do not match"):
        EmbeddingShards(folder, IDENTITY, spec=SPEC).record("a red circle")


@pytest.mark.parametrize("table", ["[1, 2]", '"text"', "not json", "[" * 100_000])
def test_a_damaged_digest_table_refuses_each_record_by_name(tmp_path, table):
    # a table that parses as a list or a string is damaged, not an AttributeError or a lookup per character
    folder = _folder(tmp_path)
    _rewrite_metadata(shard_path(folder, 0), tensor_digests=table)
    shards = EmbeddingShards(folder, IDENTITY)
    with pytest.raises(DamagedRecord, match="records no digest"):
        shards.record("a red circle")


def test_records_are_moved_to_the_asked_device(tmp_path):
    shards = EmbeddingShards(_folder(tmp_path), IDENTITY)
    assert shards.record("a red circle", device="meta").clip_tokens.device.type == "meta"
    assert [r.clip_tokens.device.type for r in shards.records(["a red circle", "a blue square"], "meta")] == [
        "meta"
    ] * 2
    assert shards.record("a red circle").clip_tokens.device.type == "cpu"


def test_a_caption_with_a_lone_surrogate_has_a_key(tmp_path):
    # a caption read from JSON may hold a lone surrogate, which plain UTF-8 cannot encode
    caption = "a red \ud800 circle"
    assert caption_hash(caption) == hashlib.sha256(b"a red \xed\xa0\x80 circle").hexdigest()
    folder = _folder(tmp_path, captions=(caption,))
    assert torch.equal(EmbeddingShards(folder, IDENTITY).record(caption).clip_tokens, _record(0).clip_tokens)


def test_a_record_is_checked_once_per_reader(tmp_path, monkeypatch):
    shards = EmbeddingShards(_folder(tmp_path), IDENTITY)
    calls = []
    real = embedding_shards.digest_problem
    monkeypatch.setattr(embedding_shards, "digest_problem", lambda *a: calls.append(1) or real(*a))
    for _ in range(3):
        shards.record("a red circle")
    assert len(calls) == 1


def test_a_reader_keeps_exactly_its_bound_of_open_shards(tmp_path, monkeypatch):
    folder = tmp_path / "emb"
    folder.mkdir()
    captions = ["a", "b", "c"]
    for index, caption in enumerate(captions):
        write_shard(folder, index, {caption_hash(caption): _record(index)}, IDENTITY)
    monkeypatch.setattr(embedding_shards, "_OPEN_SHARDS", 2)
    shards = EmbeddingShards(folder, IDENTITY)
    for caption in captions:
        shards.record(caption)
    assert list(shards._open) == [shard_path(folder, 1), shard_path(folder, 2)]


def test_removing_temporary_files_counts_them(tmp_path):
    folder = _folder(tmp_path)
    for name in (".embeddings-000001.safetensors.1.ab.tmp", ".embeddings-000002.safetensors.1.cd.tmp"):
        (folder / name).write_bytes(b"half")
    (folder / ".latents-000001.safetensors.1.ab.tmp").write_bytes(b"another kind's")
    assert remove_temporary_files(folder) == 2
    assert remove_temporary_files(folder) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        ".latents-000001.safetensors.1.ab.tmp",
        "embeddings-000000.safetensors",
    ]


def test_a_failed_write_leaves_no_temporary_file_and_raises_its_own_error(tmp_path, monkeypatch):
    folder = tmp_path / "emb"
    folder.mkdir()

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedding_shards.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_shard(folder, 0, {caption_hash("a"): _record(0)}, IDENTITY)
    assert list(folder.iterdir()) == []


def test_shards_are_listed_in_order_of_their_names(tmp_path, monkeypatch):
    folder = tmp_path / "emb"
    folder.mkdir()
    for index in (2, 0, 1):
        write_shard(folder, index, {caption_hash(str(index)): _record(index)}, IDENTITY)
    listing = sorted(folder.iterdir(), reverse=True)
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(listing))
    assert [p.name for p in EmbeddingShards(folder, IDENTITY).paths] == [shard_path(folder, i).name for i in range(3)]


def test_a_write_into_a_missing_folder_raises_its_own_error(tmp_path):
    # the temporary file was never made, so its clean-up must not hide the FileNotFoundError
    with pytest.raises(FileNotFoundError):
        write_shard(tmp_path / "missing", 0, {caption_hash("a"): _record(0)}, IDENTITY)
