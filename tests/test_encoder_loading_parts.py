"""Loading the encoders a conditioner YAML names (clipcond.encoder_loading), in the parts that
the folder and damage tests (test_encoder_loading.py, test_clip_folder_tokenizer.py) reach only
in passing: which class and dtype a CLIP loads in, the builtin tokenizer's context, where a
tokenizer and a T5 encoder are looked for, the tokenizer errors whole, and vocabulary tables
checked once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_pipelines import clip_text_model, t5_encoder
from transformers import CLIPTextModel, CLIPTextModelWithProjection

import clipcond.file_damage
from clipcond.conditioner_config import EncoderSource
from clipcond.encoder_loading import load_clip_encoder, load_t5_encoder, load_tokenizer
from clipcond.tokenization import CLIPTokenizerWithTextCleaning, clip_tokenizer


def _saved(model, folder: Path, tokenizer=None) -> Path:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("with_projection", [False, True], ids=["plain", "projection"])
def test_a_clip_loads_in_its_saved_class_and_the_dtype_asked_for(with_projection, tmp_path) -> None:
    saved = clip_text_model(7, with_projection=with_projection)
    folder = _saved(saved, tmp_path / "clip", clip_tokenizer())
    model, _ = load_clip_encoder(EncoderSource(path=str(folder)), torch.bfloat16)
    assert type(model) is (CLIPTextModelWithProjection if with_projection else CLIPTextModel)
    assert model.dtype == torch.bfloat16 and not model.training
    expected = {name: weight.to(torch.bfloat16) for name, weight in saved.state_dict().items()}
    assert all(torch.equal(weight, expected[name]) for name, weight in model.state_dict().items())


@pytest.mark.parametrize("positions", [40, 77, 248])
def test_the_builtin_tokenizer_takes_the_encoders_context(positions, tmp_path) -> None:
    folder = _saved(clip_text_model(7, max_position_embeddings=positions), tmp_path / "clip")
    _, tokenizer = load_clip_encoder(EncoderSource(path=str(folder), tokenizer="builtin-clip"))
    assert tokenizer.model_max_length == positions


def test_the_builtin_tokenizer_without_a_context_has_clips_77() -> None:
    tokenizer = load_tokenizer(EncoderSource(path="unused", tokenizer="builtin-clip"), "clip")
    assert isinstance(tokenizer, CLIPTokenizerWithTextCleaning) and tokenizer.model_max_length == 77


def test_the_builtin_tokenizer_for_a_t5_is_refused_whole() -> None:
    with pytest.raises(ValueError) as raised:
        load_tokenizer(EncoderSource(path="unused", tokenizer="builtin-clip"), "t5")
    assert str(raised.value) == "`tokenizer: builtin-clip` is a CLIP tokenizer; a t5 encoder needs its own"


def test_a_folder_without_tokenizer_files_is_refused_with_the_builtin_hint_for_a_clip_only(tmp_path) -> None:
    """transformers 5 built a T5 tokenizer of its 104 special tokens from such a folder (every
    word `<unk>`), with no error."""
    files = "none of tokenizer.json, tokenizer_config.json, vocab.json, spiece.model, tokenizer.model"
    t5_folder = _saved(t5_encoder(3, 400), tmp_path / "t5")  # the model alone
    with pytest.raises(ValueError) as raised:
        load_t5_encoder(EncoderSource(path=str(t5_folder)))
    assert str(raised.value) == (
        f"could not load the t5 tokenizer from {str(t5_folder)!r} (subfolder None): {t5_folder} holds no tokenizer "
        f"file ({files})"
    )
    clip_folder = _saved(clip_text_model(7), tmp_path / "clip")
    with pytest.raises(ValueError) as raised:
        load_clip_encoder(EncoderSource(path=str(clip_folder)))
    assert str(raised.value) == (
        f"could not load the clip tokenizer from {str(clip_folder)!r} (subfolder None): {clip_folder} holds no "
        f"tokenizer file ({files}); set `tokenizer: builtin-clip` to use OpenAI's CLIP tokenizer"
    )


def test_a_tokenizer_transformers_cannot_read_is_named_with_its_error(tmp_path) -> None:
    folder = _saved(t5_encoder(3, 400), tmp_path / "t5")
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "NoSuchTokenizer"}', encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        load_tokenizer(EncoderSource(path=str(folder)), "t5")
    message = str(raised.value)
    assert message.startswith(f"could not load the t5 tokenizer from {str(folder)!r} (subfolder None): ")
    assert "builtin-clip" not in message and isinstance(raised.value.__cause__, (OSError, ValueError, TypeError))


def test_vocabulary_tables_checked_with_the_folder_are_not_checked_again(tmp_path, monkeypatch) -> None:
    """A CLIP folder's BPE tables are read when the folder is checked for damage, before it
    loads: the loaded tokenizer's tables are not built and compared a second time. A tokenizer
    loaded on its own (no folder check) is checked once."""
    folder = _saved(clip_text_model(7), tmp_path / "clip", clip_tokenizer())
    checked = []
    original = clipcond.file_damage.check_bpe_tables
    monkeypatch.setattr(clipcond.file_damage, "check_bpe_tables", lambda *args: checked.append(args) or original(*args))
    load_clip_encoder(EncoderSource(path=str(folder)))
    assert checked == []
    load_tokenizer(EncoderSource(path=str(folder)), "clip")
    assert len(checked) == 1


def test_a_tokenizer_inside_the_encoders_subfolder_is_found_there(tmp_path) -> None:
    """No `tokenizer/` beside `text_encoder/`: the tokenizer saved with the encoder is read."""
    _saved(clip_text_model(7), tmp_path / "pipe" / "text_encoder", clip_tokenizer(model_max_length=40))
    _, tokenizer = load_clip_encoder(EncoderSource(path=str(tmp_path / "pipe"), subfolder="text_encoder"))
    assert tokenizer.model_max_length == 40


def test_a_folder_clipcond_did_not_write_keeps_the_tokenizer_as_saved(tmp_path) -> None:
    """No model_index.json naming clipcond's tokenizer, no `save_clip` config: read as
    transformers saved it (without OpenAI's text cleaning)."""
    folder = _saved(clip_text_model(7), tmp_path / "clip", clip_tokenizer())
    _, tokenizer = load_clip_encoder(EncoderSource(path=str(folder)))
    assert not isinstance(tokenizer, CLIPTokenizerWithTextCleaning)


def test_a_t5_folder_with_its_own_model_is_read_before_a_text_encoder_inside_it(tmp_path, t5_tokenizer_path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    top = _saved(t5_encoder(3, len(tokenizer)), tmp_path / "t5", tokenizer)
    _saved(t5_encoder(4, len(tokenizer)), top / "text_encoder", tokenizer)
    model, _ = load_t5_encoder(EncoderSource(path=str(top)))
    expected = t5_encoder(3, len(tokenizer)).state_dict()
    assert all(torch.equal(weight, expected[name]) for name, weight in model.state_dict().items())


def test_a_damaged_encoder_folder_with_the_builtin_tokenizer_is_refused_naming_the_file(tmp_path) -> None:
    folder = _saved(clip_text_model(7), tmp_path / "clip")
    (folder / "config.json").write_text('{"cut', encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        load_clip_encoder(EncoderSource(path=str(folder), tokenizer="builtin-clip"))
    assert str(raised.value).startswith(
        f"the clip encoder at {str(folder)!r} has damaged files (cut short, or overwritten?): {folder / 'config.json'} "
    )


def test_a_clipcond_folders_tokenizer_takes_the_shorter_context_of_it_and_its_encoder(tmp_path) -> None:
    """A pipeline folder clipcond wrote, its encoder of 40 positions beside a tokenizer saved
    with CLIP's 77: the tokenizer read back cleans and stops at the encoder's 40."""
    from tiny_pipelines import build_sd

    from clipcond import CLIPConditionedPipeline

    short = clip_text_model(7, max_position_embeddings=40)
    CLIPConditionedPipeline.from_pipe(build_sd(), text_encoder=short).save_pretrained(tmp_path / "pipe")
    _, tokenizer = load_clip_encoder(EncoderSource(path=str(tmp_path / "pipe"), subfolder="text_encoder"))
    assert isinstance(tokenizer, CLIPTokenizerWithTextCleaning) and tokenizer.model_max_length == 40


def test_every_tokenizer_load_refuses_a_folder_without_tokenizer_files(tmp_path) -> None:
    """The refusal is in `load_saved_tokenizer`, which every tokenizer load goes through:
    train-diffusion's frozen T5 (a model folder alone) is refused naming the folder too."""
    from clipcond.tokenization import load_saved_tokenizer
    from clipcond.training.diffusion.frozen_encoders import load_frozen_t5
    from clipcond.training.loop import RunSetupError

    folder = _saved(t5_encoder(3, 400), tmp_path / "t5")
    files = "none of tokenizer.json, tokenizer_config.json, vocab.json, spiece.model, tokenizer.model"
    with pytest.raises(FileNotFoundError) as raised:
        load_saved_tokenizer(tmp_path, subfolder="t5")
    assert str(raised.value) == f"{folder} holds no tokenizer file ({files})"
    with pytest.raises(RunSetupError) as raised:
        load_frozen_t5(str(folder))
    assert str(raised.value) == f"t5_encoder {folder}: {folder} holds no tokenizer file ({files})"
