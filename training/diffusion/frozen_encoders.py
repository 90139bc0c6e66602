"""The frozen text encoders of a diffusion run and their tokenizers, read from the folders the
config names (`text_encoder`, `t5_encoder`), in float32, in eval mode.

A CLIP tower is read with the tokenizer saved beside it, as diffusers' training scripts read a
pipeline's: its pad token matters (SD 2.x and OpenCLIP towers pad with "!", OpenAI's with
"<|endoftext|>"; the states at the padding are what the UNet reads). A saved tokenizer of
OpenAI's CLIP vocabulary becomes the bundled one with its pad token and context length (keeping
OpenAI's text cleaning, as train-clip reads captions); any other (another vocabulary, added
tokens) is used as saved. A folder that holds no tokenizer gets the bundled one. Damaged files are a `RunSetupError` naming the
key and the folder (`reading_part`); each folder is checked first (`clipcond.file_damage`), so
the error names the damaged file too, and a tokenizer folder that lost its vocabulary files
(which transformers loads as a tokenizer of its special tokens alone, with no error) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipcond.file_damage import check_tables_after_load, refuse_damaged_folder
from clipcond.tokenization import clip_tokenizer, load_saved_tokenizer, with_clip_text_cleaning
from clipcond.training.loop import RunSetupError, reading_part

# any of these marks a folder as holding a saved transformers tokenizer
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")


def load_frozen_text_encoder(path: str) -> nn.Module:
    """The CLIP text tower of a `save_clip` folder or a transformers folder, frozen, in eval mode.

    Raises:
        FileNotFoundError: no ``config.json`` in `path` or its ``text_encoder/``.
        RunSetupError: the folder cannot be read (see the module docstring).
    """
    from transformers import CLIPTextModel

    folder = _tower_folder(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text_encoder: no text encoder at {path} (expected config.json or text_encoder/)")
    # CLIPTextModel (not ...WithProjection): its first output is the per-token states, which is
    # what a StableDiffusionPipeline reads too; projection weights, if stored, are ignored (and
    # transformers' report of them as unexpected keys is silenced).
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        # float32 whatever the stored dtype (the bundled model's is float16): the run computes in
        # float32 and mixed precision is accelerate's autocast, as for the UNet
        with reading_part("text_encoder", path):
            refuse_damaged_folder("the folder", folder, [""])
            model = CLIPTextModel.from_pretrained(folder, dtype=torch.float32)
    finally:
        transformers_logging.set_verbosity(level)
    return model.eval().requires_grad_(False)


def load_frozen_t5(path: str) -> tuple[nn.Module, Any]:
    """A transformers T5 encoder and its tokenizer from `path` (tokenizer files in the folder
    or in `tokenizer/`; the model in the folder or in `text_encoder/`), frozen, in eval mode."""
    from transformers import T5EncoderModel

    folder = Path(path)
    model_folder = folder / "text_encoder" if (folder / "text_encoder" / "config.json").is_file() else folder
    if not (model_folder / "config.json").is_file():
        raise FileNotFoundError(f"t5_encoder: no T5 encoder at {path} (expected config.json or text_encoder/)")
    tokenizer_folder = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
    with reading_part("t5_encoder", path):
        for part in dict.fromkeys([tokenizer_folder, model_folder]):
            refuse_damaged_folder("the folder", part, [""])
        tokenizer = load_saved_tokenizer(tokenizer_folder)
        model = T5EncoderModel.from_pretrained(model_folder, dtype=torch.float32)  # as the CLIP tower
    return model.eval().requires_grad_(False), tokenizer


def saved_tokenizer_folder(path: str | Path) -> Path | None:
    """Where the tokenizer of the CLIP tower at `path` is saved, or None when it has none.

    Looked for, in order: `path/tokenizer/` (a pipeline or `save_clip` folder), `path` itself (a
    transformers folder holding model and tokenizer), and `path/../tokenizer/` when `path` is a
    pipeline's `text_encoder/` subfolder.
    """
    folder = Path(path)
    candidates = [folder / "tokenizer", folder]
    if folder.name == "text_encoder":
        candidates.append(folder.parent / "tokenizer")
    for candidate in candidates:
        if candidate.is_dir() and any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return candidate
    return None


def _tower_folder(path: str) -> Path:
    """The folder the CLIP tower at `path` is read from: `path`, or its ``text_encoder/``."""
    folder = Path(path)
    return folder / "text_encoder" if (folder / "text_encoder").is_dir() else folder


def load_frozen_clip(path: str) -> tuple[nn.Module, Any]:
    """(`load_frozen_text_encoder`, `load_text_encoder_tokenizer`) of `path`, a folder that holds
    both the tower and its tokenizer checked for damage once.

    Raises:
        FileNotFoundError, RunSetupError: as those two raise them.
    """
    text_encoder = load_frozen_text_encoder(path)
    return text_encoder, load_text_encoder_tokenizer(path, text_encoder, checked=_tower_folder(path))


def load_text_encoder_tokenizer(path: str, text_encoder: nn.Module, checked: Path | None = None) -> Any:
    """The tokenizer of the CLIP tower `text_encoder` read from `path` (`saved_tokenizer_folder`):
    the bundled OpenAI CLIP tokenizer with the saved one's pad token and context length when
    the saved one has exactly OpenAI's vocabulary (`with_clip_text_cleaning`, shared with a
    conditioner YAML's loader), else the saved one as it is; the bundled
    tokenizer (pad "<|endoftext|>", the tower's context length) when the folder holds none.

    `checked`: a folder whose files were checked already (`load_frozen_clip` passes the tower's):
    the tokenizer's, when it is that one, is not checked again.

    Raises:
        RunSetupError: the saved tokenizer cannot be read (the message names its folder), is a
            BPE tokenizer whose merges do not make its vocabulary (`clipcond.bpe_tables`), or has
            more tokens than the tower's embedding table has rows (its ids would index past the table).
    """
    folder = saved_tokenizer_folder(path)
    if folder is None:
        return clip_tokenizer(model_max_length=text_encoder.config.max_position_embeddings)
    with reading_part("text_encoder", folder):  # the folder the error is in: the tower's, or its tokenizer/
        if folder != checked:
            refuse_damaged_folder("the folder", folder, [""])
        tokenizer = load_saved_tokenizer(folder)
        check_tables_after_load(tokenizer, folder, str(folder))
    rows = text_encoder.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise RunSetupError(
            f"text_encoder {path}: the tokenizer in {folder} has {len(tokenizer)} tokens, more than the "
            f"{rows} rows of the text encoder's embedding table (a tokenizer of another model?)"
        )
    return with_clip_text_cleaning(tokenizer, text_encoder.config.max_position_embeddings)
