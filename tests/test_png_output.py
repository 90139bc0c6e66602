"""The generation parameters `clipcond generate` writes into its PNG (`clipcond.pipelines.png_output`).

The reference is A1111's reader of that text (`parse_generation_parameters` in its
`modules/infotext_utils.py`, read, not run), transcribed below as `a1111_read`: every value
written is read back whole, quoting included."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from clipcond.cli import main
from clipcond.pipelines.named_sources import NamedSource
from clipcond.pipelines.png_output import generate_parameters, infotext, quoted

# A1111's field pattern: a name of word characters and spaces, then a JSON string or the text up to a comma
_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_read(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, fields) as A1111 reads a ``parameters`` text: the last line is
    the fields if the pattern finds at least 3 there; lines from one starting with
    "Negative prompt:" on are the negative; each line stripped; a quoted value is JSON (kept as
    written when it is no JSON)."""
    *lines, last = text.strip().split("\n")
    if len(_FIELD.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    fields = {}
    for name, value in _FIELD.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass  # A1111's unquote keeps a value its JSON reader refuses as written
        fields[name.strip()] = value
    return "\n".join(prompt), "\n".join(negative), fields


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("Euler a", "Euler a"),
        (3.0, "3.0"),
        ("a, b", '"a, b"'),
        ("16:9", '"16:9"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi", é', '"say \\"hi\\", é"'),
        ('say "hi"', 'say "hi"'),
    ],
)
def test_a_value_is_quoted_where_a1111_quotes_it(value, text) -> None:
    assert quoted(value) == text


def test_the_text_a1111_reads_back_whole() -> None:
    fields = {
        "Steps": 20,
        "Sampler": "DPM++ 2M Karras",
        "CFG scale": 7.5,
        "Seed": 4,
        "Clip skip": None,
        "Lora": "style, detail",
        "Odd": 'a "quoted", value: with\nlines and é',
    }
    text = infotext("a red circle, (sharp:1.2)\nBREAK a blue square", "blurry, lowres", fields)
    assert text.splitlines()[:3] == [
        "a red circle, (sharp:1.2)",
        "BREAK a blue square",
        "Negative prompt: blurry, lowres",
    ]
    prompt, negative, read = a1111_read(text)
    assert prompt == "a red circle, (sharp:1.2)\nBREAK a blue square" and negative == "blurry, lowres"
    assert read == {name: str(value) for name, value in fields.items() if value is not None}
    assert infotext("a cat", None, {"Steps": 1}) == infotext("a cat", "", {"Steps": 1}) == "a cat\nSteps: 1"


@pytest.mark.parametrize("name", ["", "CFG-scale", "a:b", "Seed,"])
def test_a_field_name_a1111_cannot_read_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="a parameter name must hold letters, digits, '_' and spaces only"):
        infotext("a", None, {name: 1})


def test_the_fields_of_a_run() -> None:
    args = SimpleNamespace(
        steps=12, sampler=None, schedule_type="Karras", guidance=4.5, seed=7, clip_skip=1, image="x.png",
        strength=None, n=3, lora_scale=0.5,
    )  # fmt: skip
    settings = {"syntax": "comfy", "emphasis": "a1111", "window_split": "truncate"}
    config = SimpleNamespace(**settings)
    pipe = SimpleNamespace(scheduler=SimpleNamespace(), config=config, default_strength=lambda: 0.8)
    loras = [NamedSource("style", "org/style", "org/style"), NamedSource("detail", "/l/d", "/l/d")]
    embeddings = [NamedSource("neg", "/e/neg.pt", "/e/neg.pt"), NamedSource(None, "org/toy", "org/toy")]
    fields = generate_parameters(args, pipe, "org/model", (48, 32), loras, embeddings)
    assert fields["Sampler"] == "SimpleNamespace" and fields["Size"] == "48x32" and fields["Model"] == "org/model"
    assert fields["Schedule type"] == "Karras"
    assert (fields["Clip skip"], fields["Denoising strength"], fields["Batch size"]) == (2, 0.8, 3)
    assert (fields["Lora"], fields["Lora scale"], fields["Embeddings"]) == ("style, detail", 0.5, "neg, org/toy")
    assert (fields["Emphasis"], fields["Syntax"], fields["Window split"]) == ("a1111", "comfy", "truncate")
    assert fields["Version"].startswith("clipcond ")
    args.sampler, args.strength, args.n, args.clip_skip, args.lora_scale = "Euler a", 0.3, 1, None, None
    args.schedule_type = None
    fields = generate_parameters(args, pipe, "org/model", (48, 32), [], [])
    assert (fields["Sampler"], fields["Denoising strength"]) == ("Euler a", 0.3)
    args.image = None
    fields = generate_parameters(args, pipe, "org/model", (48, 32), [], [])
    assert (
        fields["Denoising strength"] is fields["Batch size"] is fields["Clip skip"] is fields["Schedule type"] is None
    )
    assert fields["Lora"] is fields["Lora scale"] is fields["Embeddings"] is None


def test_generate_writes_the_parameters_a1111_reads_and_the_same_pixels_without_them(tmp_path) -> None:
    written, bare = tmp_path / "a.png", tmp_path / "b.png"
    common = ["a red circle, left", "--negative", "blue: square", "--steps", "3", "--seed", "5", "--clip-skip", "1"]
    assert main(["generate", *common, "-o", str(written), "--sampler", "euler a", "--n", "2"]) == 0
    assert main(["generate", *common, "-o", str(bare), "--sampler", "euler a", "--n", "2", "--no-parameters"]) == 0
    with Image.open(written) as image, Image.open(bare) as plain:
        assert "parameters" not in plain.text
        assert np.array_equal(np.asarray(image), np.asarray(plain))
        prompt, negative, fields = a1111_read(image.text["parameters"])
    assert (prompt, negative) == ("a red circle, left", "blue: square")
    expected = {"Steps": "3", "Sampler": "Euler a", "CFG scale": "3.0", "Seed": "5", "Size": "32x32"}
    assert {name: fields[name] for name in expected} == expected
    assert (fields["Model"], fields["Clip skip"], fields["Batch size"]) == ("shapes-model", "2", "2")
    assert (fields["Emphasis"], fields["Syntax"], fields["Window split"]) == ("multiply", "a1111", "word")
