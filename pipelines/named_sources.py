"""`clipcond generate`'s ``--lora`` and ``--embedding`` values: ``[NAME=]SOURCE``, weights at
SOURCE (a local file or folder, or a hub id: `model_source`) under the name a prompt writes.

- ``--lora``: the adapter NAME, which a ``<lora:NAME:0.8>`` tag picks. By default the name
  A1111 gives a LoRA: its file's name without the suffix, its folder's name, or a hub id's
  last part (`lora_argument`).
- ``--embedding``: the textual-inversion token NAME, the word a prompt writes (``embedding:NAME``
  in ComfyUI's syntax). By default a file's name without its suffix, as A1111 and ComfyUI name
  an embedding file; a folder or a hub id keeps the token its file holds, as diffusers'
  `load_textual_inversion` reads it (`embedding_argument`).

A value that is an existing path is a source whole, ``=`` included; so is one whose part
before ``=`` holds a path separator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipcond.errors import UsageError
from clipcond.pipelines.saved_pipelines import model_source

# The characters an adapter name cannot hold, and why.
_UNFIT_IN_ADAPTER_NAMES = {
    ".": "diffusers' adapters cannot take (it names the adapter's layers)",
    ":": "a <lora:name:0.8> tag reads as the end of the name",
    ">": "a <lora:name> tag reads as its end",
    "=": "a <lora:...> tag reads as a named multiplier (te=0.5)",
}
# A token is one word of a prompt.
_UNFIT_IN_TOKENS = {mark: "a prompt reads as two words" for mark in (" ", "\t", "\n")}


@dataclass(frozen=True)
class NamedSource:
    """One ``--lora`` or ``--embedding``.

    Attributes:
        name: the adapter's name (which a ``<lora:name>`` tag uses) or the embedding's token;
            None for an embedding whose token is the one its file holds.
        source: where the weights are: a local file or folder, or a hub id (`model_source`).
        written: the value as given on the command line, for messages.
    """

    name: str | None
    source: str | Path
    written: str


def _split(value: str, option: str) -> tuple[str | None, str | Path]:
    """(the name written before ``=`` or None, the source) of an `option` value."""
    name, equals, rest = value.partition("=")
    if equals and rest and not any(mark in name for mark in ("/", os.sep)) and not Path(value).expanduser().exists():
        return name, model_source(rest, option)
    return None, model_source(value, option)


def _checked(value: str, option: str, name: str, origin: str, given: bool, unfit: dict[str, str]) -> str:
    """`name` if it is not empty and holds no character of `unfit`; a `UsageError` saying
    which and how to name it otherwise."""
    what = "adapter name" if option == "--lora" else "token"
    placeholder = "NAME" if option == "--lora" else "TOKEN"
    fix = f"give it another: {option} {placeholder}=SOURCE" if given else f"name it: {option} {placeholder}={value}"
    if not name:
        raise UsageError(f"{option} {value}: the {what} would be empty ({origin}); {fix}")
    for mark, why in unfit.items():
        if mark in name:
            raise UsageError(f"{option} {value}: the {what} {name!r} ({origin}) holds {mark!r}, which {why}; {fix}")
    return name


def lora_argument(value: str) -> NamedSource:
    """The ``--lora`` `value`: ``SOURCE``, or ``NAME=SOURCE`` to name the adapter.

    Raises:
        UsageError: a source that is no existing path or hub id (`model_source`), or a name
            that is empty or holds a character of `_UNFIT_IN_ADAPTER_NAMES`, saying why and how to name it.
    """
    given, source = _split(value, "--lora")
    if given is not None:
        name, origin = given, "given before '='"
    elif isinstance(source, str):
        name, origin = source.rsplit("/", 1)[-1], "the hub id's last part"
    elif source.is_dir():
        name, origin = source.resolve().name, "the folder's name"
    else:
        name, origin = source.stem, "the file's name"
    name = _checked(value, "--lora", name, origin, given is not None, _UNFIT_IN_ADAPTER_NAMES)
    return NamedSource(name, source, value)


def embedding_argument(value: str) -> NamedSource:
    """The ``--embedding`` `value`: ``SOURCE``, or ``TOKEN=SOURCE`` to choose the token.

    Raises:
        UsageError: a source that is no existing path or hub id (`model_source`), or a token
            that is empty or holds whitespace, saying how to name it.
    """
    given, source = _split(value, "--embedding")
    if given is not None:
        name, origin = given, "given before '='"
    elif isinstance(source, Path) and not source.is_dir():
        name, origin = source.stem, "the file's name"
    else:
        return NamedSource(None, source, value)  # the token the folder's file holds
    return NamedSource(_checked(value, "--embedding", name, origin, given is not None, _UNFIT_IN_TOKENS), source, value)


def check_names(arguments: list[NamedSource], option: str) -> None:
    """Every named value of one `option` has its own name.

    Raises:
        UsageError: two share one, naming both values.
    """
    seen: dict[str, NamedSource] = {}
    placeholder = "NAME" if option == "--lora" else "TOKEN"
    for argument in arguments:
        if argument.name is None:
            continue
        if argument.name in seen:
            what = "the adapter" if option == "--lora" else "the token"
            named = f"{argument.name}="
            source = argument.written[len(named) :] if argument.written.startswith(named) else argument.written
            raise UsageError(
                f"{option} {seen[argument.name].written} and {option} {argument.written} would both be {what} "
                f"{argument.name!r}: name one: {option} {placeholder}={source}"
            )
        seen[argument.name] = argument
