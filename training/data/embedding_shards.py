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
A shard whose format or identity differs from the folder's other shards, which agree with the
reader (damaged metadata, or a file from elsewhere), is named instead, to remove
(`ForeignShards`): encoding into the folder again then resumes.

A shard is written whole to a hidden temporary file and renamed into place: a killed writer
leaves finished shards and, at worst, a temporary file that readers never list.

Damage is found before a record reaches the model. safetensors checks a shard's header and
sizes, but bytes overwritten inside a tensor's data load as valid numbers. So the writer
refuses a record that holds NaN or infinite values or does not fit its `RecordSpec`
(`UnfitRecord`), and records in the shard's metadata a digest of each record's tensors
(``tensor_digests``: key -> `tensor_digest` of the record's tensors, named as in the file);
a reader checks the digest of every record it reads (only that record's bytes: shards stay
memory-mapped and are read a record at a time), so what it gets are the bytes the writer
checked, and, when it has a `RecordSpec` of its own, that the record fits it (names, shapes,
dtypes, finite values). A record that fails is refused (`DamagedRecord`), naming the shard and
the key. Shards without digests (written by clipcond before digests were recorded) are refused
when the folder is opened, since their damage could not be found: delete them and run
``clipcond encode`` again; it resumes, encoding only what the folder lacks.

A record is checked the first time a reader reads it, not at every read (a run reads each
record once an epoch): the CRC-32 of a 2.4 MB record (SD3-sized) takes about 0.6 ms on one
CPU core.

Why this module is over 400 lines: it is one on-disk format, written (`write_shard`) and read
and checked (`KeyedShards`) in one place, as `training/checkpoint.py` is, so that what a writer
records and what a reader checks cannot drift apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from clipcond.record_spec import RecordSpec
from clipcond.records import EncodedPrompt
from clipcond.tensor_digest import digest_problem, tensor_digest

_OPEN_SHARDS = 64

# The metadata entry of a shard holding a JSON object: record key -> the `tensor_digest` of the
# record's tensors, named as in the file (``<key>.<field>``, so a digest also binds the key).
DIGESTS_METADATA_KEY = "tensor_digests"


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
        model: whose weights the identity hashes, in messages ("encoder", "VAE").
        settings: whose settings the identity holds, in messages ("conditioner", "VAE").
    """

    format: str
    prefix: str
    noun: str
    item: str
    reader: str
    command: str = "clipcond encode"
    model: str = "encoder"
    settings: str = "conditioner"

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


class ForeignShards(EmbeddingShardError):
    """Some shards of a folder differ from its others (another format or identity): damaged,
    or not written with them. Removing them and encoding again into the folder resumes."""


class MissingRecord(EmbeddingShardError):
    """A key the run reads has no record in the folder (a run stops at that step; it can
    resume once the folder holds it)."""


class MissingEmbedding(MissingRecord):
    """A caption has no embedding in the folder."""


class DamagedRecord(MissingRecord):
    """A key's record is in the folder but cannot be used: its bytes do not match the digest
    its shard records, or its tensors do not fit the reader's `RecordSpec` (names, shapes,
    dtypes, finite values). For the run it is missing: the run stops at that step, and resumes
    once the shard is encoded again."""


class UnfitRecord(ValueError):
    """A record given to `write_shard` holds non-finite values or does not fit the spec: it is
    not written (a digest would vouch for it)."""


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

    def difference(self, other: EmbeddingIdentity, model: str = "encoder", settings: str = "conditioner") -> str | None:
        """What differs from `other`, in words (None when nothing does); `model` and
        `settings` name whose weights and settings the identity holds ("encoder" and
        "conditioner", or "VAE" for both). Encoder classes that differ are named first: the
        same folder read as another class (`CLIPTextModelWithProjection` by a conditioner YAML,
        `CLIPTextModel` by train-diffusion) holds other weights, but no model changed."""
        mine_classes, their_classes = _encoder_classes(self.settings), _encoder_classes(other.settings)
        if mine_classes and their_classes and mine_classes != their_classes:
            return (
                f"{model} classes {', '.join(mine_classes)} instead of {', '.join(their_classes)} (the same folder read "
                "as another class holds other weights: encode with the reader's own settings)"
            )
        if self.weights != other.weights:
            return f"{model} weights {self.weights[:12]}... instead of {other.weights[:12]}..."
        if self.settings != other.settings:
            mine, theirs = self.settings.split("|"), other.settings.split("|")
            index = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
            part = mine[index] if index < len(mine) else "(nothing)"
            other_part = theirs[index] if index < len(theirs) else "(nothing)"
            return f"{settings} settings {_around_difference(part, other_part)}"
        return None


def _encoder_classes(settings: str) -> list[str]:
    """The encoder class names a conditioner's settings key holds (`clipcond.cache_key.settings_key`:
    one ``Class:window:...`` part per encoder after the version, recipe and parsing parts); []
    for other settings (a VAE's)."""
    parts = settings.split("|")[3:]
    names = [re.match(r"([A-Za-z_]\w*):\d+:", part) for part in parts]
    return [name.group(1) for name in names if name] if names and all(names) else []


def _around_difference(mine: str, theirs: str, context: int = 40) -> str:
    """ "'...mine...' instead of '...theirs...'", each cut to `context` characters either side of
    where they first differ (a long recipe repr cut from its start could show two equal texts)."""
    start = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))

    def cut(text: str) -> str:
        left, right = max(0, start - context), start + context
        return ("..." if left else "") + text[left:right] + ("..." if right < len(text) else "")

    return f"{cut(mine)!r} instead of {cut(theirs)!r}"


