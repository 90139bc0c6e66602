"""The words a pipeline's UNet read in training: `vocabulary.txt` beside its components.

`clipcond train-diffusion` writes it for runs on the shapes stream, whose caption vocabulary is
known exactly (`clipcond.shapes.captions.caption_vocabulary`); the bundled model has one.
`clipcond generate` reads it to warn about prompt words the model never saw
(`warn_about_vocabulary`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VOCABULARY_FILE = "vocabulary.txt"


def write_vocabulary(folder: str | Path, words: Iterable[str]) -> Path:
    """Write `words` (sorted, one per line) to `folder`/vocabulary.txt; returns the path."""
    path = Path(folder) / VOCABULARY_FILE
    path.write_text("".join(f"{word}\n" for word in sorted(set(words))), encoding="utf-8")
    return path


def read_vocabulary(folder: str | Path) -> frozenset[str] | None:
    """The words in `folder`/vocabulary.txt, or None when the folder has none.

    Raises:
        ValueError: the file is not UTF-8 text (naming it).
    """
    path = Path(folder) / VOCABULARY_FILE
    if not path.is_file():
        return None
    try:
        return frozenset(path.read_text(encoding="utf-8").split())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from error


def unknown_words(
    prompt: str, vocabulary: frozenset[str], syntax: str = "a1111", tokens: Iterable[str] = ()
) -> list[str]:
    """The words of `prompt` (weights syntax and BREAK aside, read in `syntax`: "a1111",
    "comfy" or "compel", whose blend and weighted conjunction parts are read too; lower case, in
    order, once each) that are not in `vocabulary`. `tokens`: the tokens the tokenizer added
    (textual inversion embeddings), which are no words: each is taken out of the text wherever
    it stands, case aside, as the tokenizer finds it before reading words."""
    from clipcond.prompt_syntaxes import prompt_fragments

    fragments = prompt_fragments(prompt, syntax)
    text = " ".join(fragment.text for fragment in fragments if not fragment.is_break).lower()
    for token in sorted({token.lower() for token in tokens if token}, key=len, reverse=True):
        text = text.replace(token, " ")
    words = dict.fromkeys(re.findall(r"[^\W\d_]+", text))
    return [word for word in words if word not in vocabulary]


def added_tokens(pipe: Any) -> list[str]:
    """The tokens the tokenizers of the pipeline `pipe` (``tokenizer``, ``tokenizer_2``) hold
    beyond their vocabulary: the special tokens and the textual inversion embeddings loaded."""
    tokenizers = [getattr(pipe, name, None) for name in ("tokenizer", "tokenizer_2")]
    return [token for tokenizer in tokenizers if tokenizer is not None for token in tokenizer.get_added_vocab()]


def warn_about_vocabulary(
    prompt: str, model: str | Path, syntax: str = "a1111", tokens: Iterable[str] = ()
) -> str | None:
    """The warning for a prompt the model at `model` never read in training (None when it has
    no `vocabulary.txt`, or the prompt uses only its words and `tokens`); printed to stderr too.
    `syntax`: how the prompt writes weights; `tokens`: its tokenizers' added tokens (both as
    `unknown_words` reads them)."""
    path = Path(model) / VOCABULARY_FILE
    vocabulary = read_vocabulary(model)
    if vocabulary is None:
        return None
    if not prompt.strip():
        message = "the prompt is empty: the model draws an unconditional sample"
    else:
        unknown = unknown_words(prompt, vocabulary, syntax, tokens)
        if not unknown:
            return None
        message = (
            f"the model never read {', '.join(repr(word) for word in unknown)} in training, so it will draw what it "
            f"knows instead; its words are listed in {path}"
        )
    print(f"warning: {message}", file=sys.stderr)
    return message
