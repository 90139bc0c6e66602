"""`clipcond.lab.results` part by part, without running an experiment: every reason
`line_problem` gives (whole), what `image_problem` says of missing, foreign, cut and corrupted
PNGs, how `read_results` counts what it cannot read and what `strict` raises (whole), and the
writers (appended, rewritten atomically, indented JSON, images saved below the run folder)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from clipcond.lab.results import (
    RESULTS_NAME,
    append_results,
    image_path,
    image_problem,
    line_problem,
    read_results,
    rewrite_results,
    save_image,
    write_json_atomic,
)


def _good(**changes) -> dict:
    line = {
        "key": "k1",
        "setup": "a",
        "suite": "mini",
        "index": 3,
        "category": "single",
        "prompt": "a red circle",
        "seed": 1,
        "image": "images/a/mini/3-1.png",
        "metrics": {"objects_found": 1.0, "exact": True, "clip_score": 0.25, "count": False},
    }
    line.update(changes)
    return line


def test_the_results_file_and_image_names() -> None:
    assert RESULTS_NAME == "results.jsonl"
    assert image_path("bundled", "binding", 4, 12) == "images/bundled/binding/4-12.png"


# ---------------------------------------------------------------------------- line_problem


def test_a_well_formed_line_has_no_problem() -> None:
    assert line_problem(_good()) is None
    assert line_problem(_good(clip_truncated=True)) is None
    assert line_problem(_good(metrics={})) is None
    assert line_problem(_good(metrics={"clip_score": 1})) is None  # an integer is a number


@pytest.mark.parametrize("value", [[1], "x", 3, None])
def test_a_line_that_is_no_object_is_said_so(value) -> None:
    assert line_problem(value) == "not a JSON object"


@pytest.mark.parametrize(
    "name, value, kind",
    [
        ("key", 5, "a string"),
        ("key", None, "a string"),
        ("setup", True, "a string"),
        ("suite", ["mini"], "a string"),
        ("category", 1.0, "a string"),
        ("prompt", None, "a string"),
        ("image", 0, "a string"),
        ("index", "3", "an integer"),
        ("index", 3.0, "an integer"),
        ("index", True, "an integer"),
        ("seed", False, "an integer"),
        ("seed", None, "an integer"),
    ],
)
def test_a_field_of_another_type_is_named_with_its_kind(name, value, kind) -> None:
    assert line_problem(_good(**{name: value})) == f"{name!r} is missing or not {kind}"


@pytest.mark.parametrize("name", ["key", "setup", "suite", "index", "category", "prompt", "seed", "image"])
def test_a_missing_field_is_named(name) -> None:
    line = _good()
    del line[name]
    kind = "an integer" if name in ("index", "seed") else "a string"
    assert line_problem(line) == f"{name!r} is missing or not {kind}"


@pytest.mark.parametrize("metrics", [None, [], "x"])
def test_metrics_that_are_no_object_are_said_so(metrics) -> None:
    line = _good()
    if metrics is None:
        del line["metrics"]
    else:
        line["metrics"] = metrics
    assert line_problem(line) == "'metrics' is missing or not an object"


@pytest.mark.parametrize("name", ["objects", "colour", "shape", "count", "relation", "exact"])
@pytest.mark.parametrize("value, shown", [(1, "1"), ("yes", '"yes"'), (None, "null"), (0.0, "0.0")])
def test_each_pass_fail_metric_must_be_true_or_false(name, value, shown) -> None:
    line = _good(metrics={"clip_score": 0.5, name: value})
    assert line_problem(line) == f"metric {name!r} is {shown}, not true or false"


@pytest.mark.parametrize(
    "value, shown",
    [(True, "true"), ("0.5", '"0.5"'), (None, "null"), (float("nan"), "NaN"), (float("inf"), "Infinity"), ([1], "[1]")],
)
def test_other_metrics_must_be_finite_numbers(value, shown) -> None:
    line = _good(metrics={"exact": True, "objects_found": value})
    assert line_problem(line) == f"metric 'objects_found' is {shown}, not a finite number"


@pytest.mark.parametrize("value", [1, "false", None])
def test_clip_truncated_must_be_true_or_false_when_present(value) -> None:
    assert line_problem(_good(clip_truncated=value)) == "'clip_truncated' is not true or false"


@pytest.mark.parametrize(
    "changes",
    [
        {"image": "images/a/mini/3-2.png"},
        {"seed": 2},
        {"index": 4},
        {"setup": "b"},
        {"suite": "other"},
        {"image": "/tmp/x.png"},
    ],
)
def test_an_image_path_that_is_not_the_lines_own_is_named_with_the_expected_one(changes) -> None:
    line = _good(**changes)
    expected = f"images/{line['setup']}/{line['suite']}/{line['index']}-{line['seed']}.png"
    assert line_problem(line) == f"'image' is {line['image']!r}, not {expected!r}"


# ---------------------------------------------------------------------------- image_problem


def _png(path: Path) -> Path:
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def test_a_good_png_has_no_problem(tmp_path) -> None:
    assert image_problem(_png(tmp_path / "a.png")) is None


def test_a_missing_png_or_a_folder_is_missing(tmp_path) -> None:
    assert image_problem(tmp_path / "nope.png") == "is missing"
    assert image_problem(tmp_path) == "is missing"


def test_a_file_of_no_image_format_is_said_so_without_its_path(tmp_path) -> None:
    path = tmp_path / "text.png"
    path.write_text("hello")
    assert image_problem(path) == "cannot be read as a PNG (not an image file PIL knows)"


def test_a_cut_png_is_named_with_pils_reason(tmp_path) -> None:
    path = _png(tmp_path / "cut.png")
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # IEND cut
    assert image_problem(path) == "cannot be read as a PNG (truncated PNG file)"
    path.write_bytes(data[:-20])  # into the pixel data
    assert image_problem(path) == "cannot be read as a PNG (Truncated File Read)"


def test_a_png_chunk_with_a_wrong_checksum_is_named(tmp_path) -> None:
    path = _png(tmp_path / "crc.png")
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    crc_at = idat + 4 + length
    good = zlib.crc32(bytes(data[idat:crc_at])) & 0xFFFFFFFF
    data[crc_at : crc_at + 4] = struct.pack(">I", good ^ 1)
    path.write_bytes(bytes(data))
    assert image_problem(path) == "cannot be read as a PNG (broken PNG file (bad header checksum in b'IDAT'))"


# ---------------------------------------------------------------------------- read_results


def test_a_missing_results_file_reads_as_no_lines(tmp_path) -> None:
    assert read_results(tmp_path / RESULTS_NAME) == ([], 0)
    assert read_results(tmp_path / RESULTS_NAME, strict=True) == ([], 0)


def test_blank_lines_are_skipped_and_unreadable_ones_counted(tmp_path) -> None:
    path = tmp_path / RESULTS_NAME
    good = _good()
    raw = b"\n".join(
        [
            json.dumps(good).encode(),
            b"",
            b"   ",
            b'{"key": "torn',  # cut by a kill
            b"\xff\xfe not utf-8",
            b"[" * 100_000,  # past the recursion limit
            b"[1, 2]",  # JSON, not a result
            json.dumps(_good(seed=2, image="images/a/mini/3-2.png")).encode(),
            json.dumps(_good(seed="x")).encode(),
        ]
    )
    path.write_bytes(raw + b"\n")
    lines, unreadable = read_results(path)
    assert lines == [good, _good(seed=2, image="images/a/mini/3-2.png")]
    assert unreadable == 5


def test_strict_reading_names_the_file_line_and_problem(tmp_path) -> None:
    path = tmp_path / RESULTS_NAME
    _png(tmp_path / "ok.png")
    (tmp_path / "images" / "a" / "mini").mkdir(parents=True)
    _png(tmp_path / "images" / "a" / "mini" / "3-1.png")
    path.write_text(json.dumps(_good()) + "\n\n" + json.dumps(_good(seed=True)) + "\n")
    with pytest.raises(ValueError) as refused:
        read_results(path, strict=True)
    assert str(refused.value) == (
        f"{path}, line 3: 'seed' is missing or not an integer; re-run the experiment to draw that image again"
    )


def test_strict_reading_checks_each_lines_image(tmp_path) -> None:
    path = tmp_path / RESULTS_NAME
    path.write_text(json.dumps(_good()) + "\n")
    with pytest.raises(ValueError) as refused:
        read_results(path, strict=True)
    image = tmp_path / "images/a/mini/3-1.png"
    assert str(refused.value) == (
        f"{path}, line 1: its image {image} is missing; re-run the experiment to draw that image again"
    )
    assert read_results(path) == ([_good()], 0)  # not strict: the image is not looked at
    image.parent.mkdir(parents=True)
    _png(image)
    assert read_results(path, strict=True) == ([_good()], 0)


def test_strict_reading_still_counts_torn_and_non_object_lines(tmp_path) -> None:
    path = tmp_path / RESULTS_NAME
    path.write_bytes(b'{"torn\n[1]\n"text"\n')
    assert read_results(path, strict=True) == ([], 3)


# ---------------------------------------------------------------------------- writers


def test_appended_lines_are_sorted_key_json_one_per_line(tmp_path) -> None:
    path = tmp_path / RESULTS_NAME
    append_results(path, [{"b": 1, "a": "é"}])
    append_results(path, [{"c": [1, 2]}, {"d": None}])
    assert path.read_bytes() == b'{"a": "\\u00e9", "b": 1}\n{"c": [1, 2]}\n{"d": null}\n'
    append_results(path, [])
    assert path.read_text().count("\n") == 3


def test_rewriting_replaces_the_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / RESULTS_NAME
    path.write_text("old\n")
    rewrite_results(path, [{"z": 1, "y": 2}, {"x": 3}])
    assert path.read_text() == '{"y": 2, "z": 1}\n{"x": 3}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESULTS_NAME]
    rewrite_results(path, [])
    assert path.read_text() == ""


def test_a_rewrite_that_fails_midway_leaves_the_old_file(tmp_path) -> None:
    path = tmp_path / RESULTS_NAME
    path.write_text("old\n")

    def lines():
        yield {"a": 1}
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        rewrite_results(path, lines())
    assert path.read_text() == "old\n"


def test_json_is_written_indented_with_sorted_keys(tmp_path) -> None:
    path = tmp_path / "experiment.json"
    write_json_atomic(path, {"b": [1], "a": {"d": 1, "c": 2}})
    assert path.read_text() == '{\n  "a": {\n    "c": 2,\n    "d": 1\n  },\n  "b": [\n    1\n  ]\n}\n'


def test_an_image_is_saved_as_a_png_below_the_run_folder(tmp_path) -> None:
    name = image_path("a", "mini", 0, 5)
    image = Image.new("RGB", (6, 4), (1, 2, 3))
    save_image(image, tmp_path, name)
    saved = tmp_path / "images" / "a" / "mini" / "0-5.png"
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(saved) as back:
        assert back.size == (6, 4) and back.getpixel((0, 0)) == (1, 2, 3)
    save_image(Image.new("RGB", (6, 4), (9, 9, 9)), tmp_path, name)  # over an existing one
    with Image.open(saved) as back:
        assert back.getpixel((0, 0)) == (9, 9, 9)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["0-5.png"]


def test_an_image_is_not_saved_into_a_missing_run_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as refused:
        save_image(Image.new("RGB", (2, 2)), tmp_path / "gone", "images/a/s/0-0.png")
    assert refused.value.errno == 2 and refused.value.strerror == "the experiment's folder was removed while it ran"
    assert refused.value.filename == str(tmp_path / "gone") and not (tmp_path / "gone").exists()


def test_saving_an_image_lists_no_folder(tmp_path, monkeypatch) -> None:
    """One of many images: the leftover sweep (a listing of the folder) is skipped per image."""
    import clipcond.output_paths as output_paths

    swept = []
    monkeypatch.setattr(output_paths, "remove_dead_writers_files", lambda path: swept.append(path))
    save_image(Image.new("RGB", (2, 2)), tmp_path, image_path("a", "s", 0, 0))
    assert swept == [] and (tmp_path / "images/a/s/0-0.png").is_file()
    write_json_atomic(tmp_path / "x.json", {})  # a single file: swept first
    assert swept == [tmp_path / "x.json"]


@pytest.mark.parametrize("error", [SyntaxError(), OSError(), ValueError(" \n ")])
def test_a_reading_error_without_words_is_named_by_its_type(tmp_path, monkeypatch, error) -> None:
    """str() of a bare SyntaxError is "None": the type is named instead."""
    from PIL import PngImagePlugin

    def fail(self):
        raise error

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "verify", fail)
    assert image_problem(_png(tmp_path / "a.png")) == f"cannot be read as a PNG ({type(error).__name__})"
