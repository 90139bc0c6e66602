"""Loading the text encoders a `ConditionerConfig` names, through transformers' `from_pretrained`.

A tokenizer that cannot be loaded is an error naming the place it was looked for: a silent
fallback to another tokenizer could give the wrong pad token (OpenCLIP-style encoders pad
with "!", OpenAI's with "<|endoftext|>"). A CLIP tokenizer in a local folder that clipcond wrote
(a pipeline folder whose model_index.json names clipcond's tokenizer class, or a `save_clip`
folder) and of exactly OpenAI's vocabulary becomes the bundled one with its pad token and context
length, keeping OpenAI's text cleaning, as diffusers loads that pipeline folder; any other (a hub
Stable Diffusion folder included) is used as saved, as diffusers uses it. Otherwise the bundled tokenizer is used only when asked for by name (`tokenizer:
builtin-clip`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from clipcond.conditioner_config import EncoderSource
from clipcond.file_damage import check_tables_after_load, damaged_files, refuse_damaged_files

BUILTIN_CLIP_TOKENIZER = "builtin-clip"


def load_tokenizer(
    source: EncoderSource, kind: str, model_max_length: int | None = None, *, folder_checked: bool = False
) -> Any:
    """The tokenizer of `source`: from `source.tokenizer` (default `source.path`); inside a
    diffusers pipeline folder, the `tokenizer/` folder beside the encoder's subfolder. A CLIP
    tokenizer of a folder that declares clipcond's tokenizer (`_declares_text_cleaning`) keeps
    OpenAI's text cleaning, as diffusers loads that folder
    (`clipcond.tokenization.with_clip_text_cleaning`).

    Args:
        source: where the encoder and its tokenizer are.
        kind: "clip" or "t5" (named in errors).
        model_max_length: the encoder's context length, for the builtin CLIP tokenizer.
        folder_checked: the tokenizer's local folder was checked (`clipcond.file_damage`, as
            `load_clip_encoder` checks it): BPE tables read there are not checked again.

    Raises:
        ValueError: the tokenizer cannot be loaded (names path, subfolder and the cause, a
            local folder without tokenizer files included: `load_saved_tokenizer`), or it is a
            BPE tokenizer whose merges do not make its vocabulary (`clipcond.bpe_tables`).
    """
    from clipcond.tokenization import clip_tokenizer, load_saved_tokenizer, with_clip_text_cleaning

    if source.tokenizer == BUILTIN_CLIP_TOKENIZER:
        if kind != "clip":
            raise ValueError(
                f"`tokenizer: {BUILTIN_CLIP_TOKENIZER}` is a CLIP tokenizer; a {kind} encoder needs its own"
            )
        return clip_tokenizer(model_max_length=model_max_length or 77)
    path, subfolder = _tokenizer_place(source)
    try:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        tokenizer = load_saved_tokenizer(path, **kwargs)
    except (OSError, ValueError, TypeError) as error:
        hint = f"; set `tokenizer: {BUILTIN_CLIP_TOKENIZER}` to use OpenAI's CLIP tokenizer" if kind == "clip" else ""
        raise ValueError(
            f"could not load the {kind} tokenizer from {path!r} (subfolder {subfolder!r}): {error}{hint}"
        ) from error
    folder = Path(path, subfolder or "") if folder_checked and Path(path).is_dir() else None
    check_tables_after_load(tokenizer, folder, f"{path!r} (subfolder {subfolder!r})")
    if kind == "clip" and _declares_text_cleaning(Path(path), subfolder):
        return with_clip_text_cleaning(tokenizer, model_max_length)
    return tokenizer


def _tokenizer_place(source: EncoderSource) -> tuple[str, str | None]:
    """(path, subfolder) of `source`'s tokenizer: `source.tokenizer` (default `source.path`)
    and `source.tokenizer_subfolder`; inside a local pipeline folder, the `tokenizer/` folder
    beside the encoder's subfolder (or that subfolder when there is none)."""
    path = source.tokenizer or source.path
    subfolder = source.tokenizer_subfolder
    if source.tokenizer is None and subfolder is None and Path(path).is_dir() and source.subfolder:
        subfolder = "tokenizer" if (Path(path) / "tokenizer").is_dir() else source.subfolder
    return path, subfolder


