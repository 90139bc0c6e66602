"""The prompt side of ``clipcond generate``: its LoRAs by name, and the checks of the prompt
and `--negative`.

`--lora [NAME=]SOURCE` may be given more than once. Each LoRA loads as the adapter NAME, by
default the name A1111 gives a LoRA: its file's name without the suffix, its folder's name, or
a hub id's last part (`lora_argument`). A prompt without LoRA tags runs every `--lora` at 1
(times `--lora-scale`); a ``<lora:NAME:0.8>`` tag runs the LoRAs the prompt tags, alone, at
their multipliers (`clipcond.pipelines.lora_tags`).

The prompt and the negative are checked twice, before sampling, each refusal a `UsageError`
naming which text it is: before the model loads, read in the syntax it will be read in
(`--syntax`, else the one the local model folder was saved with, `saved_syntax`;
`check_prompt_text`), and once it has loaded, against the LoRAs given and the pipeline's
conditioner (`check_prompt_against`: ComfyUI's ``embedding:name`` and what a hub model's
syntax refuses).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcond.errors import UsageError, one_line
from clipcond.network_tags import split_network_tags
from clipcond.pipelines.saved_pipelines import model_source
from clipcond.prompt_syntaxes import SYNTAXES, prompt_fragments

# The characters an adapter name cannot hold, and why.
_UNNAMEABLE = {
    ".": "diffusers' adapters cannot take (it names the adapter's layers)",
    ":": "a <lora:name:0.8> tag reads as the end of the name",
    ">": "a <lora:name> tag reads as its end",
    "=": "a <lora:...> tag reads as a named multiplier (te=0.5)",
}


@dataclass(frozen=True)
class LoraArgument:
    """One `--lora`.

    Attributes:
        name: the adapter's name, which a ``<lora:name>`` tag uses.
        source: where the weights are: a local file or folder, or a hub id (`model_source`).
        written: the value as given on the command line, for messages.
    """

    name: str
    source: str | Path
    written: str


def _default_name(source: str | Path) -> tuple[str, str]:
    """The name A1111 would give the LoRA at `source`, and where it comes from."""
    if isinstance(source, str):
        return source.rsplit("/", 1)[-1], "the hub id's last part"
    if source.is_dir():
        return source.resolve().name, "the folder's name"
    return source.stem, "the file's name"


def lora_argument(value: str) -> LoraArgument:
    """The `--lora` `value`: ``SOURCE``, or ``NAME=SOURCE`` to name the adapter. A value that is
    an existing path is a source whole, ``=`` included; so is one whose part before ``=`` holds
    a path separator.

    Raises:
        UsageError: a source that is no existing path or hub id (`model_source`), or a name
            that is empty or holds a character of `_UNNAMEABLE`, saying why and how to name it.
    """
    name, equals, rest = value.partition("=")
    named = bool(equals and rest) and not any(mark in name for mark in ("/", os.sep))
    if named and not Path(value).expanduser().exists():
        source, origin = model_source(rest, "--lora"), "given before '='"
    else:
        source = model_source(value, "--lora")
        name, origin = _default_name(source)
        named = False
    fix = "give it another: --lora NAME=SOURCE" if named else f"name it: --lora NAME={value}"
    if not name:
        raise UsageError(f"--lora {value}: the adapter would have no name ({origin}); {fix}")
    for mark, why in _UNNAMEABLE.items():
        if mark in name:
            raise UsageError(f"--lora {value}: the adapter name {name!r} ({origin}) holds {mark!r}, which {why}; {fix}")
    return LoraArgument(name, source, value)


def check_lora_names(loras: list[LoraArgument]) -> None:
    """Every `--lora` has its own adapter name.

    Raises:
        UsageError: two share one, naming both values.
    """
    seen: dict[str, LoraArgument] = {}
    for lora in loras:
        if lora.name in seen:
            raise UsageError(
                f"--lora {seen[lora.name].written} and --lora {lora.written} would both be the adapter {lora.name!r}: "
                f"name one: --lora NAME={lora.written}"
            )
        seen[lora.name] = lora


def saved_syntax(model: str | Path) -> str | None:
    """The prompt syntax the pipeline in the local folder `model` reads: its model_index.json's
    ``syntax`` ("a1111" where it has none, as a diffusers pipeline's). None where that is not
    known before loading: a hub id, or a file that is unreadable or names no syntax of
    `SYNTAXES` (the loader reports those)."""
    if isinstance(model, str):
        return None
    try:
        index = json.loads((Path(model) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    syntax = index.get("syntax", "a1111") if isinstance(index, dict) else None
    return syntax if syntax in SYNTAXES else None


def _refusal(which: str, error: BaseException) -> UsageError:
    """`error` (a parser's refusal of one text) as a `UsageError` naming `which` text
    (``prompt`` or ``--negative``); a message that starts by quoting the text as ``prompt
    '...'`` is named once."""
    message = one_line(error)
    if message.startswith("prompt '") or message.startswith('prompt "'):
        return UsageError(f"{which} {message[len('prompt ') :]}")
    return UsageError(f"{which}: {message}")


def _check_negative_tags(negative: str) -> None:
    """A1111's LoRA tags switch adapters for a whole call: the prompt holds them, not the
    negative (a tag that cannot be read is refused as in the prompt)."""
    try:
        _, tags = split_network_tags(negative)
    except ValueError as error:
        raise _refusal("--negative", error) from error
    if tags:
        raise UsageError(
            f"--negative: <lora:{tags[0].name}> is a LoRA tag, which switches LoRAs on for the whole call: write it in "
            "the prompt"
        )


def _without_tags(prompt: str, loras: list[LoraArgument]) -> str:
    """`prompt` (in A1111's syntax) without its LoRA tags, each of which names a `--lora`.

    Raises:
        UsageError: a tag that cannot be read, or names no `--lora` (saying which there are).
    """
    try:
        prompt, tags = split_network_tags(prompt)
    except ValueError as error:
        raise _refusal("prompt", error) from error
    names = sorted(lora.name for lora in loras)
    for tag in tags:
        if tag.name not in names:
            given = f"the --lora adapters are {', '.join(names)}" if names else "no --lora was given"
            raise UsageError(
                f"prompt: <lora:{tag.name}> names no --lora: {given} (each named after its file, folder or hub id, or "
                "NAME in --lora NAME=SOURCE)"
            )
    return prompt


def check_prompt_text(prompt: str, negative: str | None, syntax: str, loras: list[LoraArgument]) -> None:
    """Read `prompt` and `negative` in `syntax` as the conditioner will (`prompt_fragments`),
    before any model loads; in A1111's syntax, each LoRA tag of the prompt names one of `loras`.

    Raises:
        UsageError: what the syntax refuses in either text, naming it; in A1111's syntax, a
            tag that names no `--lora`, or a LoRA tag in the negative.
    """
    if syntax == "a1111":
        prompt = _without_tags(prompt, loras)
        if negative is not None:
            _check_negative_tags(negative)
    for which, text in (("prompt", prompt), ("--negative", negative)):
        if text is not None:
            try:
                prompt_fragments(text, syntax)
            except ValueError as error:
                raise _refusal(which, error) from error


def check_prompt_against(
    pipe: Any, prompt: str, negative: str | None, loras: list[LoraArgument], clip_skip: int | None
) -> None:
    """The checks of the prompt and negative once `pipe` has loaded, in the syntax it is set
    to (a hub model's is known only now): those of `check_prompt_text`, and that the
    pipeline's conditioner reads each text (`TextConditioner.check_prompt`: a ComfyUI
    ``embedding:name`` its tokenizers hold, compel's combinations on its encoders).

    Raises:
        UsageError: naming the text, and for a tag the `--lora` names there are.
    """
    syntax = pipe.config.get("syntax", "a1111")
    check_prompt_text(prompt, negative, syntax, loras)
    if syntax == "a1111":
        prompt = _without_tags(prompt, loras)
    conditioner = pipe.conditioner_for(clip_skip)
    for which, text in (("prompt", prompt), ("--negative", negative)):
        if text is not None:
            try:
                conditioner.check_prompt(text)
            except ValueError as error:
                raise _refusal(which, error) from error
