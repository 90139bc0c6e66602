"""Text tokenizers for the conditioning encoders, built offline.

`clip_tokenizer()` returns OpenAI's CLIP byte-level BPE tokenizer as a
transformers tokenizer, built from the vocabulary shipped with this package
(`clipcond/data/bpe_simple_vocab_16e6.txt.gz`), so no hub download is needed.
Its ids equal OpenAI's reference `clip.simple_tokenizer.SimpleTokenizer`:
transformers' CLIP tokenizer alone skips the reference's ftfy/html text
cleaning, so the subclass here applies that cleaning to every text it encodes.

`t5_tokenizer()` loads a T5 tokenizer through `transformers.AutoTokenizer`, as
`load_saved_tokenizer()` loads any saved tokenizer.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import json
import numbers
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import ftfy
import transformers

# diffusers records a pipeline component as (module, class) in model_index.json and, to load
# it back, looks up the transformers base classes *by name on that module*. Exposing them here
# lets a pipeline holding our tokenizer round-trip through save_pretrained/from_pretrained.
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast  # noqa: F401

from clipcond.json_reading import collector_paused
from clipcond.tokenizer_copy import deep_copy_clip_tokenizer

__all__ = [
    "CLIP_BOS_TOKEN",
    "CLIP_EOS_TOKEN",
    "CLIP_VOCAB_SIZE",
    "CLIPTokenizerWithTextCleaning",
    "bytes_to_unicode",
    "clean_clip_text",
    "clip_tokenizer",
    "load_clip_bpe",
    "with_clip_text_cleaning",
    "load_saved_tokenizer",
    "t5_tokenizer",
]

CLIP_BOS_TOKEN = "<|startoftext|>"
CLIP_EOS_TOKEN = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
"""256 byte symbols, the same 256 ending a word, 48894 merges and the two special tokens."""

_BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI keeps the first 49152 - 256 - 2 merges of the file (line 0 is a version header).
_NUM_MERGES = 49152 - 256 - 2
_WORD_END = "</w>"

# transformers 5 made `CLIPTokenizer` the tokenizers-backed class and takes the
# vocabulary in memory; in 4.x that name is the pure-Python class and the fast
# one is `CLIPTokenizerFast`, which wants vocab/merges files.
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
_TransformersCLIPTokenizer = transformers.CLIPTokenizer if _TRANSFORMERS_MAJOR >= 5 else transformers.CLIPTokenizerFast
_SAVED_TOKENIZER_CLASS = "CLIPTokenizer"

_WHITESPACE_RUN = re.compile(r"\s+")
# The one assigned character that OpenAI's token pattern drops (its regex matches none of the
# pattern's alternatives at it); tests/test_tokenization.py sweeps every assigned code point.
_UNMATCHED_BY_CLIP_PATTERN = "\u0345"


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte value to a printable unicode character (GPT-2's byte-level BPE alphabet).

    Printable Latin-1 bytes map to themselves; the remaining 68 bytes (controls,
    space, a few Latin-1 gaps) map, in increasing byte order, to U+0100 onwards,
    so that no BPE symbol is whitespace or a control character.

    Returns:
        `{byte: character}` with 256 entries, ordered by the printable bytes first
        and then the remapped ones; this order is the order of CLIP's first 256 ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(next_code_point)
            next_code_point += 1
    return mapping


def load_clip_bpe(path: str | os.PathLike[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read CLIP's BPE vocabulary file and build the token-to-id table and the merge list.

    Args:
        path: a gzip file in OpenAI's `bpe_simple_vocab_16e6.txt.gz` format; `None`
            reads the copy shipped in `clipcond/data/` (read once per process: later calls
            return copies of the first result: about 1 ms instead of 80 ms on 2 CPU cores).

    Returns:
        `(vocab, merges)`: `vocab` maps each of the 49408 tokens to its id (byte
        symbols 0-255, byte symbols ending a word 256-511, one token per merge,
        then `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407); `merges` is
        the 48894 merge rules as `(left, right)` pairs in priority order. Both are the
        caller's to change.
    """
    if path is None:
        vocab, merges = _bundled_clip_bpe()
        return dict(vocab), list(merges)
    return _parse_clip_bpe(Path(path).read_bytes(), str(path))


@functools.cache
def _bundled_clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """`load_clip_bpe` of the vocabulary in `clipcond/data/` (package data: it does not change
    while a process runs). Callers copy what they return."""
    data = (importlib.resources.files("clipcond") / "data" / _BPE_FILE_NAME).read_bytes()
    return _parse_clip_bpe(data, _BPE_FILE_NAME)


