"""`clipcond generate --parameters-from PNG` (`clipcond.pipelines.png_parameters`): the
``parameters`` text read as A1111 reads it (the reference is the transcription of A1111's
reader in `test_png_output.a1111_read`), what applies put into generate's options unless the
command line gives them, and a PNG drawn again to the same pixels."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from test_cli_errors import one_error
from test_png_output import _FIELD, a1111_read

from clipcond.cli import main
from clipcond.errors import UsageError
from clipcond.pipelines import generate
from clipcond.pipelines.png_output import infotext
from clipcond.pipelines.png_parameters import Infotext, _field_pairs, apply_parameters, read_infotext

A1111_TEXT = (
    "masterpiece, a red circle, (sharp:1.2)\n"
    "BREAK a blue square\n"
    "Negative prompt: lowres, blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Hires resize: 1024x1536, Lora hashes: "style: 1a2b", '
    "Version: v1.10.1"
)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    return parser.parse_args(list(argv))


def _read(text: str) -> tuple[str, str, dict[str, str]]:
    read = read_infotext(text)
    return read.prompt, read.negative, read.fields


_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
)
_name = st.from_regex(r"[A-Za-z][A-Za-z0-9_ ]{0,12}[A-Za-z0-9]", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(prompt=_text, negative=_text, fields=st.dictionaries(_name, _text.filter(lambda v: v.strip() == v), max_size=5))
def test_any_text_clipcond_writes_is_read_as_a1111_reads_it(prompt: str, negative: str, fields: dict) -> None:
    text = infotext(prompt, negative, fields)
    assert _read(text) == a1111_read(text)


@pytest.mark.parametrize(
    "text",
    [
        A1111_TEXT,
        "a cat",  # no fields line
        "a cat\nSteps: 20, Seed: 3",  # two fields are no fields line
        "a cat\nNegative prompt: dog\nNegative prompt: bird\nmore\nSteps: 1, Seed: 2, Size: 8x8",
        "  Negative prompt:  dog  \n  Steps: 1,  Seed: 2 , Size: 8x8,",
        'a\nSteps: 1, Seed: 2, Odd: "a \\"b\\", c", Size: 8x8',
        "a\n\nb\nSteps: 1, Seed: 2, Size: 8x8, Empty: , Last: x",
    ],
)
def test_written_texts_are_read_as_a1111_reads_them(text: str) -> None:
    assert _read(text) == a1111_read(text)


_FIELD_CHARACTERS = st.sampled_from(
    ["a", "é", "_", "1", " ", " ", "\t", "\u3000", ":", ":", ",", ",", '"', '"', "\\", "-"]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_FIELD_CHARACTERS, max_size=30).map("".join))
def test_the_fields_line_gives_the_pairs_a1111s_pattern_finds(line: str) -> None:
    assert _field_pairs(line) == _FIELD.findall(line)


def test_a_long_line_without_fields_is_read_in_linear_work() -> None:
    """A1111's pattern, searched for at every position of 100,000 characters of words without a
    colon, runs to each word run's end from each: about 5 billion steps (an 80,000-character
    line took 79 s). Read here in work linear in the length (0.07 s)."""
    words = "a " * 50_000
    assert read_infotext(words) == Infotext(words.strip(), "", {})
    line = f"{words}Steps: 2, Seed: 1, {words}Size: 8x8"
    assert _field_pairs(line) == [(words + "Steps", "2"), ("Seed", "1"), (words + "Size", "8x8")]


def test_a_quoted_value_that_is_no_json_is_kept_as_written() -> None:
    assert read_infotext('a\nSteps: 1, Seed: 2, Odd: "a\\q"').fields["Odd"] == '"a\\q"'
    assert read_infotext('a\nSteps: 1, Seed: 2, Empty: ""').fields["Empty"] == ""  # JSON's empty string


def test_the_runs_model_is_the_given_one_by_its_folders_name_or_hub_id(tmp_path, capsys) -> None:
    from clipcond.pipelines.png_parameters import take_png_parameters

    png = _png(tmp_path / "a.png", "a cat\nSteps: 2, Seed: 1, Model: org/v1-5")
    parse = lambda *argv: _args("--parameters-from", str(png), *argv)  # noqa: E731
    take_png_parameters(parse("--model", "org/v1-5"))  # a hub id is named whole, as generate writes it
    assert capsys.readouterr().err == ""
    take_png_parameters(parse("--model", "v1-5"))
    assert capsys.readouterr().err == f"warning: --parameters-from {png}: not applied: Model\n"
    (tmp_path / "v1-5").mkdir()
    take_png_parameters(parse("--model", str(tmp_path / "v1-5")))  # a folder by its name
    assert capsys.readouterr().err == f"warning: --parameters-from {png}: not applied: Model\n"
    with pytest.raises(UsageError, match=r"^--model \./missing: no such file or folder"):
        take_png_parameters(parse("--model", "./missing"))


def test_an_a1111_png_sets_what_applies_and_reads_the_prompt_as_a1111() -> None:
    args = _args()
    not_applied = apply_parameters(args, read_infotext(A1111_TEXT), "here")
    assert args.prompt == "masterpiece, a red circle, (sharp:1.2)\nBREAK a blue square"
    assert args.negative == "lowres, blurry"
    assert (args.steps, args.sampler, args.schedule_type, args.guidance, args.seed) == (
        20,
        "DPM++ 2M",
        "Karras",
        7.0,
        1234,
    )
    assert (args.width, args.height, args.clip_skip, args.n) == (512, 768, 1, 1)
    assert (args.emphasis, args.window_split, args.syntax) == ("a1111", "a1111", None)
    assert not_applied == ["Model", "Hires resize"]  # hashes and the version change nothing


def test_the_command_line_wins_even_where_it_gives_the_default() -> None:
    args = _args("a dog", "--negative", "x", "--steps", "50", "--seed", "0", "--guidance", "3.0", "--n", "2",
                 "--sampler", "euler", "--width", "64", "--clip-skip", "2", "--emphasis", "comfy", "--model", "org/m")  # fmt: skip
    not_applied = apply_parameters(args, read_infotext(A1111_TEXT), "here")
    assert (args.prompt, args.negative, args.steps, args.seed, args.guidance, args.n) == ("a dog", "x", 50, 0, 3.0, 2)
    assert (args.sampler, args.schedule_type, args.width, args.height) == ("Euler", "Karras", 64, None)
    assert (args.clip_skip, args.emphasis, args.window_split) == (2, "comfy", "a1111")
    assert not_applied == ["Model", "Hires resize"]
    args = _args("--model", "org/v1-5-pruned-emaonly")
    assert apply_parameters(args, read_infotext(A1111_TEXT), "here", "v1-5-pruned-emaonly") == ["Hires resize"]


def test_clipcond_pngs_name_how_the_prompt_was_read_and_a1111_names_are_mapped() -> None:
    ours = "a\nSteps: 2, Seed: 1, Emphasis: comfy, Syntax: compel, Window split: truncate, Version: clipcond 0.1"
    args = _args()
    assert apply_parameters(args, read_infotext(ours), "here") == []
    assert (args.emphasis, args.syntax, args.window_split) == ("comfy", "compel", "truncate")
    args = _args()  # an older clipcond PNG names none: the model's own settings
    apply_parameters(args, read_infotext("a\nSteps: 2, Seed: 1, Version: clipcond 0.1"), "here")
    assert (args.emphasis, args.syntax, args.window_split) == (None, None, None)
    args = _args()
    apply_parameters(args, read_infotext("a\nSteps: 2, Seed: 1, Emphasis: No norm, Clip skip: 1"), "here")
    assert (args.emphasis, args.clip_skip) == ("multiply", None)
    args = _args()  # clipcond's own fields in another program's PNG are not read
    other = "a\nSteps: 2, Seed: 1, Syntax: compel, Window split: word, Version: v1.10.1"
    assert apply_parameters(args, read_infotext(other), "here") == ["Syntax", "Window split"]
    assert (args.syntax, args.window_split, args.emphasis) == (None, "a1111", "a1111")


def test_lora_scale_and_strength_apply_only_beside_their_options() -> None:
    text = "a\nSteps: 2, Seed: 1, Lora: style, Lora scale: 0.5, Denoising strength: 0.6, Size: 64x64"
    args = _args()
    assert apply_parameters(args, read_infotext(text), "here") == ["Lora", "Lora scale"]
    assert (args.lora_scale, args.strength, args.width) == (None, None, 64)
    args = _args("--lora", "style=org/s", "--image", "in.png")
    assert apply_parameters(args, read_infotext(text), "here") == ["Lora"]
    assert (args.lora_scale, args.strength, args.width) == (0.5, 0.6, None)  # the image decides the size


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (
            "Steps: 2.5",
            "here: its Steps '2.5' cannot be read (invalid literal for int() with base 10: '2.5'); give --steps",
        ),
        ("CFG scale: nan", "here: its CFG scale 'nan' cannot be read (not a finite number); give --guidance"),
        (
            "Sampler: DPM fast",
            "here: its Sampler 'DPM fast' cannot be read (no sampler is named 'DPM fast': *; give --sampler",
        ),
        (
            "Size: 512",
            "here: its Size '512' is not WIDTHxHEIGHT (two whole numbers of at least 1); give --width and --height",
        ),
        (
            "Size: 0x64",
            "here: its Size '0x64' is not WIDTHxHEIGHT (two whole numbers of at least 1); give --width and --height",
        ),
        ("Steps: 0", "here: its Steps '0' cannot be read (not at least 1); give --steps"),
        ("Batch size: -2", "here: its Batch size '-2' cannot be read (not at least 1); give --n"),
        (
            "Emphasis: None",
            "here: its Emphasis 'None' cannot be read (clipcond has A1111's emphasis 'Original' and 'No norm' only); "
            "give --emphasis",
        ),
        (
            "Schedule type: Polyexponential",
            "here: its Schedule type 'Polyexponential' cannot be read (no schedule type is named 'Polyexponential': "
            "*; give --schedule-type",
        ),
    ],
)
def test_a_field_that_applies_but_cannot_be_read_is_refused_naming_it(field: str, message: str) -> None:
    """Each message whole, but for the list of names where it says `*`."""
    with pytest.raises(UsageError) as refused:
        apply_parameters(_args(), read_infotext(f"a\nSeed: 1, Batch size: 1, {field}"), "here")
    start, _, end = message.partition("*")
    assert str(refused.value).startswith(start) and str(refused.value).endswith(end)


def test_a_field_the_command_line_replaces_is_not_read() -> None:
    args = _args("--steps", "3")
    apply_parameters(args, Infotext("a", "", {"Steps": "many"}), "here")
    assert args.steps == 3


def _png(path, parameters: str | None = None, **chunks: str):
    info = PngImagePlugin.PngInfo()
    for key, value in ({"parameters": parameters} if parameters is not None else {}).items() | chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a_png_drawn_again_from_its_parameters_has_the_same_pixels_and_parameters(tmp_path, capsys) -> None:
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    argv = ["a red circle, left of a blue square", "--negative", "green: triangle", "--steps", "3", "--seed", "5",
            "--sampler", "euler a", "--clip-skip", "1", "--n", "2", "--guidance", "4.5", "--emphasis", "comfy"]  # fmt: skip
    assert main(["generate", *argv, "-o", str(first)]) == 0
    capsys.readouterr()
    assert main(["generate", "--parameters-from", str(first), "-o", str(again)]) == 0
    assert "warning:" not in capsys.readouterr().err  # every field applied, the model's name the PNG's
    with Image.open(first) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert a.text["parameters"] == b.text["parameters"]
    # the command line wins: another seed draws another image
    assert main(["generate", "--parameters-from", str(first), "-o", str(again), "--seed", "6", "--force"]) == 0
    with Image.open(first) as a, Image.open(again) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))
        assert "Seed: 6," in b.text["parameters"] and "Sampler: Euler a," in b.text["parameters"]


def test_the_fields_not_applied_are_one_warning(tmp_path, capsys) -> None:
    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL

    png = _png(tmp_path / "a1111.png", "a red circle\nSteps: 2, Seed: 1, Size: 32x32, Model: v1-5, Hires resize: 64x64")
    assert main(["generate", "--parameters-from", str(png), "-o", str(tmp_path / "o.png")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: --parameters-from {png}: not applied: Model, Hires resize"]
    # a --model of the PNG's model's name is that model
    png = _png(tmp_path / "ours.png", "a red circle\nSteps: 2, Seed: 1, Size: 32x32, Model: shapes-model")
    argv = ["generate", "--parameters-from", str(png), "-o", str(tmp_path / "p.png"), "--model", str(BUNDLED_MODEL)]
    assert main(argv) == 0
    assert "warning:" not in capsys.readouterr().err


def test_what_cannot_be_read_is_one_error_line_before_anything_loads(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(generate, "_load", lambda *given: pytest.fail("loaded"))
    out = str(tmp_path / "o.png")
    text = tmp_path / "notes.txt"
    text.write_text("Steps: 20")
    cases = [
        (tmp_path / "missing.png", "no such file"),
        (text, "cannot read it as an image ("),
        (
            _png(tmp_path / "bare.png"),
            "the image holds no generation parameters (no 'parameters' text, no EXIF comment)",
        ),
        (
            _png(tmp_path / "comfy.png", workflow="{}", prompt="{}"),
            "the image holds no generation parameters (no 'parameters' text, no EXIF comment) (it holds a ComfyUI "
            "workflow, which is "
            "no A1111 parameters text)",
        ),
        (_png(tmp_path / "steps.png", "a\nSteps: x, Seed: 1, Size: 8x8"), "its Steps 'x' cannot be read ("),
    ]
    for png, message in cases:
        line = one_error(capsys, ["generate", "--parameters-from", str(png), "-o", out], 2)
        expected = f"error: --parameters-from {png}: {message}"
        assert line == expected if message.endswith(("text)", "comment)", "file")) else line.startswith(expected), line
    line = one_error(capsys, ["generate", "-o", out], 2)
    assert line == "error: give a prompt, or --parameters-from an image that holds one"
    assert not (tmp_path / "o.png").exists()


def _a1111_exif(text: str) -> bytes:
    """The EXIF A1111 writes into its JPEG and WebP images: the parameters as the Exif
    UserComment, marked UNICODE, by piexif."""
    import piexif
    import piexif.helper

    return piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(text, encoding="unicode")}})


def test_a1111s_jpeg_and_webp_keep_the_parameters_in_exif(tmp_path) -> None:
    import piexif
    from PIL import features

    from clipcond.pipelines.png_parameters import infotext_of_image

    text = "a red circle, é 猫\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, Seed: 5, Size: 32x32"
    jpeg = tmp_path / "a1111.jpg"
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    piexif.insert(_a1111_exif(text), str(jpeg))  # as A1111 saves a JPEG
    assert infotext_of_image(jpeg) == read_infotext(text)
    if features.check("webp"):
        webp = tmp_path / "a1111.webp"
        Image.new("RGB", (8, 8)).save(webp, format="WEBP", exif=_a1111_exif(text))
        assert infotext_of_image(webp) == read_infotext(text)


def test_an_exif_comment_is_read_in_the_encoding_its_mark_names() -> None:
    from clipcond.pipelines.png_parameters import user_comment_text

    assert user_comment_text(b"UNICODE\0" + "a é 猫".encode("utf-16-be")) == "a é 猫"
    assert user_comment_text(b"ASCII\0\0\0Steps: 3") == "Steps: 3"
    assert user_comment_text(b"JIS\0\0\0\0\0" + "猫".encode("shift_jis")) == "猫"
    assert user_comment_text("no mark é".encode() + b"\xff") == "no mark é"  # UTF-8, what cannot be read left out
    assert user_comment_text(b"UNICODE\0\x00a\x00") == "a\ufffd"  # an odd byte replaced, as piexif reads it


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_text_after_the_pixels_is_read_and_one_before_them_needs_no_pixels(tmp_path) -> None:
    from clipcond.pipelines.png_parameters import infotext_of_image

    text = "a cat\nSteps: 3, Seed: 5, Size: 8x8"
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    data = plain.read_bytes()
    end = data.rindex(b"IEND") - 4  # the IEND chunk's length field
    after = tmp_path / "after.png"
    after.write_bytes(data[:end] + _chunk(b"tEXt", b"parameters\0" + text.encode("latin-1")) + data[end:])
    assert infotext_of_image(after) == read_infotext(text)
    cut = tmp_path / "cut.png"  # written as A1111 writes it, then cut inside the pixels
    _png(cut, text)
    cut.write_bytes(cut.read_bytes()[: cut.read_bytes().index(b"IDAT") + 8])
    assert infotext_of_image(cut) == read_infotext(text)


def test_an_image_of_more_pixels_than_pil_opens_is_one_error_line(tmp_path, capsys) -> None:
    """A header claiming 20000 x 20000 pixels (PIL refuses over 2 x 89 million as a decompression bomb)."""
    import struct

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b""))
    line = one_error(capsys, ["generate", "--parameters-from", str(bomb), "-o", str(tmp_path / "o.png")], 2)
    assert line.startswith(
        f"error: --parameters-from {bomb}: cannot read it as an image (Image size (400000000 pixels)"
    )


def test_the_option_says_what_it_reads(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "[--parameters-from IMAGE]" in help_text
    assert "--parameters-from IMAGE draw with the generation parameters an image holds (a PNG's 'parameters' text" in (
        help_text
    )


def test_a_clipcond_png_drawn_with_the_models_own_scheduler_draws_again_with_it(tmp_path, capsys) -> None:
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    assert main(["generate", "a red circle", "--steps", "2", "--seed", "4", "-o", str(first)]) == 0  # no --sampler
    text = Image.open(first).info["parameters"]
    assert "Sampler: EulerAncestralDiscreteScheduler" in text  # the bundled model's scheduler, by its class
    capsys.readouterr()
    assert main(["generate", "--parameters-from", str(first), "-o", str(again)]) == 0
    assert "warning:" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    assert Image.open(again).info["parameters"] == text


def test_a_scheduler_class_as_sampler_is_the_models_own_scheduler_or_named_as_not_applied() -> None:
    ours = read_infotext("a\nSteps: 2, Sampler: DDIMScheduler, Seed: 1, Version: clipcond 0.1.0")
    for model_scheduler in ("DDIMScheduler", None):  # the same class, or not known before loading
        args = _args()
        assert apply_parameters(args, ours, "here", model_scheduler=model_scheduler) == []
        assert args.sampler is None
    args = _args()
    assert apply_parameters(args, ours, "here", model_scheduler="PNDMScheduler") == ["Sampler"]
    assert args.sampler is None
    args = _args("--sampler", "euler")
    assert apply_parameters(args, ours, "here", model_scheduler="PNDMScheduler") == []
    assert args.sampler == "Euler"
    # another program's PNG: a class name is no A1111 sampler
    theirs = read_infotext("a\nSteps: 2, Sampler: DDIMScheduler, Seed: 1")
    with pytest.raises(UsageError, match="its Sampler 'DDIMScheduler' cannot be read"):
        apply_parameters(_args(), theirs, "here", model_scheduler="DDIMScheduler")
    # nor is a name that is not diffusers' scheduler class
    for name in ("DiffusionPipeline", "ddimscheduler", "DDIM Scheduler"):
        with pytest.raises(UsageError, match=f"its Sampler '{name}' cannot be read"):
            apply_parameters(_args(), read_infotext(f"a\nSteps: 2, Sampler: {name}, Version: clipcond 1"), "here")
