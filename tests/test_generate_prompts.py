"""`clipcond generate`'s LoRAs and embeddings by name (`clipcond.pipelines.named_sources`) in
whole runs, and its prompt checks (`clipcond.pipelines.generate_prompts`).

The images of tagged and untagged prompts are compared with `CLIPConditionedPipeline` given
the same LoRAs through diffusers' `load_lora_weights(adapter_name=...)` and `set_adapters`, the
tags written out of the prompt; the tagged pipeline itself equals diffusers' own pipelines
(`tests/test_lora_tags.py`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_lora_pipeline import saved_lora
from test_pipeline import ours_from
from tiny_pipelines import build_sd

from clipcond.cli import main
from clipcond.errors import UsageError
from clipcond.pipelines.generate_prompts import check_prompt_against, check_prompt_text, saved_syntax
from clipcond.pipelines.named_sources import NamedSource, lora_argument

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


def _two() -> list[NamedSource]:
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
        (
            ["a", "--negative", "embedding:dog, blurry", "--syntax", "comfy"],
            "error: --negative: `embedding:dog` names no embedding this model holds: give it with --embedding (a file "
            "named dog.safetensors or dog.pt, or dog=SOURCE)",
        ),
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
        # one CLIP whose tokenizer holds the textual-inversion token <toy>, another with none
        self.clip = [
            SimpleNamespace(tokenizer=SimpleNamespace(added_tokens_encoder={})),
            SimpleNamespace(tokenizer=SimpleNamespace(added_tokens_encoder={"<toy>": 49408})),
        ]

    def check_prompt(self, text):
        self.checked.append(text)
        if "bad" in text:
            raise ValueError(f"prompt {text!r}: cannot be read")


class _Pipe:
    def __init__(self, config):
        from diffusers.configuration_utils import FrozenDict

        self.config = FrozenDict({"syntax": "a1111", **config})  # a pipeline's config always holds its syntax
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


# -- --embedding, in whole runs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_files(folders):
    """An A1111 `.pt` embedding of two vectors named by its file, and a diffusers folder whose
    file holds the token `<toy>`, both of the tiny SD text encoder's width."""
    from safetensors.torch import save_file

    width = build_sd().text_encoder.config.hidden_size
    generator = torch.Generator().manual_seed(5)
    a1111 = folders / "neg-style.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, width, generator=generator)}, "name": "other"}, a1111)
    (folders / "toy").mkdir()
    save_file({"<toy>": torch.randn(1, width, generator=generator)}, folders / "toy" / "learned_embeds.safetensors")
    return a1111, folders / "toy"


def _with_embeddings(folders, prompt: str, negative: str | None = None, syntax: str = "a1111") -> np.ndarray:
    """Our pipeline's image with the two embeddings loaded through `load_textual_inversion`."""
    from clipcond import CLIPConditionedPipeline

    pipe = CLIPConditionedPipeline.from_pretrained(folders / "model")
    pipe.register_to_config(syntax=syntax)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(folders / "neg-style.pt", token="neg-style")
    pipe.load_textual_inversion(folders / "toy")
    generator = [torch.Generator().manual_seed(3)]
    call = dict(negative_prompt=negative, num_inference_steps=2, guidance_scale=3.0, generator=generator)
    return np.asarray(pipe(prompt, **call).images[0])


def test_embeddings_load_as_the_tokens_a1111_and_diffusers_give_them(folders, embedding_files, tmp_path) -> None:
    a1111, toy = embedding_files
    loaded = ["--embedding", str(a1111), "--embedding", str(toy)]
    png = tmp_path / "e.png"
    base = ["-o", str(png), "--model", str(folders / "model"), *COMMON, *loaded]
    assert main(["generate", "a <toy> circle", "--negative", "neg-style, blurry", *base]) == 0
    image = np.asarray(Image.open(png))
    assert np.array_equal(image, _with_embeddings(folders, "a <toy> circle", "neg-style, blurry"))
    assert not np.array_equal(image, _generate(folders, tmp_path, "a <toy> circle"))  # without them
    # ComfyUI's embedding:name reads the file's name as its token
    assert main(["generate", "a circle, embedding:neg-style", "--syntax", "comfy", "--force", *base]) == 0
    image = np.asarray(Image.open(png))
    assert np.array_equal(image, _with_embeddings(folders, "a circle, embedding:neg-style", syntax="comfy"))


def test_an_embedding_that_cannot_load_is_one_error_line(folders, embedding_files, tmp_path, capsys) -> None:
    a1111, _ = embedding_files
    png = tmp_path / "x.png"
    argv = ["generate", "a cat", "-o", str(png), "--model", str(folders / "model"), *COMMON]
    assert main([*argv, "--embedding", f"cat={a1111}"]) == 2  # a word of the vocabulary already
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: --embedding cat={a1111}: cannot load the embedding: ")
    assert "cat" in errors[0] and not png.exists()


def test_a_comfy_embedding_name_is_a_token_some_tokenizer_of_the_model_holds() -> None:
    pipe = _Pipe({"syntax": "comfy"})
    check_prompt_against(pipe, "a (embedding:<toy>:1.2), cat", "embedding:<toy>", [], None)
    assert pipe.conditioner.checked == ["a (embedding:<toy>:1.2), cat", "embedding:<toy>"]
    with pytest.raises(UsageError) as refused:
        check_prompt_against(_Pipe({"syntax": "comfy"}), "a embedding:<toy> embedding:dog,", None, [], None)
    assert str(refused.value) == (
        "prompt: `embedding:dog` names no embedding this model holds: give it with --embedding (a file named "
        "dog.safetensors or dog.pt, or dog=SOURCE)"
    )
    check_prompt_against(_Pipe({}), "embedding:dog", None, [], None)  # text in A1111's syntax