def shard_path(folder: Path, index: int, kind: ShardKind = CAPTION_EMBEDDINGS) -> Path:
    """The file of shard number `index` (>= 0) of `kind` in `folder`."""
    return folder / f"{kind.prefix}-{index:06d}.safetensors"


def record_problem(tensors: Mapping[str, torch.Tensor], spec: RecordSpec | None) -> str | None:
    """What is wrong with a record's tensors (field -> tensor) for the writer: NaN or infinite
    values, or (with a `spec`) other names, shapes or dtypes; None when nothing is."""
    if spec is not None:
        return spec.problem(tensors)
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"`{name}` holds NaN or infinite values"
    return None


def write_shard(
    folder: Path,
    index: int,
    records: Mapping[str, HasTensors],
    identity: EmbeddingIdentity,
    kind: ShardKind = CAPTION_EMBEDDINGS,
    spec: RecordSpec | None = None,
) -> Path:
    """Write `records` (key -> record: caption hash -> `EncodedPrompt`, or image hash ->
    `ImageLatents` with the latents' kind) as shard `index` of `folder`, atomically, with the
    digest of each record's tensors in its metadata.

    Args:
        spec: the tensors each record must hold (the conditioner's `record_spec`); None: any
            tensors, as long as they are finite.

    Raises:
        ValueError: no records, or a key that is not a hash (64 hex digits).
        UnfitRecord: a record holds NaN or infinite values, or does not fit `spec` (the
            message names its key); nothing is written.
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
    tensors: dict[str, torch.Tensor] = {}
    digests: dict[str, str] = {}
    for key, record in records.items():
        fields = {name: tensor.detach().to("cpu").contiguous() for name, tensor in record.tensors().items()}
        problem = record_problem(fields, spec)
        if problem is not None:
            raise UnfitRecord(f"the {kind.item} of hash {key}: {problem}; shard {path} was not written")
        named = {f"{key}.{name}": tensor for name, tensor in fields.items()}
        tensors.update(named)
        digests[key] = tensor_digest(named)
    metadata = {
        "format": kind.format,
        "weights": identity.weights,
        "settings": identity.settings,
        "count": str(len(records)),
        DIGESTS_METADATA_KEY: json.dumps(digests, separators=(",", ":")),
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


def _read_header(path: Path, kind: ShardKind, argument: str) -> tuple[dict[str, str], list[str]]:
    """(metadata, tensor names) of a shard; EmbeddingShardError (naming `argument`, the
    option or key that named the folder) when it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as shard:
            return dict(shard.metadata() or {}), list(shard.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise EmbeddingShardError(
            f"{argument}: {path} is not a readable {kind.noun} shard: {error}; delete {path.name} and run "
            f"`{kind.command}` into {path.parent} again (it encodes only what the folder lacks)"
        ) from None


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
        spec: the tensors each record must hold (the reader's: `TextConditioner.record_spec`),
            checked at its first read, after the record's digest; None: the digest alone (the bytes
            are then those the writer wrote, which it checked to be finite).

    Raises:
        FileNotFoundError: `folder` does not exist or is not a folder.
        EmbeddingShardError: a shard cannot be read or records no digests (written by an
            older clipcond); no shard is in this format; no shard (with `require_shards`).
        StaleEmbeddings: no shard has the identity `expected`.
        ForeignShards: some shards are of another format or identity than the folder's others
            (which are `expected`, when given); the message names them.
    """

    kind: ShardKind
    argument: str

    def __init__(
        self,
        folder: str | os.PathLike,
        expected: EmbeddingIdentity | None = None,
        argument: str | None = None,
        require_shards: bool = True,
        spec: RecordSpec | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.spec = spec
        kind = self.kind
        self.argument = argument = argument if argument is not None else self.argument
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{argument}: no folder {self.folder}")
        self._shard_name = kind.shard_name()
        # paths of one folder sort as their names
        self.paths = sorted(path for path in self.folder.iterdir() if self._shard_name.match(path.name))
        if require_shards and not self.paths:
            raise EmbeddingShardError(
                f"{argument}: {self.folder} holds no {kind.noun} shard ({kind.prefix}-NNNNNN.safetensors); "
                "write them with `clipcond encode`"
            )
        headers = [(path, *_read_header(path, kind, argument)) for path in self.paths]
        self.identity = self._shared_identity([(path, metadata) for path, metadata, _ in headers], expected)
        self._fields: dict[str, tuple[Path, list[str]]] = {}  # key -> (shard, its tensor fields)
        undigested: list[Path] = []
        for path, metadata, names in headers:
            if DIGESTS_METADATA_KEY not in metadata:
                undigested.append(path)
            for name in names:
                key, _, field = name.partition(".")
                self._fields.setdefault(key, (path, []))[1].append(field)
        if undigested:
            raise EmbeddingShardError(
                f"{argument}: {len(undigested)} of the {len(self.paths)} shards in {self.folder} (the first: "
                f"{undigested[0].name}) record no digests of their {kind.prefix}, so damage to their data cannot be "
                f"found (they were written by an older clipcond); delete them and run `{kind.command}` into the "
                f"folder again: it resumes, encoding only the {kind.item}s it lacks"
            )
        # the most recently read shards: path -> (open handle, its digests by key)
        self._open: OrderedDict[Path, tuple[object, Mapping[str, object]]] = OrderedDict()
        self._checked: set[str] = set()  # keys whose record passed its checks

    def _shared_identity(
        self, headers: Sequence[tuple[Path, Mapping[str, str]]], expected: EmbeddingIdentity | None
    ) -> EmbeddingIdentity | None:
        """The identity of the folder's shards ((path, metadata) each): `expected`, or (None) the
        one most of them record; None for an empty folder. A shard of another format or identity
        among shards of the reader's (or, without `expected`, beside a majority) is damaged or
        not written with them: it alone is named, to remove, since the encode that replaces it
        resumes. When no shard of this format has `expected`, the folder is stale.

        Raises:
            StaleEmbeddings: no shard of this format records `expected`.
            ForeignShards: some shards differ from the others (the message names them).
            EmbeddingShardError: no shard is of this format.
        """
        kind, argument = self.kind, self.argument
        found = {
            path: EmbeddingIdentity(metadata.get("weights", ""), metadata.get("settings", ""))
            for path, metadata in headers
            if metadata.get("format") == kind.format
        }
        formats = {path: metadata.get("format") for path, metadata in headers if path not in found}
        reference = expected
        if reference is None and found:  # the identity most shards record (the first, on a tie)
            reference = Counter(found.values()).most_common(1)[0][0]
        odd = [path for path, identity in found.items() if identity != reference]
        if found and len(odd) == len(found):
            raise StaleEmbeddings(
                f"{argument}: {odd[0]} was encoded with {found[odd[0]].difference(reference, kind.model, kind.settings)} ({kind.reader}); these "
                f"{kind.prefix} are stale: encode the {kind.item}s again into an empty folder with `{kind.command}`"
            )
        if formats and not found:
            path, others = next(iter(formats)), len(formats) - 1
            raise EmbeddingShardError(
                f"{argument}: {path} is not a {kind.format} shard (its format: {formats[path]!r:.80})"
                f"{f', nor is any other of the {others + 1} shards in {self.folder}' if others else ''}; write the "
                f"{kind.prefix} with `{kind.command}` into an empty folder"
            )
        reasons = {path: f"is not a {kind.format} shard (its format: {form!r:.80})" for path, form in formats.items()}
        reasons |= {
            path: f"was encoded with {found[path].difference(reference, kind.model, kind.settings)}" for path in odd
        }
        if reasons:
            bad = sorted(reasons)
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            good = len(found) - len(odd)
            others = f"the other {good} shard{'s' * (good != 1)} in {self.folder}"
            whose = f" ({kind.reader})" if expected is not None else ""
            names = ", ".join(path.name for path in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise ForeignShards(
                f"{argument}: {bad[0]} {reasons[bad[0]]}{more}, unlike {others}{whose}: damaged, or not written with them; "
                f"remove {names} from the folder and run `{kind.command}` into it again (it encodes only the "
                f"{kind.item}s the folder lacks)"
            )
        return reference

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
        None when no shard holds it.

        Raises:
            DamagedRecord: the record's bytes do not match the digest its shard records, or its
                tensors do not fit `spec` (the message names the shard, the key and what to do).
        """
        found = self._fields.get(key)
        if found is None:
            return None
        path, fields = found
        shard, digests = self._opened(path)
        named = {f"{key}.{field}": shard.get_tensor(f"{key}.{field}") for field in fields}
        tensors = {name.partition(".")[2]: tensor for name, tensor in named.items()}
        problem = None
        if key not in self._checked:  # once a reader: the bytes of a memory-mapped shard stay as checked
            problem = digest_problem(named, digests.get(key))
            if problem is None and self.spec is not None:
                problem = self.spec.problem(tensors)
        if problem is None:
            self._checked.add(key)
        else:
            raise DamagedRecord(
                f"{self.argument}: {path}: the {self.kind.item} of hash {key} is damaged ({problem}); delete "
                f"{path.name} and run `{self.kind.command}` into {self.folder} again (it encodes only what the "
                "folder lacks), then resume"
            )
        if device is not None:
            tensors = {field: tensor.to(device) for field, tensor in tensors.items()}
        return tensors

    def _opened(self, path: Path) -> tuple[object, Mapping[str, object]]:
        """(handle, digests by key) of the shard at `path`. A handle per shard, kept while it is
        among the last _OPEN_SHARDS read: its header is parsed once and its tensors
        memory-mapped, and a folder of thousands of shards does not hold as many open files."""
        from safetensors import SafetensorError, safe_open

        opened = self._open.get(path)
        if opened is None:
            try:
                shard = safe_open(str(path), framework="pt", device="cpu")
            except (SafetensorError, OSError) as error:  # changed since the folder was opened
                raise DamagedRecord(f"{self.argument}: {path} cannot be read any more: {error}") from None
            try:
                digests = json.loads((shard.metadata() or {}).get(DIGESTS_METADATA_KEY, "{}"))
            except (ValueError, RecursionError):
                digests = None
            # a damaged digest table names no record: each read from this shard is then refused
            opened = self._open[path] = (shard, digests if isinstance(digests, dict) else {})
            if len(self._open) > _OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open.move_to_end(path)
        return opened


class EmbeddingShards(KeyedShards):
    """The finished caption-embedding shards of a folder (`KeyedShards` of
    `CAPTION_EMBEDDINGS`): which captions they hold and their records."""

    kind = CAPTION_EMBEDDINGS
    argument = "embeddings"

    def record(self, caption: str, device: torch.device | str | None = None) -> EncodedPrompt:
        """The record of `caption`, on `device` (default the CPU).

        Raises:
            MissingEmbedding: no shard holds it (the message names its hash and the folder).
            DamagedRecord: its record is damaged (see `KeyedShards.tensors`).
        """
        tensors = self.required(caption_hash(caption), f"caption {caption[:80]!r}", MissingEmbedding, device)
        return EncodedPrompt.from_tensors(tensors)

    def records(self, captions: Sequence[str], device: torch.device | str | None = None) -> list[EncodedPrompt]:
        """`record` of each caption, in order."""
        return [self.record(caption, device) for caption in captions]
