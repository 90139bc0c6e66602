"""Training data sources: a sample that cannot be used, whatever is wrong with it (its JSON types,
its encoding, its image file), is skipped and counted by reason."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipcond.training.data import (
    CLIP_MEAN,
    CLIP_STD,
    ClipImageTransform,
    SkipCounter,
    clean_caption,
    manifest_captions,
    manifest_samples,
    webdataset_captions,
    webdataset_samples,
)


def _png(color, size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(archive, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as archive:
        _add(archive, "a.png", _png((255, 0, 0)))
        _add(archive, "a.txt", b"a red square")
        _add(archive, "b.jpg", b"\xff\xd8\xff not really a jpeg")
        _add(archive, "b.txt", b"a broken image")
        _add(archive, "c.png", _png((0, 0, 255)))
        _add(archive, "c.txt", b"   ")
        _add(archive, "d.jpg", _jpg((0, 255, 0)))
        _add(archive, "d.txt", b"a green   square\n")
        _add(archive, "e.txt", b"caption without image")
    return path


def test_webdataset_skips_and_counts_bad_samples(shard):
    skipped = SkipCounter()
    samples = list(webdataset_samples(str(shard), skipped))
    assert [caption for _, caption in samples] == ["a red square", "a green square"]
    assert samples[0][0].getpixel((0, 0)) == (255, 0, 0)
    assert skipped.counts == {"undecodable image": 1, "empty caption": 1, "no image": 1}
    assert "skipped samples: 3" in skipped.report()


def test_manifest_skips_and_counts_bad_samples(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.png").write_bytes(_png((10, 20, 30)))
    (tmp_path / "images" / "bad.png").write_bytes(b"garbage")
    lines = [
        json.dumps({"image": "images/ok.png", "caption": "a dark square"}),
        json.dumps({"image": "images/bad.png", "caption": "corrupt"}),
        json.dumps({"image": "images/missing.png", "caption": "missing"}),
        json.dumps({"image": "images/ok.png", "caption": ""}),
        "{not json",
        json.dumps({"caption": "no image key"}),
        json.dumps({"image": "images/ok.png", "text": "alternative key"}),
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    skipped = SkipCounter()
    captions = [caption for _, caption in manifest_samples(manifest, skipped)]
    assert captions == ["a dark square", "alternative key"]
    assert skipped.counts == {"undecodable image": 1, "missing image": 1, "empty caption": 1, "bad manifest line": 2}
    with pytest.raises(FileNotFoundError):
        list(manifest_samples(tmp_path / "nope.jsonl", SkipCounter()))


def test_clip_transform_resizes_crops_and_normalises():
    image = Image.new("RGB", (40, 20), (255, 128, 0))
    pixels = ClipImageTransform(16)(image)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    expected = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[:, 8, 8], expected, rtol=0, atol=1e-6)
    gradient = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (20, 1, 3)))
    cropped = ClipImageTransform(20)(gradient)
    assert cropped.shape == (3, 20, 20)
    assert cropped[0, 0, 0] > (0 - CLIP_MEAN[0]) / CLIP_STD[0]  # the left edge was cropped away


# (width, height, size) -> the resized (width, height) and the crop's (left, top), worked out by
# hand from torchvision's formulas (what OpenAI's `clip._transform` and open_clip run):
# long side `int(size * long / short)`, crop offset `int(round((length - size) / 2.0))`.
TORCHVISION_GEOMETRY = {
    (64, 48, 32): ((42, 32), (5, 0)),  # 42.67 -> 42, not rounded to 43
    (48, 64, 32): ((32, 42), (0, 5)),
    (640, 480, 32): ((42, 32), (5, 0)),
    (101, 20, 16): ((80, 16), (32, 0)),  # 80.8 -> 80
    (43, 32, 32): ((43, 32), (6, 0)),  # not resampled; 5.5 rounds to 6, not floored to 5
    (32, 47, 32): ((32, 47), (0, 8)),  # 7.5 -> 8
    (45, 32, 32): ((45, 32), (6, 0)),  # 6.5 -> 6 (half to even)
    (50, 33, 32): ((48, 32), (8, 0)),
}


@pytest.mark.parametrize("case", list(TORCHVISION_GEOMETRY), ids=lambda case: "{}x{}@{}".format(*case))
def test_clip_transform_resizes_and_crops_as_torchvision(case) -> None:
    width, height, size = case
    resized, (left, top) = TORCHVISION_GEOMETRY[case]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    expected = image.resize(resized, Image.BICUBIC) if resized != image.size else image
    expected = expected.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(expected, dtype=np.float32) / 255.0).permute(2, 0, 1)
    normalised = (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(ClipImageTransform(size)(image), normalised, rtol=0, atol=0)


def clip_processor_pil(size: int):
    """transformers' PIL backend of the CLIP image processor, whether or not torchvision is
    installed (transformers 5 then makes `CLIPImageProcessor` its torchvision backend, which
    resamples differently); `CLIPImageProcessor` itself in transformers 4, which has no other."""
    import transformers

    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def test_clip_transform_equals_transformers_clip_image_processor_but_for_its_floored_crop() -> None:
    rng = np.random.default_rng(1)
    for width, height, size in [(64, 48, 32), (48, 64, 32), (101, 20, 16), (45, 32, 32), (43, 32, 32)]:
        processor = clip_processor_pil(size)
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        theirs = torch.as_tensor(processor(image, return_tensors="np")["pixel_values"][0])
        ours = ClipImageTransform(size)(image)
        if (width - size) % 4 == 3:  # transformers floors the offset: one pixel to the left
            torch.testing.assert_close(ours[:, :, :-1], theirs[:, :, 1:], rtol=0, atol=1e-5)
            assert (ours - theirs).abs().max() > 0.1
        else:
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_clip_transform_drops_alpha_where_transformers_composites_onto_white() -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)  # transparent black ...
    rgba[4:12, 4:12] = (220, 30, 30, 255)  # ... around an opaque red square
    image = Image.fromarray(rgba, "RGBA")
    ours = ClipImageTransform(16)(image)
    theirs = torch.as_tensor(clip_processor_pil(16)(image, return_tensors="np")["pixel_values"][0])
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    torch.testing.assert_close(ours[:, 0, 0], (0 - mean) / std, rtol=0, atol=1e-6)  # the colour stored: black
    torch.testing.assert_close(theirs[:, 0, 0], (1 - mean) / std, rtol=0, atol=1e-5)  # white
    torch.testing.assert_close(ours[:, 4:12, 4:12], theirs[:, 4:12, 4:12], rtol=0, atol=1e-5)  # opaque: equal


def _truncated_png() -> bytes:
    data = _png((1, 2, 3), size=(64, 64))
    return data[: len(data) // 2]


def bad_manifest(folder) -> tuple[object, list[str], dict[str, int]]:
    """A manifest holding one line of each kind a user can get wrong, between good ones:
    (its path, the captions it yields, the skips it counts)."""
    (folder / "images").mkdir()
    (folder / "images" / "ok.png").write_bytes(_png((10, 20, 30)))
    (folder / "images" / "notes.txt").write_text("not an image at all")
    (folder / "images" / "cut.png").write_bytes(_truncated_png())
    (folder / "images" / "folder.png").mkdir()
    lines = [
        json.dumps({"image": "images/ok.png", "caption": "first"}),
        json.dumps({"image": 5, "caption": "an image that is a number"}),
        json.dumps({"image": ["images/ok.png"], "caption": "an image that is a list"}),
        json.dumps({"image": "images/ok.png", "caption": 7}),
        json.dumps({"image": "images/ok.png", "caption": None}),
        json.dumps({"image": "images/ok.png"}),
        json.dumps({"image": "images/ok.png", "caption": ["a", "list"]}),
        json.dumps({"image": "images/gone.png", "caption": "a missing file"}),
        json.dumps({"image": "images/notes.txt", "caption": "a text file"}),
        json.dumps({"image": "images/cut.png", "caption": "a truncated png"}),
        json.dumps({"image": "images/folder.png", "caption": "a folder"}),
        json.dumps({"image": "images/ok\u0000.png", "caption": "a NUL in the path"}),
        json.dumps(["images/ok.png", "a list, not an object"]),
        "null",
        json.dumps({"image": "images/ok.png", "caption": "second"}),
    ]
    data = ("\n".join(lines) + "\n").encode() + b'{"image": "images/ok.png", "caption": "caf\xe9 in latin-1"}\n'
    manifest = folder / "manifest.jsonl"
    manifest.write_bytes(data + json.dumps({"image": "images/ok.png", "caption": "third"}).encode() + b"\n")
    skipped = {
        "bad manifest line": 7,  # image 5, image list, caption 7, caption list, JSON list, null, latin-1
        "no caption": 2,  # caption null, no caption key
        "missing image": 1,
        "undecodable image": 2,  # a text file, a truncated PNG
        "unreadable image": 2,  # a folder, a NUL in the path
    }
    return manifest, ["first", "second", "third"], skipped


def test_a_manifest_line_of_any_wrong_type_or_encoding_is_skipped_and_counted(tmp_path):
    manifest, captions, expected = bad_manifest(tmp_path)
    skipped = SkipCounter()
    samples = list(manifest_samples(manifest, skipped))
    assert [caption for _, caption in samples] == captions
    assert all(image.size == (12, 10) for image, _ in samples)
    assert dict(skipped.counts) == expected
    only_captions = SkipCounter()  # captions alone: images are not opened, so image files are not judged
    assert manifest_captions(manifest, only_captions) == [
        "first",
        "a missing file",
        "a text file",
        "a truncated png",
        "a folder",
        "a NUL in the path",
        "second",
        "third",
    ]
    assert dict(only_captions.counts) == {"bad manifest line": 7, "no caption": 2}


def bad_shard(path) -> tuple[list[str], dict[str, int]]:
    """A shard holding a sample of each kind a shard can get wrong, between good ones: (the
    captions it yields, the skips it counts)."""
    with tarfile.open(path, "w") as archive:
        _add(archive, "a.png", _png((255, 0, 0)))
        _add(archive, "a.txt", b"first")
        _add(archive, "b.png", _png((0, 255, 0)))
        _add(archive, "b.txt", b"caf\xe9 in latin-1")
        _add(archive, "c.png", b"\x89PNG\r\n\x1a\n but no image")
        _add(archive, "c.txt", b"an image that does not decode")
        _add(archive, "d.png", _truncated_png())
        _add(archive, "d.txt", b"a truncated png")
        _add(archive, "e.png", _png((0, 0, 255)))  # no caption member
        _add(archive, "f.txt", b"no image member")
        _add(archive, "g.jpg", _jpg((9, 9, 9)))
        _add(archive, "g.txt", b"second")
    return ["first", "second"], {"caption not UTF-8": 1, "undecodable image": 2, "no caption": 1, "no image": 1}


def test_a_shard_member_of_any_wrong_kind_is_skipped_and_counted(tmp_path):
    captions, expected = bad_shard(tmp_path / "bad-000.tar")
    skipped = SkipCounter()
    assert [caption for _, caption in webdataset_samples(str(tmp_path / "bad-000.tar"), skipped)] == captions
    assert dict(skipped.counts) == expected
    only_captions = SkipCounter()
    assert webdataset_captions(str(tmp_path / "bad-000.tar"), only_captions) == [
        "first",
        "an image that does not decode",
        "a truncated png",
        "no image member",
        "second",
    ]
    assert dict(only_captions.counts) == {"caption not UTF-8": 1, "no caption": 1}


def test_a_caption_that_is_not_text_is_a_type_error():
    assert clean_caption(b"a  red\n square ") == "a red square"
    with pytest.raises(TypeError, match="caption must be text, got int"):
        clean_caption(7)
    with pytest.raises(UnicodeDecodeError):
        clean_caption(b"caf\xe9")


def test_a_byte_order_mark_before_a_shard_caption_is_not_part_of_it(tmp_path) -> None:
    # as a prompt file's BOM is dropped, and a manifest's (json.loads detects it)
    path = tmp_path / "bom-000.tar"
    with tarfile.open(path, "w") as archive:
        _add(archive, "a.png", _png((255, 0, 0)))
        _add(archive, "a.txt", "a red circle".encode("utf-8-sig"))
    assert [caption for _, caption in webdataset_samples(str(path), SkipCounter())] == ["a red circle"]
    assert webdataset_captions(str(path), SkipCounter()) == ["a red circle"]


def test_a_manifest_caption_that_is_null_gives_way_to_its_text(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(_png((255, 0, 0)))
    lines = [{"image": "a.png", "caption": None, "text": "from text"}, {"image": "a.png", "caption": None}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    skipped = SkipCounter()
    assert manifest_captions(tmp_path / "m.jsonl", skipped) == ["from text"]
    assert dict(skipped.counts) == {"no caption": 1}


def _six_sample_shard(path) -> list[tarfile.TarInfo]:
    """A shard of six samples (``0.png`` + ``0.txt`` ... ``5.png`` + ``5.txt``, captions
    ``caption 0`` ...), as tarfile writes it; its members, in order."""
    with tarfile.open(path, "w") as archive:
        for index in range(6):
            _add(archive, f"{index}.png", _png((40 * index, 0, 0)))
            _add(archive, f"{index}.txt", f"caption {index}".encode())
    with tarfile.open(path) as archive:
        return archive.getmembers()


def test_a_shard_cut_short_is_counted_and_named(tmp_path, caplog):
    """Python's tarfile takes a missing or partial header for the end of the archive: a shard
    cut at a member's boundary, or inside a header, would lose its last samples unreported."""
    whole = tmp_path / "whole.tar"
    members = _six_sample_shard(whole)
    data = whole.read_bytes()
    captions = [f"caption {index}" for index in range(6)]
    last = members[-1]
    end_of_members = last.offset_data + -(-last.size // 512) * 512
    cuts = {
        "at the header of sample 3": (members[6].offset, 3),
        "inside the header of sample 3": (members[6].offset + 200, 3),
        "after the last member, before the end-of-archive block": (end_of_members, 6),
    }
    for what, (cut, read) in cuts.items():
        shard = tmp_path / "cut.tar"
        shard.write_bytes(data[:cut])
        for reader in (webdataset_samples, webdataset_captions):
            skipped = SkipCounter()
            caplog.clear()
            got = [sample[1] if isinstance(sample, tuple) else sample for sample in reader(str(shard), skipped)]
            assert got == captions[:read], what
            assert dict(skipped.counts) == {"truncated tar shard": 1}, what
            warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
            assert len(warnings) == 1 and str(shard) in warnings[0], what
    # a complete shard is not: the end-of-archive block alone, without tarfile's padding to 10 KiB
    for trailer in (512, 1024, len(data) - end_of_members):
        shard = tmp_path / "complete.tar"
        shard.write_bytes(data[: end_of_members + trailer])
        skipped = SkipCounter()
        assert [caption for _, caption in webdataset_samples(str(shard), skipped)] == captions
        assert skipped.total == 0, trailer


def _noise_png(seed: int) -> bytes:
    """A PNG of 64 x 64 random pixels: about 12 KiB, more than the 10 KiB a tar reader buffers."""
    pixels = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_shard_with_a_damaged_header_is_counted_and_named(tmp_path, caplog):
    """tarfile also takes a block that is not a tar header for the end of the archive: the
    samples after a damaged header would be lost unreported."""
    path = tmp_path / "whole.tar"
    with tarfile.open(path, "w") as archive:
        for index in range(4):
            _add(archive, f"{index}.png", _noise_png(index))
            _add(archive, f"{index}.txt", f"caption {index}".encode())
    with tarfile.open(path) as archive:
        members = archive.getmembers()
    assert all(len(_noise_png(index)) > 10240 for index in range(4))
    data = bytearray(path.read_bytes())
    header = members[4].offset  # 2.png's header
    data[header + 148 : header + 156] = b"garbage!"  # its checksum field: no longer a header
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    for reader in (webdataset_samples, webdataset_captions):
        skipped = SkipCounter()
        caplog.clear()
        got = [sample[1] if isinstance(sample, tuple) else sample for sample in reader(str(damaged), skipped)]
        assert got == ["caption 0", "caption 1"]
        assert dict(skipped.counts) == {"damaged tar shard": 1}
        warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
        assert len(warnings) == 1 and str(damaged) in warnings[0] and "damaged" in warnings[0]
    # the intact shard, and one whose padding after the end-of-archive block is longer, are not
    longer = tmp_path / "longer.tar"
    longer.write_bytes(path.read_bytes() + bytes(3 * 10240))
    for shard in (path, longer):
        skipped = SkipCounter()
        assert [caption for _, caption in webdataset_samples(str(shard), skipped)] == [f"caption {i}" for i in range(4)]
        assert skipped.total == 0
    # a file that is no tar at all (noise, a saved HTML error page) is one unreadable shard, named
    # in a warning, not also a damaged one
    for name, data in (("noise.tar", _noise_png(9)), ("page.tar", b"<html><title>404 Not Found</title></html>\n" * 50)):
        not_a_tar = tmp_path / name
        not_a_tar.write_bytes(data)
        skipped = SkipCounter()
        caplog.clear()
        assert list(webdataset_samples(str(not_a_tar), skipped)) == []
        assert dict(skipped.counts) == {"unreadable tar shard": 1}
        warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith(f"{not_a_tar}: the tar reader gave up after")


def test_a_manifest_line_nested_too_deeply_is_a_bad_line(tmp_path):
    """json.loads raises RecursionError, not ValueError, on JSON nested past the recursion limit."""
    (tmp_path / "ok.png").write_bytes(_png((1, 2, 3)))
    deep = "[" * 100_000 + "]" * 100_000
    lines = [
        json.dumps({"image": "ok.png", "caption": "first"}),
        deep,
        '{"image": "ok.png", "caption": ' + deep + "}",
        json.dumps({"image": "ok.png", "caption": "second"}),
    ]
    manifest = tmp_path / "deep.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    skipped = SkipCounter()
    assert [caption for _, caption in manifest_samples(manifest, skipped)] == ["first", "second"]
    assert dict(skipped.counts) == {"bad manifest line": 2}
    assert manifest_captions(manifest, SkipCounter()) == ["first", "second"]


def test_a_prompt_file_reads_one_caption_per_newline_as_the_other_sources_clean_them(tmp_path) -> None:
    """A byte-order mark is no part of the first prompt, CRLF ends a line as LF does, and a
    Unicode line break inside a line (U+2028, form feed) is whitespace, as `clean_caption`
    reads it in manifests and shards: the keys `encode --prompts` writes are those that
    `train-diffusion` looks up for the same captions."""
    from clipcond.training.data.prompt_file import prompt_file_captions

    path = tmp_path / "prompts.txt"
    path.write_bytes("a red circle\r\na blue\u2028square\n\n  a green\x0ctriangle  \n".encode("utf-8-sig"))
    skipped = SkipCounter()
    captions = prompt_file_captions(path, skipped)
    assert captions == ["a red circle", "a blue square", "a green triangle"]
    assert captions == [clean_caption(text) for text in ("a red circle", "a blue\u2028square", "a green\x0ctriangle")]
    assert skipped.total == 1  # the blank line; the newline ending the file is no line
