"""A damaged pipeline folder is refused before any component loads, naming the damaged file
(pipelines/saved_folder_checks.py); diffusers' own loader, on the same folders, failed partway
with errors that named none (a bare TypeError, KeyError, JSONDecodeError, SafetensorError) or
loaded what it could read. Whole folders, other weights variants and a fast tokenizer's unused
vocab.json load as in diffusers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import diffusers.pipelines.pipeline_utils as pipeline_utils
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import SafetensorError
from tiny_pipelines import build_sd

from clipcond import CLIPConditionedPipeline
from clipcond.file_damage import _of_variant, damaged_files
from clipcond.pipelines.saved_folder_checks import check_model_index

COMPONENTS = CLIPConditionedPipeline._get_signature_keys(CLIPConditionedPipeline)[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "sd"
    CLIPConditionedPipeline.from_pipe(build_sd()).save_pretrained(folder)
    return folder


def _index(folder: Path, edit) -> None:
    path = folder / "model_index.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _cut(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def _cut_merges_mid_line(tokenizer: Path, line: int = 100) -> None:
    """`merges.txt` ending within merge rule `line` (its first half only; the `#version` header
    is line 0, as tokenizers counts), with the `tokenizer.json` that would be read instead
    removed."""
    (tokenizer / "tokenizer.json").unlink(missing_ok=True)
    lines = (tokenizer / "merges.txt").read_text(encoding="utf-8").split("\n")
    (tokenizer / "merges.txt").write_text("\n".join(lines[:line]) + "\n" + lines[line].split(" ")[0], encoding="utf-8")


# damage -> (what it does to the folder, our message after the folder's path, diffusers' error)
DAMAGES = {
    "index_list": (
        lambda folder: _index(folder, lambda index: list(index.items())),
        r"/model_index\.json holds a JSON list, where a pipeline's index is an object of component -> \[library, "
        r"class\] \(a damaged file\?\): nothing was loaded$",
        TypeError,
    ),
    "index_without_class": (
        lambda folder: _index(folder, lambda index: {k: v for k, v in index.items() if k != "_class_name"}),
        r"/model_index\.json names no pipeline class \(`_class_name`: None; a damaged file\?\): nothing was loaded$",
        KeyError,
    ),
    "index_null_unet": (
        lambda folder: _index(folder, lambda index: {**index, "unet": None}),
        r"/model_index\.json records component `unet` as null, where diffusers writes \[library, class\]",
        TypeError,
    ),
    "index_three_parts": (
        lambda folder: _index(folder, lambda index: {**index, "vae": ["diffusers", "AutoencoderKL", "x"]}),
        r'/model_index\.json records component `vae` as \["diffusers", "AutoencoderKL", "x"\], where diffusers',
        ValueError,
    ),
    "text_encoder_weights_cut": (
        lambda folder: _cut(folder / "text_encoder" / "model.safetensors"),
        r" has damaged files \(cut short, or overwritten\?\): text_encoder/model\.safetensors cannot be read as "
        r"safetensors \(.*\); nothing was loaded$",
        SafetensorError,
    ),
    "tokenizer_json_cut": (
        lambda folder: _cut(folder / "tokenizer" / "tokenizer.json"),
        r" has damaged files .*: tokenizer/tokenizer\.json is no valid JSON \(Expecting value: line \d+, column \d+\);",
        json.JSONDecodeError,
    ),
    "merges_cut_mid_line": (
        lambda folder: _cut_merges_mid_line(folder / "tokenizer"),
        r" has damaged files .*: tokenizer/merges\.txt does not fit vocab\.json as BPE merges \(tokenizers: Error while "
        r"initializing BPE: Merges text file invalid at line 100\); nothing was loaded$",
        Exception,  # tokenizers' own, naming no file
    ),
    "vocab_json_removed": (
        lambda folder: [(folder / "tokenizer" / name).unlink() for name in ("tokenizer.json", "vocab.json")],
        r" has damaged files .*: tokenizer/vocab\.json is missing, and there is no tokenizer\.json \(a CLIPTokenizer "
        r"is built from tokenizer\.json, or from merges\.txt and vocab\.json: .*\); nothing was loaded$",
        ValueError,  # "`vocab` and `merges` must be both be from memory or both filenames"
    ),
    "unet_config_list": (
        lambda folder: (folder / "unet" / "config.json").write_text("[1, 2]"),
        r" has damaged files .*: unet/config\.json holds a JSON list, not an object; nothing was loaded$",
        OSError,  # "We couldn't connect to 'https://huggingface.co' ... [1, 2] is not the path to a directory"
    ),
    "scheduler_config_empty_and_vae_config_latin1": (
        lambda folder: (
            (folder / "scheduler" / "scheduler_config.json").write_text(" \n"),
            (folder / "vae" / "config.json").write_bytes(b'{"name": "caf\xe9"}'),
        ),
        r" has damaged files .*: scheduler/scheduler_config\.json is empty; vae/config\.json is no UTF-8 text; "
        r"nothing was loaded$",
        OSError,
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_folder_is_refused_naming_the_file_before_any_component_loads(
    tmp_path, saved, damage, monkeypatch
) -> None:
    folder = tmp_path / "damaged"
    shutil.copytree(saved, folder)
    apply, message, peers_error = DAMAGES[damage]
    apply(folder)
    with pytest.raises(peers_error):  # diffusers' own loader, on the same folder
        StableDiffusionPipeline.from_pretrained(folder)

    def loaded(*args, **kwargs):
        raise AssertionError("a component was loaded before the folder was checked")

    monkeypatch.setattr(pipeline_utils, "load_sub_model", loaded)
    start = re.escape(str(folder)) if damage.startswith("index") else rf"the pipeline saved at {re.escape(str(folder))}"
    with pytest.raises(ValueError, match=rf"^{start}{message}"):
        CLIPConditionedPipeline.from_pretrained(folder)


def test_a_folder_diffusers_saved_loads_with_its_images(tmp_path) -> None:
    """StableDiffusionPipeline's index names fewer components than ours (no `text_encoder_2`),
    and `[null, null]` for its safety checker: nothing to check there."""
    folder = tmp_path / "sd"
    build_sd().save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert "text_encoder_2" not in index and index["safety_checker"] == [None, None]
    kwargs = dict(prompt="a red circle", num_inference_steps=2, output_type="np")
    ours = CLIPConditionedPipeline.from_pretrained(folder)(generator=torch.Generator().manual_seed(0), **kwargs)
    peer = StableDiffusionPipeline.from_pretrained(folder)(generator=torch.Generator().manual_seed(0), **kwargs)
    assert np.array_equal(ours.images, peer.images)


def test_a_whole_folder_loads_with_diffusers_images(saved) -> None:
    kwargs = dict(prompt="a red circle", num_inference_steps=2, output_type="np")
    ours = CLIPConditionedPipeline.from_pretrained(saved)(generator=torch.Generator().manual_seed(0), **kwargs)
    peer = StableDiffusionPipeline.from_pretrained(saved)(generator=torch.Generator().manual_seed(0), **kwargs)
    assert np.array_equal(ours.images, peer.images)


def test_only_the_weights_the_load_reads_are_checked(tmp_path, saved) -> None:
    """A damaged fp16 variant does not stop the default load, and is refused for an fp16 one."""
    folder = tmp_path / "variants"
    shutil.copytree(saved, folder)
    unet = folder / "unet"
    shutil.copy(unet / "diffusion_pytorch_model.safetensors", unet / "diffusion_pytorch_model.fp16.safetensors")
    _cut(unet / "diffusion_pytorch_model.fp16.safetensors")
    CLIPConditionedPipeline.from_pretrained(folder)
    message = r"unet/diffusion_pytorch_model\.fp16\.safetensors cannot be read as safetensors"
    with pytest.raises(ValueError, match=message):
        CLIPConditionedPipeline.from_pretrained(folder, variant="fp16")


def test_use_safetensors_false_reads_the_bin_files_beside_damaged_safetensors(tmp_path, saved) -> None:
    folder = tmp_path / "both"
    pipe = CLIPConditionedPipeline.from_pretrained(saved)
    pipe.save_pretrained(folder, safe_serialization=False)
    torch.save(
        pipe.text_encoder.state_dict(), folder / "text_encoder" / "pytorch_model.bin"
    )  # transformers 5 writes none
    for weights in saved.glob("*/*.safetensors"):
        shutil.copy(weights, folder / weights.parent.name / weights.name)
    _cut(folder / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model\.safetensors cannot be read"):
        CLIPConditionedPipeline.from_pretrained(folder)
    CLIPConditionedPipeline.from_pretrained(folder, use_safetensors=False)


def test_a_sharded_weights_index_is_checked(tmp_path, saved) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(saved, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    build_sd().unet.save_pretrained(folder / "unet", max_shard_size="40KB")
    shards = sorted(path.name for path in (folder / "unet").glob("*.safetensors"))
    assert len(shards) > 1 and (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    CLIPConditionedPipeline.from_pretrained(folder)
    _cut(folder / "unet" / shards[-1])
    with pytest.raises(ValueError, match=rf"unet/{re.escape(shards[-1])} cannot be read as safetensors"):
        CLIPConditionedPipeline.from_pretrained(folder)
    _cut(folder / "unet" / "diffusion_pytorch_model.safetensors.index.json", 0.3)
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model\.safetensors\.index\.json is no valid JSON"):
        CLIPConditionedPipeline.from_pretrained(folder)


def test_a_fast_tokenizers_vocab_json_is_not_read_beside_its_tokenizer_json(tmp_path, saved) -> None:
    folder = tmp_path / "vocab"
    shutil.copytree(saved, folder)
    _cut(folder / "tokenizer" / "vocab.json")
    assert CLIPConditionedPipeline.from_pretrained(folder).tokenizer("a red circle").input_ids == (
        build_sd().tokenizer("a red circle").input_ids
    )
    (folder / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(
        ValueError, match=r"overwritten\?\): tokenizer/vocab\.json is no valid JSON \([^)]*\); nothing was loaded$"
    ):
        CLIPConditionedPipeline.from_pretrained(folder)  # merges.txt: not built against a damaged vocab.json


def test_a_clip_tokenizer_without_its_vocabulary_files_is_refused_where_diffusers_loaded_two_tokens(
    tmp_path, saved
) -> None:
    folder = tmp_path / "novocab"
    shutil.copytree(saved, folder)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (folder / "tokenizer" / name).unlink()
    peer = StableDiffusionPipeline.from_pretrained(folder)  # no error: every word is the unknown token
    assert len(peer.tokenizer) == 2 and set(peer.tokenizer("a red circle").input_ids[1:-1]) == {
        peer.tokenizer.unk_token_id
    }
    message = (
        r"overwritten\?\): tokenizer/merges\.txt is missing, and there is no tokenizer\.json \(.*\); "
        r"tokenizer/vocab\.json is missing, and there is no tokenizer\.json \(.*\); nothing was loaded$"
    )
    with pytest.raises(ValueError, match=message):
        CLIPConditionedPipeline.from_pretrained(folder)
    config = folder / "tokenizer" / "tokenizer_config.json"
    shutil.copy(saved / "tokenizer" / "merges.txt", folder / "tokenizer" / "merges.txt")
    for other in ("GPT2Tokenizer", "TokenizerOfRemoteCode"):  # classes not checked, one transformers lacks
        config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": other}))
        assert damaged_files(folder, ["tokenizer"], None, safetensors=True) == []


def test_a_t5_tokenizer_folder_without_its_vocabulary_is_refused_where_transformers_loaded_four_tokens(
    tmp_path,
) -> None:
    from transformers import AutoTokenizer, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0 - i) for i, c in enumerate("abcdeft\u2581")]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(tmp_path / "tokenizer_3")
    assert damaged_files(tmp_path, ["tokenizer_3"], None, safetensors=True) == []
    (tmp_path / "tokenizer_3" / "tokenizer.json").unlink()
    peer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer_3")  # no error
    assert len(peer) == 4 and set(peer.convert_ids_to_tokens(peer("a cat").input_ids[:-1])) == {"<unk>", "\u2581"}
    assert damaged_files(tmp_path, ["tokenizer_3"], None, safetensors=True) == [
        "tokenizer_3/spiece.model is missing, and there is no tokenizer.json (a T5Tokenizer is built from "
        "tokenizer.json, or from spiece.model: without them, transformers built a tokenizer of its special tokens "
        "alone that reads every word as unknown, or raised an error naming no file)"
    ]


def test_merges_that_load_are_passed_to_the_tables_check(tmp_path, saved) -> None:
    """A `merges.txt` cut at a line's end builds, and is refused by the check of the tables it
    makes with `vocab.json` (`clipcond.bpe_tables`); a whole one loads with the tokens of a fast
    tokenizer, and beside a `tokenizer.json` a damaged one is not read."""
    folder = tmp_path / "merges"
    shutil.copytree(saved, folder)
    whole = (folder / "tokenizer" / "merges.txt").read_text(encoding="utf-8")
    _cut_merges_mid_line(folder / "tokenizer")
    shutil.copy(saved / "tokenizer" / "tokenizer.json", folder / "tokenizer" / "tokenizer.json")
    assert damaged_files(folder, ["tokenizer"], None, safetensors=True) == []
    CLIPConditionedPipeline.from_pretrained(folder)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "merges.txt").write_text(whole, encoding="utf-8")
    assert damaged_files(folder, ["tokenizer"], None, safetensors=True) == []
    assert CLIPConditionedPipeline.from_pretrained(folder).tokenizer("a red circle").input_ids == (
        build_sd().tokenizer("a red circle").input_ids
    )
    lines = (folder / "tokenizer" / "merges.txt").read_text(encoding="utf-8").split("\n")
    (folder / "tokenizer" / "merges.txt").write_text("\n".join(lines[:100]) + "\n", encoding="utf-8")
    (found,) = damaged_files(folder, ["tokenizer"], None, safetensors=True)
    assert found.startswith(
        "tokenizer/merges.txt is cut short or damaged: the tokenizer built from it and vocab.json has "
    )
    with pytest.raises(ValueError, match=r"tokenizer/merges\.txt is cut short or damaged"):
        CLIPConditionedPipeline.from_pretrained(folder)


def test_a_downloaded_folder_is_checked_as_a_local_one(tmp_path, saved) -> None:
    """A hub id read offline from the cache: `download`'s snapshot is checked before loading."""
    commit = "0" * 40
    repository = tmp_path / "models--someone--tiny-sd"
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(commit)
    snapshot = repository / "snapshots" / commit
    shutil.copytree(saved, snapshot)
    lookup = {"cache_dir": str(tmp_path), "local_files_only": True}
    CLIPConditionedPipeline.from_pretrained("someone/tiny-sd", **lookup)
    _cut(snapshot / "text_encoder" / "model.safetensors")
    message = (
        rf"^the pipeline saved at {re.escape(str(snapshot))} has damaged files .*: text_encoder/model\.safetensors"
    )
    with pytest.raises(ValueError, match=message):
        CLIPConditionedPipeline.from_pretrained("someone/tiny-sd", **lookup)


