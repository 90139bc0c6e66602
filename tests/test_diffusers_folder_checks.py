"""A diffusers pipeline folder that `clipcond generate --model` (`load_pipeline`) or `clipcond
encode --pipeline` reads is checked as a saved CLIPConditionedPipeline's is
(`saved_folder_checks.check_pipeline_folder`, with the components of the pipeline class its
`model_index.json` names: `index_components`). diffusers' own loader, which these routes called
directly, loaded a tokenizer folder without its vocabulary files as a tokenizer of two tokens,
or merges.txt cut at a line's end as a tokenizer that splits words, with no error, and failed on
a cut file naming none."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import diffusers
import diffusers.pipelines.pipeline_utils as pipeline_utils
import pytest

from clipcond.pipelines.saved_folder_checks import index_components, saved_class_name
from clipcond.pipelines.saved_pipelines import load_pipeline


@pytest.fixture
def diffusers_folder(diffusers_sd_folder) -> Path:
    """conftest's tiny StableDiffusionPipeline folder, saved by diffusers (read only)."""
    return diffusers_sd_folder


def _vocabulary_removed(folder: Path) -> str:
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (folder / "tokenizer" / name).unlink()
    return "tokenizer/merges.txt is missing, and there is no tokenizer.json"


def _unet_weights_cut(folder: Path) -> str:
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "unet/diffusion_pytorch_model.safetensors cannot be read as safetensors"


def _tokenizer_json_cut(folder: Path) -> str:
    path = folder / "tokenizer" / "tokenizer.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "tokenizer/tokenizer.json is no valid JSON"


