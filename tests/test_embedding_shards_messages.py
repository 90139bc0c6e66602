"""What a folder of pre-encoded shards says when it cannot be used, in full (found by mutation
testing of embedding_shards.py): how two identities differ (encoder classes, weights, the
settings around their first difference), a stale folder, shards of another format or identity
among good ones, a folder of no shard of the format, unreadable headers, a missing caption and
the writer's refusals. No conditioner: hand-made records of one (1, 77, 32) tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clipcond.records import EncodedPrompt
from clipcond.training.data.embedding_shards import (
    DamagedRecord,
    EmbeddingIdentity,
    EmbeddingShardError,
    EmbeddingShards,
    ForeignShards,
    MissingEmbedding,
    StaleEmbeddings,
    UnfitRecord,
    caption_hash,
    remove_temporary_files,
    shard_path,
    write_shard,
)

# a conditioner's settings key: version, recipe, parsing, then one `Class:window:...` part per encoder
SETTINGS = "v4|sd|a1111|CLIPTextModel:77:12:pad"
IDENTITY = EmbeddingIdentity("a" * 64, SETTINGS)


def _record(seed: int) -> EncodedPrompt:
    return EncodedPrompt.from_tensors(
        {"clip_tokens": torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(seed))}
    )


def _shard(folder: Path, index: int, identity: EmbeddingIdentity = IDENTITY, caption: str | None = None) -> Path:
    caption = caption if caption is not None else f"caption {index}"
    return write_shard(folder, index, {caption_hash(caption): _record(index)}, identity)


def _foreign(folder: Path, index: int, form: str) -> Path:
    path = shard_path(folder, index)
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": form})
    return path


def _foreign_refusal(folder: Path, expected: EmbeddingIdentity | None = None) -> str:
    """The message with which a folder of caption-embedding shards is refused as holding
    foreign shards."""
    with pytest.raises(ForeignShards) as refusal:
        EmbeddingShards(folder, expected)
    return str(refusal.value)


def test_the_difference_of_two_identities_in_words():
    other_weights = EmbeddingIdentity("b" * 64, SETTINGS)
    assert IDENTITY.difference(IDENTITY) is None
    assert IDENTITY.difference(other_weights) == f"encoder weights {'a' * 12}... instead of {'b' * 12}..."
    assert IDENTITY.difference(other_weights, "VAE", "VAE") == f"VAE weights {'a' * 12}... instead of {'b' * 12}..."
    projected = EmbeddingIdentity("b" * 64, "v4|sd|a1111|CLIPTextModelWithProjection:77:12:pad")
    assert projected.difference(IDENTITY) == (
        "encoder classes CLIPTextModelWithProjection instead of CLIPTextModel (the same folder read as another "
        "class holds other weights: encode with the reader's own settings)"
    )
    two = EmbeddingIdentity("a" * 64, SETTINGS + "|T5EncoderModel:256:1:pad")
    assert two.difference(IDENTITY) == (
        "encoder classes CLIPTextModel, T5EncoderModel instead of CLIPTextModel (the same folder read as another "
        "class holds other weights: encode with the reader's own settings)"
    )
    assert IDENTITY.difference(two).startswith(
        "encoder classes CLIPTextModel instead of CLIPTextModel, T5EncoderModel (the same"
    )
    custom = EmbeddingIdentity("a" * 64, "v4|sd|a1111|mt5Encoder:77:12:pad")
    assert custom.difference(IDENTITY).startswith("encoder classes mt5Encoder instead of CLIPTextModel (")
    # a settings key of which one part is no `Class:window:` part names no classes: its settings differ
    odd_part = EmbeddingIdentity("a" * 64, "v4|sd|a1111|CLIPTextModel:77:12:pad|float16")
    other_odd = EmbeddingIdentity("a" * 64, "v4|sd|a1111|T5EncoderModel:77:12:pad|float16")
    assert odd_part.difference(other_odd) == (
        "conditioner settings 'CLIPTextModel:77:12:pad' instead of 'T5EncoderModel:77:12:pad'"
    )


def test_settings_that_differ_are_shown_around_their_first_difference():
    parsing = EmbeddingIdentity("a" * 64, "v4|sd|compel|CLIPTextModel:77:12:pad")
    assert parsing.difference(IDENTITY) == "conditioner settings 'compel' instead of 'a1111'"
    assert parsing.difference(IDENTITY, "VAE", "VAE") == "VAE settings 'compel' instead of 'a1111'"
    longer = EmbeddingIdentity("a" * 64, "v4|sd")
    assert longer.difference(EmbeddingIdentity("a" * 64, "v4|sd|extra")) == (
        "conditioner settings '(nothing)' instead of 'extra'"
    )
    assert EmbeddingIdentity("a" * 64, "v4|sd|extra").difference(longer) == (
        "conditioner settings 'extra' instead of '(nothing)'"
    )
    # a long part is cut 40 characters either side of where the two first differ
    mine = "x" * 100 + "A" + "y" * 100
    theirs = "x" * 100 + "B" + "y" * 100
    assert EmbeddingIdentity("a", mine).difference(EmbeddingIdentity("a", theirs)) == (
        f"conditioner settings '...{'x' * 40}A{'y' * 39}...' instead of '...{'x' * 40}B{'y' * 39}...'"
    )
    # near the start nothing is cut before; a short text nothing after
    assert EmbeddingIdentity("a", "xA" + "y" * 50).difference(EmbeddingIdentity("a", "xB")) == (
        f"conditioner settings 'xA{'y' * 39}...' instead of 'xB'"
    )
    # a text that ends exactly 40 characters after the difference is not cut there
    assert EmbeddingIdentity("a", "A" + "y" * 39).difference(EmbeddingIdentity("a", "B" + "y" * 40)) == (
        f"conditioner settings 'A{'y' * 39}' instead of 'B{'y' * 39}...'"
    )
    # one text the start of the other: they differ where the shorter ends
    assert EmbeddingIdentity("a", "x" * 60).difference(EmbeddingIdentity("a", "x" * 50)) == (
        f"conditioner settings '...{'x' * 50}' instead of '...{'x' * 40}'"
    )


def test_a_folder_of_other_weights_is_stale_and_named_in_full(tmp_path):
    for index in range(2):
        _shard(tmp_path, index)
    reader = EmbeddingIdentity("b" * 64, SETTINGS)
    with pytest.raises(StaleEmbeddings) as refusal:
        EmbeddingShards(tmp_path, reader, argument="data.embeddings")
    assert str(refusal.value) == (
        f"data.embeddings: {shard_path(tmp_path, 0)} was encoded with encoder weights {'a' * 12}... instead of "
        f"{'b' * 12}... (the conditioner's); these embeddings are stale: encode the captions again into an empty "
        "folder with `clipcond encode`"
    )


def test_a_stale_folder_of_latents_names_the_vaes_settings(tmp_path):
    """One shard (the stale message reads the first odd shard's identity), of the latents'
    kind: their messages name the VAE, its settings and `clipcond encode --latents`."""
    from clipcond.training.data.latent_shards import LATENTS, LatentShards

    write_shard(tmp_path, 0, {caption_hash("image"): _record(0)}, IDENTITY, kind=LATENTS)
    reader = EmbeddingIdentity("a" * 64, "v4|sd|compel|CLIPTextModel:77:12:pad")
    with pytest.raises(StaleEmbeddings) as refusal:
        LatentShards(tmp_path, reader)
    assert str(refusal.value) == (
        f"data.latents: {tmp_path / 'latents-000000.safetensors'} was encoded with VAE settings 'a1111' instead of "
        "'compel' (the run's VAE's); these latents are stale: encode the images again into an empty folder with "
        "`clipcond encode --latents`"
    )
    write_shard(tmp_path, 1, {caption_hash("other"): _record(1)}, reader, kind=LATENTS)
    with pytest.raises(ForeignShards) as refusal:
        LatentShards(tmp_path, reader)
    assert str(refusal.value).startswith(
        f"data.latents: {tmp_path / 'latents-000000.safetensors'} was encoded with VAE settings 'a1111' instead of "
        "'compel', unlike the other 1 shard"
    )


def test_a_shard_whose_metadata_lost_its_identity_is_named_as_foreign(tmp_path):
    """A shard of the format with no `weights` or `settings` in its metadata (damaged
    metadata) differs from the others by empty ones."""
    for index in range(2):
        _shard(tmp_path, index)
    path = shard_path(tmp_path, 2)
    key = caption_hash("caption 2")
    save_file(
        {f"{key}.clip_tokens": _record(2).tensors()["clip_tokens"]},
        str(path),
        metadata={"format": "clipcond-caption-embeddings-v1", "tensor_digests": "{}"},
    )
    assert _foreign_refusal(tmp_path, IDENTITY).startswith(
        f"embeddings: {path} was encoded with encoder weights ... instead of {'a' * 12}..., unlike the other 2 shards"
    )
    path.unlink()
    save_file(
        {f"{key}.clip_tokens": _record(2).tensors()["clip_tokens"]},
        str(path),
        metadata={"format": "clipcond-caption-embeddings-v1", "weights": "a" * 64, "tensor_digests": "{}"},
    )
    assert _foreign_refusal(tmp_path, IDENTITY).startswith(
        f"embeddings: {path} was encoded with conditioner settings '' instead of 'v4', unlike the other 2 shards"
    )


def test_one_shard_of_other_weights_among_the_readers_is_named_to_remove(tmp_path):
    for index in range(3):
        _shard(tmp_path, index)
    odd = _shard(tmp_path, 3, EmbeddingIdentity("c" * 64, SETTINGS))
    assert _foreign_refusal(tmp_path, IDENTITY) == (
        f"embeddings: {odd} was encoded with encoder weights {'c' * 12}... instead of {'a' * 12}..., unlike the "
        f"other 3 shards in {tmp_path} (the conditioner's): damaged, or not written with them; remove "
        f"{odd.name} from the folder and run `clipcond encode` into it again (it encodes only the captions the "
        "folder lacks)"
    )


def test_without_an_expected_identity_the_majority_is_the_folders(tmp_path):
    """No reader's identity (a writer resuming): the identity most shards record is the
    folder's; one shard beside it is named, with no "(the conditioner's)"."""
    _shard(tmp_path, 0, EmbeddingIdentity("c" * 64, SETTINGS))
    for index in (1, 2):
        _shard(tmp_path, index)
    assert _foreign_refusal(tmp_path).startswith(
        f"embeddings: {shard_path(tmp_path, 0)} was encoded with encoder weights {'c' * 12}... instead of "
        f"{'a' * 12}..., unlike the other 2 shards in {tmp_path}: damaged"
    )
    # on a tie, the first shard's identity is the folder's
    shard_path(tmp_path, 2).unlink()
    assert _foreign_refusal(tmp_path).startswith(
        f"embeddings: {shard_path(tmp_path, 1)} was encoded with encoder weights {'a' * 12}... instead of "
        f"{'c' * 12}..., unlike the other 1 shard in {tmp_path}: damaged"
    )
    shard_path(tmp_path, 0).unlink()
    assert EmbeddingShards(tmp_path).identity == IDENTITY


