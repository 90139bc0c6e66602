"""Loading the encoders a conditioner YAML names: a ``clipcond train-t5`` model folder
(``text_encoder/`` + ``tokenizer/``) as ``t5: {path: <output_dir>/model}``; a local folder with
a damaged JSON or safetensors file refused before anything loads, naming the file (transformers'
own errors named none for a safetensors file or a ``vocab.json`` cut short)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

from clipcond import TextConditioner
from clipcond.conditioner_config import ConditionerConfig, EncoderSource
from clipcond.encoder_loading import load_clip_encoder, load_t5_encoder

PROMPTS = ["a red circle above a blue square", "two green triangles"]


def _train_t5_model_folder(folder: Path, t5_tokenizer_path: Path) -> Path:
    """What train-t5 saves to ``<output_dir>/model``, with its own writer (`save_t5_encoder`)."""
    from transformers import AutoTokenizer

    from clipcond.training.t5.config import T5ModelSettings
    from clipcond.training.t5.model import build_t5, save_t5_encoder

    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    torch.manual_seed(0)
    settings = T5ModelSettings(d_model=24, d_ff=32, d_kv=8, num_layers=1, num_heads=3, relative_attention_num_buckets=8)
    return save_t5_encoder(build_t5(settings, len(tokenizer)), tokenizer, folder)


def test_a_train_t5_model_folder_loads_as_transformers_loads_its_subfolders(tmp_path, t5_tokenizer_path) -> None:
    # probe12_train #8: `t5: {path: runs/t5/model}` failed with transformers' OSError (no model.safetensors)
    from transformers import AutoTokenizer, T5EncoderModel

    folder = _train_t5_model_folder(tmp_path / "model", t5_tokenizer_path)
    model, tokenizer = load_t5_encoder(EncoderSource(path=str(folder)))
    peer_model = T5EncoderModel.from_pretrained(folder / "text_encoder").eval()
    peer_tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    ids = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    peer_ids = peer_tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert torch.equal(ids.input_ids, peer_ids.input_ids) and torch.equal(ids.attention_mask, peer_ids.attention_mask)
    with torch.no_grad():
        states = model(**ids).last_hidden_state
        expected = peer_model(**peer_ids).last_hidden_state
    assert not model.training and torch.equal(states, expected)


def test_a_conditioner_yaml_takes_a_train_t5_model_folder(tmp_path, t5_tokenizer_path, tiny_clip_text_path) -> None:
    folder = _train_t5_model_folder(tmp_path / "model", t5_tokenizer_path)
    path = tmp_path / "conditioner.yaml"
    config = {
        "recipe": "custom",
        "clip": [{"path": str(tiny_clip_text_path)}],
        "t5": {"path": str(folder)},
        "combine": "concat_sequence",
        "t5_max_sequence_length": 20,
        "projection_dim": 16,
    }
    path.write_text(yaml.safe_dump(config))
    embeds = TextConditioner.from_config(path).encode(PROMPTS)
    assert embeds.tokens.shape == (2, 77 + 20, 16) and torch.isfinite(embeds.tokens).all()


# ---------------------------------------------------------------- damaged files


def _cut(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    from tiny_pipelines import build_sd

    folder = tmp_path_factory.mktemp("saved") / "sd"
    build_sd().save_pretrained(folder)
    return folder


# damage -> (the file cut short, the error transformers gave: no file named in the first two)
DAMAGES = {
    "text_encoder/model.safetensors": ("cannot be read as safetensors", SafetensorError),
    "tokenizer/vocab.json": ("is no valid JSON", Exception),  # tokenizers' own, without tokenizer.json
    "tokenizer/merges.txt": ("does not fit vocab.json as BPE merges", Exception),  # cut in a rule: tokenizers'
    "text_encoder/config.json": ("is no valid JSON", OSError),
}


@pytest.mark.parametrize("damaged", list(DAMAGES))
def test_a_conditioner_source_with_a_damaged_file_is_refused_naming_it(tmp_path, sd_folder, damaged) -> None:
    import shutil

    from transformers import AutoTokenizer, CLIPTextModel

    folder = tmp_path / "damaged"
    shutil.copytree(sd_folder, folder)
    (folder / "tokenizer" / "tokenizer.json").unlink()  # the slow files are read without it
    _cut(folder / damaged)
    problem, peers_error = DAMAGES[damaged]
    with pytest.raises(peers_error):  # transformers, on the same folder
        CLIPTextModel.from_pretrained(folder / "text_encoder")
        AutoTokenizer.from_pretrained(folder / "tokenizer")
    source = EncoderSource(path=str(folder), subfolder="text_encoder")  # the tokenizer: tokenizer/ beside it
    message = (
        rf"^the clip encoder at {re.escape(repr(str(folder)))} has damaged files \(cut short, or overwritten\?\): "
        rf"{re.escape(str(folder / damaged))} {problem}"
    )
    with pytest.raises(ValueError, match=message):
        load_clip_encoder(source)
    with pytest.raises(ValueError, match=message):
        TextConditioner.from_config(ConditionerConfig(recipe="sd", clip=[source], cache_size=0))


def test_a_damaged_tokenizer_named_apart_and_a_t5_folder_are_checked(tmp_path, sd_folder, t5_tokenizer_path) -> None:
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(sd_folder, folder)
    _cut(folder / "tokenizer" / "tokenizer_config.json")
    source = EncoderSource(path=str(folder / "text_encoder"), tokenizer=str(folder / "tokenizer"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'tokenizer' / 'tokenizer_config.json'))} is no"):
        load_clip_encoder(source)
    load_clip_encoder(EncoderSource(path=str(folder / "text_encoder"), tokenizer="builtin-clip"))  # not read
    t5 = _train_t5_model_folder(tmp_path / "t5", t5_tokenizer_path)
    _cut(t5 / "text_encoder" / "model.safetensors")
    with pytest.raises(ValueError, match=r"^the t5 encoder at .*/text_encoder/model\.safetensors cannot be read"):
        load_t5_encoder(EncoderSource(path=str(t5)))


def test_a_clip_tokenizer_folder_without_its_vocabulary_is_refused_naming_the_files(tmp_path, sd_folder) -> None:
    """transformers built a two-token tokenizer from such a folder, with no error."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "novocab"
    shutil.copytree(sd_folder, folder)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (folder / "tokenizer" / name).unlink()
    assert len(AutoTokenizer.from_pretrained(folder / "tokenizer")) == 2
    message = (
        rf"{re.escape(str(folder / 'tokenizer' / 'merges.txt'))} is missing, and there is no tokenizer\.json .*; "
        rf"{re.escape(str(folder / 'tokenizer' / 'vocab.json'))} is missing"
    )
    with pytest.raises(ValueError, match=message):
        load_clip_encoder(EncoderSource(path=str(folder), subfolder="text_encoder"))
