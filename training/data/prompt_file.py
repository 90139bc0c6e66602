"""A text file of prompts, one per line: the simplest caption source of `clipcond encode`."""

from __future__ import annotations

from pathlib import Path

from clipcond.training.data.sources import SkipCounter, clean_caption


def prompt_file_captions(path: str | Path, skipped: SkipCounter) -> list[str]:
    """The prompts of a UTF-8 text file, one per line, whitespace collapsed as every caption
    source does (`clean_caption`); blank lines are skipped and counted ("empty caption").
    A line ends at "\n" only ("\r\n" too): other Unicode line breaks inside a line (U+2028,
    form feed, ...) are whitespace, as in the manifest and shard readers, and a byte-order mark
    at the start is not part of the first prompt.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not UTF-8 (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    try:
        # newline="": Python's universal newlines would end a line at a lone "\r" too
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error}") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    captions = []
    for line in lines:
        caption = clean_caption(line)
        if caption:
            captions.append(caption)
        else:
            skipped.skip("empty caption", str(path))
    return captions
