"""A check that a loaded BPE tokenizer's merges make its vocabulary.

A byte-level BPE tokenizer (CLIP's, GPT-2's) reaches each vocabulary entry longer than one
symbol through exactly one merge rule: OpenAI's CLIP vocabulary is 256 byte symbols, the same
256 ending a word, 48,894 merged tokens and two special tokens, and each merged token is the
result of one of the 48,894 merges. A `merges.txt` cut short at a line's end, or emptied, still
loads in transformers (tokenizers refuses only a merge whose halves are not in the vocabulary)
and gives a tokenizer that splits words into smaller pieces: an empty one spelled "photo" as
five letters, ids the text encoder was never trained on, with no error. `check_bpe_tables`
refuses such a tokenizer where clipcond loads one from disk; `unmade_in_tokenizer_json` reads
a `tokenizer.json` file's own state the same way, and `read_clip_files` a CLIP
tokenizer's `vocab.json` and `merges.txt`, so that the folder check (`clipcond.file_damage`)
refuses its merges before anything loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from clipcond.json_reading import read_json_with_collector_paused

__all__ = ["check_bpe_tables", "describe_unmade", "read_clip_files", "unmade_in_tokenizer_json", "unmade_tokens"]

# how many of the entries no merge makes a refusal names
_NAMED = 3
# the end-of-word suffix of CLIP's BPE model
_CLIP_SUFFIX = "</w>"


def unmade_tokens(tokenizer: Any) -> list[str] | None:
    """The vocabulary entries of a BPE tokenizer that no merge rule makes: neither one base
    symbol (one character, with or without the model's end-of-word suffix or
    continuing-subword prefix) nor an added token nor the result of a merge. [] for a tokenizer
    whose merges make its whole vocabulary.

    Returns:
        The entries in the order of the tokenizer's vocabulary, or None for a tokenizer this cannot read: one without
        a tokenizers backend (a slow tokenizer) or whose model is no BPE (T5's Unigram).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return read_json_with_collector_paused(backend.to_str(), unmade_in_tokenizer_json)


def unmade_in_tokenizer_json(state: Any) -> list[str] | None:
    """`unmade_tokens` of a tokenizers state: a parsed ``tokenizer.json`` (or a backend's
    `to_str()`), its merges written as pairs (tokenizers >= 0.20) or as "first second" strings
    (older files). None for a state that is no BPE tokenizer's."""
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return None
    suffix = model.get("end_of_word_suffix") or ""
    prefix = model.get("continuing_subword_prefix") or ""
    pairs = (merge.split(" ", 1) if isinstance(merge, str) else merge for merge in model.get("merges") or ())
    made = {first + second.removeprefix(prefix) for first, second in pairs}  # the second half drops its prefix
    added = {token["content"] for token in state.get("added_tokens") or ()}
    unmade = []
    for token in model.get("vocab") or {}:  # in id order, as tokenizers writes it
        if token in made or token in added:
            continue
        if len(token.removeprefix(prefix).removesuffix(suffix)) > 1:
            unmade.append(token)
    return unmade


def read_clip_files(vocab: dict[str, Any], merges: str, special: Iterable[str]) -> tuple[bool, list[str]]:
    """Read a CLIP tokenizer's parsed ``vocab.json`` `vocab` and ``merges.txt`` text `merges`
    as tokenizers' `BPE` builds them for transformers, in one pass: (whether they fit, the
    vocabulary entries no merge makes: `unmade_tokens` of the tokenizer, its added tokens being
    the `special` ones; CLIP's model has the end-of-word suffix "</w>" and no subword prefix,
    as `transformers.CLIPTokenizer` builds it).

    They fit, and tokenizers builds them, when every id is an integer in [0, 2**64), every token
    is UTF-8 text (Python's JSON reads a lone surrogate, tokenizers' refuses it), and every line
    of the text, split at "\n" (a "\r" before one dropped) and skipping lines that start
    "#version", is a rule "first second" (one space) whose two tokens and their concatenation
    are in the vocabulary. Files that do not fit may still build (tokenizers leaves a value that
    is no number out of the vocabulary): their verdict is tokenizers' own.
    """
    fits = all(type(id_) is int and 0 <= id_ < 2**64 for id_ in vocab.values()) and _utf8("".join(vocab))
    ids = {token: id_ for token, id_ in vocab.items() if type(id_) in (int, float)}  # JSON numbers; a bool is none
    lines = merges.split("\n")
    last = lines.pop()  # what follows the last line break: "" for a file that ends with one
    lines = [line.removesuffix("\r") for line in lines] + ([last] if last else [])
    made = set(special)
    for line in lines:
        if line.startswith("#version"):
            continue
        parts = line.split(" ")
        merged = "".join(parts)
        if fits and (len(parts) != 2 or parts[0] not in ids or parts[1] not in ids or merged not in ids):
            fits = False
        made.add(merged)
    return fits, [token for token in ids if token not in made and len(token.removesuffix(_CLIP_SUFFIX)) > 1]


def _utf8(text: str) -> bool:
    """Whether `text` can be written as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_bpe_tables(tokenizer: Any, where: str) -> None:
    """Refuse a BPE tokenizer (loaded from `where`, which the error names) whose merges do not
    make its vocabulary (`unmade_tokens`); any other tokenizer passes.

    Raises:
        ValueError: naming `where`, how many entries no merge makes and the first of them.
    """
    unmade = unmade_tokens(tokenizer)
    if not unmade:
        return
    raise ValueError(
        f"the tokenizer of {where} {describe_unmade(unmade)}: its merges (merges.txt, or model.merges in "
        "tokenizer.json) are cut short or damaged, and it would split words into pieces the text encoder was not "
        "trained on"
    )


def describe_unmade(unmade: list[str]) -> str:
    """``"has <n> vocabulary entries that no merge rule makes (<the first 3>, ...)"``."""
    named = ", ".join(repr(token) for token in unmade[:_NAMED])
    return f"has {len(unmade)} vocabulary entries that no merge rule makes ({named}{', ...' if len(unmade) > _NAMED else ''})"
