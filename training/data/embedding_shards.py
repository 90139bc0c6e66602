"""Pre-encoded captions on disk: a folder of safetensors shards keyed by caption hash.

`clipcond encode` writes them (`write_shard`), `clipcond train-diffusion` reads them
(`EmbeddingShards`, `data.embeddings`) instead of running the text encoders. The mechanism
(atomic shards of keyed records, an identity every shard must share, a bounded set of open
files) is `KeyedShards`, configured by a `ShardKind`; the images' VAE latents
(`latent_shards`, ``data.latents``) are its other kind.

A shard ``embeddings-000000.safetensors`` holds, for each caption, the tensors of its
`EncodedPrompt` (the encoder outputs before assembly, so a learned projection still trains)
named ``<caption hash>.<field>`` (``clip_tokens``, ``pooled``, ``t5_tokens``, ``t5_mask``).
Its metadata records the format, the encoders' weights fingerprint and the conditioner's
settings (`TextConditioner.identity`); a reader refuses a shard whose identity is not the one
it expects (`StaleEmbeddings`), so embeddings of other weights or settings are never used.

A shard is written whole to a hidden temporary file and renamed into place: a killed writer
leaves finished shards and, at worst, a temporary file that readers never list.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from clipcond.records import EncodedPrompt

_OPEN_SHARDS = 64


@dataclass(frozen=True)
class ShardKind:
    """What a folder of shards holds.

    Attributes:
        format: the ``format`` metadata of every shard of this kind.
        prefix: shard files are ``<prefix>-NNNNNN.safetensors``; also what messages call the
            records ("embeddings", "latents").
        noun: a shard's name in messages ("embedding" shard).
        item: what a key stands for, in messages ("caption", "image").
        reader: whose identity a reader expects, in messages ("the conditioner's").
        command: the command that writes them, in messages.
    """

    format: str
    prefix: str
    noun: str
    item: str
    reader: str
    command: str = "clipcond encode"

    def shard_name(self) -> re.Pattern:
        return re.compile(rf"^{re.escape(self.prefix)}-(\d{{6,}})\.safetensors$")


CAPTION_EMBEDDINGS = ShardKind(
    "clipcond-caption-embeddings-v1", "embeddings", "embedding", "caption", "the conditioner's"
)
SHARD_FORMAT = CAPTION_EMBEDDINGS.format


class HasTensors(Protocol):
    """A record that a shard stores: its named tensors."""

    def tensors(self) -> dict[str, torch.Tensor]: ...


def caption_hash(caption: str) -> str:
    """The key of a caption in the shards: sha256 of its UTF-8 bytes, in hex (64 characters)."""
    return hashlib.sha256(caption.encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingShardError(ValueError):
    """A folder of embedding shards cannot be used as asked."""


class StaleEmbeddings(EmbeddingShardError):
    """A shard was encoded with other weights or settings than the conditioner reading it."""


class MissingRecord(EmbeddingShardError):
    """A key the run reads has no record in the folder (a run stops at that step; it can
    resume once the folder holds it)."""


class MissingEmbedding(MissingRecord):
    """A caption has no embedding in the folder."""


@dataclass(frozen=True)
class EmbeddingIdentity:
    """What the records of a folder were made with (`TextConditioner.identity` for captions,
    `latent_shards.vae_identity` for latents).

    Attributes:
        weights: the content hash of the models' weights (the encoders', the VAE's).
        settings: their settings (the conditioner's settings key: recipe, parsing, encoders,
            tokenizers; the VAE's class and dtype).
    """

    weights: str
    settings: str

    def difference(self, other: EmbeddingIdentity) -> str | None:
        """What differs from `other`, in words (None when nothing does)."""
        if self.weights != other.weights:
            return f"encoder weights {self.weights[:12]}... instead of {other.weights[:12]}..."
        if self.settings != other.settings:
            mine, theirs = self.settings.split("|"), other.settings.split("|")
            index = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
            part = mine[index] if index < len(mine) else "(nothing)"
            other_part = theirs[index] if index < len(theirs) else "(nothing)"
            return f"conditioner settings {part[:120]!r} instead of {other_part[:120]!r}"
        return None


def shard_path(folder: Path, index: int, kind: ShardKind = CAPTION_EMBEDDINGS) -> Path:
    """The file of shard number `index` (>= 0) of `kind` in `folder`."""
    return folder / f"{kind.prefix}-{index:06d}.safetensors"


def write_shard(
    folder: Path,
    index: int,
    records: Mapping[str, HasTensors],
    identity: EmbeddingIdentity,
    kind: ShardKind = CAPTION_EMBEDDINGS,
) -> Path:
    """Write `records` (key -> record: caption hash -> `EncodedPrompt`, or image hash ->
    `ImageLatents` with the latents' kind) as shard `index` of `folder`, atomically.

    Raises:
        ValueError: no records, or a key that is not a hash (64 hex digits).
        FileExistsError: the shard exists already (a shard is never overwritten).
    """
    from safetensors.torch import save

    if not records:
        raise ValueError("a shard needs at least one record")
    bad = next((key for key in records if not re.fullmatch(r"[0-9a-f]{64}", key)), None)
    if bad is not None:
        raise ValueError(f"records must be keyed by {kind.item}_hash({kind.item}) (64 hex digits), got {bad!r:.80}")
    path = shard_path(folder, index, kind)
    if path.exists():
        raise FileExistsError(f"{path} exists; shards are written once")
    tensors = {
        f"{key}.{name}": tensor.detach().to("cpu").contiguous()
        for key, record in records.items()
        for name, tensor in record.tensors().items()
    }
    metadata = {
        "format": kind.format,
        "weights": identity.weights,
        "settings": identity.settings,
        "count": str(len(records)),
    }
    data = save(tensors, metadata=metadata)
    temporary = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def remove_temporary_files(folder: Path, kind: ShardKind = CAPTION_EMBEDDINGS) -> int:
    """Delete the temporary files a killed writer of `kind` left in `folder`; returns how many."""
    removed = 0
    for leftover in folder.glob(f".{kind.prefix}-*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed += 1
    return removed


def _read_header(path: Path, kind: ShardKind) -> tuple[dict[str, str], list[str]]:
    """(metadata, tensor names) of a shard; EmbeddingShardError when it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as shard:
            return dict(shard.metadata() or {}), list(shard.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise EmbeddingShardError(f"{path} is not a readable {kind.noun} shard: {error}") from None


class KeyedShards:
    """The finished shards of one kind in a folder: which keys they hold and their tensors.
    A subclass names the kind (`kind`: file names and format) and how errors name the folder
    by default (`argument`).

    Args:
        folder: the folder `clipcond encode` wrote.
        expected: the identity the records must have (the reader's); None accepts the
            folder's own, which every shard must then share.
        argument: how errors name the folder (e.g. "data.embeddings"); None: the class's.
        require_shards: an empty folder is an error (readers) rather than an empty set (a
            writer resuming).

    Raises:
        FileNotFoundError: `folder` does not exist or is not a folder.
        EmbeddingShardError: a shard cannot be read or is not in this format; no shard (with
            `require_shards`).
        StaleEmbeddings: a shard's identity differs from `expected` or from the other shards'.
    """

    kind: ShardKind
    argument: str

    def __init__(
        self,
        folder: str | os.PathLike,
        expected: EmbeddingIdentity | None = None,
        argument: str | None = None,
        require_shards: bool = True,
    ) -> None:
        self.folder = Path(folder)
        kind = self.kind
        self.argument = argument = argument if argument is not None else self.argument
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{argument}: no folder {self.folder}")
        self._shard_name = kind.shard_name()
        self.paths = sorted(
            (path for path in self.folder.iterdir() if self._shard_name.match(path.name)), key=lambda path: path.name
        )
        if require_shards and not self.paths:
            raise EmbeddingShardError(
                f"{argument}: {self.folder} holds no {kind.noun} shard ({kind.prefix}-NNNNNN.safetensors); "
                "write them with `clipcond encode`"
            )
        self.identity = expected
        self._fields: dict[str, tuple[Path, list[str]]] = {}  # key -> (shard, its tensor fields)
        for path in self.paths:
            metadata, names = _read_header(path, kind)
            if metadata.get("format") != kind.format:
                raise EmbeddingShardError(f"{argument}: {path} is not a {kind.format} shard")
            found = EmbeddingIdentity(metadata.get("weights", ""), metadata.get("settings", ""))
            if self.identity is None:
                self.identity = found
            difference = found.difference(self.identity)
            if difference is not None:
                whose = kind.reader if expected is not None else f"{self.paths[0].name}'s"
                raise StaleEmbeddings(
                    f"{argument}: {path} was encoded with {difference} ({whose}); these {kind.prefix} are stale: "
                    f"encode the {kind.item}s again into an empty folder with `clipcond encode`"
                )
            for name in names:
                key, _, field = name.partition(".")
                self._fields.setdefault(key, (path, []))[1].append(field)
        self._open: OrderedDict[Path, object] = OrderedDict()  # the most recently read shards

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    @property
    def hashes(self) -> set[str]:
        """The keys (hashes) the shards hold."""
        return set(self._fields)

    @property
    def next_index(self) -> int:
        """The number of the next shard to write."""
        numbers = [int(self._shard_name.match(path.name).group(1)) for path in self.paths]
        return max(numbers, default=-1) + 1

    def required(
        self, key: str, what: str, missing: type[MissingRecord], device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """`tensors` of `key`, which must be there: else `missing` is raised, naming `what`
        (e.g. "caption 'a red circle'"), the key, the folder and the command that adds it."""
        tensors = self.tensors(key, device)
        if tensors is None:
            raise missing(
                f"{self.argument}: {what} (hash {key}) is not in {self.folder}; encode the run's "
                f"{self.kind.item}s with `{self.kind.command}` into that folder (it resumes)"
            )
        return tensors

    def tensors(self, key: str, device: torch.device | str | None = None) -> dict[str, torch.Tensor] | None:
        """The tensors stored under `key` (field -> tensor) on `device` (default the CPU), or
        None when no shard holds it."""
        from safetensors import safe_open

        found = self._fields.get(key)
        if found is None:
            return None
        path, fields = found
        shard = self._open.get(path)
        if shard is None:
            # A handle per shard, kept while it is among the last _OPEN_SHARDS read: its header is
            # parsed once and its tensors memory-mapped, and a folder of thousands of shards does
            # not hold as many open files.
            shard = self._open[path] = safe_open(str(path), framework="pt", device="cpu")
            if len(self._open) > _OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open.move_to_end(path)
        tensors = {field: shard.get_tensor(f"{key}.{field}") for field in fields}
        if device is not None:
            tensors = {field: tensor.to(device) for field, tensor in tensors.items()}
        return tensors


class EmbeddingShards(KeyedShards):
    """The finished caption-embedding shards of a folder (`KeyedShards` of
    `CAPTION_EMBEDDINGS`): which captions they hold and their records."""

    kind = CAPTION_EMBEDDINGS
    argument = "embeddings"

    def record(self, caption: str, device: torch.device | str | None = None) -> EncodedPrompt:
        """The record of `caption`, on `device` (default the CPU).

        Raises:
            MissingEmbedding: no shard holds it (the message names its hash and the folder).
        """
        tensors = self.required(caption_hash(caption), f"caption {caption[:80]!r}", MissingEmbedding, device)
        return EncodedPrompt.from_tensors(tensors)

    def records(self, captions: Sequence[str], device: torch.device | str | None = None) -> list[EncodedPrompt]:
        """`record` of each caption, in order."""
        return [self.record(caption, device) for caption in captions]
