"""The files training reads: webdataset tar shards and JSONL manifests.

Shards are named as webdataset and open_clip take them (`shard_urls`): a path or URL with
brace ranges (``data/train-{000000..000099}.tar``), several joined with ``::``, or a list of
those. A local pattern that matches no existing file is an error, not an empty epoch.

Each source gives `(PIL.Image in RGB, caption)` pairs (`webdataset_samples`,
`manifest_samples`) or its captions alone, without opening an image (`webdataset_captions`,
`manifest_captions`). A sample that cannot be used is skipped and counted in a `SkipCounter` by
reason: never fatal, always reported at the end of a run. Whatever reading one sample can raise
is caught at that sample, and only there:

- a manifest line: not UTF-8, not JSON (JSON nested too deeply to parse included), not a JSON
  object, an ``image`` that is not a path ("bad manifest line"), a ``caption`` that is not text
  ("bad manifest line"), missing or null with no ``text`` either ("no caption") or blank
  ("empty caption");
- a shard member: a caption that is not UTF-8 ("caption not UTF-8"), missing ("no caption") or
  blank ("empty caption"), no image member ("no image"), a tar member that cannot be read
  ("unreadable tar member");
- a shard the tar reader gives up on, a file that is no tar at all (a saved HTML error page)
  included, or one that cannot be opened (gone since the patterns were expanded, no
  permission) ("unreadable tar shard", counted once per shard, with a warning naming it);
- a shard that ends before its end-of-archive block, cut at a member's boundary or inside a
  header ("truncated tar shard", counted once per shard, with a warning naming it): Python's
  tarfile takes a missing or partial header for the end of the archive, so the samples after
  the cut would otherwise be lost without a word;
- a shard with a damaged header before its end ("damaged tar shard", counted once per shard,
  with a warning naming it): tarfile takes a block that is not a header for the end of the
  archive too. After it stops, the rest of the shard must be the zeros that pad a tar; bytes
  that are not are the lost samples. Seen when they reach past the 10 KiB record the reader
  had already read (a damaged header in a shard's last 10 KiB goes unseen);
- an image: a missing file ("missing image"), one that cannot be read (a folder, no
  permission: "unreadable image"), bytes Pillow cannot decode, a truncated file included
  ("undecodable image"). A 16-bit greyscale image is scaled to 8 bits (`image_modes`).

Why this module is over 400 lines: the two file formats share their skip rules and counter,
which read in one place.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from clipcond.image_modes import converted

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

Sample = tuple[Image.Image, str]


@dataclass
class SkipCounter:
    """Counts skipped samples by reason."""

    counts: Counter = field(default_factory=Counter)

    def skip(self, reason: str, detail: str = "") -> None:
        """Record one skipped sample (logged at debug level with `detail`)."""
        self.counts[reason] += 1
        logger.debug("skipped sample (%s) %s", reason, detail)

    @property
    def total(self) -> int:
        """Samples skipped so far."""
        return sum(self.counts.values())

    def report(self) -> str:
        """One line: the total and the count per reason."""
        if not self.total:
            return "skipped samples: 0"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        return f"skipped samples: {self.total} ({reasons})"


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes into an RGB image; raises on anything Pillow cannot read.

    The image is given as stored: an EXIF orientation tag is kept in its metadata, not applied.
    The transform decides: `pixels_in_unit_range` (train-diffusion) turns the image upright, as
    diffusers' training script reads it; `ClipImageTransform` (train-clip) does not, as open_clip.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return converted(image, "RGB")


def clean_caption(raw: bytes | str) -> str:
    """A caption as text with runs of whitespace collapsed to one space and a leading UTF-8
    byte order mark (U+FEFF, which some editors write at the start of a file) removed.

    Raises:
        UnicodeDecodeError: `raw` is bytes that are not UTF-8.
        TypeError: `raw` is neither bytes nor a string.
    """
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not isinstance(raw, str):
        raise TypeError(f"a caption must be text, got {type(raw).__name__}: {raw!r:.80}")
    return " ".join(raw.lstrip("\ufeff").split())


MISSING_IMAGE, UNREADABLE_IMAGE, UNDECODABLE_IMAGE = "missing image", "unreadable image", "undecodable image"
# Counted by the one rank whose part of the global batch holds the sample (the others never
# load its image); every other reason is met in the stream all ranks read.
IMAGE_LOAD_FAILURES = frozenset({MISSING_IMAGE, UNREADABLE_IMAGE, UNDECODABLE_IMAGE})


class _Unusable(Exception):
    """One sample that cannot be used, and the reason it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def shard_urls(urls: str | Sequence[str], argument: str = "urls") -> list[str]:
    """The shards named by webdataset patterns, in order.

    Args:
        urls: one pattern or a list of them. A pattern is a path or URL, with brace ranges
            (``train-{000000..000099}.tar``) and several patterns joined with ``::``, expanded
            by webdataset (`webdataset.shardlists.expand_urls`, which braceexpand does for it).
        argument: the name errors give the patterns ("data.urls", "--webdataset").

    Raises:
        ValueError: no pattern, or an empty one.
        ValueError: also a URL of a scheme webdataset has no way to open (no handler
            registered for it in `webdataset.gopen`, and no default one that opens any).
        FileNotFoundError: a local pattern matches no existing file ("no shard matches
            PATTERN"), or misses some of the files it names. Remote URLs (``pipe:``,
            ``https://`` ...) are not read.
    """
    from webdataset.shardlists import expand_urls

    listed = [urls] if isinstance(urls, str) else list(urls)
    patterns = [pattern for item in listed for pattern in item.split("::")] if listed else []
    if not patterns or not all(pattern.strip() for pattern in patterns):
        raise ValueError(f"{argument}: expected a shard pattern, '::'-joined patterns or a list of them, got {urls!r}")
    shards: list[str] = []
    for pattern in patterns:
        expanded = expand_urls(pattern)
        local = [path for path in map(_local_path, expanded) if path is not None]
        missing = [path for path in local if not path.is_file()]
        if local and len(missing) == len(local):
            raise FileNotFoundError(f"{argument}: no shard matches {pattern!r}")
        if missing:
            raise FileNotFoundError(
                f"{argument}: {len(missing)} of the {len(local)} shards of {pattern!r} do not exist (first: {missing[0]})"
            )
        for url in expanded:
            scheme = _scheme_without_opener(url)
            if scheme is not None:
                raise ValueError(
                    f"{argument}: webdataset has no way to open {url!r}: no handler for the scheme {scheme!r} "
                    "(it opens local paths, file://, pipe: and the schemes of webdataset.gopen.gopen_schemes)"
                )
        shards.extend(expanded)
    return shards


