"""The data sources' edges that tests/test_data.py does not reach: an unreadable shard between
good ones, a member the shard reader refuses, the skip report's wording, a cut shard's warning,
blank manifest lines, shard patterns (file URLs, one missing shard, an empty part) and image
modes. Tiny tar files and PNGs in tmp_path (found by mutation testing of sources.py)."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest
from PIL import Image
from test_data import _add, _png

from clipcond.training.data import SkipCounter, manifest_captions, shard_urls, webdataset_captions, webdataset_samples
from clipcond.training.data.sources import clean_caption, decode_image


def test_the_report_names_every_reason_with_its_count_in_order():
    assert SkipCounter().report() == "skipped samples: 0"
    skipped = SkipCounter()
    for reason in ("no image", "empty caption", "no image"):
        skipped.skip(reason, "detail")
    assert skipped.total == 3
    assert skipped.report() == "skipped samples: 3 (empty caption: 1, no image: 2)"


def test_a_member_the_shard_reader_refuses_is_counted_and_the_shard_read_on(tmp_path):
    # a member name twice: webdataset's grouping raises ValueError("... duplicate file name ...")
    # for the second; sources.py's handler counts it and goes on with the shard
    path = tmp_path / "dup-000.tar"
    with tarfile.open(path, "w") as archive:
        _add(archive, "a.png", _png((255, 0, 0)))
        _add(archive, "a.txt", b"first")
        _add(archive, "a.txt", b"again")
        _add(archive, "b.png", _png((0, 255, 0)))
        _add(archive, "b.txt", b"second")
    skipped = SkipCounter()
    assert [caption for _, caption in webdataset_samples(str(path), skipped)] == ["first", "second"]
    assert dict(skipped.counts) == {"unreadable tar member": 1}
    only_captions = SkipCounter()
    assert webdataset_captions(str(path), only_captions) == ["first", "second"]
    assert dict(only_captions.counts) == {"unreadable tar member": 1}


def test_a_shard_cut_short_is_named_with_the_bytes_it_had(tmp_path, caplog):
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as archive:
        for key, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            _add(archive, f"{key}.png", _png(color))
            _add(archive, f"{key}.txt", key.encode())
    data = whole.read_bytes()
    cut = tmp_path / "cut-000.tar"
    cut.write_bytes(data[:1024])  # the first member's header and data, then nothing
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        list(webdataset_samples(str(cut), skipped))
    assert skipped.counts["truncated tar shard"] == 1
    assert f"{cut} ends after 1024 bytes, before its tar end-of-archive block" in caplog.text


def test_an_unreadable_shard_between_good_ones_loses_only_itself(tmp_path):
    # webdataset stops at the shard an error handler does not continue past: the shards after a
    # saved HTML error page must still be read
    shards = []
    for index, content in enumerate(("good", None, "also good")):
        path = tmp_path / f"part-{index:03d}.tar"
        if content is None:
            path.write_bytes(b"<html><title>404 Not Found</title></html>\n" * 50)
        else:
            with tarfile.open(path, "w") as archive:
                _add(archive, "a.png", _png((255, 0, 0)))
                _add(archive, "a.txt", content.encode())
        shards.append(str(path))
    for reader in (webdataset_samples, webdataset_captions):
        skipped = SkipCounter()
        got = [item[1] if isinstance(item, tuple) else item for item in reader(shards, skipped)]
        assert got == ["good", "also good"]
        assert dict(skipped.counts) == {"unreadable tar shard": 1}


def test_manifest_blank_lines_are_passed_over_and_a_missing_manifest_is_named(tmp_path):

    lines = [json.dumps({"caption": "first"}), "", "   ", json.dumps({"caption": "second"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    skipped = SkipCounter()
    assert manifest_captions(tmp_path / "m.jsonl", skipped) == ["first", "second"]
    assert skipped.total == 0
    with pytest.raises(FileNotFoundError, match="manifest not found: .*nope.jsonl"):
        manifest_captions(tmp_path / "nope.jsonl", SkipCounter())


def test_shard_patterns_file_urls_one_missing_shard_and_an_empty_part(tmp_path):

    for index in (0, 2):
        (tmp_path / f"s-{index}.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 shards of .* do not exist \(first: .*s-1\.tar\)"):
        shard_urls(str(tmp_path / "s-{0..2}.tar"))
    assert shard_urls(f"file://{tmp_path}/s-0.tar") == [f"file://{tmp_path}/s-0.tar"]
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        shard_urls(f"file://{tmp_path}/s-1.tar")
    # remote URLs are not checked (nothing is fetched)
    assert shard_urls("https://example.invalid/r-{0..1}.tar") == [
        "https://example.invalid/r-0.tar",
        "https://example.invalid/r-1.tar",
    ]
    for urls in (f"{tmp_path}/s-0.tar::", [f"{tmp_path}/s-0.tar", " "]):
        with pytest.raises(ValueError, match="urls: expected a shard pattern"):
            shard_urls(urls)


def test_captions_keep_their_first_letters_and_images_come_out_rgb():

    assert clean_caption("\ufeffXXL shirt") == "XXL shirt"
    for mode in ("L", "RGBA", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (4, 4)).save(buffer, format="PNG")
        assert decode_image(buffer.getvalue()).mode == "RGB", mode