@pytest.mark.parametrize(
    ("count", "more", "names"),
    [
        (1, "", "embeddings-000001.safetensors"),
        (2, " (and 1 more)", "embeddings-000001.safetensors, embeddings-000002.safetensors"),
        (
            3,
            " (and 2 more)",
            "embeddings-000001.safetensors, embeddings-000002.safetensors, embeddings-000003.safetensors",
        ),
        (
            4,
            " (and 3 more)",
            "embeddings-000001.safetensors, embeddings-000002.safetensors, embeddings-000003.safetensors and 1 more",
        ),
        (
            5,
            " (and 4 more)",
            "embeddings-000001.safetensors, embeddings-000002.safetensors, embeddings-000003.safetensors and 2 more",
        ),
    ],
)
def test_several_foreign_shards_are_counted_and_the_first_three_named(tmp_path, count, more, names):
    _shard(tmp_path, 0)
    foreign = [_foreign(tmp_path, index, "some-other-format") for index in range(1, count + 1)]
    assert _foreign_refusal(tmp_path, IDENTITY) == (
        f"embeddings: {foreign[0]} is not a clipcond-caption-embeddings-v1 shard (its format: 'some-other-format')"
        f"{more}, unlike the other 1 shard in {tmp_path} (the conditioner's): damaged, or not written with "
        f"them; remove {names} from the folder and run `clipcond encode` into it again (it encodes only "
        "the captions the folder lacks)"
    )