def _parse_clip_bpe(data: bytes, name: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """`load_clip_bpe` of the gzip file `data`; `name` is the file errors name."""
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merge_lines = lines[1 : _NUM_MERGES + 1]
    merges: list[tuple[str, str]] = []
    for line_number, line in enumerate(merge_lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{name}: line {line_number} should hold two BPE symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != _NUM_MERGES:
        raise ValueError(f"{name}: expected {_NUM_MERGES} merges, found {len(merges)}")

    byte_symbols = list(bytes_to_unicode().values())
    tokens = [
        *byte_symbols,
        *(symbol + _WORD_END for symbol in byte_symbols),
        *("".join(merge) for merge in merges),
        CLIP_BOS_TOKEN,
        CLIP_EOS_TOKEN,
    ]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{name}: expected {CLIP_VOCAB_SIZE} distinct tokens, got {len(vocab)}")
    return vocab, merges


def clean_clip_text(text: str) -> str:
    """Clean a prompt the way OpenAI's CLIP tokenizer does before BPE.

    Repairs broken unicode and mojibake with `ftfy.fix_text` (which also applies
    NFC), unescapes HTML entities twice (so `&amp;amp;` becomes `&`), collapses
    whitespace runs to one space, strips the ends and lowercases. A lone U+0345
    (combining ypogegrammeni, which NFC has not folded into a letter) becomes a
    word break: OpenAI's token pattern matches none of its alternatives there and
    drops the character, splitting the word around it.

    Returns:
        The cleaned text; the special-token strings `<|startoftext|>` and
        `<|endoftext|>` pass through unchanged.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).replace(_UNMATCHED_BY_CLIP_PATTERN, " ")
    return _WHITESPACE_RUN.sub(" ", text).strip().lower()


def _clean_nested(value: Any) -> Any:
    """Apply `clean_clip_text` to a str, or to every str inside (nested) lists and tuples."""
    if isinstance(value, str):
        return clean_clip_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_clean_nested(item) for item in value)
    return value


class CLIPTokenizerWithTextCleaning(_TransformersCLIPTokenizer):
    """transformers' fast CLIP tokenizer plus OpenAI's ftfy/html text cleaning.

    Every text that enters (single strings, batches, text pairs, pre-split
    words) goes through `clean_clip_text` first, which makes the ids equal to
    OpenAI's reference tokenizer; transformers alone only applies NFC, whitespace
    collapsing and lowercasing. Build one with `clip_tokenizer()`.

    Known differences remain:
    - a literal `<|endoftext|>` or `<|startoftext|>` glued to a preceding
      punctuation mark or emoji (`"hi!<|endoftext|>"`) is the special token here,
      while OpenAI's regex reads it as punctuation and letters;
    - characters newer than the running Python's Unicode database (unassigned in
      Python 3.11's Unicode 14, such as U+323B0 of CJK extension J): tokenizers' own
      Unicode tables read them, and OpenAI's `regex` and `str.lower` read them by
      another Unicode version. A sweep of every code
      point (tests/test_tokenization.py, marked slow) finds no other difference.

    `save_pretrained` writes `"tokenizer_class": "CLIPTokenizer"`, so the folder
    loads with plain `transformers.CLIPTokenizer` / `AutoTokenizer` or diffusers;
    such a reload loses only the ftfy/html cleaning (ids differ only on text that
    cleaning would change: mojibake, HTML entities, curly quotes, ligatures,
    full-width letters and the like).
    """

    # transformers 4.x fast tokenizers funnel every encode call through
    # `_batch_encode_plus`; transformers 5 through `_encode_plus`. Clean in
    # exactly one of them: cleaning twice would unescape HTML four times.
    if hasattr(_TransformersCLIPTokenizer, "_batch_encode_plus"):

        def _batch_encode_plus(self, batch_text_or_text_pairs: Any, *args: Any, **kwargs: Any) -> Any:
            return super()._batch_encode_plus(_clean_nested(batch_text_or_text_pairs), *args, **kwargs)

    else:

        def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any) -> Any:
            return super()._encode_plus(_clean_nested(text), _clean_nested(text_pair), *args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> CLIPTokenizerWithTextCleaning:
        """`copy.deepcopy` in less time, with a copy that decodes as the original
        (`clipcond.tokenizer_copy.deep_copy_clip_tokenizer`)."""
        return deep_copy_clip_tokenizer(self, memo)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        legacy_format: bool | None = None,
        filename_prefix: str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> tuple[str, ...]:
        """Save as a plain transformers `CLIPTokenizer` folder.

        Writes what transformers writes, with `tokenizer_config.json` naming
        `"tokenizer_class": "CLIPTokenizer"` (not this subclass, which plain
        transformers/diffusers cannot import) and with `vocab.json`/`merges.txt`
        present so transformers 4's pure-Python `CLIPTokenizer` loads it too.
        Reloading with plain transformers gives the same tokenizer without the
        ftfy/html cleaning of `clean_clip_text`.

        Returns:
            The paths of the files written, as transformers returns them.
        """
        if push_to_hub:
            raise ValueError(
                "CLIPTokenizerWithTextCleaning.save_pretrained(push_to_hub=True) is not supported: "
                "save to a local folder, then upload it with huggingface_hub.upload_folder."
            )
        saved = super().save_pretrained(
            save_directory, legacy_format=legacy_format, filename_prefix=filename_prefix, **kwargs
        )
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        config_path = Path(save_directory) / f"{prefix}tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = _SAVED_TOKENIZER_CLASS
        config_path.write_text(
            json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if not (Path(save_directory) / f"{prefix}vocab.json").exists():
            extra = self.backend_tokenizer.model.save(str(save_directory), filename_prefix)
            saved = (*saved, *extra)
        return saved


def _checked_max_length(value: Any) -> int:
    """`model_max_length` as a Python int >= 2 (a numpy integer reads as the int it holds); a
    TypeError or ValueError naming it otherwise, before a tokenizer exists that every call
    would fail on."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`model_max_length` must be an int (the encoder's context length, 77 for CLIP), "
            f"got {type(value).__name__} {value!r}"
        )
    if value < 2:
        raise ValueError(f"`model_max_length` must be at least 2 (bos and eos), got {value}")
    return int(value)


def clip_tokenizer(model_max_length: int = 77, pad_token: str = CLIP_EOS_TOKEN) -> CLIPTokenizerWithTextCleaning:
    """Build OpenAI's CLIP tokenizer offline from the vocabulary shipped with clipcond.

    Args:
        model_max_length: the text encoder's context length; `truncation=True` and
            `padding="max_length"` use it. 77 for every CLIP text encoder in SD 1.x/2.x/SDXL.
        pad_token: `"<|endoftext|>"` (id 49407) as in transformers' `openai/clip-vit-*`
            tokenizers and SD 1.x, or `"!"` (id 0) as in SD 2.x and SDXL's second text
            encoder (OpenCLIP). Must be a token of the vocabulary.

    Returns:
        A `CLIPTokenizerWithTextCleaning` (a transformers CLIP tokenizer) with
        49408 tokens, bos `<|startoftext|>` = 49406, eos `<|endoftext|>` = 49407.
        `tok(texts, padding="max_length", truncation=True).input_ids` gives lists of
        `model_max_length` ids: bos, the text's ids cut so that eos stays last, eos, then
        the pad. Up to and including eos they equal OpenAI's `clip.tokenize(truncate=True)`
        (but for the known difference `CLIPTokenizerWithTextCleaning` names); after eos,
        `clip.tokenize` and open_clip's `tokenize` have id 0, not the pad token. With
        `pad_token="!"` a "!" in the text is read as that special token, not merged by
        the BPE (transformers matches a special token wherever it appears), so those rows
        differ from `clip.tokenize`'s around every "!". The pooled output of a causal CLIP text encoder
        does not depend on the pad; the hidden states at the padding positions, which SD
        conditioning reads, do. Building takes a fraction of a second; keep the instance.
    """
    model_max_length = _checked_max_length(model_max_length)
    vocab, merges = load_clip_bpe()
    if pad_token not in vocab:
        raise ValueError(
            f"pad_token {pad_token!r} is not in the CLIP vocabulary; use '<|endoftext|>' "
            "(transformers' openai/clip-vit-*, SD 1.x) or '!' (OpenCLIP: SD 2.x, SDXL's second encoder)"
        )
    options = {"model_max_length": model_max_length, "pad_token": pad_token}
    if _TRANSFORMERS_MAJOR >= 5:
        return CLIPTokenizerWithTextCleaning(vocab=vocab, merges=merges, **options)
    # transformers 4.x: the fast tokenizer is converted from files, read once at construction.
    with tempfile.TemporaryDirectory(prefix="clipcond-bpe-") as folder:
        vocab_file = Path(folder) / "vocab.json"
        merges_file = Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text(
            "#version: 0.2\n" + "\n".join(f"{left} {right}" for left, right in merges) + "\n", encoding="utf-8"
        )
        return CLIPTokenizerWithTextCleaning(vocab_file=str(vocab_file), merges_file=str(merges_file), **options)


def with_clip_text_cleaning(tokenizer: Any, context_length: int | None = None) -> Any:
    """`tokenizer` with OpenAI's text cleaning when it has exactly OpenAI's CLIP vocabulary.

    A CLIP folder that clipcond wrote (the bundled model, a train-diffusion pipeline, a
    train-clip tower, a convert-clip folder) saves `clip_tokenizer()` as a plain
    `CLIPTokenizer`, so `AutoTokenizer` reads it back without the cleaning. A conditioner YAML
    passes such a folder's tokenizer through here (a folder that declares clipcond's tokenizer:
    `clipcond.encoder_loading`), and train-diffusion every tokenizer it reads (its captions are
    read as train-clip reads them), so one folder gives one tokenizer on every route.

    Args:
        tokenizer: a loaded tokenizer (any kind).
        context_length: the text encoder's positions; the context is the smaller of it and
            `tokenizer.model_max_length`. None keeps `tokenizer.model_max_length`.

    Returns:
        `clip_tokenizer()` with `tokenizer`'s pad token (`<|endoftext|>` when it has none) and
        that context when `tokenizer.get_vocab()` equals OpenAI's 49408 tokens (no added
        tokens); `tokenizer` itself otherwise (another vocabulary, added tokens, a T5
        tokenizer, one that already cleans).
    """
    if isinstance(tokenizer, CLIPTokenizerWithTextCleaning) or not hasattr(tokenizer, "get_vocab"):
        return tokenizer
    # the bundled table is only read here: no copy
    if len(tokenizer) != CLIP_VOCAB_SIZE or tokenizer.get_vocab() != _bundled_clip_bpe()[0]:
        return tokenizer
    context = int(tokenizer.model_max_length)
    if context_length is not None:
        context = min(context, int(context_length))
    pad_token = CLIP_EOS_TOKEN if tokenizer.pad_token is None else str(tokenizer.pad_token)
    return clip_tokenizer(model_max_length=context, pad_token=pad_token)


def t5_tokenizer(path_or_id: str, **kwargs: Any) -> transformers.PreTrainedTokenizerBase:
    """Load a T5 tokenizer (T5, T5 v1.1, Flan-T5, the SD3/Flux T5-XXL) with `AutoTokenizer`.

    Args:
        path_or_id: a local folder or a hub id such as `"google/t5-v1_1-xxl"`; a hub
            id downloads unless the files are cached or `HF_HUB_OFFLINE=1`.
        **kwargs: passed to `transformers.AutoTokenizer.from_pretrained`
            (e.g. `model_max_length=512`, `subfolder="tokenizer_3"`).

    Returns:
        The tokenizer transformers picks for that folder (usually the fast
        sentencepiece-converted `T5Tokenizer`); eos `</s>` = 1 and pad `<pad>` = 0.
    """
    return load_saved_tokenizer(path_or_id, **kwargs)


# the files a saved tokenizer is read from (transformers' fast and slow CLIP, T5 and
# SentencePiece tokenizers); a local folder with none of them holds no tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model")


def load_saved_tokenizer(path_or_id: str | os.PathLike[str], **kwargs: Any) -> transformers.PreTrainedTokenizerBase:
    """`transformers.AutoTokenizer.from_pretrained(path_or_id, **kwargs)` with Python's cyclic
    garbage collector paused: transformers' parses of `tokenizer.json` and `vocab.json` set off
    full collections in a process holding torch (`clipcond.json_reading.collector_paused`).

    Raises:
        FileNotFoundError: a local folder (`path_or_id`, in its `subfolder` when given) holding
            none of `TOKENIZER_FILES`: transformers 5 builds a tokenizer of the model's type
            without a vocabulary from one (a T5 model folder alone gave a T5 tokenizer of its
            104 special tokens, reading every word as `<unk>`), with no error.
    """
    folder = Path(path_or_id, kwargs.get("subfolder") or "")
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} holds no tokenizer file (none of {', '.join(TOKENIZER_FILES)})")
    with collector_paused():
        return transformers.AutoTokenizer.from_pretrained(path_or_id, **kwargs)
