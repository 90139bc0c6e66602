"""The prompt side of ``clipcond generate``: the checks of the prompt and `--negative`.

They are checked twice, before sampling, each refusal a `UsageError` naming which text it is:
before the model loads, read in the syntax it will be read in (`--syntax`, else the one the
local model folder was saved with, `saved_syntax`; `check_prompt_text`), and once it has
loaded, against the pipeline's conditioner (`check_prompt_against`: ComfyUI's
``embedding:name`` against the tokens its tokenizers hold, and what a hub model's syntax
refuses). In A1111's syntax each ``<lora:NAME:0.8>`` tag of the prompt names a `--lora`
(`clipcond.pipelines.named_sources`), and the negative holds none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipcond.comfy_syntax import unheld_embeddings
from clipcond.errors import UsageError, one_line
from clipcond.network_tags import split_network_tags
from clipcond.pipelines.named_sources import NamedSource
from clipcond.prompt_syntaxes import SYNTAXES, prompt_fragments


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


def _without_tags(prompt: str, loras: list[NamedSource]) -> str:
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


def check_prompt_text(prompt: str, negative: str | None, syntax: str, loras: list[NamedSource]) -> str:
    """Read `prompt` and `negative` in `syntax` as the conditioner will (`prompt_fragments`),
    before any model loads; in A1111's syntax, each LoRA tag of the prompt names one of `loras`.
    Returns `prompt` as the conditioner reads it: without its LoRA tags in A1111's syntax.

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
    return prompt


def check_prompt_against(
    pipe: Any, prompt: str, negative: str | None, loras: list[NamedSource], clip_skip: int | None
) -> None:
    """The checks of the prompt and negative once `pipe` has loaded, in the syntax it is set
    to (a hub model's is known only now): those of `check_prompt_text`; in ComfyUI's syntax,
    that each ``embedding:name`` is a token its tokenizers hold (an `--embedding`, or one the
    saved pipeline holds); and that the pipeline's conditioner reads each text
    (`TextConditioner.check_prompt`: compel's combinations on its encoders).

    Raises:
        UsageError: naming the text, and for a tag the `--lora` names there are.
    """
    syntax = pipe.config.syntax
    prompt = check_prompt_text(prompt, negative, syntax, loras)
    conditioner = pipe.conditioner_for(clip_skip)
    if syntax == "comfy":
        tokenizers = [encoder.tokenizer for encoder in conditioner.clip]
        for which, text in (("prompt", prompt), ("--negative", negative)):
            missing = unheld_embeddings(text or "", tokenizers)
            if missing:
                name = missing[0]
                raise UsageError(
                    f"{which}: `embedding:{name}` names no embedding this model holds: give it with --embedding "
                    f"(a file named {name}.safetensors or {name}.pt, or {name}=SOURCE)"
                )
    for which, text in (("prompt", prompt), ("--negative", negative)):
        if text is not None:
            try:
                conditioner.check_prompt(text)
            except ValueError as error:
                raise _refusal(which, error) from error