def test_a_folder_of_no_shard_of_the_format_is_named_with_its_count(tmp_path):
    first = _foreign(tmp_path, 0, "clipcond-latents-v1")
    with pytest.raises(EmbeddingShardError) as refusal:
        EmbeddingShards(tmp_path, IDENTITY)
    assert str(refusal.value) == (
        f"embeddings: {first} is not a clipcond-caption-embeddings-v1 shard (its format: 'clipcond-latents-v1'); "
        "write the embeddings with `clipcond encode` into an empty folder"
    )
    _foreign(tmp_path, 1, "clipcond-latents-v1")
    with pytest.raises(EmbeddingShardError) as refusal:
        EmbeddingShards(tmp_path, IDENTITY)
    assert str(refusal.value) == (
        f"embeddings: {first} is not a clipcond-caption-embeddings-v1 shard (its format: 'clipcond-latents-v1'), "
        f"nor is any other of the 2 shards in {tmp_path}; write the embeddings with `clipcond encode` into an "
        "empty folder"
    )


def test_an_unreadable_header_a_missing_folder_and_an_empty_one_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^data.embeddings: no folder {tmp_path / 'nope'}$"):
        EmbeddingShards(tmp_path / "nope", argument="data.embeddings")
    with pytest.raises(EmbeddingShardError) as refusal:
        EmbeddingShards(tmp_path)
    assert str(refusal.value) == (
        f"embeddings: {tmp_path} holds no embedding shard (embeddings-NNNNNN.safetensors); write them with "
        "`clipcond encode`"
    )
    assert len(EmbeddingShards(tmp_path, require_shards=False)) == 0
    path = shard_path(tmp_path, 0)
    path.write_bytes(b"\x05" + b"\x00" * 7 + b"{}")  # a header length past the file's end
    with pytest.raises(EmbeddingShardError) as refusal:
        EmbeddingShards(tmp_path)
    assert str(refusal.value).startswith(f"embeddings: {path} is not a readable embedding shard: ")
    assert str(refusal.value).endswith(
        f"; delete {path.name} and run `clipcond encode` into {tmp_path} again (it encodes only what the folder lacks)"
    )


