"""`clipcond generate`'s LoRAs by name and its prompt checks (`clipcond.pipelines.generate_prompts`).

The images of tagged and untagged prompts are compared with `CLIPConditionedPipeline` given
the same LoRAs through diffusers' `load_lora_weights(adapter_name=...)` and `set_adapters`, the
tags written out of the prompt; the tagged pipeline itself equals diffusers' own pipelines
(`tests/test_lora_tags.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_lora_pipeline import saved_lora
from test_pipeline import ours_from
from tiny_pipelines import build_sd

from clipcond.cli import main
from clipcond.errors import UsageError
from clipcond.pipelines.generate_prompts import (
    LoraArgument,
    check_lora_names,
    check_prompt_against,
    check_prompt_text,
    lora_argument,
    saved_syntax,
)

# -- --lora [NAME=]SOURCE ----------------------------------------------------------------------


def test_a_lora_is_named_as_a1111_names_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "add_detail.safetensors").write_bytes(b"")
    (tmp_path / "style folder").mkdir()
    assert lora_argument(str(tmp_path / "add_detail.safetensors")) == LoraArgument(
        "add_detail", tmp_path / "add_detail.safetensors", str(tmp_path / "add_detail.safetensors")
    )
    assert lora_argument(str(tmp_path / "style folder")).name == "style folder"
    assert lora_argument(str(tmp_path / "style folder") + "/").name == "style folder"
    monkeypatch.chdir(tmp_path / "style folder")
    assert lora_argument(".") == LoraArgument("style folder", Path("."), ".")
    assert lora_argument("org/pixel-art") == LoraArgument("pixel-art", "org/pixel-art", "org/pixel-art")
    assert lora_argument("pixel_art") == LoraArgument("pixel_art", "pixel_art", "pixel_art")


def test_name_equals_source_names_the_adapter(tmp_path, monkeypatch) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"")
    written = f"detail={tmp_path / 'a.safetensors'}"
    assert lora_argument(written) == LoraArgument("detail", tmp_path / "a.safetensors", written)
    assert lora_argument("my style=org/x.y") == LoraArgument("my style", "org/x.y", "my style=org/x.y")
    # an existing path is a source whole, '=' and all (its name then needs giving); a name
    # holding a path separator is a path
    monkeypatch.chdir(tmp_path)
    Path("k=v").mkdir()
    with pytest.raises(UsageError, match=r"^--lora k=v: the adapter name 'k=v' \(the folder's name\) holds '='"):
        lora_argument("k=v")
    assert lora_argument("x=k=v") == LoraArgument("x", Path("k=v"), "x=k=v")
    with pytest.raises(UsageError, match=r"no such file or folder"):
        lora_argument(f"{tmp_path}/x=org/y")
    with pytest.raises(UsageError) as refused:
        lora_argument("x=./missing.safetensors")
    assert (
        str(refused.value) == "--lora ./missing.safetensors: no such file or folder (a hub id is `name` or `org/name`)"
    )
    with pytest.raises(UsageError) as refused:
        lora_argument("=org/x")
    assert (
        str(refused.value)
        == "--lora =org/x: the adapter would have no name (given before '='); give it another: --lora NAME=SOURCE"
    )
    with pytest.raises(UsageError) as refused:
        lora_argument("x=")
    assert str(refused.value) == "--lora x=: no such file or folder (a hub id is `name` or `org/name`)"
    with pytest.raises(UsageError) as refused:
        lora_argument("/")
    assert str(refused.value) == "--lora /: the adapter would have no name (the folder's name); name it: --lora NAME=/"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "org/detail-v1.5",
            "--lora org/detail-v1.5: the adapter name 'detail-v1.5' (the hub id's last part) holds '.', which diffusers' "
            "adapters cannot take (it names the adapter's layers); name it: --lora NAME=org/detail-v1.5",
        ),
        (
            "a:b=org/x",
            "--lora a:b=org/x: the adapter name 'a:b' (given before '=') holds ':', which a <lora:name:0.8> tag reads "
            "as the end of the name; give it another: --lora NAME=SOURCE",
        ),
        ("a>b=org/x", "holds '>', which a <lora:name> tag reads as its end"),
    ],
    ids=["dot", "colon", "angle"],
)
def test_a_name_no_tag_or_adapter_can_hold_is_refused_saying_how_to_name_it(value: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        lora_argument(value)
    assert message in str(refused.value)


def test_a_file_name_with_a_dot_or_an_equals_sign_is_refused(tmp_path) -> None:
    for name, mark in (("detail.v2.safetensors", "'.'"), ("te=0.5.safetensors", "'.'"), ("k=v.bin", "'='")):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(UsageError) as refused:
            lora_argument(str(tmp_path / name))
        assert f"(the file's name) holds {mark}" in str(refused.value)
        assert str(refused.value).endswith(f"name it: --lora NAME={tmp_path / name}")


def test_two_loras_of_one_name_are_refused() -> None:
    check_lora_names([lora_argument("org/a"), lora_argument("org/b")])
    with pytest.raises(UsageError) as refused:
        check_lora_names([lora_argument("org/a"), lora_argument("other/b"), lora_argument("me/a")])
    assert str(refused.value) == (
        "--lora org/a and --lora me/a would both be the adapter 'a': name one: --lora NAME=me/a"
    )


# -- the syntax a saved model reads ------------------------------------------------------------


def test_the_syntax_of_a_saved_folder_is_read_before_loading(tmp_path) -> None:
    index = tmp_path / "model_index.json"
    for written, syntax in (({"syntax": "comfy"}, "comfy"), ({}, "a1111"), ({"syntax": "nope"}, None), ([], None)):
        index.write_text(json.dumps(written))
        assert saved_syntax(tmp_path) == syntax
    index.write_text("{not json")
    assert saved_syntax(tmp_path) is None
    assert saved_syntax(tmp_path / "missing") is None
    assert saved_syntax("org/model") is None


# -- the prompt read before loading ------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "negative", "syntax", "message"),
    [
        (
            "a cat <lora:styel:0.8>",
            None,
            "a1111",
            "prompt: <lora:styel> names no --lora: the --lora adapters are detail, style (each named after its file, "
            "folder or hub id, or NAME in --lora NAME=SOURCE)",
        ),
        ("a cat <lora:style:x>", None, "a1111", "prompt: `<lora:style:x>`: the multiplier 'x' is no finite number"),
        ("a cat", "<lora:style:0.5> blurry", "a1111", "--negative: <lora:style> is a LoRA tag, which switches LoRAs"),
        ("a cat", "<hypernet:h:1>", "a1111", "--negative: `<hypernet:h:1>`: A1111's hypernetworks are not read"),
        ('("a", "b").blend(1)', None, "compel", 'prompt \'("a", "b").blend(1)\': compel\'s `blend(1)`: 2 parts'),
        ("a cat", "a cat.swap(dog)", "compel", "--negative 'a cat.swap(dog)': compel's `swap()` changes the text"),
    ],
    ids=["unknown", "multiplier", "negative", "hypernet", "blend", "swap"],
)
def test_a_prompt_the_syntax_refuses_is_named(prompt, negative, syntax, message) -> None:
    loras = [lora_argument("org/style"), lora_argument("org/detail")]
    with pytest.raises(UsageError) as refused:
        check_prompt_text(prompt, negative, syntax, loras)
    assert str(refused.value).startswith(message)


def test_tags_are_text_in_the_other_syntaxes_and_named_ones_pass() -> None:
    check_prompt_text("a cat <lora:style:0.8> <lyco:detail>", "<lora:x> blurry", "compel", [])
    check_prompt_text("a cat <lora:style:0.8>", "<lora:x> blurry", "comfy", [])
    check_prompt_text("a cat <lora:style:0.8> <lyco:detail:te=1:unet=0.5>", "blurry", "a1111", _two())
    with pytest.raises(UsageError, match="prompt: <lora:style> names no --lora: no --lora was given"):
        check_prompt_text("a cat <lora:style:0.8>", None, "a1111", [])


def _two() -> list[LoraArgument]:
    return [lora_argument("org/style"), lora_argument("org/detail")]


# -- the command, on the tiny SD pipeline ------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny SD pipeline and two LoRAs for it, in folders named `style` and `detail`."""
    root = tmp_path_factory.mktemp("generate_loras")
    ours_from(build_sd()).save_pretrained(root / "model")
    saved_lora(root / "style", seed=1)
    saved_lora(root / "detail", seed=2)
    return root


