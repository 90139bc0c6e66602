"""Two references for clipcond's CLIP tokenizer, neither of them installed nor taken from clipcond.

1. OpenAI's own `clip/simple_tokenizer.py`, read out of the clip-anytorch wheel FILE: the
   module is compiled from the source text inside the zip and given the BPE file's bytes, so
   the `clip` package is never installed or imported (its `__init__` needs torchvision).
   The wheel is looked for in `.reference-wheels/` at the repository root (git-ignored;
   `.ci/run` downloads it there), or where `CLIPCOND_REFERENCE_WHEELS` points (a folder
   holding the wheel, or the wheel file itself). Fetch it with `FETCH_COMMAND`.
2. transformers' `CLIPTokenizer` (the plain class, not clipcond's subclass), loaded from a
   vocab.json/merges.txt pair that this module derives from the BPE file the way OpenAI's
   `SimpleTokenizer.__init__` does, with OpenAI's text cleaning applied before it. Always
   available. With transformers 5 that class runs on the `tokenizers` engine, as clipcond's
   does, so this reference checks clipcond's vocabulary, merges, cleaning and options, not
   the BPE engine; OpenAI's reference checks everything.
"""

from __future__ import annotations

import gzip
import html
import importlib.resources
import io
import json
import os
import types
import zipfile
from pathlib import Path
from typing import Any

import ftfy
import regex
import transformers

REPO = Path(__file__).resolve().parents[1]
WHEEL_NAME = "clip_anytorch-2.6.0-py3-none-any.whl"
WHEEL_ENV = "CLIPCOND_REFERENCE_WHEELS"
DEFAULT_WHEEL_DIR = REPO / ".reference-wheels"
FETCH_COMMAND = "pip download --no-deps clip-anytorch==2.6.0 -d .reference-wheels"
BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# SimpleTokenizer keeps lines 1 .. 49152 - 256 - 2 of the BPE file (line 0 is a version header).
_MERGE_COUNT = 49152 - 256 - 2


def clip_wheel_path() -> tuple[Path | None, str]:
    """Where the clip-anytorch wheel is: `(path, "")`, or `(None, one-line reason it is not)`."""
    configured = os.environ.get(WHEEL_ENV)
    place = Path(configured) if configured else DEFAULT_WHEEL_DIR
    wheel = place if place.is_file() else place / WHEEL_NAME
    if wheel.is_file():
        return wheel, ""
    origin = f" (from {WHEEL_ENV})" if configured else ""
    fetch = FETCH_COMMAND if not configured else f"pip download --no-deps clip-anytorch==2.6.0 -d {place}"
    return None, f"OpenAI's reference tokenizer: no {WHEEL_NAME} at {place}{origin}; fetch it with: {fetch}"


def openai_reference_tokenizer(wheel: Path) -> Any:
    """OpenAI's `SimpleTokenizer`, compiled from `clip/simple_tokenizer.py` inside `wheel`.

    Returns:
        A `SimpleTokenizer`: `.encode(text)` gives the BPE ids without bos/eos, `.encoder`
        maps each of the 49408 tokens to its id.
    """
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read("clip/simple_tokenizer.py").decode("utf-8")
        bpe = archive.read(f"clip/{BPE_FILE_NAME}")
    module = types.ModuleType("_openai_clip_simple_tokenizer")
    module.__file__ = f"{wheel}/clip/simple_tokenizer.py"  # its default_bpe() only joins a path to it
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.SimpleTokenizer(io.BytesIO(bpe))  # gzip.open reads a file object as well as a path


def openai_bpe_bytes(wheel: Path) -> bytes:
    """The BPE vocabulary file shipped inside the clip-anytorch wheel, as bytes."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(f"clip/{BPE_FILE_NAME}")


def packaged_bpe_bytes() -> bytes:
    """The BPE vocabulary file shipped in clipcond/data, as bytes (the file, not clipcond's reader)."""
    return (importlib.resources.files("clipcond") / "data" / BPE_FILE_NAME).read_bytes()


def _byte_symbols() -> list[str]:
    """GPT-2's byte alphabet in CLIP's id order: printable Latin-1 bytes stand for themselves,
    the other 68 bytes take U+0100, U+0101, ... in byte order."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(0x100 + k) for k in range(len(others))]


def vocab_and_merges(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    """OpenAI's derivation: the 256 byte symbols, the same 256 ending a word (`</w>`), one token
    per merge in rank order, then `<|startoftext|>` and `<|endoftext|>`.

    Returns:
        `(vocab, merges)`: token -> id (49408 entries) and the merge lines `"left right"`.
    """
    merges = gzip.decompress(bpe_gz).decode("utf-8").split("\n")[1 : _MERGE_COUNT + 1]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def openai_clean(text: str) -> str:
    """OpenAI's `basic_clean` then `whitespace_clean` then lowercase, as `SimpleTokenizer.encode` does."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class TransformersReference:
    """transformers' plain `CLIPTokenizer` from vocab.json/merges.txt written by `vocab_and_merges`,
    fed OpenAI-cleaned text; the same `.encode`/`.encoder` interface as OpenAI's `SimpleTokenizer`."""

    def __init__(self, bpe_gz: bytes, folder: Path) -> None:
        vocab, merges = vocab_and_merges(bpe_gz)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        self.tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
        self.encoder = self.tokenizer.get_vocab()

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` without bos/eos."""
        return self.tokenizer(openai_clean(text), add_special_tokens=False).input_ids
