"""Which of the files a model loader reads in a folder are damaged: JSON that is empty, cut
short or no object, and safetensors files whose header cannot be read or does not cover the
file.

diffusers' and transformers' loaders fail on such files partway through a load, often with
errors that name no file (a bare `JSONDecodeError` from a tokenizer's files, tokenizers' own
`Exception` for a `vocab.json`, `SafetensorError: incomplete metadata, file not fully covered`).
Without a `tokenizer.json`, a BPE tokenizer is built from `vocab.json` and `merges.txt`, and a
`merges.txt` cut in the middle of a line failed with tokenizers' bare `Exception` ("Token `t</`
out of vocabulary", "Merges text file invalid at line 25582"), naming no file; without
`vocab.json` and `merges.txt` too (or a T5 tokenizer's `spiece.model`), a tokenizer folder
loaded as a tokenizer of its special tokens alone that reads every word as unknown, with no
error; one saved from a `tokenizers` object (train-t5's) without `tokenizer.json` or
`tokenizer.model` failed with transformers' advice to install sentencepiece, naming no file.
A CLIP tokenizer's merges cut short at a line's end (in `merges.txt` or `tokenizer.json`)
loaded without a word and split words into pieces its encoder never saw (`clipcond.bpe_tables`).
`damaged_files` reads the files first and names each damaged one; `refuse_damaged_files`
raises on what it found (`refuse_damaged_folder`: both, for one folder). A saved pipeline's `from_pretrained`
(`clipcond.pipelines.saved_folder_checks`), a conditioner's encoder loader
(`clipcond.encoder_loading`), `clipcond.models.load_clip` and `load_text_tower`, and the lab's
CLIP-score loader (`clipcond.lab.metrics.load_clip_scorer`) refuse a folder it finds damage in
before loading anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipcond.bpe_tables import check_bpe_tables, describe_unmade, read_clip_files, unmade_in_tokenizer_json
from clipcond.json_reading import json_object_in, read_json_with_collector_paused

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
# what reading a CLIP tokenizer's BPE tables finds: (whether they fit, and tokenizers builds them
# from its files, the vocabulary entries no merge makes); what reads them from a parsed file (None: no tables)
TablesRead = tuple[bool, list[str]]
TablesReader = Callable[[Any], TablesRead | None]
# a fast tokenizer reads its tokenizer.json alone; these are read only without one
_SLOW_TOKENIZER_FILES = frozenset({"vocab.json", "merges.txt"})
# the tokenizer classes (as a tokenizer_config.json names them) of the text encoders clipcond
# reads whose vocabulary files are checked; transformers' `vocab_files_names` says which they are.
# A tokenizer saved from a `tokenizers` object (train-t5's) is a TokenizersBackend (transformers 5)
# or PreTrainedTokenizerFast: built from tokenizer.json or a sentencepiece tokenizer.model.
_VOCABULARY_CHECKED_CLASSES = frozenset(
    {
        "CLIPTokenizer",
        "CLIPTokenizerFast",
        "T5Tokenizer",
        "T5TokenizerFast",
        "TokenizersBackend",
        "PreTrainedTokenizerFast",
    }
)


# the tokenizer classes whose tokenizer.json's BPE tables are checked (`clipcond.bpe_tables`): CLIP's,
# whose every merged token a merge makes; other BPE vocabularies (a sentencepiece model converted
# with byte fallback: Llama's, Gemma's) hold entries no merge makes by design
_TABLES_CHECKED_CLASSES = frozenset({"CLIPTokenizer", "CLIPTokenizerFast", "CLIPTokenizerWithTextCleaning"})


def bpe_tables_read(part: Path) -> bool:
    """Whether `damaged_files` checks the BPE tables of the tokenizer saved in the folder
    `part`: a CLIP tokenizer (its `tokenizer_config.json` says so) with a `tokenizer.json`,
    which transformers reads alone, or else with the `vocab.json` it is built from (the
    `merges.txt` beside it is checked, or named as missing)."""
    has_tables = (part / "tokenizer.json").is_file() or (part / "vocab.json").is_file()
    return has_tables and _tokenizer_class(part) in _TABLES_CHECKED_CLASSES


def check_tables_after_load(tokenizer: Any, folder: Path | None, where: str) -> None:
    """`check_bpe_tables(tokenizer, where)` for a tokenizer loaded from `folder` after
    `damaged_files` checked that folder, unless that check read its tables already
    (`bpe_tables_read`); `folder` None (a tokenizer from elsewhere, or from a folder not
    checked): always checked.

    Raises:
        ValueError: as `check_bpe_tables`.
    """
    if folder is None or not bpe_tables_read(folder):
        check_bpe_tables(tokenizer, where)


def _tokenizer_class(part: Path) -> str | None:
    """The tokenizer class `part`'s `tokenizer_config.json` names; None without a readable one
    (a damaged one is named by `damaged_files`)."""
    named = json_object_in(part / "tokenizer_config.json").get("tokenizer_class")
    return named if isinstance(named, str) else None


def damaged_files(folder: Path, subfolders: Iterable[str], variant: str | None, safetensors: bool) -> list[str]:
    """What is wrong with each file in `folder`'s `subfolders` ("" for `folder` itself) that a
    component's loader reads:
    '<subfolder>/<file> <problem>' for a JSON file that is empty, no UTF-8 text, no JSON or no
    JSON object, a `merges.txt` that tokenizers cannot build BPE tables from with the
    `vocab.json` beside it (neither is read beside a `tokenizer.json`: a fast tokenizer reads
    the latter alone), a vocabulary file missing from a CLIP, T5 or tokenizers-backed
    tokenizer's folder without a `tokenizer.json` (`vocab.json` and `merges.txt`;
    `spiece.model`; `tokenizer.model`), the file that holds a CLIP tokenizer's merges
    (`tokenizer.json`, else `merges.txt`) when they leave vocabulary entries unmade
    (`bpe_tables_read`), and (when `safetensors`) a safetensors file of `variant` (None: the
    files without a variant) whose header cannot be read or does not cover the file. [] for a
    whole folder."""
    found = []
    for subfolder in subfolders:
        part = folder / subfolder  # one that is missing has nothing here: diffusers names it itself
        unread = _SLOW_TOKENIZER_FILES if (part / "tokenizer.json").is_file() else frozenset()
        # what reads a CLIP tokenizer's BPE tables in the file its parse finds them in (`clipcond.bpe_tables`)
        tables = _tables_reader(part, unread) if bpe_tables_read(part) else {}
        problems: dict[str, str | None] = {}
        read: TablesRead | None = None  # what `tables` found
        for path in sorted(part.iterdir()) if part.is_dir() else ():
            if path.name in unread:
                continue
            if path.name in _READ_JSON or (path.name.endswith(".index.json") and _of_variant(path, variant)):
                problems[path.name], reading = _json_problem(path, tables.get(path.name))
                read = reading if path.name in tables else read
            elif safetensors and path.name.endswith(_WEIGHTS_SUFFIX) and _of_variant(path, variant):
                problems[path.name] = _safetensors_problem(path)
        if not unread and problems.get("tokenizer_config.json", "missing") is None:
            problems.update(_missing_vocabulary(part))
        merges = part / "merges.txt"
        if merges.name not in unread and merges.is_file() and problems.get("vocab.json", "missing") is None:
            # tokenizers' BPE is built (for its verdict and error) only where the reading says the files may not fit
            built = read is not None and read[0]
            problems[merges.name] = None if built else _merges_problem(merges, part / "vocab.json")
        table_file = "tokenizer.json" if unread else merges.name  # the file that holds the merges
        if read and read[1] and problems.get(table_file) is None:
            problems[table_file] = _unmade_problem(table_file, read[1])
        for name, problem in sorted(problems.items()):
            if problem:
                found.append(f"{subfolder}/{name} {problem}" if subfolder else f"{name} {problem}")
    return found


def refuse_damaged_files(what: str, found: Sequence[str]) -> None:
    """Raise when `found` (what `damaged_files` returned, each entry perhaps behind a root)
    names damaged files of `what` (e.g. ``"the pipeline saved at <folder>"``).

    Raises:
        ValueError: ``"<what> has damaged files (cut short, or overwritten?): <found, joined
            by '; '>; nothing was loaded"``.
    """
    if found:
        raise ValueError(
            f"{what} has damaged files (cut short, or overwritten?): {'; '.join(found)}; nothing was loaded"
        )


def refuse_damaged_folder(what: str, folder: Path, subfolders: Iterable[str]) -> None:
    """`refuse_damaged_files` on `damaged_files` of `folder`'s `subfolders` (the files without a
    variant, safetensors files included), each behind `folder` (joined as text: a problem is no
    path).

    Raises:
        ValueError: naming `what` and each damaged file by its whole path.
    """
    found = damaged_files(folder, subfolders, None, safetensors=True)
    refuse_damaged_files(what, [os.path.join(folder, damage) for damage in found])


def _of_variant(path: Path, variant: str | None) -> bool:
    """Whether the weights file (or its index) `path` belongs to `variant`: for None, a name
    without a variant (`model.safetensors`, `model-00001-of-00002.safetensors`); else one with
    it (`model.fp16.safetensors`, `model.fp16-00001-of-00002.safetensors`)."""
    stem = path.name.removesuffix(".index.json").removesuffix(_WEIGHTS_SUFFIX)
    parts = stem.split(".")
    if variant is None:
        return len(parts) == 1
    return len(parts) == 2 and (parts[1] == variant or parts[1].startswith(f"{variant}-"))


def _json_problem(path: Path, tables: TablesReader | None) -> tuple[str | None, TablesRead | None]:
    """Why the JSON file `path` cannot be read as an object, or None; and, with `tables` (a
    CLIP tokenizer's ``tokenizer.json`` or ``vocab.json``: `_tables_reader`), what `tables`
    reads in the parsed file (`clipcond.bpe_tables`)."""
    raw = path.read_bytes()
    if not raw.strip():
        return "is empty", None
    read = tables or (lambda value: None)
    try:
        kind, reading = read_json_with_collector_paused(raw.decode("utf-8"), lambda value: (type(value), read(value)))
    except UnicodeDecodeError:
        return "is no UTF-8 text", None
    except json.JSONDecodeError as error:
        return f"is no valid JSON ({error.msg}: line {error.lineno}, column {error.colno})", None
    if kind is not dict:
        return f"holds a JSON {kind.__name__}, not an object", None
    return None, reading


def _unmade_problem(table_file: str, unmade: list[str]) -> str:
    """What is said of the file `table_file` that holds a CLIP tokenizer's merges when they do
    not make the vocabulary entries `unmade`."""
    consequence = "would split words into pieces the text encoder was not trained on"
    if table_file == "tokenizer.json":
        return f"{describe_unmade(unmade)}: its model.merges are cut short or damaged, and its tokenizer {consequence}"
    return f"is cut short or damaged: the tokenizer built from it and vocab.json {describe_unmade(unmade)}, and {consequence}"


def _tables_reader(part: Path, unread: frozenset[str]) -> dict[str, TablesReader]:
    """file -> what reads the BPE tables in that parsed file, for the CLIP tokenizer folder
    `part`: its ``tokenizer.json``, read alone when there is one (`unread` holds the files it
    replaces), else its ``vocab.json`` with the ``merges.txt`` beside it (`read_clip_files`;
    when that is UTF-8 text: otherwise `_merges_problem` names it), the added tokens being
    those its files name (`_named_special_tokens`)."""
    if unread:
        return {"tokenizer.json": lambda state: (True, unmade_in_tokenizer_json(state) or [])}
    try:
        merges = (part / "merges.txt").read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    special = _named_special_tokens(part)
    return {"vocab.json": lambda vocab: read_clip_files(vocab, merges, special) if isinstance(vocab, dict) else None}


# the settings of a tokenizer_config.json or special_tokens_map.json that name special tokens,
# which transformers adds to the tokenizer (a string, an AddedToken's {"content": ...}, or a list)
_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
    "extra_special_tokens",
)


def _named_special_tokens(part: Path) -> set[str]:
    """The tokens a CLIP tokenizer loaded from the folder `part` adds to its vocabulary: its
    class's default special tokens (`transformers.CLIPTokenizer`'s), those its
    ``tokenizer_config.json`` and ``special_tokens_map.json`` name, the ``added_tokens_decoder``
    of the former, and the ``added_tokens.json`` entries (files that cannot be read add none:
    `damaged_files` names them)."""
    import inspect

    import transformers

    parameters = inspect.signature(transformers.CLIPTokenizer.__init__).parameters.values()
    named = {p.default for p in parameters if p.name.endswith("_token") and isinstance(p.default, str)}
    settings = [json_object_in(part / "tokenizer_config.json"), json_object_in(part / "special_tokens_map.json")]
    values: list[Any] = [setting.get(key) for setting in settings for key in _SPECIAL_TOKEN_KEYS]
    values += list((settings[0].get("added_tokens_decoder") or {}).values())
    values += list(json_object_in(part / "added_tokens.json"))
    while values:
        value = values.pop()
        if isinstance(value, str):
            named.add(value)
        elif isinstance(value, dict):
            values.append(value.get("content"))
        elif isinstance(value, list):
            values.extend(value)
    return named


def _missing_vocabulary(part: Path) -> dict[str, str]:
    """file -> problem for each vocabulary file that the tokenizer folder `part`, which has no
    `tokenizer.json`, lacks, when its (whole) `tokenizer_config.json` names a CLIP, T5 or
    tokenizers-backed tokenizer class: without them, transformers 5 built a tokenizer of its
    special tokens alone (CLIP: 2, T5: 4) that reads every word as unknown, with no error, or
    (CLIP without one of its two files; a tokenizers-backed class) raised a ValueError naming
    no file."""
    import transformers

    name = _tokenizer_class(part)
    if name not in _VOCABULARY_CHECKED_CLASSES:
        return {}
    needed = sorted(set(getattr(transformers, name).vocab_files_names.values()) - {"tokenizer.json"})
    problem = (
        f"is missing, and there is no tokenizer.json (a {name} is built from tokenizer.json, or from "
        f"{' and '.join(needed)}: without them, transformers built a tokenizer of its special tokens alone that reads "
        "every word as unknown, or raised an error naming no file)"
    )
    return {file: problem for file in needed if not (part / file).is_file()}


def _merges_problem(merges: Path, vocab: Path) -> str | None:
    """Why tokenizers cannot build BPE tables from `vocab` and the merge rules `merges`, as
    transformers builds a tokenizer without a `tokenizer.json` (it passes both paths to
    `tokenizers.models.BPE`), or None. `vocab` is a whole JSON file (`_json_problem`)."""
    from tokenizers.models import BPE

    try:
        BPE(str(vocab), str(merges))
    except Exception as error:  # tokenizers raises bare `Exception`s
        return f"does not fit vocab.json as BPE merges (tokenizers: {error})"
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


def config_value_errors() -> tuple[type[BaseException], ...]:
    """The errors a `config.json` value of the wrong type raises while a model is built from it
    (transformers 5 checks its configs' field types, huggingface_hub's `StrictDataclassError`;
    diffusers' models fail inside torch, a `TypeError`). The folder checks above pass such a file:
    it is whole JSON."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # huggingface_hub before its strict dataclasses: transformers 4.x configs
        return (TypeError,)
    return (TypeError, StrictDataclassError)


__all__ = [
    "bpe_tables_read",
    "check_tables_after_load",
    "config_value_errors",
    "damaged_files",
    "refuse_damaged_files",
    "refuse_damaged_folder",
]