def _scheme_without_opener(url: str) -> str | None:
    """The scheme of `url` (after webdataset's GOPEN_REWRITE rules) when webdataset's `gopen`
    has no handler for it and its default handler is the one that refuses every URL; None for
    a URL it can open (or try to)."""
    import importlib

    opener = importlib.import_module("webdataset.gopen")  # the module: `webdataset.gopen` is its function
    try:
        scheme = urlparse(opener.rewrite_url(url)).scheme
    except ValueError:  # rewrite rules refused where webdataset enforces security: its open says so
        return None
    if scheme in ("", "file") or scheme in opener.gopen_schemes:
        return None
    return scheme if opener.gopen_schemes.get("__default__") is opener.gopen_error else None


def _local_path(url: str) -> Path | None:
    """The file a shard URL reads, or None for a remote one (webdataset opens any other scheme)."""
    parsed = urlparse(url)
    if parsed.scheme == "":
        return Path(url)
    return Path(parsed.path) if parsed.scheme == "file" else None


class _ShardStream:
    """A shard's byte stream that notes whether its tar reader asked for bytes past its end.

    A complete tar ends with an end-of-archive block of zeros, at which the reader stops; a
    reader that runs out of bytes first read a shard that was cut short (tarfile then ends the
    archive silently, at a member boundary or inside a partial header)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.consumed = 0
        self.ran_out = False
        self.given_up = False  # the reader stopped at an error (counted where it was raised)

    def rest_is_padding(self, chunk_bytes: int = 1 << 20) -> bool:
        """Read what the tar reader left of the stream: True when it is only zero bytes (the
        end-of-archive blocks and padding of a complete tar), False at the first other byte."""
        while chunk := self.stream.read(chunk_bytes):
            if chunk.count(0) != len(chunk):
                return False
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.consumed += len(data)
        if not data and size != 0:
            self.ran_out = True
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _watched(sources: Iterator[dict], skipped: SkipCounter) -> Iterator[dict]:
    """webdataset's opened shards, each stream watched (`_ShardStream`); once the tar reader
    has finished a shard (it asks for the next), a shard cut short, or one whose reader stopped
    at a damaged header with data after it, is counted and named."""
    for source in sources:
        stream = source["stream"] = _ShardStream(source["stream"])
        yield source
        url = source["url"]  # url_opener's sources always have it
        if stream.ran_out:
            skipped.skip("truncated tar shard", url)
            logger.warning(
                "%s ends after %d bytes, before its tar end-of-archive block: the shard was cut short (an "
                "interrupted copy or download?) and the samples after the cut are lost; counted as skipped",
                url,
                stream.consumed,
            )
        elif not stream.given_up and not stream.rest_is_padding():
            skipped.skip("damaged tar shard", url)
            logger.warning(
                "%s: the tar reader stopped before byte %d at a block that is not a tar header, and data follows "
                "it: the shard is damaged there and the samples after that point are lost; counted as skipped",
                url,
                stream.consumed,
            )


def _tar_members(urls: str | Sequence[str], skipped: SkipCounter) -> Iterator[dict]:
    """The samples of the shards `urls` names (see `shard_urls`), in order, as webdataset groups
    tar members by key; a member that cannot be read is skipped and counted, and so is a shard
    cut short (`_watched`).

    These are the stages of webdataset's ``tarfile_to_samples`` (open, expand, group by key)
    with the shards' streams watched between the first two, and without ``WebDataset``'s node
    splitter: every rank of a multi-process run reads every shard (`ImageCaptionBatches`)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    def on_error(error: Exception) -> bool:
        # tar_file_expander adds the stream and the URL of a shard it gave up on: the rest of
        # that shard (all of it, for a file that is no tar: a saved HTML error page) is lost
        streams = [(index, arg) for index, arg in enumerate(error.args) if isinstance(arg, _ShardStream)]
        if not streams:
            skipped.skip("unreadable tar member", repr(error))
            return True
        index, stream = streams[0]  # tar_file_expander adds (stream, url) to the error's own arguments
        stream.given_up = True
        url = error.args[index + 1]
        skipped.skip("unreadable tar shard", str(url))
        logger.warning(
            "%s: the tar reader gave up after %d bytes (%s): the shard is damaged or no tar file, and its samples "
            "from there on are lost; counted as skipped",
            url,
            stream.consumed,
            _reason(error, own_arguments=index),
        )
        return True

    def on_open_error(error: Exception) -> bool:
        # url_opener adds the URL of a shard it could not open (gone since `shard_urls` listed
        # it, no permission, a remote one refused): all its samples are lost
        url = error.args[-1]
        skipped.skip("unreadable tar shard", str(url))
        why = _reason(error, own_arguments=len(error.args) - 1)
        logger.warning("%s could not be opened (%s): its samples are lost; counted as skipped", url, why)
        return True

    opened = url_opener(iter([{"url": url} for url in shard_urls(urls)]), handler=on_open_error)
    members = tar_file_expander(_watched(opened, skipped), handler=on_error)
    yield from group_by_keys(members, handler=on_error)