def test_a_missing_caption_is_named_by_its_first_80_characters_and_its_hash(tmp_path):
    _shard(tmp_path, 0)
    shards = EmbeddingShards(tmp_path, IDENTITY, argument="data.embeddings")
    caption = "a long caption " * 10
    with pytest.raises(MissingEmbedding) as refusal:
        shards.record(caption)
    assert str(refusal.value) == (
        f"data.embeddings: caption {caption[:80]!r} (hash {caption_hash(caption)}) is not in {tmp_path}; encode the "
        "run's captions with `clipcond encode` into that folder (it resumes)"
    )
    assert torch.equal(shards.record("caption 0").tensors()["clip_tokens"], _record(0).tensors()["clip_tokens"])


def test_the_writers_refusals_in_full(tmp_path):
    with pytest.raises(ValueError, match=r"^a shard needs at least one record$"):
        write_shard(tmp_path, 0, {}, IDENTITY)
    with pytest.raises(ValueError) as refusal:
        write_shard(tmp_path, 0, {"a red circle": _record(0)}, IDENTITY)
    assert str(refusal.value) == "records must be keyed by caption_hash(caption) (64 hex digits), got 'a red circle'"
    bad = EncodedPrompt.from_tensors({"clip_tokens": torch.full((1, 77, 32), float("nan"))})
    key = caption_hash("nan")
    with pytest.raises(UnfitRecord) as refusal:
        write_shard(tmp_path, 0, {caption_hash("fine"): _record(0), key: bad}, IDENTITY)
    assert str(refusal.value) == (
        f"the caption of hash {key}: `clip_tokens` holds NaN or infinite values; shard {shard_path(tmp_path, 0)} "
        "was not written"
    )
    assert list(tmp_path.iterdir()) == []
    path = _shard(tmp_path, 0)
    with pytest.raises(FileExistsError, match=rf"^{path} exists; shards are written once$"):
        _shard(tmp_path, 0)