@pytest.mark.parametrize(
    "name, variant, read",
    [
        ("model.safetensors", None, True),
        ("model-00001-of-00002.safetensors", None, True),
        ("model.fp16.safetensors", None, False),
        ("model.fp16.safetensors", "fp16", True),
        ("model.fp16-00001-of-00002.safetensors", "fp16", True),
        ("model.safetensors", "fp16", False),
        ("model.bf16.safetensors", "fp16", False),
        ("model.safetensors.index.json", None, True),
        ("model.safetensors.index.json", "fp16", False),
    ],
)
def test_which_weights_files_a_variant_reads(name, variant, read) -> None:
    assert _of_variant(Path(name), variant) is read


def test_a_component_saved_as_none_and_settings_pass_the_index_check() -> None:
    index = {"_class_name": "X", "unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": [None, None]}
    check_model_index({**index, "recipe": "sd", "clip_skip": None, "other": 3}, COMPONENTS, "here")
    message = (
        r'^here records component `safety_checker` as \[null, "x"\], where diffusers writes \[library, class\] \(two '
        r"strings, or \[null, null\] for a component saved as None; a damaged file\?\): nothing was loaded$"
    )
    with pytest.raises(ValueError, match=message):
        check_model_index({**index, "safety_checker": [None, "x"]}, COMPONENTS, "here")
    with pytest.raises(ValueError, match=r"^here names no pipeline class \(`_class_name`: 3;"):
        check_model_index({**index, "_class_name": 3}, COMPONENTS, "here")


def test_damaged_files_reads_past_a_missing_folder_and_a_fast_tokenizers_vocab(tmp_path, saved) -> None:
    folder = tmp_path / "parts"
    shutil.copytree(saved, folder)
    _cut(folder / "tokenizer" / "vocab.json")
    (folder / "tokenizer" / "tokenizer_config.json").write_text("")
    _cut(folder / "unet" / "config.json")
    found = damaged_files(folder, ["missing", "tokenizer", "unet"], None, safetensors=True)
    assert [entry.split(" ")[0] for entry in found] == ["tokenizer/tokenizer_config.json", "unet/config.json"]


def test_a_variant_load_reads_no_index_of_the_default_weights(tmp_path, saved) -> None:
    """diffusers names a variant's index `<weights>.safetensors.index.fp16.json`; the default
    weights' `.index.json` is not read by an fp16 load."""
    folder = tmp_path / "index"
    shutil.copytree(saved, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text("{")
    assert damaged_files(folder, ["unet"], "fp16", safetensors=True) == []
    assert damaged_files(folder, ["unet"], None, safetensors=True) == [
        "unet/diffusion_pytorch_model.safetensors.index.json is no valid JSON (Expecting property name enclosed in "
        "double quotes: line 1, column 2)"
    ]
