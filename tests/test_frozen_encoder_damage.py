"""train-diffusion's frozen encoders refuse a damaged folder before they load anything, in a
`RunSetupError` that names the config key, the folder and the damaged file
(`clipcond.file_damage`). Before, a CLIP tower's tokenizer folder that had lost its vocabulary
files loaded (transformers built a tokenizer of its two special tokens, with no error) and the
run trained on captions that all read as unknown; a cut weights file or tokenizer.json failed
naming the folder but not the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tiny_pipelines
from test_train_diffusion import tiny_config

from clipcond.tokenization import clip_tokenizer
from clipcond.training.diffusion.setup import build_conditioner
from clipcond.training.loop import RunSetupError


def _cut_in_half(path: Path) -> None:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def _no_loads(monkeypatch) -> list[str]:
    """Record every transformers model or tokenizer load from here on."""
    import transformers

    loads: list[str] = []
    for cls in (transformers.CLIPTextModel, transformers.T5EncoderModel, transformers.AutoTokenizer):
        original = cls.from_pretrained

        def recording(*args, _original=original, _name=cls.__name__, **kwargs):
            loads.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", recording)
    return loads


def _vocabulary_removed(model: Path, tokenizer: Path) -> Path:
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (tokenizer / name).unlink()
    return tokenizer / "vocab.json"


def _tokenizer_json_cut(model: Path, tokenizer: Path) -> Path:
    _cut_in_half(tokenizer / "tokenizer.json")
    return tokenizer / "tokenizer.json"


def _weights_cut(model: Path, tokenizer: Path) -> Path:
    _cut_in_half(model / "model.safetensors")
    return model / "model.safetensors"


def _config_emptied(model: Path, tokenizer: Path) -> Path:
    (model / "config.json").write_text("")
    return model / "config.json"


# layout -> (where the model and the tokenizer are saved, below the folder the config names)
LAYOUTS = {"one folder": ("", ""), "pipeline folder": ("text_encoder", "tokenizer")}
# damage -> (what it does to (model folder, tokenizer folder), returning the file it damaged; the
# problem `clipcond.file_damage` names)
DAMAGES = {
    "tokenizer vocabulary missing": (_vocabulary_removed, "is missing, and there is no tokenizer.json"),
    "tokenizer.json cut": (_tokenizer_json_cut, "is no valid JSON"),
    "weights cut": (_weights_cut, "cannot be read as safetensors"),
    "config emptied": (_config_emptied, "is empty"),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_clip_tower_folder_is_a_setup_error_naming_the_file(tmp_path, monkeypatch, layout, damage) -> None:
    root = tmp_path / "tower"
    model, tokenizer = (root / layout[0], root / layout[1])
    tiny_pipelines.clip_text_model(3).save_pretrained(model)
    clip_tokenizer().save_pretrained(tokenizer)
    harm, problem = damage
    named = harm(model, tokenizer)
    config = tiny_config(root, tmp_path / "run")
    loads = _no_loads(monkeypatch)
    with pytest.raises(RunSetupError, match=re.escape(f"{named} {problem}")) as raised:
        build_conditioner(config)
    message = str(raised.value)
    assert message.startswith("text_encoder ") and str(named.parent) in message and "\n" not in message
    if named.parent == model:  # the tower's own folder is read first: nothing loaded at all
        assert loads == []
    else:  # the tokenizer's, after the tower: no tokenizer loaded
        assert "AutoTokenizer" not in loads
    assert not (tmp_path / "run").exists()


# damage -> (what it does to the file, the file named, what is said of it)
T5_DAMAGES = {
    "weights cut": (_cut_in_half, "text_encoder/model.safetensors", "cannot be read as safetensors"),
    "tokenizer.json cut": (_cut_in_half, "tokenizer/tokenizer.json", "is no valid JSON"),
    # a tokenizer saved from a `tokenizers` object (a TokenizersBackend) is built from tokenizer.json or
    # tokenizer.model; without both, transformers' error advised installing sentencepiece
    "tokenizer.json removed": (Path.unlink, "tokenizer/tokenizer.model", "is missing, and there is no tokenizer.json"),
}


@pytest.mark.parametrize("damage", T5_DAMAGES.values(), ids=T5_DAMAGES.keys())
def test_a_damaged_t5_folder_is_a_setup_error_naming_the_file(tmp_path, monkeypatch, t5_tokenizer_path, damage):
    import shutil

    from clipcond.training.diffusion.frozen_encoders import load_frozen_t5

    root = tmp_path / "t5"
    tiny_pipelines.t5_encoder(0, vocab_size=400).save_pretrained(root / "text_encoder")
    shutil.copytree(t5_tokenizer_path, root / "tokenizer")
    load_frozen_t5(str(root))  # whole, it loads
    harm, named, problem = damage
    harm(root / ("tokenizer/tokenizer.json" if harm is Path.unlink else named))
    loads = _no_loads(monkeypatch)
    expected = rf"^t5_encoder {re.escape(str(root))}: .*{re.escape(f'{root / named} {problem}')}"
    with pytest.raises(RunSetupError, match=expected):
        load_frozen_t5(str(root))
    assert loads == []


@pytest.mark.parametrize("saved_as", ["TokenizersBackend", "PreTrainedTokenizerFast"])
def test_a_tokenizers_backed_folder_without_its_files_is_named_as_either_transformers_saves_it(
    tmp_path, t5_tokenizer_path, saved_as
) -> None:
    """transformers 5 records a tokenizer saved from a `tokenizers` object as TokenizersBackend,
    transformers 4 as PreTrainedTokenizerFast: both are built from tokenizer.json or tokenizer.model."""
    import json
    import shutil

    from clipcond.file_damage import damaged_files

    folder = Path(shutil.copytree(t5_tokenizer_path, tmp_path / "tokenizer"))
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": saved_as}))
    assert damaged_files(tmp_path, ["tokenizer"], None, safetensors=True) == []
    (folder / "tokenizer.json").unlink()
    (found,) = damaged_files(tmp_path, ["tokenizer"], None, safetensors=True)
    assert found.startswith(f"tokenizer/tokenizer.model is missing, and there is no tokenizer.json (a {saved_as} ")
    (folder / "tokenizer.model").write_bytes(b"a sentencepiece model")  # present: transformers reads it
    assert damaged_files(tmp_path, ["tokenizer"], None, safetensors=True) == []


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_each_folder_of_the_tower_and_its_tokenizer_is_checked_once(tmp_path, monkeypatch, layout) -> None:
    """A folder that holds both the tower and its tokenizer is checked once (it was twice, once by
    each loader); a pipeline folder's text_encoder/ and tokenizer/ once each."""
    from clipcond.training.diffusion import frozen_encoders

    root = tmp_path / "tower"
    model, tokenizer = (root / layout[0], root / layout[1])
    tiny_pipelines.clip_text_model(3).save_pretrained(model)
    clip_tokenizer().save_pretrained(tokenizer)
    checked: list[Path] = []
    original = frozen_encoders.refuse_damaged_folder

    def recording(what, folder, subfolders):
        checked.append(Path(folder))
        return original(what, folder, subfolders)

    monkeypatch.setattr(frozen_encoders, "refuse_damaged_folder", recording)
    encoder, loaded = frozen_encoders.load_frozen_clip(str(root))
    assert checked == list(dict.fromkeys([model, tokenizer]))
    assert loaded("a red circle").input_ids == clip_tokenizer()("a red circle").input_ids