def _reason(error: Exception, own_arguments: int) -> str:
    """Why `error` was raised, in words, for a warning: an OSError's text (not its errno), else
    its first argument, else its type when it has no arguments of its own (`own_arguments`:
    how many of its arguments it was raised with, before webdataset appended its own)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error.args[0]) if own_arguments > 0 else type(error).__name__


def _member_caption(sample: dict) -> str:
    """The caption of a shard sample (its ``txt`` member); raises `_Unusable`."""
    if "txt" not in sample:
        raise _Unusable("no caption", "")
    try:
        caption = clean_caption(sample["txt"])
    except UnicodeDecodeError as error:
        raise _Unusable("caption not UTF-8", repr(error)) from None
    if not caption:
        raise _Unusable("empty caption", "")
    return caption


def _decoded(data: bytes) -> Image.Image:
    """`decode_image`, raising `_Unusable`: Pillow's decoders raise many types (OSError,
    SyntaxError, ValueError, struct.error, DecompressionBombError ...) for bad bytes."""
    try:
        return decode_image(data)
    except Exception as error:  # noqa: BLE001 - whatever the decoder raises, this image is unusable
        raise _Unusable(UNDECODABLE_IMAGE, repr(error)) from None


def undecoded_shard_samples(urls: str | Sequence[str], skipped: Any) -> Iterator[tuple[str, bytes, str]]:
    """(key, image bytes, caption) of each sample of webdataset tar shards, in order, the image
    not decoded; a sample without an image member or a usable caption is skipped and counted.

    Args:
        urls: shard patterns (see `shard_urls`).
        skipped: anything with `skip(reason, detail)` (a `SkipCounter`).
    """
    for sample in _tar_members(urls, skipped):
        key = sample["__key__"]  # group_by_keys names every sample
        image_key = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
        try:
            if image_key is None:
                raise _Unusable("no image", "")
            caption = _member_caption(sample)
        except _Unusable as unusable:
            skipped.skip(unusable.reason, f"{key}: {unusable}")
            continue
        yield key, sample[image_key], caption


def webdataset_samples(urls: str | Sequence[str], skipped: SkipCounter) -> Iterator[Sample]:
    """Samples from webdataset tar shards (``key.jpg|jpeg|png|webp`` + ``key.txt``), in order.

    Args:
        urls: shard patterns (see `shard_urls`): ``data/shard-{000..009}.tar``, ``a.tar::b.tar``,
            or a list of them.
        skipped: receives one count per unusable sample or broken shard member.
    """
    for key, data, caption in undecoded_shard_samples(urls, skipped):
        try:
            image = _decoded(data)
        except _Unusable as unusable:
            skipped.skip(unusable.reason, f"{key}: {unusable}")
            continue
        yield image, caption


def _manifest_line(line: bytes) -> tuple[str | None, str]:
    """(image path as written or None, caption) of one manifest line; raises `_Unusable`."""
    try:
        entry = json.loads(line)  # bytes that are not UTF-8 raise UnicodeDecodeError, a ValueError
    # JSON nested deeper than the interpreter's recursion limit ("[[[[...") is a RecursionError
    except (ValueError, RecursionError) as error:
        raise _Unusable("bad manifest line", repr(error)) from None
    if not isinstance(entry, dict):
        raise _Unusable("bad manifest line", f"a JSON {type(entry).__name__}, not an object")
    image = entry.get("image")
    if image is not None and not (isinstance(image, str) and image.strip()):
        raise _Unusable("bad manifest line", f"'image' must be a path, got {image!r:.80}")
    caption = entry.get("caption")
    if caption is None:  # missing or null: the line's "text", if any
        caption = entry.get("text")
    if caption is None:
        raise _Unusable("no caption", "")
    if not isinstance(caption, str):
        raise _Unusable("bad manifest line", f"the caption must be text, got {caption!r:.80}")
    caption = clean_caption(caption)
    if not caption:
        raise _Unusable("empty caption", "")
    return image, caption


def manifest_entries(manifest: str | Path, skipped: SkipCounter) -> Iterator[tuple[Path | None, str]]:
    """The lines of a JSONL manifest as (image path or None, caption), in order.

    Each line is ``{"image": path, "caption": text}`` (``"text"`` is read when ``"caption"`` is
    missing or null; image paths are relative to the manifest's folder). Unusable lines (see
    the module docstring) are skipped and counted.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    with open(manifest, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                image, caption = _manifest_line(line)
            except _Unusable as unusable:
                skipped.skip(unusable.reason, f"{manifest}:{number}: {unusable}")
                continue
            yield (None if image is None else manifest.parent / image), caption


def _image_file(path: Path) -> Image.Image:
    """The decoded image at `path`; raises `_Unusable`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _Unusable(MISSING_IMAGE, "") from None
    except (OSError, ValueError) as error:  # a folder, no permission, a NUL in the path ...
        raise _Unusable(UNREADABLE_IMAGE, repr(error)) from None
    return _decoded(data)


def manifest_samples(manifest: str | Path, skipped: SkipCounter) -> Iterator[Sample]:
    """Samples (decoded image, caption) from a JSONL manifest (`manifest_entries`); lines
    without an image, missing, unreadable and undecodable images are skipped and counted."""
    for path, caption in manifest_entries(manifest, skipped):
        try:
            if path is None:
                raise _Unusable("bad manifest line", f"no image for {caption!r}")
            image = _image_file(path)
        except _Unusable as unusable:
            skipped.skip(unusable.reason, f"{path or manifest}: {unusable}")
            continue
        yield image, caption


def manifest_captions(manifest: str | Path | None, skipped: SkipCounter) -> list[str]:
    """Every caption of a JSONL manifest (``"caption"`` or ``"text"`` of each line), in order;
    image files are neither needed nor read."""
    return [caption for _, caption in manifest_entries(str(manifest), skipped)]


def webdataset_captions(urls: str | Sequence[str], skipped: SkipCounter) -> list[str]:
    """Every ``txt`` member of webdataset shards (patterns as `shard_urls` takes them), in
    order; image members are not decoded."""
    captions = []
    for sample in _tar_members(urls, skipped):
        try:
            captions.append(_member_caption(sample))
        except _Unusable as unusable:
            skipped.skip(unusable.reason, f"{sample['__key__']}: {unusable}")
    return captions