COMMON = ["--steps", "2", "--seed", "3", "--guidance", "3.0"]


def _reference(folders, prompt: str, adapters: list[str], weights: list[float] | None = None) -> np.ndarray:
    """The image of our pipeline with both LoRAs loaded by name and `adapters` set at `weights`."""
    from clipcond import CLIPConditionedPipeline

    pipe = CLIPConditionedPipeline.from_pretrained(folders / "model")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(folders / "style", adapter_name="style")
    pipe.load_lora_weights(folders / "detail", adapter_name="detail")
    pipe.set_adapters(adapters, weights)
    generator = [torch.Generator().manual_seed(3)]
    return np.asarray(pipe(prompt, num_inference_steps=2, guidance_scale=3.0, generator=generator).images[0])


def _generate(folders, tmp_path, prompt: str, *loras: str) -> np.ndarray:
    png = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
    argv = ["generate", prompt, "-o", str(png), "--model", str(folders / "model"), *COMMON]
    for lora in loras:
        argv += ["--lora", lora]
    assert main(argv) == 0
    return np.asarray(Image.open(png))


def test_every_lora_runs_without_tags_and_the_tagged_ones_alone_with_them(folders, tmp_path) -> None:
    loras = (str(folders / "style"), str(folders / "detail"))
    both = _generate(folders, tmp_path, "a red circle", *loras)
    assert np.array_equal(both, _reference(folders, "a red circle", ["style", "detail"]))
    tagged = _generate(folders, tmp_path, "a red circle <lora:style:0.5>", *loras)
    assert np.array_equal(tagged, _reference(folders, "a red circle ", ["style"], [0.5]))
    assert not np.array_equal(tagged, both)
    named = _generate(folders, tmp_path, "<lora:mine:0.5:1> a red circle", f"mine={folders / 'style'}")
    only_style = _reference(folders, " a red circle", ["style"], [{"text_encoder": 0.5, "unet": 1.0}])
    assert np.array_equal(named, only_style)