def test_the_shard_records_its_identity_and_count(tmp_path):
    from safetensors import safe_open

    path = write_shard(tmp_path, 7, {caption_hash(c): _record(i) for i, c in enumerate("abc")}, IDENTITY)
    assert path == tmp_path / "embeddings-000007.safetensors"
    with safe_open(str(path), "pt") as shard:
        metadata = shard.metadata()
    assert {key: metadata[key] for key in ("format", "weights", "settings", "count")} == {
        "format": "clipcond-caption-embeddings-v1",
        "weights": IDENTITY.weights,
        "settings": IDENTITY.settings,
        "count": "3",
    }
    assert EmbeddingShards(tmp_path).next_index == 8
    assert remove_temporary_files(tmp_path) == 0


def test_a_shard_changed_after_the_folder_was_opened_is_refused_when_read(tmp_path):
    """Replaced by bytes that are no shard: named as unreadable; replaced by a shard without
    digests: each record refused as damaged (its digest is gone), never read unchecked."""
    path = _shard(tmp_path, 0)
    shards = EmbeddingShards(tmp_path, IDENTITY)
    path.write_bytes(b"\x05" + b"\x00" * 7 + b"{}")
    with pytest.raises(DamagedRecord) as refusal:
        shards.record("caption 0")
    assert str(refusal.value).startswith(f"embeddings: {path} cannot be read any more: ")
    path.unlink()
    _shard(tmp_path, 0)
    shards = EmbeddingShards(tmp_path, IDENTITY)
    key = caption_hash("caption 0")
    save_file({f"{key}.clip_tokens": _record(0).tensors()["clip_tokens"]}, str(path), metadata={"format": "x"})
    with pytest.raises(DamagedRecord) as refusal:
        shards.record("caption 0")
    message = str(refusal.value)
    assert message.startswith(f"embeddings: {path}: the caption of hash {key} is damaged (")
    assert message.endswith(
        f"); delete {path.name} and run `clipcond encode` into {tmp_path} again (it encodes only what the folder "
        "lacks), then resume"
    )


def test_a_shard_is_opened_once_for_all_its_records(tmp_path, monkeypatch):
    import safetensors

    captions = ["one", "two", "three"]
    write_shard(tmp_path, 0, {caption_hash(c): _record(i) for i, c in enumerate(captions)}, IDENTITY)
    shards = EmbeddingShards(tmp_path, IDENTITY)
    opened = []
    real = safetensors.safe_open

    def counting(*args, **kwargs):
        opened.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", counting)
    for caption in captions * 2:
        shards.record(caption)
    assert opened == [str(shard_path(tmp_path, 0))]
