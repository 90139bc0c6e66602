"""What the data sources say about each sample they skip (found by mutation testing of
sources.py): the debug line of every skip, which names the manifest line or the shard member,
the warning of each damaged shard in full, a shard that cannot be opened any more, and the
watched stream's own edges. Tiny tar files, PNGs and manifests in tmp_path."""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from pathlib import Path

import pytest
from test_data import _add, _png

from clipcond.training.data import SkipCounter, manifest_captions, shard_urls, webdataset_captions, webdataset_samples
from clipcond.training.data.sources import _ShardStream, manifest_samples

LOGGER = "clipcond.training.data.sources"


def _lines(caplog, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER and record.levelno == level]


def test_each_skipped_manifest_line_is_logged_with_its_file_line_number_and_reason(tmp_path, caplog):
    """Line numbers count blank lines too, as an editor shows them."""
    manifest = tmp_path / "m.jsonl"
    lines = [
        "{not json",
        "",
        json.dumps(["a", "list"]),
        json.dumps({"image": 5, "caption": "x"}),
        json.dumps({"image": "a.png"}),
        json.dumps({"caption": 3}),
        json.dumps({"caption": "  \t "}),
        json.dumps({"caption": "kept", "image": "a.png"}),
    ]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    skipped = SkipCounter()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert manifest_captions(manifest, skipped) == ["kept"]
    logged = _lines(caplog, logging.DEBUG)
    assert re.fullmatch(rf"skipped sample \(bad manifest line\) {manifest}:1: JSONDecodeError\('.*'\)", logged[0])
    assert logged[1:] == [
        f"skipped sample (bad manifest line) {manifest}:3: a JSON list, not an object",
        f"skipped sample (bad manifest line) {manifest}:4: 'image' must be a path, got 5",
        f"skipped sample (no caption) {manifest}:5: ",
        f"skipped sample (bad manifest line) {manifest}:6: the caption must be text, got 3",
        f"skipped sample (empty caption) {manifest}:7: ",
    ]
    assert skipped.total == 6