def _declares_text_cleaning(root: Path, subfolder: str | None) -> bool:
    """Whether the local tokenizer folder `root`/`subfolder` is one clipcond wrote with its
    cleaning tokenizer: a pipeline folder whose model_index.json names a class of
    `clipcond.tokenization` for `subfolder` (as diffusers then loads it), or a `save_clip` folder.
    A hub id or any other folder: False, read as transformers saved it."""
    from clipcond.models.checkpoint import CONFIG_NAME  # what `save_clip` writes beside tokenizer/
    from clipcond.tokenization import CLIPTokenizerWithTextCleaning

    if subfolder is None:  # the tokenizer folder itself, perhaps inside a pipeline folder
        root, subfolder = root.parent, root.name
    if (root / CONFIG_NAME).is_file():
        return True
    try:
        entry = json.loads((root / "model_index.json").read_text(encoding="utf-8")).get(subfolder)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(entry, list) and bool(entry) and entry[0] == CLIPTokenizerWithTextCleaning.__module__


def load_clip_encoder(source: EncoderSource, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) for a CLIP text encoder: `CLIPTextModelWithProjection` when the saved
    architecture has the projection, else `CLIPTextModel`; in eval mode, in `dtype`."""
    from transformers import AutoConfig, CLIPTextModel, CLIPTextModelWithProjection

    _check_local_files(source, "clip")
    kwargs = {"subfolder": source.subfolder} if source.subfolder else {}
    config = AutoConfig.from_pretrained(source.path, **kwargs)
    architectures = getattr(config, "architectures", None) or []
    model_class = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in architectures else CLIPTextModel
    model = model_class.from_pretrained(source.path, dtype=dtype, **kwargs).eval()
    return model, load_tokenizer(source, "clip", model.config.max_position_embeddings, folder_checked=True)


def load_t5_encoder(source: EncoderSource, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) for a T5 encoder (`T5EncoderModel`), in eval mode, in `dtype`.

    A local folder that holds no model but a ``text_encoder/`` that does (what ``clipcond
    train-t5`` writes to ``<output_dir>/model``, beside its ``tokenizer/``) is read as
    ``subfolder: text_encoder``, as a diffusion run's ``t5_encoder:`` reads it."""
    from transformers import T5EncoderModel

    source = _with_encoder_subfolder(source)
    _check_local_files(source, "t5")
    kwargs = {"subfolder": source.subfolder} if source.subfolder else {}
    model = T5EncoderModel.from_pretrained(source.path, dtype=dtype, **kwargs).eval()
    return model, load_tokenizer(source, "t5", folder_checked=True)


def _check_local_files(source: EncoderSource, kind: str) -> None:
    """Refuse a local encoder folder whose JSON or safetensors files are damaged
    (`clipcond.file_damage`), before anything loads: transformers' own errors named no file
    for a safetensors file cut short (`SafetensorError: incomplete metadata`) or a `vocab.json`
    (tokenizers' bare `Exception`). The tokenizer's folder is checked where it is local too; a
    hub id is left to transformers.

    Raises:
        ValueError: naming the folder and each damaged file.
    """
    tokenizer_path, tokenizer_subfolder = _tokenizer_place(source)  # `builtin-clip`: no folder, not read
    places = [(Path(source.path), source.subfolder or ""), (Path(tokenizer_path), tokenizer_subfolder or "")]
    found = []
    for root, subfolder in dict.fromkeys(places):
        if root.is_dir():
            # "<subfolder>/<file> <problem>" behind the root, joined as text: the problem is no path
            found += [os.path.join(root, damage) for damage in damaged_files(root, [subfolder], None, safetensors=True)]
    refuse_damaged_files(f"the {kind} encoder at {source.path!r}", found)


def _with_encoder_subfolder(source: EncoderSource) -> EncoderSource:
    """`source` with ``subfolder: text_encoder`` when it names no subfolder and its path is a
    local folder without a ``config.json`` of its own but with ``text_encoder/config.json``;
    else `source` unchanged. (Its tokenizer is then looked for in ``tokenizer/`` beside it:
    `load_tokenizer`.)"""
    folder = Path(source.path)
    if (
        source.subfolder
        or (folder / "config.json").is_file()
        or not (folder / "text_encoder" / "config.json").is_file()
    ):
        return source
    return dataclasses.replace(source, subfolder="text_encoder")
