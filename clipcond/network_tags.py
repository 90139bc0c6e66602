"""A1111's extra-network tags in a prompt: ``<lora:name:0.8>`` -> the tag taken out of the text
and the LoRA it names, with its multipliers.

A1111 reads, anywhere in a prompt (``modules/extra_networks.py``, its LoRA extension's
``activate``):

    <lora:name>                 the LoRA `name` at 1.0, in the text encoder and the UNet
    <lora:name:0.8>             at 0.8 in both
    <lora:name:0.5:0.9>         0.5 in the text encoder, 0.9 in the UNet
    <lora:name:te=0.5:unet=0.9> the same, named
    <lyco:name:0.8>             the same as lora (A1111 reads LyCORIS networks as LoRAs)

and removes each tag from the text (``a <lora:x:1>, cat`` reads "a , cat"). Here the name is
that of an adapter the pipeline holds (`load_lora_weights(path, adapter_name="name")`), and
`clipcond.pipelines.lora_tags` activates the named adapters for the call; `without_network_tags`
takes every tag out unread (for captions: `TextConditioner(lora_tags="strip")`).
``<hypernet:...>`` (A1111's hypernetworks, which diffusers has no loader for), a multiplier
that is no finite number, a LyCORIS ``dyn`` dimension, and a name given twice are a
ValueError naming the tag; tags of other kinds (``<x:y>``) are text (A1111 removes them and
skips them as unknown networks).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

LORA_KINDS = ("lora", "lyco")
# what `TextConditioner(lora_tags=...)` does with a tag: refuse it, or take it out of the text
LORA_TAG_POLICIES = ("refuse", "strip")
REFUSED_KINDS = ("hypernet",)

# where a tag may start; the tag runs to the next ">" (A1111's `<(\w+):([^>]+)>`)
_TAG_START = re.compile("<(" + "|".join(LORA_KINDS + REFUSED_KINDS) + "):")


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:...>`` tag.

    Attributes:
        name: the adapter's name (`load_lora_weights(..., adapter_name=name)`).
        text_encoder: the multiplier in the text encoders (A1111's ``te``).
        unet: the multiplier in the UNet (A1111's ``unet``; the text encoders' when not given).
    """

    name: str
    text_encoder: float
    unet: float


def _multiplier(written: str, tag: str) -> float:
    """A tag's multiplier, read as A1111 reads it (Python's ``float``), finite."""
    try:
        value = float(written)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"`{tag}`: the multiplier {written!r} is no finite number (write one such as 0.8)")
    return value


def _lora_tag(tag: str, arguments: str) -> LoraTag:
    """The LoRA a tag's arguments (the text after its kind's colon) name."""
    positional, named = [], {}
    for item in arguments.split(":"):
        key, equals, value = item.partition("=")
        if equals:
            named[key] = value
        else:
            positional.append(item)
    unknown = sorted(set(named) - {"te", "unet"})
    if unknown or len(positional) > 3:
        raise ValueError(
            f"`{tag}`: a LoRA tag takes a name and up to two multipliers (text encoder, UNet), or te= and unet=; "
            f"{'named ' + ', '.join(unknown) if unknown else 'a fourth part (a LyCORIS dyn dimension)'} is not read"
        )
    if not positional or not positional[0]:
        raise ValueError(f"`{tag}`: a LoRA tag names its adapter first, as <lora:name:0.8>")
    text_encoder = _multiplier(positional[1], tag) if len(positional) > 1 else 1.0
    text_encoder = _multiplier(named["te"], tag) if "te" in named else text_encoder
    unet = _multiplier(positional[2], tag) if len(positional) > 2 else text_encoder
    unet = _multiplier(named["unet"], tag) if "unet" in named else unet
    return LoraTag(positional[0], text_encoder, unet)


def _tag_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """Where each tag of `text` starts and ends (end exclusive) and its kind, in order: from
    ``<kind:`` to the next ``>``, with at least one character between (A1111's
    `<(\\w+):([^>]+)>`, for the kinds read here). One pass: linear in the length of `text`."""
    kept_from, close = 0, -1
    for start in _TAG_START.finditer(text):
        if start.start() < kept_from:  # inside a tag read already
            continue
        if close < start.end():
            close = text.find(">", start.end())
            if close < 0:
                return  # no tag closes after here
        if close == start.end():  # `<lora:>`: no arguments, so no tag
            continue
        yield start.start(), close + 1, start.group(1)
        kept_from = close + 1


def without_network_tags(text: str) -> str:
    """`text` with every extra-network tag removed, as A1111 removes them from a prompt, whatever
    the tags hold (for captions, where no adapter is switched on)."""
    pieces, kept_from = [], 0
    for start, end, _ in _tag_spans(text):
        pieces.append(text[kept_from:start])
        kept_from = end
    return "".join(pieces) + text[kept_from:] if pieces else text


def split_network_tags(text: str) -> tuple[str, tuple[LoraTag, ...]]:
    """`text` without its extra-network tags, and the LoRA tags, in order.

    Time is linear in the length of `text`.

    Returns:
        (the text with each tag removed, as A1111 removes it; the LoRA tags). A text without
        tags comes back unchanged, with no tags.

    Raises:
        TypeError: `text` is not a string.
        ValueError: a ``<hypernet:...>`` tag, a LoRA tag that names no adapter, has a
            multiplier that is no finite number or parts A1111's LoRA does not read (``dyn``),
            or a name given twice.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}: {text!r:.80}")
    tags = []
    for start, end, kind in _tag_spans(text):
        tag = text[start:end]
        if kind in REFUSED_KINDS:
            raise ValueError(
                f"`{tag}`: A1111's hypernetworks are not read (diffusers has no loader for them); take the tag out"
            )
        tags.append(_lora_tag(tag, tag[len(kind) + 2 : -1]))
    if not tags:
        return text, ()
    repeated = sorted(name for name, count in Counter(tag.name for tag in tags).items() if count > 1)
    if repeated:
        raise ValueError(f"prompt {text[:80]!r}: LoRA tags name {repeated} more than once: give each one tag")
    return without_network_tags(text), tuple(tags)