def test_each_image_a_manifest_cannot_give_is_logged_with_its_path(tmp_path, caplog):
    (tmp_path / "good.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "bad.png").write_bytes(b"no png at all")
    (tmp_path / "folder.png").mkdir()
    entries = [
        {"caption": "no image"},
        {"image": "gone.png", "caption": "missing"},
        {"image": "folder.png", "caption": "a folder"},
        {"image": "bad.png", "caption": "undecodable"},
        {"image": "good.png", "caption": "kept"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    skipped = SkipCounter()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert [caption for _, caption in manifest_samples(manifest, skipped)] == ["kept"]
    logged = _lines(caplog, logging.DEBUG)
    assert logged[:2] == [
        f"skipped sample (bad manifest line) {manifest}: no image for 'no image'",
        f"skipped sample (missing image) {tmp_path / 'gone.png'}: ",
    ]
    assert re.fullmatch(
        rf"skipped sample \(unreadable image\) {tmp_path / 'folder.png'}: IsADirectoryError\(.*\)", logged[2]
    )
    assert re.fullmatch(
        rf"skipped sample \(undecodable image\) {tmp_path / 'bad.png'}: UnidentifiedImageError\(.*\)", logged[3]
    )
    assert len(logged) == 4 and dict(skipped.counts) == {
        "bad manifest line": 1,
        "missing image": 1,
        "unreadable image": 1,
        "undecodable image": 1,
    }


def _shard_of_skips(path) -> None:
    with tarfile.open(path, "w") as archive:
        _add(archive, "a.txt", b"caption only")
        _add(archive, "b.png", _png((0, 255, 0)))
        _add(archive, "b.txt", b"\xff\xfe not utf-8")
        _add(archive, "c.png", _png((0, 0, 255)))
        _add(archive, "d.png", _png((9, 9, 9)))
        _add(archive, "d.txt", b"   ")
        _add(archive, "e.png", b"no png at all")
        _add(archive, "e.txt", b"undecodable")
        _add(archive, "f.png", _png((255, 0, 0)))
        _add(archive, "f.txt", b"kept")


def test_each_skipped_shard_member_is_logged_with_its_key_and_reason(tmp_path, caplog):
    path = tmp_path / "skips-000.tar"
    _shard_of_skips(path)
    skipped = SkipCounter()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert [caption for _, caption in webdataset_samples(str(path), skipped)] == ["kept"]
    logged = _lines(caplog, logging.DEBUG)
    assert logged[0] == "skipped sample (no image) a: "
    assert re.fullmatch(r"skipped sample \(caption not UTF-8\) b: UnicodeDecodeError\('utf-8', .*\)", logged[1])
    assert logged[2:4] == ["skipped sample (no caption) c: ", "skipped sample (empty caption) d: "]
    assert re.fullmatch(r"skipped sample \(undecodable image\) e: UnidentifiedImageError\(.*\)", logged[4])
    assert len(logged) == 5

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert webdataset_captions(str(path), SkipCounter()) == ["caption only", "undecodable", "kept"]
    logged = _lines(caplog, logging.DEBUG)
    assert re.fullmatch(r"skipped sample \(caption not UTF-8\) b: UnicodeDecodeError\('utf-8', .*\)", logged[0])
    assert logged[1:] == ["skipped sample (no caption) c: ", "skipped sample (empty caption) d: "]


def _two_samples(path, tail: bytes = b"") -> bytes:
    """A shard of samples `a` and `b` (and a member `c.bin` holding `tail`, if given)."""
    with tarfile.open(path, "w") as archive:
        for key, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            _add(archive, f"{key}.png", _png(color))
            _add(archive, f"{key}.txt", key.encode())
        if tail:
            _add(archive, "c.bin", tail)
    return path.read_bytes()


def _lost_shard(tmp_path, caplog) -> tuple[Path, list[str], list[str], SkipCounter]:
    """Read the captions of one shard of two samples that webdataset, as patched by the test,
    cannot read: (the shard, the warnings, the debug lines, the skips)."""
    shard = tmp_path / "part-0.tar"
    _two_samples(shard)
    skipped = SkipCounter()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert webdataset_captions(str(shard), skipped) == []
    return shard, _lines(caplog, logging.WARNING), _lines(caplog, logging.DEBUG), skipped


def test_the_warning_and_debug_line_of_each_damaged_shard_in_full(tmp_path, caplog):
    # data past the reader's first 10 KiB record, where a damaged header is seen
    whole = _two_samples(tmp_path / "whole.tar", tail=b"\x07" * 20_000)
    cut, damaged, html = tmp_path / "cut.tar", tmp_path / "damaged.tar", tmp_path / "html.tar"
    cut.write_bytes(whole[:1024])
    # sample b's first header overwritten with bytes that are no header, the rest kept
    second = 512 + (len(_png((255, 0, 0))) + 511) // 512 * 512 + 512 + 512
    damaged.write_bytes(whole[:second] + b"\x01" * 512 + whole[second + 512 :])
    html.write_bytes(b"<html><title>404 Not Found</title></html>\n" * 50)
    skipped = SkipCounter()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        list(webdataset_samples([str(cut), str(damaged), str(html)], skipped))
    warned = _lines(caplog, logging.WARNING)
    assert warned[0] == (
        f"{cut} ends after 1024 bytes, before its tar end-of-archive block: the shard was cut short (an interrupted "
        "copy or download?) and the samples after the cut are lost; counted as skipped"
    )
    # the byte counts are what the tar reader had read (it reads ahead in records)
    stopped = re.fullmatch(
        rf"{damaged}: the tar reader stopped before byte (\d+) at a block that is not a tar header, and data "
        "follows it: the shard is damaged there and the samples after that point are lost; counted as skipped",
        warned[1],
    )
    assert stopped and second + 512 <= int(stopped[1]) < len(whole)
    gave_up = re.fullmatch(
        rf"{html}: the tar reader gave up after (\d+) bytes \(invalid header\): the shard is damaged or no tar "
        "file, and its samples from there on are lost; counted as skipped",
        warned[2],
    )
    assert gave_up and 0 < int(gave_up[1]) <= html.stat().st_size
    assert len(warned) == 3
    skips = [line for line in _lines(caplog, logging.DEBUG) if "tar shard" in line]
    assert skips == [
        f"skipped sample (truncated tar shard) {cut}",
        f"skipped sample (damaged tar shard) {damaged}",
        f"skipped sample (unreadable tar shard) {html}",
    ]


def test_a_member_the_reader_refuses_is_logged_with_the_readers_error(tmp_path, caplog):
    path = tmp_path / "dup-000.tar"
    with tarfile.open(path, "w") as archive:
        _add(archive, "a.png", _png((255, 0, 0)))
        _add(archive, "a.txt", b"first")
        _add(archive, "a.txt", b"again")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        list(webdataset_samples(str(path), SkipCounter()))
    (line,) = [line for line in _lines(caplog, logging.DEBUG) if "unreadable tar member" in line]
    assert re.fullmatch(
        r"skipped sample \(unreadable tar member\) ValueError\(.a\.txt: duplicate file name in tar file txt .*\)", line
    )


def test_a_shard_gone_before_it_is_opened_loses_only_itself(tmp_path, caplog):
    """The patterns are expanded (and the files checked) before the first shard is read; a shard
    deleted while an earlier one is read is counted and named, and the shards after it read."""
    shards = [tmp_path / f"part-{index}.tar" for index in range(3)]
    for shard in shards:
        _two_samples(shard)
    skipped = SkipCounter()
    reader = webdataset_samples([str(shard) for shard in shards], skipped)
    first = next(reader)[1]
    shards[1].unlink()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        rest = [caption for _, caption in reader]
    assert [first, *rest] == ["a", "b", "a", "b"]
    assert dict(skipped.counts) == {"unreadable tar shard": 1}
    assert _lines(caplog, logging.WARNING) == [
        f"{shards[1]} could not be opened (No such file or directory): its samples are lost; counted as skipped"
    ]
    assert _lines(caplog, logging.DEBUG) == [f"skipped sample (unreadable tar shard) {shards[1]}"]


def test_a_shard_webdataset_refuses_to_open_is_named_with_webdatasets_reason(tmp_path, caplog, monkeypatch):
    """webdataset's security switch refuses local files with a ValueError (no OSError, no
    strerror): its message is the reason given."""
    import webdataset.utils

    monkeypatch.setattr(webdataset.utils, "enforce_security", True)
    shard, warned, logged, skipped = _lost_shard(tmp_path, caplog)
    assert warned == [
        f"{shard} could not be opened (gopen: unsafe_gopen is False, cannot open local files): its samples are lost; "
        "counted as skipped"
    ]
    assert f"skipped sample (unreadable tar shard) {shard}" in logged
    assert dict(skipped.counts) == {"unreadable tar shard": 1}


@pytest.mark.parametrize("url", ["s4://bucket/part-{0..1}.tar", "nope:part.tar"])
def test_a_scheme_webdataset_cannot_open_is_refused_before_any_shard_is_read(url):
    with pytest.raises(ValueError) as refusal:
        shard_urls(url, "data.urls")
    first = url.replace("{0..1}", "0")
    scheme = url.partition(":")[0]
    assert str(refusal.value) == (
        f"data.urls: webdataset has no way to open {first!r}: no handler for the scheme {scheme!r} (it opens local "
        "paths, file://, pipe: and the schemes of webdataset.gopen.gopen_schemes)"
    )


def test_the_schemes_webdataset_opens_pass_and_rewrite_rules_apply(monkeypatch):
    for url in ("https://host/a.tar", "pipe:cat a.tar", "hf://datasets/x/a.tar", "gs://bucket/a.tar"):
        assert shard_urls(url) == [url]
    monkeypatch.setenv("GOPEN_REWRITE", "mirror://=https://mirror.example/")
    assert shard_urls("mirror://a.tar") == ["mirror://a.tar"]  # webdataset opens it as https


def test_the_watched_stream_notes_a_read_past_the_end_and_passes_other_calls_on():
    stream = _ShardStream(io.BytesIO(b"ab"))
    assert stream.read(2) == b"ab" and not stream.ran_out
    assert stream.read(0) == b"" and not stream.ran_out  # a read of nothing asked for nothing
    assert stream.read(1) == b"" and stream.ran_out
    assert stream.consumed == 2
    assert stream.tell() == 2 and not stream.closed  # whatever else the reader calls reaches the stream


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_skips_are_logged_at_debug_level_only(tmp_path, caplog, level):
    path = tmp_path / "skips-000.tar"
    _shard_of_skips(path)
    with caplog.at_level(level, logger=LOGGER):
        list(webdataset_samples(str(path), SkipCounter()))
    assert bool(_lines(caplog, logging.DEBUG)) is (level == logging.DEBUG)


def test_a_shard_whose_reads_fail_with_no_message_is_named_by_the_errors_type(tmp_path, caplog, monkeypatch):
    """An error of no arguments of its own (a bare OSError from a network stream) gives its
    type as the reason, not the stream object webdataset appends to its arguments."""
    import webdataset.tariterators

    class FailingStream(io.RawIOBase):
        def read(self, size=-1):
            raise OSError

    monkeypatch.setattr(webdataset.tariterators.gopen, "gopen", lambda url, **kw: FailingStream())
    shard, warned, _, skipped = _lost_shard(tmp_path, caplog)
    assert warned == [
        f"{shard}: the tar reader gave up after 0 bytes (OSError): the shard is damaged or no tar file, and its "
        "samples from there on are lost; counted as skipped"
    ]
    assert dict(skipped.counts) == {"unreadable tar shard": 1}


def test_a_read_error_with_an_errno_is_named_by_its_text(tmp_path, caplog, monkeypatch):
    """An OSError raised as (errno, text), as the operating system's are: its text, not the
    errno that is its first argument."""
    import webdataset.tariterators

    class FailingStream(io.RawIOBase):
        def read(self, size=-1):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(webdataset.tariterators.gopen, "gopen", lambda url, **kw: FailingStream())
    shard, warned, _, _ = _lost_shard(tmp_path, caplog)
    assert warned == [
        f"{shard}: the tar reader gave up after 0 bytes (Input/output error): the shard is damaged or no tar file, "
        "and its samples from there on are lost; counted as skipped"
    ]


def test_an_open_error_of_no_arguments_of_its_own_is_named_by_its_type(tmp_path, caplog, monkeypatch):
    """An OSError without a message (no strerror) from the opener: its type, not the URL
    webdataset appends to its arguments."""
    import webdataset.tariterators

    def refuse(url, **kw):
        raise OSError

    monkeypatch.setattr(webdataset.tariterators.gopen, "gopen", refuse)
    shard, warned, _, _ = _lost_shard(tmp_path, caplog)
    assert warned == [f"{shard} could not be opened (OSError): its samples are lost; counted as skipped"]


def test_a_scheme_is_refused_only_while_webdatasets_default_opener_refuses_every_url(monkeypatch):
    """A default handler of the user's own (webdataset lets one register it) opens the
    schemes it does not list, so they are not refused."""
    import importlib

    opener = importlib.import_module("webdataset.gopen")
    with pytest.raises(ValueError, match="no handler for the scheme 's4'"):
        shard_urls("s4://bucket/a.tar")
    monkeypatch.setitem(opener.gopen_schemes, "__default__", lambda url, *args, **kw: io.BytesIO())
    assert shard_urls("s4://bucket/a.tar") == ["s4://bucket/a.tar"]


def test_a_skip_without_detail_logs_the_reason_alone(caplog):
    skipped = SkipCounter()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        skipped.skip("no image")
    assert _lines(caplog, logging.DEBUG) == ["skipped sample (no image) "]


def test_a_source_that_is_none_of_the_three_is_refused_as_the_yaml_loader_refuses_it(tmp_path) -> None:
    from typing import get_args, get_type_hints

    from clipcond.training.data.config import DATA_SOURCES, DataConfig
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    assert get_args(get_type_hints(DataConfig)["source"]) == DATA_SOURCES  # the loader reads the annotation
    with pytest.raises(ValueError) as refused:
        DataConfig(source="webdatset", urls="shards/train-{0..1}.tar")
    assert str(refused.value) == "data.source: expected one of ['shapes', 'webdataset', 'manifest'], got 'webdatset'"
    path = tmp_path / "run.yaml"
    path.write_text(f"text_encoder: clip\noutput_dir: {tmp_path / 'o'}\ndata:\n  source: webdatset\n")
    with pytest.raises(ValueError) as from_yaml:
        TrainDiffusionConfig.from_yaml(path)
    assert str(from_yaml.value).endswith(str(refused.value).replace("data.source:", "key `data.source`:"))
