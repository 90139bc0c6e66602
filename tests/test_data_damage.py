"""Damaged pre-encoded shards (``data.embeddings``, ``data.latents``): a record whose bytes were
overwritten, whose tensors are not the reader's or not finite, or a shard that records no
digests, is refused before it reaches the model, naming the shard and the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_train_diffusion import tiny_config

from clipcond.cli import main as clipcond
from clipcond.records import EncodedPrompt
from clipcond.tensor_digest import tensor_digest
from clipcond.training.data.embedding_shards import (
    EmbeddingIdentity,
    EmbeddingShardError,
    EmbeddingShards,
    MissingRecord,
    caption_hash,
    shard_path,
    write_shard,
)
from clipcond.training.diffusion.config import DiffusionDataConfig
from clipcond.training.diffusion.loop import train_diffusion
from clipcond.training.diffusion.setup import build_conditioner

CAPTIONS = ["", "a red circle", "a blue square", "a green star"]


@dataclasses.dataclass
class Encoded:
    """A folder of two shards of the tiny conditioner's records (captions 0-1, then 2-3)."""

    folder: Path
    conditioner: object
    identity: EmbeddingIdentity
    records: dict[str, EncodedPrompt]


@pytest.fixture
def encoded(tiny_clip_text_path, tmp_path: Path) -> Encoded:
    conditioner = build_conditioner(tiny_config(tiny_clip_text_path, tmp_path / "run"))
    identity = EmbeddingIdentity(*conditioner.identity())
    records = dict(zip(CAPTIONS, conditioner.encode_records(CAPTIONS)))
    folder = tmp_path / "emb"
    folder.mkdir()
    for index in range(2):
        shard = {caption_hash(caption): records[caption] for caption in CAPTIONS[2 * index : 2 * index + 2]}
        write_shard(folder, index, shard, identity)
    return Encoded(folder, conditioner, identity, records)


def _data_range(path: Path, name: str) -> tuple[int, int]:
    """The byte range of tensor `name`'s data in the safetensors file at `path`."""
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8 : 8 + header_length])[name]["data_offsets"]
    return 8 + header_length + begin, 8 + header_length + end


