"""train-diffusion's frozen encoders read one function at a time (`training/diffusion/frozen_encoders.py`):
where a CLIP tower, a T5 and a tokenizer are looked for, the dtype and state they come back in,
transformers' verbosity put back, what tokenizer a tower gets (bundled, cleaned, as saved), and
each refusal whole. The damage cases are test_frozen_encoder_damage.py's; the references here
are the models and tokenizers saved by transformers itself."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import tiny_pipelines
import torch
from transformers import AutoTokenizer, CLIPTextModel
from transformers.utils import logging as transformers_logging

from clipcond.tokenization import CLIPTokenizerWithTextCleaning, clip_tokenizer
from clipcond.training.diffusion.frozen_encoders import (
    TOKENIZER_FILES,
    load_frozen_clip,
    load_frozen_t5,
    load_frozen_text_encoder,
    load_text_encoder_tokenizer,
    saved_tokenizer_folder,
)
from clipcond.training.loop import RunSetupError


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().float().clone() for key, value in module.state_dict().items()}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def _frozen(model: torch.nn.Module) -> bool:
    return not model.training and not any(parameter.requires_grad for parameter in model.parameters())


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> Path:
    """A tiny CLIP text tower saved by transformers, in float16, without a tokenizer."""
    folder = tmp_path_factory.mktemp("tower")
    tiny_pipelines.clip_text_model(4).to(torch.float16).save_pretrained(folder)
    return folder


# where things are looked for


@pytest.mark.parametrize("name", TOKENIZER_FILES)
def test_a_tokenizer_folder_is_one_holding_any_tokenizer_file(name, tmp_path) -> None:
    assert saved_tokenizer_folder(tmp_path) is None
    (tmp_path / name).write_text("{}")
    assert saved_tokenizer_folder(tmp_path) == tmp_path
    (tmp_path / "tokenizer").mkdir()
    assert saved_tokenizer_folder(tmp_path) == tmp_path  # an empty tokenizer/ is no tokenizer
    (tmp_path / "tokenizer" / name).write_text("{}")
    assert saved_tokenizer_folder(str(tmp_path)) == tmp_path / "tokenizer"  # tokenizer/ first


def test_a_pipelines_text_encoder_folder_finds_the_tokenizer_beside_it(tmp_path) -> None:
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.json").write_text("{}")
    assert saved_tokenizer_folder(tmp_path / "text_encoder") == tmp_path / "tokenizer"
    (tmp_path / "text_encoder" / "tokenizer.json").write_text("{}")
    assert saved_tokenizer_folder(tmp_path / "text_encoder") == tmp_path / "text_encoder"  # its own first
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert saved_tokenizer_folder(other) is None  # only a folder named text_encoder looks beside itself


def test_a_files_named_like_a_tokenizer_folder_is_not_one(tmp_path) -> None:
    (tmp_path / "tokenizer").write_text("a file")
    (tmp_path / "special_tokens_map.json").write_text("{}")
    assert saved_tokenizer_folder(tmp_path) is None


# the CLIP tower


def test_a_tower_is_read_in_float32_frozen_and_in_eval(tower) -> None:
    model = load_frozen_text_encoder(str(tower))
    assert type(model) is CLIPTextModel and _frozen(model)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    _assert_same_weights(model, CLIPTextModel.from_pretrained(tower, dtype=torch.float32))


def test_a_folders_text_encoder_is_read_before_the_folder(tower, tmp_path) -> None:
    tiny_pipelines.clip_text_model(9).save_pretrained(tmp_path)
    tiny_pipelines.clip_text_model(5).save_pretrained(tmp_path / "text_encoder")
    model = load_frozen_text_encoder(str(tmp_path))
    _assert_same_weights(model, tiny_pipelines.clip_text_model(5))


def test_a_tower_saved_with_its_projection_loads_without_a_word(tmp_path) -> None:
    projected = tiny_pipelines.clip_text_model(6, with_projection=True)
    projected.save_pretrained(tmp_path)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    library = logging.getLogger("transformers")  # transformers' own handler does not propagate
    library.addHandler(handler)
    transformers_logging.set_verbosity_warning()
    try:
        CLIPTextModel.from_pretrained(tmp_path)  # the reference: transformers reports the projection
        assert any("text_projection" in record.getMessage() for record in records)
        records.clear()
        model = load_frozen_text_encoder(str(tmp_path))
        assert transformers_logging.get_verbosity() == transformers_logging.WARNING  # put back
    finally:
        library.removeHandler(handler)
        transformers_logging.set_verbosity_warning()
    assert records == []
    assert type(model) is CLIPTextModel
    _assert_same_weights(model, projected.text_model)  # the projection left out


def test_transformers_verbosity_is_put_back_when_reading_fails(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    transformers_logging.set_verbosity_info()
    try:
        with pytest.raises(RunSetupError):
            load_frozen_text_encoder(str(tmp_path))
        assert transformers_logging.get_verbosity() == transformers_logging.INFO
    finally:
        transformers_logging.set_verbosity_warning()


def test_a_folder_without_a_tower_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        load_frozen_text_encoder(str(tmp_path))
    assert str(caught.value) == f"text_encoder: no text encoder at {tmp_path} (expected config.json or text_encoder/)"


def test_an_unreadable_tower_is_a_setup_error_naming_the_key_and_folder(tmp_path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(RunSetupError) as caught:
        load_frozen_text_encoder(str(tmp_path))
    assert str(caught.value).startswith(f"text_encoder {tmp_path}: ")


# the tower's tokenizer


def test_a_tower_without_a_tokenizer_gets_the_bundled_one_with_its_context(tmp_path) -> None:
    tiny_pipelines.clip_text_model(4, max_position_embeddings=33).save_pretrained(tmp_path)
    model, tokenizer = load_frozen_clip(str(tmp_path))
    assert isinstance(tokenizer, CLIPTokenizerWithTextCleaning) and tokenizer.model_max_length == 33
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer("A  Red&amp;circle").input_ids == clip_tokenizer()("a red&circle").input_ids
    assert _frozen(model) and model.config.max_position_embeddings == 33


def test_openais_vocabulary_saved_beside_a_tower_is_read_with_cleaning_and_its_pad(tmp_path) -> None:
    tiny_pipelines.clip_text_model(4).save_pretrained(tmp_path / "text_encoder")
    clip_tokenizer(pad_token="!", model_max_length=77).save_pretrained(tmp_path / "tokenizer")
    model, tokenizer = load_frozen_clip(str(tmp_path))
    assert isinstance(tokenizer, CLIPTokenizerWithTextCleaning)
    assert tokenizer.pad_token == "!" and tokenizer.model_max_length == 77
    # the tower's context when it is the shorter
    tiny_pipelines.clip_text_model(4, max_position_embeddings=20).save_pretrained(tmp_path / "short")
    clip_tokenizer(model_max_length=77).save_pretrained(tmp_path / "short")
    short = load_text_encoder_tokenizer(str(tmp_path / "short"), load_frozen_text_encoder(str(tmp_path / "short")))
    assert isinstance(short, CLIPTokenizerWithTextCleaning) and short.model_max_length == 20


def test_another_vocabulary_is_kept_as_saved(tmp_path) -> None:
    # a BPE of its own: the CLIP tokenizer with one token added is no longer OpenAI's vocabulary
    saved = clip_tokenizer()
    saved.add_tokens(["<cat-toy>"])
    saved.save_pretrained(tmp_path / "tokenizer")
    tiny_pipelines.clip_text_model(4, vocab_size=49409).save_pretrained(tmp_path / "text_encoder")
    _, tokenizer = load_frozen_clip(str(tmp_path))
    assert not isinstance(tokenizer, CLIPTokenizerWithTextCleaning)
    assert len(tokenizer) == 49409 and tokenizer.convert_tokens_to_ids("<cat-toy>") == 49408
    reference = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer("a <cat-toy> photo").input_ids == reference("a <cat-toy> photo").input_ids


def test_a_tokenizer_larger_than_the_towers_table_is_refused(tmp_path) -> None:
    tiny_pipelines.clip_text_model(4, vocab_size=1000).save_pretrained(tmp_path / "text_encoder")
    clip_tokenizer().save_pretrained(tmp_path / "tokenizer")
    encoder = load_frozen_text_encoder(str(tmp_path))
    with pytest.raises(RunSetupError) as caught:
        load_text_encoder_tokenizer(str(tmp_path), encoder)
    assert str(caught.value) == (
        f"text_encoder {tmp_path}: the tokenizer in {tmp_path / 'tokenizer'} has 49408 tokens, more than the "
        "1000 rows of the text encoder's embedding table (a tokenizer of another model?)"
    )


def test_a_tokenizer_exactly_the_tables_size_is_taken(tmp_path) -> None:
    tiny_pipelines.clip_text_model(4).save_pretrained(tmp_path / "text_encoder")
    clip_tokenizer().save_pretrained(tmp_path / "tokenizer")
    encoder = load_frozen_text_encoder(str(tmp_path))
    assert encoder.get_input_embeddings().num_embeddings == 49408
    assert len(load_text_encoder_tokenizer(str(tmp_path), encoder)) == 49408


def test_a_tokenizer_whose_merges_leave_entries_unmade_is_refused_after_the_load(tmp_path) -> None:
    """With no tokenizer_config.json its class is unknown, so the folder check leaves the tables
    to the check after the load (test_bpe_tables.py), which names the folder."""
    import json

    tiny_pipelines.clip_text_model(4, vocab_size=49409).save_pretrained(tmp_path / "text_encoder")
    folder = tmp_path / "tokenizer"
    clip_tokenizer().save_pretrained(folder)
    state = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    state["model"]["vocab"]["<0x0A>"] = len(state["model"]["vocab"])
    (folder / "tokenizer.json").write_text(json.dumps(state), encoding="utf-8")
    (folder / "tokenizer_config.json").unlink()
    encoder = load_frozen_text_encoder(str(tmp_path))
    with pytest.raises(RunSetupError) as caught:
        load_text_encoder_tokenizer(str(tmp_path), encoder)
    assert str(caught.value).startswith(
        f"text_encoder {folder}: the tokenizer of {folder} has 1 vocabulary entries that no merge rule makes ('<0x0A>')"
    )


@pytest.mark.parametrize("where", ["tower", "tokenizer", "t5"])
def test_a_damaged_folder_is_said_to_be_the_folder_with_damaged_files(where, tmp_path, t5_tokenizer_path) -> None:
    import shutil

    if where == "t5":
        tiny_pipelines.t5_encoder(0, vocab_size=400).save_pretrained(tmp_path / "text_encoder")
        shutil.copytree(t5_tokenizer_path, tmp_path / "tokenizer")
        damaged = tmp_path / "text_encoder" / "config.json"
    else:
        tiny_pipelines.clip_text_model(4).save_pretrained(tmp_path / "text_encoder")
        clip_tokenizer().save_pretrained(tmp_path / "tokenizer")
        damaged = tmp_path / ("text_encoder/config.json" if where == "tower" else "tokenizer/tokenizer_config.json")
    encoder = load_frozen_text_encoder(str(tmp_path)) if where == "tokenizer" else None
    damaged.write_text("")
    key, folder = ("t5_encoder", tmp_path) if where == "t5" else ("text_encoder", damaged.parent)
    with pytest.raises(RunSetupError) as caught:
        if where == "t5":
            load_frozen_t5(str(tmp_path))
        elif where == "tower":
            load_frozen_text_encoder(str(tmp_path))
        else:
            load_text_encoder_tokenizer(str(tmp_path), encoder)
    if where == "tower":
        folder = tmp_path
    assert str(caught.value) == (
        f"{key} {folder}: the folder has damaged files (cut short, or overwritten?): {damaged} is empty; "
        "nothing was loaded"
    )


def test_a_tokenizer_that_cannot_be_read_is_named_with_its_folder(tmp_path) -> None:
    tiny_pipelines.clip_text_model(4).save_pretrained(tmp_path / "text_encoder")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text("{broken")
    encoder = load_frozen_text_encoder(str(tmp_path))
    with pytest.raises(RunSetupError) as caught:
        load_text_encoder_tokenizer(str(tmp_path), encoder)
    assert str(caught.value).startswith(f"text_encoder {tmp_path / 'tokenizer'}: ")


def test_a_checked_folder_is_not_checked_again(tmp_path, monkeypatch) -> None:
    import clipcond.training.diffusion.frozen_encoders as frozen_encoders

    tiny_pipelines.clip_text_model(4).save_pretrained(tmp_path)
    clip_tokenizer().save_pretrained(tmp_path)  # model and tokenizer in one folder
    checked: list[Path] = []  # (the folder is whole: the check itself is test_frozen_encoder_damage.py's)
    monkeypatch.setattr(frozen_encoders, "refuse_damaged_folder", lambda what, folder, parts: checked.append(folder))
    load_frozen_clip(str(tmp_path))
    assert checked == [tmp_path]
    checked.clear()
    encoder = load_frozen_text_encoder(str(tmp_path))
    load_text_encoder_tokenizer(str(tmp_path), encoder)
    assert checked == [tmp_path, tmp_path]  # without `checked`, the tokenizer's folder is checked


# the T5


@pytest.fixture(scope="module")
def t5_parts(t5_tokenizer_path):
    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    return tokenizer, tiny_pipelines.t5_encoder(2, len(tokenizer))


def test_a_t5_folder_holding_model_and_tokenizer(t5_parts, tmp_path) -> None:
    tokenizer, encoder = t5_parts
    encoder.to(torch.float16).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_frozen_t5(str(tmp_path))
    assert _frozen(model) and {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    _assert_same_weights(model, encoder)
    encoder.float()
    assert loaded("a red circle").input_ids == tokenizer("a red circle").input_ids


def test_a_t5_pipeline_layout_reads_text_encoder_and_tokenizer_subfolders(t5_parts, tmp_path) -> None:
    tokenizer, encoder = t5_parts
    encoder.save_pretrained(tmp_path / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    tiny_pipelines.t5_encoder(7, len(tokenizer)).save_pretrained(tmp_path / "decoy")  # not read
    model, loaded = load_frozen_t5(str(tmp_path))
    _assert_same_weights(model, encoder)
    assert loaded.get_vocab() == tokenizer.get_vocab()


def test_a_folder_without_a_t5_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        load_frozen_t5(str(tmp_path))
    assert str(caught.value) == f"t5_encoder: no T5 encoder at {tmp_path} (expected config.json or text_encoder/)"
    (tmp_path / "text_encoder").mkdir()  # a subfolder without a config is no T5 either
    with pytest.raises(FileNotFoundError):
        load_frozen_t5(str(tmp_path))


def test_an_unreadable_t5_is_a_setup_error_naming_the_key_and_folder(t5_parts, tmp_path) -> None:
    tokenizer, _ = t5_parts
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunSetupError) as caught:
        load_frozen_t5(str(tmp_path))
    assert str(caught.value).startswith(f"t5_encoder {tmp_path}: ")


def test_the_t5_folders_are_each_checked_once(t5_parts, tmp_path, monkeypatch) -> None:
    import clipcond.training.diffusion.frozen_encoders as frozen_encoders

    tokenizer, encoder = t5_parts
    encoder.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    checked: list[Path] = []
    monkeypatch.setattr(frozen_encoders, "refuse_damaged_folder", lambda what, folder, parts: checked.append(folder))
    load_frozen_t5(str(tmp_path))
    assert checked == [tmp_path]
    encoder.save_pretrained(tmp_path / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    checked.clear()
    load_frozen_t5(str(tmp_path))
    assert checked == [tmp_path / "tokenizer", tmp_path / "text_encoder"]
