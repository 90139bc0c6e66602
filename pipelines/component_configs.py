"""Name the component whose `config.json` cannot build its model, after a pipeline load failed.

A component's `config.json` that parses but holds a value of the wrong type (a hand-edited or
damaged file: `"num_hidden_layers": "3"`, `"cross_attention_dim": "abc"`) passes the checks
before the load (`saved_folder_checks`: the file is whole JSON). diffusers then loads the
components in turn and fails on that one with an error that names no file: transformers 5's
`StrictDataclassFieldValidationError` for a text encoder, and a `TypeError` from deep inside
torch for a UNet or VAE (`empty(): argument 'size' failed to unpack ...`). `naming_the_config`
turns those into a `ValueError` naming the file. It looks only after a failure, so a load that
works pays nothing: each component's config is built again (a transformers config, or a
diffusers model on the meta device, with no weights) until one fails.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clipcond.errors import one_line
from clipcond.file_damage import config_value_errors
from clipcond.pipelines.saved_folder_checks import INDEX_NAME, library_class_pair

CONFIG_NAME = "config.json"


def _model_class(library: str, class_name: str) -> type | None:
    """The diffusers or transformers model class a `model_index.json` entry names, else None
    (a scheduler, a tokenizer, an image processor, another library's class)."""
    if library not in ("diffusers", "transformers"):
        return None
    model_class = getattr(importlib.import_module(library), class_name, None)
    if not isinstance(model_class, type):
        return None
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    return model_class if issubclass(model_class, (ModelMixin, PreTrainedModel)) else None


def _build_problem(model_class: type, folder: Path) -> str | None:
    """What building `model_class` from `folder`'s config raises, as one line; None if it builds."""
    from accelerate import init_empty_weights
    from transformers import PreTrainedModel

    try:
        if issubclass(model_class, PreTrainedModel):
            model_class.config_class.from_pretrained(folder)  # transformers checks each field's type
        else:
            with init_empty_weights():  # the modules on the meta device: no memory, no weights read
                model_class.from_config(model_class.load_config(folder))
    except (*config_value_errors(), ValueError) as error:
        return one_line(error)
    return None


def config_that_cannot_build(folder: str | os.PathLike) -> str | None:
    """The first model component of the pipeline saved at `folder` (in the order of its
    `model_index.json`) whose `config.json` cannot build its model class, as
    ``<folder>/<component>/config.json cannot build its <class> (...): <the error>``; None when
    every one builds, or the folder holds no readable index."""
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    for name, entry in index.items():
        pair = library_class_pair(entry)
        model_class = _model_class(*pair) if pair is not None else None
        config = folder / name / CONFIG_NAME
        if model_class is None or not config.is_file():
            continue
        problem = _build_problem(model_class, config.parent)
        if problem is not None:
            return (
                f"{config} cannot build its {model_class.__name__} (a value of the wrong type? a damaged or "
                f"hand-edited file): {problem}"
            )
    return None


@contextmanager
def naming_the_config(folder: Any) -> Iterator[None]:
    """Around the load of the pipeline saved at `folder`: a `TypeError` or huggingface_hub's
    `StrictDataclassError` that a component's `config.json` caused becomes a `ValueError`
    naming the file (`config_that_cannot_build`). Any other error, one no config explains, or
    any error when `folder` is no local folder (a hub id), passes unchanged.

    Raises:
        ValueError: ``<folder>/<component>/config.json cannot build its <class> ...: <the error>``.
    """
    try:
        yield
    except config_value_errors() as error:
        problem = config_that_cannot_build(folder) if os.path.isdir(folder) else None
        if problem is None:
            raise
        raise ValueError(problem) from error


__all__ = ["config_that_cannot_build", "naming_the_config"]