def test_a_bad_prompt_is_one_error_line_and_writes_nothing(folders, tmp_path, capsys, monkeypatch) -> None:
    png = tmp_path / "x.png"
    base = ["-o", str(png), "--model", str(folders / "model"), *COMMON, "--lora", str(folders / "style")]
    cases = [
        (["a <lora:detail>"], "error: prompt: <lora:detail> names no --lora: the --lora adapters are style ("),
        (
            ["a", "--negative", "<lora:style>"],
            "error: --negative: <lora:style> is a LoRA tag, which switches LoRAs on for the whole call: write it in "
            "the prompt",
        ),
        (["embedding:dog", "--syntax", "comfy"], "error: prompt 'embedding:dog': `embedding:dog` names no textual"),
        (["a.swap(b)", "--syntax", "compel"], "error: prompt 'a.swap(b)': compel's `swap()`"),
    ]
    for prompt, expected in cases:
        assert main(["generate", *prompt, *base]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(expected), errors
        assert not png.exists()


def test_a_tag_naming_no_lora_is_refused_before_the_model_loads(folders, tmp_path, capsys, monkeypatch) -> None:
    from clipcond.pipelines import generate

    def no_load(*args):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(generate, "_load", no_load)
    argv = ["generate", "a <lora:style>", "-o", str(tmp_path / "x.png"), "--model", str(folders / "model")]
    assert main(argv) == 2
    assert "error: prompt: <lora:style> names no --lora: no --lora was given" in capsys.readouterr().err


# -- the prompt checked against the loaded pipeline, on a stand-in ------------------------------


class _Conditioner:
    """Records the texts it checks; refuses one holding "bad" as the conditioner words it."""

    def __init__(self):
        self.checked = []

    def check_prompt(self, text):
        self.checked.append(text)
        if "bad" in text:
            raise ValueError(f"prompt {text!r}: cannot be read")


class _Pipe:
    def __init__(self, config):
        self.config = config
        self.conditioner = _Conditioner()
        self.clip_skips = []

    def conditioner_for(self, clip_skip):
        self.clip_skips.append(clip_skip)
        return self.conditioner


def test_the_loaded_pipeline_reads_the_texts_without_their_tags_at_its_clip_skip() -> None:
    pipe = _Pipe({})
    check_prompt_against(pipe, "a cat <lora:style:0.5>", "blurry", _two(), 2)
    assert pipe.conditioner.checked == ["a cat ", "blurry"] and pipe.clip_skips == [2]
    pipe = _Pipe({"syntax": "compel"})  # tags are text there
    check_prompt_against(pipe, "a cat <lora:other>", None, [], None)
    assert pipe.conditioner.checked == ["a cat <lora:other>"] and pipe.clip_skips == [None]


def test_what_only_the_loaded_pipeline_knows_is_refused_naming_the_text() -> None:
    with pytest.raises(UsageError) as refused:
        check_prompt_against(_Pipe({}), "a cat", "a bad dog", [], None)
    assert str(refused.value) == "--negative 'a bad dog': cannot be read"
    with pytest.raises(UsageError) as refused:
        check_prompt_against(_Pipe({}), "a cat's bad day", None, [], None)
    assert str(refused.value) == 'prompt "a cat\'s bad day": cannot be read'
    # a hub model's syntax is known only now: its refusals come here
    with pytest.raises(UsageError, match=r"^prompt 'a.swap\(b\)': compel's `swap\(\)`"):
        check_prompt_against(_Pipe({"syntax": "compel"}), "a.swap(b)", None, [], None)
    with pytest.raises(UsageError) as refused:
        check_prompt_against(_Pipe({}), "a cat", "<lora:style> blurry", _two(), None)
    assert str(refused.value) == (
        "--negative: <lora:style> is a LoRA tag, which switches LoRAs on for the whole call: write it in the prompt"
    )
    with pytest.raises(UsageError, match="^prompt: <lora:x> names no --lora"):
        check_prompt_against(_Pipe({}), "a <lora:x>", None, _two(), None)
