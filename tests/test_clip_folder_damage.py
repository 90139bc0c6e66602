"""A CLIP folder with a damaged file is refused before anything loads, naming the file by its
whole path: `load_clip` and `load_text_tower` (a `save_clip` folder) and the lab's
`load_clip_scorer` (that folder, or a transformers `CLIPModel` folder). Before, a safetensors
file cut short failed with safetensors' `incomplete metadata, file not fully covered`, a cut
`tokenizer.json` with a bare `JSONDecodeError`, neither naming a file; and a transformers folder
whose tokenizer had lost its vocabulary files scored every prompt with a tokenizer of two
special tokens, with no error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """The clip-tiny-vit CLIP saved both ways: by `save_clip` ("clipcond") and as a transformers
    `CLIPModel` folder with the CLIP tokenizer beside it ("transformers")."""
    from clipcond.models import ClipTwoTower, build_clip_model, load_model_config, save_clip
    from clipcond.tokenization import clip_tokenizer

    root = tmp_path_factory.mktemp("clip_folders")
    config = load_model_config(REPO / "configs/models/clip-tiny-vit.yaml")
    torch.manual_seed(0)
    ours = save_clip(ClipTwoTower(config), root / "clipcond")
    theirs = root / "transformers"
    build_clip_model(config).save_pretrained(theirs)
    clip_tokenizer().save_pretrained(theirs)
    return {"clipcond": ours, "transformers": theirs}


def _cut_in_half(path: Path) -> None:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def _copy(saved: dict[str, Path], layout: str, tmp_path: Path) -> Path:
    return shutil.copytree(saved[layout], tmp_path / layout)


def _loads_nothing(monkeypatch) -> list[str]:
    """Record every weights read and model load from here on (none may happen)."""
    import safetensors.torch
    import transformers

    import clipcond.models.checkpoint as checkpoint

    reads: list[str] = []

    def recording(name, original):
        def wrapper(*args, **kwargs):
            reads.append(name)
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(checkpoint, "load_file", recording("load_file", checkpoint.load_file))
    monkeypatch.setattr(safetensors.torch, "load_file", recording("load_file", safetensors.torch.load_file))
    for cls in (transformers.CLIPModel, transformers.CLIPTextModelWithProjection):
        monkeypatch.setattr(cls, "from_pretrained", recording(cls.__name__, cls.from_pretrained))
    return reads


# (layout, the file damaged, the damage, its problem as `clipcond.file_damage` words it)
CASES = {
    "text weights cut": ("clipcond", "text_encoder/model.safetensors", _cut_in_half, "cannot be read as safetensors"),
    "image weights cut": ("clipcond", "image_encoder/model.safetensors", _cut_in_half, "cannot be read as safetensors"),
    "logit scale empty": (
        "clipcond",
        "logit_scale.safetensors",
        lambda path: path.write_bytes(b""),
        "cannot be read as safetensors",
    ),
    "text config cut": ("clipcond", "text_encoder/config.json", _cut_in_half, "is no valid JSON"),
    "weights cut": ("transformers", "model.safetensors", _cut_in_half, "cannot be read as safetensors"),
    "tokenizer.json cut": ("transformers", "tokenizer.json", _cut_in_half, "is no valid JSON"),
    "config empty": ("transformers", "config.json", lambda path: path.write_text(""), "is empty"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_clip_score_loader_names_the_damaged_file_and_loads_nothing(saved, tmp_path, monkeypatch, case):
    from clipcond.lab.metrics import load_clip_scorer

    layout, name, damage, problem = case
    folder = _copy(saved, layout, tmp_path)
    damage(folder / name)
    reads = _loads_nothing(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(f"{folder / name} {problem}")) as raised:
        load_clip_scorer(folder)
    assert str(raised.value).endswith("nothing was loaded") and str(folder) in str(raised.value)
    assert reads == []


@pytest.mark.parametrize("name", ["text weights cut", "image weights cut", "logit scale empty"])
def test_load_clip_names_the_damaged_file_and_loads_nothing(saved, tmp_path, monkeypatch, name):
    from clipcond.models import load_clip

    _, file, damage, problem = CASES[name]
    folder = _copy(saved, "clipcond", tmp_path)
    damage(folder / file)
    reads = _loads_nothing(monkeypatch)
    with pytest.raises(ValueError, match=rf"^the CLIP saved at {re.escape(str(folder))} has damaged files"):
        load_clip(folder)
    assert reads == []
    with pytest.raises(ValueError, match=re.escape(f"{folder / file} {problem}")):
        load_clip(folder)


@pytest.mark.parametrize("file", ["model.safetensors", "config.json"])
def test_load_text_tower_names_the_damaged_file_and_loads_nothing(saved, tmp_path, monkeypatch, file):
    from clipcond.models import load_text_tower

    folder = _copy(saved, "clipcond", tmp_path)
    text = folder / "text_encoder"
    _cut_in_half(text / file)
    reads = _loads_nothing(monkeypatch)
    for path in (folder, text):  # the save_clip folder, or its text_encoder/ itself
        with pytest.raises(
            ValueError, match=rf"^the text encoder at {re.escape(str(text))} has damaged files"
        ) as raised:
            load_text_tower(path)
        assert f"{text / file} " in str(raised.value)
    assert reads == []


def test_load_text_tower_reads_no_file_outside_the_text_encoder(saved, tmp_path) -> None:
    """Damage beside `text_encoder/` (the image tower) does not stop the text tower loading."""
    from clipcond.models import load_text_tower

    folder = _copy(saved, "clipcond", tmp_path)
    _cut_in_half(folder / "image_encoder/model.safetensors")
    assert load_text_tower(folder).config.projection_dim > 0


def test_a_transformers_clip_without_its_vocabulary_is_refused_not_scored_with_two_tokens(saved, tmp_path) -> None:
    from transformers import AutoTokenizer

    from clipcond.lab.metrics import load_clip_scorer

    folder = _copy(saved, "transformers", tmp_path)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (folder / name).unlink()
    assert len(AutoTokenizer.from_pretrained(folder)) == 2  # what transformers itself loads: no error
    with pytest.raises(
        ValueError, match=re.escape(f"{folder / 'vocab.json'} is missing, and there is no tokenizer.json")
    ):
        load_clip_scorer(folder)


def test_an_undamaged_folder_of_either_layout_scores_as_before(saved) -> None:
    from PIL import Image

    from clipcond.lab.metrics import clip_score, load_clip_scorer

    image = Image.new("RGB", (40, 30), (200, 30, 30))
    for folder in saved.values():
        score = clip_score([image], ["a red square"], load_clip_scorer(folder))
        assert score.shape == (1,) and -1 <= float(score) <= 1