def _hub_layout_merges_cut(folder: Path) -> str:
    """The tokenizer as the hub's SD 1.5 folder holds it (vocab.json and merges.txt, no
    tokenizer.json), its merges.txt cut at a line's end after 1,000 rules."""
    tokenizer = folder / "tokenizer"
    (tokenizer / "tokenizer.json").unlink()
    lines = (tokenizer / "merges.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (tokenizer / "merges.txt").write_text("".join(lines[:1001]), encoding="utf-8")  # line 0: the #version header
    return "tokenizer/merges.txt is cut short or damaged: the tokenizer built from it and vocab.json has 47894"


DAMAGES = {
    "tokenizer vocabulary missing": _vocabulary_removed,
    "unet weights cut": _unet_weights_cut,
    "tokenizer.json cut": _tokenizer_json_cut,
    "hub-layout merges.txt cut at a line's end": _hub_layout_merges_cut,
}


def _damaged_copy(diffusers_folder: Path, tmp_path: Path, damage: str) -> tuple[Path, str]:
    folder = Path(shutil.copytree(diffusers_folder, tmp_path / "damaged"))
    return folder, DAMAGES[damage](folder)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_load_pipeline_refuses_a_damaged_diffusers_folder_before_any_component_loads(
    diffusers_folder, tmp_path, monkeypatch, damage
) -> None:
    folder, problem = _damaged_copy(diffusers_folder, tmp_path, damage)

    def loaded(*args, **kwargs):
        raise AssertionError("a component was loaded before the folder was checked")

    monkeypatch.setattr(pipeline_utils, "load_sub_model", loaded)
    expected = rf"^the pipeline saved at {re.escape(str(folder))} has damaged files .*{re.escape(problem)}"
    with pytest.raises(ValueError, match=expected):
        load_pipeline(folder)


def test_diffusers_alone_loads_the_folder_without_vocabulary_as_two_tokens(diffusers_folder, tmp_path) -> None:
    """The peer's behaviour that the check stands against (no error, every word unknown)."""
    folder, _ = _damaged_copy(diffusers_folder, tmp_path, "tokenizer vocabulary missing")
    tokenizer = diffusers.StableDiffusionPipeline.from_pretrained(folder).tokenizer
    assert len(tokenizer) == 2
    assert set(tokenizer("a red circle").input_ids[1:-1]) == {tokenizer.unk_token_id}


def test_diffusers_alone_loads_merges_cut_at_a_line_end_splitting_words(diffusers_folder, tmp_path) -> None:
    """The peer's behaviour on the hub's tokenizer layout: no error, and words read in pieces the
    text encoder was not trained on. Before 2026-12-02 `generate --model`, `encode --pipeline`
    and the lab loaded such a folder through diffusers as it is."""
    folder, _ = _damaged_copy(diffusers_folder, tmp_path, "hub-layout merges.txt cut at a line's end")
    cut = diffusers.StableDiffusionPipeline.from_pretrained(folder).tokenizer
    whole = diffusers.StableDiffusionPipeline.from_pretrained(diffusers_folder).tokenizer
    assert len(whole("photograph").input_ids) == 3 and len(cut("photograph").input_ids) > 3


@pytest.mark.parametrize(
    "damage", ["tokenizer vocabulary missing", "unet weights cut", "hub-layout merges.txt cut at a line's end"]
)
def test_encode_pipeline_names_the_damaged_file_of_a_diffusers_folder_in_one_line(
    diffusers_folder, tmp_path, capsys, damage
) -> None:
    from clipcond.cli import main

    folder, problem = _damaged_copy(diffusers_folder, tmp_path, damage)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    argv = ["encode", "--pipeline", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    assert main([*argv, "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith(f"error: --pipeline {folder}: the pipeline saved at {folder} has damaged files")
    assert problem in error[-1] and not any("Traceback" in line for line in error)
    assert not (tmp_path / "o").exists()


def test_index_components_are_the_named_classes_or_the_list_entries() -> None:
    sd = diffusers.StableDiffusionPipeline
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    assert index_components(index) == sorted(sd._get_signature_keys(sd)[0])
    assert "safety_checker" in index_components(index) and "requires_safety_checker" not in index_components(index)
    community = {"_class_name": "MyPipeline", "_diffusers_version": "0.1", "_x": ["a", "b"], "unet": ["x", "Y"], "f": 1}
    assert index_components(community) == ["unet"]
    assert index_components({"_class_name": 5, "unet": ["x", "Y"]}) == ["unet"]  # no name: no class looked up
    assert index_components({"_class_name": "ConfigMixin", "unet": ["x", "Y"]}) == ["unet"]  # no pipeline class
    assert index_components(json.loads("[1, 2]")) == []


# model_index.json damage -> what `clipcond generate` says after the file's path
INDEX_DAMAGES = {
    "a JSON list": (b"[1, 2]", " holds a JSON list, where a pipeline's index is an object"),
    "cut short": (b'{"_class_name": "StableDiffusionPipeline", ', " is no valid JSON (Expecting property name"),
    "latin-1": (b'{"_class_name": "caf\xe9"}', " is no UTF-8 text"),
}


@pytest.mark.parametrize("damage", list(INDEX_DAMAGES))
def test_generate_names_a_damaged_model_index_in_one_line(diffusers_folder, tmp_path, capsys, damage) -> None:
    """Before, an index holding a list was an AttributeError traceback, and one cut short
    json's error, naming no file."""
    from clipcond.cli import main

    folder = Path(shutil.copytree(diffusers_folder, tmp_path / "damaged"))
    content, said = INDEX_DAMAGES[damage]
    (folder / "model_index.json").write_bytes(content)
    output = tmp_path / "out.png"
    assert main(["generate", "a red circle", "--model", str(folder), "-o", str(output), "--steps", "1"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in error)
    assert error[-1].startswith(f"error: --model {folder}: ") and f"{folder / 'model_index.json'}{said}" in error[-1]
    assert not output.exists()


def test_saved_class_name_reads_the_index_or_says_none(tmp_path) -> None:
    assert saved_class_name(tmp_path) is None  # no index
    index = tmp_path / "model_index.json"
    for content, named in [
        (
            {"_class_name": "CLIPConditionedPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
            "CLIPConditionedPipeline",
        ),
        ({"unet": ["diffusers", "UNet2DConditionModel"]}, None),
        ({"_class_name": ["StableDiffusionPipeline"]}, None),
        (["_class_name", "StableDiffusionPipeline"], None),
    ]:
        index.write_text(json.dumps(content))
        assert saved_class_name(tmp_path) == named, content
    index.write_text('{"_class_name": ')
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(index))} is no valid JSON \(Expecting value: line 1, column 17; a damaged file\?\): nothing was loaded$",
    ):
        saved_class_name(tmp_path)
    index.write_bytes(b'{"_class_name": "caf\xe9"}')
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(index))} is no UTF-8 text \(a damaged file\?\): nothing was loaded$"
    ):
        saved_class_name(tmp_path)