def _rewrite(path: Path, change) -> None:
    """Write the shard at `path` again with `change(tensors, metadata)` applied (in place)."""
    with safe_open(str(path), "pt") as shard:
        metadata = dict(shard.metadata())
    tensors = load_file(str(path))
    change(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def test_a_flipped_bit_in_a_records_data_is_refused_naming_the_shard_and_the_caption(encoded: Encoded) -> None:
    """Same length, a valid float: safetensors reads it; the digest the shard records does not."""
    path = shard_path(encoded.folder, 1)
    key = caption_hash("a blue square")
    begin, _ = _data_range(path, f"{key}.clip_tokens")
    data = bytearray(path.read_bytes())
    data[begin + 100] ^= 0x01  # one low mantissa bit: the number is finite and off by ~1e-7
    path.write_bytes(bytes(data))
    shards = EmbeddingShards(encoded.folder, encoded.identity)
    with pytest.raises(MissingRecord, match=rf"{path}: the caption of hash {key} is damaged .*tensor bytes"):
        shards.record("a blue square")
    # the other records, in this shard and the other, are read as written
    for caption in ("a green star", "a red circle"):
        assert torch.equal(shards.record(caption).clip_tokens, encoded.records[caption].clip_tokens)


def test_a_run_on_overwritten_shards_stops_before_its_first_step_naming_the_damage(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    """Bytes overwritten with NaN used to train until "loss became nan ... Lower `lr`"."""
    config = tiny_config(
        tiny_clip_text_path, tmp_path / "run", steps=1, data=DiffusionDataConfig(embeddings=str(tmp_path / "emb"))
    )
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    assert (
        clipcond(["encode", "--train-config", str(config_path), "--out", str(tmp_path / "emb"), "--no-progress"]) == 0
    )
    path = shard_path(tmp_path / "emb", 0)
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = b"\xff" * (len(data) - start)  # NaN in float32, the same length
    path.write_bytes(bytes(data))
    with pytest.raises(MissingRecord, match=rf"{path}: the caption of hash {caption_hash('')} is damaged"):
        train_diffusion(config, show_progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    # through the command: one line, exit 1 (the run can resume once the shard is encoded again)
    assert clipcond(["train-diffusion", "--config", str(config_path), "--no-progress"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: data.embeddings: ") and "is damaged" in error and "clipcond encode" in error


def test_a_record_of_another_shape_is_refused_before_the_model(encoded: Encoded) -> None:
    """It used to reach the UNet: `RuntimeError: mat1 and mat2 shapes cannot be multiplied`."""
    spec = encoded.conditioner.record_spec
    key = caption_hash("a blue square")

    def wider(tensors: dict, metadata: dict) -> None:
        tensors[f"{key}.clip_tokens"] = torch.zeros(*tensors[f"{key}.clip_tokens"].shape[:2], 35)

    # a shard written again with another tensor under the same metadata: its digest no longer fits
    _rewrite(shard_path(encoded.folder, 1), wider)
    with pytest.raises(MissingRecord, match=rf"embeddings-000001.safetensors: the caption of hash {key} is damaged"):
        EmbeddingShards(encoded.folder, encoded.identity).record("a blue square")
    # a record of another shape with its own digest: the reader's spec refuses it
    other = encoded.folder.parent / "other"
    other.mkdir()
    record = EncodedPrompt.from_tensors({"clip_tokens": torch.zeros(1, 77, 35)})
    write_shard(other, 0, {key: record}, encoded.identity)
    with pytest.raises(MissingRecord, match=r"`clip_tokens` has shape \(1, 77, 35\), expected \(windows, 77, 32\)"):
        EmbeddingShards(other, encoded.identity, spec=spec).record("a blue square")
    # and a writer given the spec does not write it
    with pytest.raises(ValueError, match=rf"hash {key}: `clip_tokens` has shape"):
        write_shard(other, 1, {key: record}, encoded.identity, spec=spec)
    assert not shard_path(other, 1).exists()


def test_non_finite_records_are_neither_written_nor_read(encoded: Encoded, tmp_path: Path) -> None:
    key = caption_hash("a blue square")
    nan = EncodedPrompt.from_tensors({"clip_tokens": torch.full((1, 77, 32), float("nan"))})
    folder = tmp_path / "nan"
    folder.mkdir()
    with pytest.raises(ValueError, match=rf"hash {key}: `clip_tokens` holds NaN or infinite values"):
        write_shard(folder, 0, {key: nan}, encoded.identity)
    assert not list(folder.iterdir())
    # a shard holding one anyway, with its digest right: a reader with the conditioner's spec refuses it
    write_shard(folder, 0, {key: encoded.records["a blue square"]}, encoded.identity)

    def poisoned(tensors: dict, metadata: dict) -> None:
        tensors[f"{key}.clip_tokens"][0, 3, 5] = float("inf")
        digests = json.loads(metadata["tensor_digests"])
        digests[key] = tensor_digest({f"{key}.clip_tokens": tensors[f"{key}.clip_tokens"]})
        metadata["tensor_digests"] = json.dumps(digests)

    _rewrite(shard_path(folder, 0), poisoned)
    with pytest.raises(MissingRecord, match=rf"hash {key} is damaged \(`clip_tokens` holds NaN or infinite values\)"):
        EmbeddingShards(folder, encoded.identity, spec=encoded.conditioner.record_spec).record("a blue square")


def test_shards_without_digests_are_refused_with_what_to_do(
    encoded: Encoded, tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    """Written before shards recorded digests: their damage could not be found, so they are not read."""
    _rewrite(shard_path(encoded.folder, 1), lambda tensors, metadata: metadata.pop("tensor_digests"))
    message = (
        r"1 of the 2 shards in .*emb \(the first: embeddings-000001.safetensors\) record no digests .*"
        r"delete them and run `clipcond encode` into the folder again"
    )
    with pytest.raises(EmbeddingShardError, match=message):
        EmbeddingShards(encoded.folder, encoded.identity)
    # encoding into the folder (resuming) is refused the same way, before any caption is encoded
    config = tiny_config(tiny_clip_text_path, tmp_path / "run")
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    assert clipcond(["encode", "--train-config", str(config_path), "--out", str(encoded.folder), "--no-progress"]) == 2
    assert "record no digests" in capsys.readouterr().err
    assert sorted(p.name for p in encoded.folder.iterdir()) == [shard_path(encoded.folder, i).name for i in range(2)]


def test_damaged_latents_are_refused_naming_the_shard_and_the_image(tmp_path: Path) -> None:
    from clipcond.training.data.latent_shards import LATENTS, ImageLatents, LatentShards, image_hash

    identity = EmbeddingIdentity("vae-weights", "AutoencoderKL|torch.float32")
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = [ImageLatents(torch.randn(4, 2, 2), torch.rand(4, 2, 2)) for _ in images]
    write_shard(tmp_path, 0, {image_hash(i): v for i, v in zip(images, latents)}, identity, LATENTS)
    stored = LatentShards(tmp_path, identity)
    mean, std = stored.moments(images)
    assert torch.equal(mean[1], latents[1].mean) and torch.equal(std[1], latents[1].std)
    path = shard_path(tmp_path, 0, LATENTS)
    begin, end = _data_range(path, f"{image_hash(images[1])}.std")
    data = bytearray(path.read_bytes())
    data[begin:end] = bytes(end - begin)  # zeros: a finite std of 0, the same length
    path.write_bytes(bytes(data))
    with pytest.raises(MissingRecord, match=rf"{path}: the image of hash {image_hash(images[1])} is damaged"):
        LatentShards(tmp_path, identity).moments(images)
