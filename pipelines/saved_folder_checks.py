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

`check_pipeline_folder` reads the index and the files diffusers will read (the JSON files a
component's loader reads, and the safetensors files of the weights variant asked for) and
names each damaged one. A folder whose `model_index.json` is missing or no JSON at all is left
to diffusers, whose error names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

INDEX_NAME = "model_index.json"
# The JSON files diffusers' and transformers' loaders read in a component's folder (configs,
# tokenizer files, the index of a sharded weights file: `*.index.json`, matched apart).
_READ_JSON = frozenset(
    {
        "config.json",
        "scheduler_config.json",
        "preprocessor_config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.json",
        "vocab.json",
    }
)
_WEIGHTS_SUFFIX = ".safetensors"


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
        pair = isinstance(entry, list) and len(entry) == 2
        if pair and (all(isinstance(part, str) for part in entry) or entry == [None, None]):
            continue
        raise ValueError(
            f"{where} records component `{name}` as {json.dumps(entry):.80}, where diffusers writes [library, class] "
            "(two strings, or [null, null] for a component saved as None; a damaged file?): nothing was loaded"
        )


def damaged_files(folder: Path, subfolders: Iterable[str], variant: str | None, safetensors: bool) -> list[str]:
    """What is wrong with each file in `folder`'s `subfolders` that a component's loader reads:
    '<subfolder>/<file> <problem>' for a JSON file that is empty, no UTF-8 text, no JSON or no
    JSON object (a `vocab.json` beside a `tokenizer.json` is not read: a fast tokenizer reads
    the latter alone), and (when `safetensors`) a safetensors file of `variant` (None: the files
    without a variant) whose header cannot be read or does not cover the file. [] for a whole
    folder."""
    found = []
    for subfolder in subfolders:
        part = folder / subfolder
        if not part.is_dir():
            continue  # diffusers names a missing component folder itself
        for path in sorted(part.iterdir()):
            if path.name == "vocab.json" and (part / "tokenizer.json").is_file():
                continue  # a fast tokenizer reads tokenizer.json alone
            if path.name in _READ_JSON or (path.name.endswith(".index.json") and _of_variant(path, variant)):
                problem = _json_problem(path)
            elif safetensors and path.name.endswith(_WEIGHTS_SUFFIX) and _of_variant(path, variant):
                problem = _safetensors_problem(path)
            else:
                continue
            if problem:
                found.append(f"{subfolder}/{path.name} {problem}")
    return found


def check_pipeline_folder(
    folder: str | os.PathLike,
    components: Iterable[str],
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> None:
    """Refuse a saved pipeline `folder` whose `model_index.json` diffusers could not read
    (`check_model_index`) or whose components' files are damaged (`damaged_files`), before any
    component is loaded. `components`: the pipeline class's component names; `variant` and
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
    components = list(components)
    check_model_index(index, components, str(where))
    saved = [name for name in components if isinstance(index.get(name), list) and index[name] != [None, None]]
    found = damaged_files(folder, saved, variant, safetensors=use_safetensors is not False)
    if found:
        raise ValueError(
            f"the pipeline saved at {folder} has damaged files (cut short, or overwritten?): {'; '.join(found)}; "
            "nothing was loaded"
        )


def _of_variant(path: Path, variant: str | None) -> bool:
    """Whether the weights file (or its index) `path` belongs to `variant`: for None, a name
    without a variant (`model.safetensors`, `model-00001-of-00002.safetensors`); else one with
    it (`model.fp16.safetensors`, `model.fp16-00001-of-00002.safetensors`)."""
    stem = path.name.removesuffix(".index.json").removesuffix(_WEIGHTS_SUFFIX)
    parts = stem.split(".")
    if variant is None:
        return len(parts) == 1
    return len(parts) == 2 and (parts[1] == variant or parts[1].startswith(f"{variant}-"))


def _json_problem(path: Path) -> str | None:
    """Why the JSON file `path` cannot be read as an object, or None."""
    raw = path.read_bytes()
    if not raw.strip():
        return "is empty"
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "is no UTF-8 text"
    except json.JSONDecodeError as error:
        return f"is no valid JSON ({error.msg}: line {error.lineno}, column {error.colno})"
    if not isinstance(value, dict):
        return f"holds a JSON {type(value).__name__}, not an object"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file `path` cannot be opened (its header read and checked against
    the file's length), or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except (SafetensorError, OSError) as error:
        return f"cannot be read as safetensors ({error})"


__all__ = ["INDEX_NAME", "check_model_index", "check_pipeline_folder", "damaged_files"]
