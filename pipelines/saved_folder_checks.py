"""Checks of a saved pipeline folder before `from_pretrained` loads any component.

diffusers reads `model_index.json` and then each component in turn; a damaged folder failed
partway, after the components before it were loaded, with errors that named no file:
- a `model_index.json` that is a JSON list, or has no `_class_name`, or holds `null` or a
  string for a component: `TypeError: pop expected at most 1 argument`, `KeyError:
  '_class_name'`, `TypeError: 'NoneType' object is not subscriptable`, `ValueError: too many
  values to unpack`;
- a component's JSON file cut short (its `config.json`, a tokenizer's `tokenizer_config.json`
  or `tokenizer.json`): a bare `JSONDecodeError` from the tokenizer files, and tokenizers'
  own `Exception` for a `vocab.json`;
- a text encoder's safetensors file cut short: `SafetensorError: incomplete metadata, file not
  fully covered`.

`check_pipeline_folder` reads the index, then the files diffusers will read (the JSON files a
component's loader reads, and the safetensors files of the weights variant asked for:
`clipcond.file_damage`), and names each damaged one. A folder whose `model_index.json` is
missing or no JSON at all is left to diffusers, whose error names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipcond.file_damage import damaged_files, refuse_damaged_files

INDEX_NAME = "model_index.json"


def library_class_pair(entry: Any) -> tuple[str, str] | None:
    """A `model_index.json` entry as the (library, class) it names: a list of two strings,
    as diffusers writes it; None for anything else (``[null, null]``, a damaged entry)."""
    if isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry):
        return entry[0], entry[1]
    return None


def check_model_index(index: Any, components: Iterable[str], where: str) -> None:
    """Refuse a `model_index.json` (read as `index`, from `where`) that diffusers could not
    read: no JSON object, no `_class_name` string, or an entry of one of the pipeline's
    `components` that is no [library, class] pair of two strings or two nulls.

    Raises:
        ValueError: naming `where`, the entry and what it holds.
    """
    if not isinstance(index, dict):
        raise ValueError(
            f"{where} holds a JSON {type(index).__name__}, where a pipeline's index is an object of component -> "
            "[library, class] (a damaged file?): nothing was loaded"
        )
    if not isinstance(index.get("_class_name"), str):
        raise ValueError(
            f"{where} names no pipeline class (`_class_name`: {index.get('_class_name')!r}; a damaged file?): nothing "
            "was loaded"
        )
    for name in sorted(set(components) & set(index)):
        entry = index[name]
        if library_class_pair(entry) is not None or entry == [None, None]:
            continue
        raise ValueError(
            f"{where} records component `{name}` as {json.dumps(entry):.80}, where diffusers writes [library, class] "
            "(two strings, or [null, null] for a component saved as None; a damaged file?): nothing was loaded"
        )


def check_pipeline_folder(
    folder: str | os.PathLike,
    components: Iterable[str] | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> None:
    """Refuse a saved pipeline `folder` whose `model_index.json` diffusers could not read
    (`check_model_index`) or whose components' files are damaged (`damaged_files`), before any
    component is loaded. `components`: the pipeline class's component names (None: those of the
    diffusers pipeline class the index names, `index_components`); `variant` and
    `use_safetensors`: `from_pretrained`'s (safetensors files are not read when it is False).

    Raises:
        ValueError: naming the folder and every damaged file found.
    """
    folder = Path(folder)
    where = folder / INDEX_NAME
    try:
        index = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no index, or none that is JSON: diffusers' error names the file
    components = list(components) if components is not None else index_components(index)
    check_model_index(index, components, str(where))
    saved = [name for name in components if isinstance(index.get(name), list) and index[name] != [None, None]]
    found = damaged_files(folder, saved, variant, safetensors=use_safetensors is not False)
    refuse_damaged_files(f"the pipeline saved at {folder}", found)


def saved_class_name(folder: str | os.PathLike) -> str | None:
    """The pipeline class that `folder`'s `model_index.json` names (`_class_name`); None when
    the folder has no index, or one that is no object or names no class as a string
    (`check_model_index` refuses those).

    Raises:
        ValueError: the index is no UTF-8 JSON, naming the file (json's error names none).
    """
    where = Path(folder) / INDEX_NAME
    if not where.is_file():
        return None
    try:
        index = json.loads(where.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{where} is no UTF-8 text (a damaged file?): nothing was loaded") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{where} is no valid JSON ({error.msg}: line {error.lineno}, column {error.colno}; a damaged file?): "
            "nothing was loaded"
        ) from None
    named = index.get("_class_name") if isinstance(index, dict) else None
    return named if isinstance(named, str) else None


def index_components(index: Any) -> list[str]:
    """The component names of the diffusers pipeline class that `index` (a read
    `model_index.json`) names as `_class_name`; for a class diffusers lacks (a community
    pipeline), the entries that are lists. [] for an index that is no JSON object."""
    import diffusers

    if not isinstance(index, dict):
        return []
    named = index.get("_class_name")
    pipeline_class = getattr(diffusers, named, None) if isinstance(named, str) else None
    if isinstance(pipeline_class, type) and issubclass(pipeline_class, diffusers.DiffusionPipeline):
        return sorted(pipeline_class._get_signature_keys(pipeline_class)[0])
    return sorted(name for name, entry in index.items() if not name.startswith("_") and isinstance(entry, list))


__all__ = [
    "INDEX_NAME",
    "check_model_index",
    "check_pipeline_folder",
    "index_components",
    "library_class_pair",
    "saved_class_name",
]
