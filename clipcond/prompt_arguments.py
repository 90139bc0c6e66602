"""The prompt arguments of a call -> the text each encoder reads, with diffusers' meaning.

SDXL, SD3 and Flux pipelines take a prompt per encoder: `prompt_2` (SDXL's second CLIP, SD3's
CLIP-G, Flux's T5) and `prompt_3` (SD3's T5), each with a negative (`negative_prompt_2`, ...).
Which encoder reads which argument is the family's (`Family.prompt_readers`). As in each
family's `encode_prompt`, an argument left out (None, "" or an empty list: diffusers'
``prompt_2 or prompt``) means the first one: `prompt_2` defaults to `prompt`,
`negative_prompt_2` to `negative_prompt`.

A *reading* is one prompt as the encoders see it: a tuple with one text per encoder (CLIPs in
order, then T5). It is what the conditioner encodes and what its cache keys name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clipcond.scalars import as_int

Reading = tuple[str, ...]

# The per-encoder arguments besides `prompt` / `negative_prompt`, in diffusers' spelling.
EXTRA_PROMPTS: tuple[str, ...] = ("prompt_2", "prompt_3")


def as_prompt_list(prompt: Any, argument: str = "prompt") -> list[str]:
    """Validate a prompt argument (a string or a non-empty list of strings) into a list."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError(f"`{argument}` must be a string or a non-empty list of strings, got an empty list")
        for index, item in enumerate(prompt):
            if not isinstance(item, str):
                raise TypeError(
                    f"`{argument}` must contain only strings, but item {index} is {type(item).__name__}: {item!r}"
                )
        return list(prompt)
    raise TypeError(f"`{argument}` must be a string or a list of strings, got {type(prompt).__name__}")


def negative_prompt_list(negative_prompt: Any, count: int) -> list[str] | None:
    """`negative_prompt` for `count` prompts: None stays None, a string is every prompt's, a
    list must hold one string per prompt (a ValueError naming both lengths otherwise)."""
    if negative_prompt is None:
        return None
    if isinstance(negative_prompt, str):
        return [negative_prompt] * count
    negatives = as_prompt_list(negative_prompt, "negative_prompt")
    if len(negatives) != count:
        raise ValueError(
            f"`negative_prompt` has {len(negatives)} entries but `prompt` has {count}; "
            "give one negative prompt per prompt, or a single string for all"
        )
    return negatives


def check_images_per_prompt(num_images_per_prompt: Any) -> int:
    """`num_images_per_prompt` as a Python int (numpy's integers and 0-d integer tensors read as
    the int they hold, as diffusers reads them); a ValueError unless it is an int >= 1."""
    value = as_int(num_images_per_prompt)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`num_images_per_prompt` must be an int >= 1, got {num_images_per_prompt!r}")
    return value


def check_readers(readers: Sequence[str], given: Mapping[str, Any], recipe_name: str) -> None:
    """A TypeError naming the first argument in `given` (name -> value, None = not given)
    that is no text (a string, or a list or tuple, whose items are checked where it is read),
    then a ValueError naming the first one no encoder reads; `readers` are
    `Family.prompt_readers` of the conditioner. Checked first, so that a falsy non-text (0, {},
    a zero tensor) is not read as "left out" (diffusers' `prompt_2 or prompt` reads it so)
    and a tensor is not asked for its truth value."""
    for name, value in given.items():
        if value is not None and not isinstance(value, (str, list, tuple)):
            raise TypeError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}")
    for name, value in given.items():
        if value is None or name.removeprefix("negative_") in readers:
            continue
        read = ", ".join(f"`{reader}` (encoder {index + 1})" for index, reader in enumerate(readers))
        raise ValueError(
            f"`{name}` has no encoder to read it: recipe {recipe_name!r} with these encoders reads {read}; "
            f"leave `{name}` out, or use a family whose pipelines take it (prompt_2: SDXL, SD3, Flux; "
            "prompt_3: SD3 with its T5)"
        )


def texts_or_default(name: str, value: Any, default: list[str]) -> list[str]:
    """The texts of argument `name` for a batch of `len(default)` prompts: `default` when it is
    left out (None, "" or an empty list), a string repeated per prompt, or a list of one text
    per prompt."""
    if value is not None and not isinstance(value, (str, list, tuple)):
        raise TypeError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}")
    if not value:  # diffusers' `prompt_2 or prompt`
        return default
    if isinstance(value, str):
        return [value] * len(default)
    texts = as_prompt_list(value, name)
    if len(texts) != len(default):
        raise ValueError(
            f"`{name}` has {len(texts)} entries but the batch has {len(default)} prompts; give one text per "
            "prompt, or a single string for all"
        )
    return texts


def readings(readers: Sequence[str], first: list[str], extra: Mapping[str, Any], prefix: str = "") -> list[Reading]:
    """One reading per prompt of the batch `first` (the validated `prompt` or `negative_prompt`).

    Args:
        readers: the argument each encoder reads (`Family.prompt_readers`).
        first: the texts of `prompt` (or of `negative_prompt`), one per prompt.
        extra: the per-encoder arguments as given, by name without `prefix` ("prompt_2": value).
        prefix: "" for prompts, "negative_" for negatives (names in messages).

    Returns:
        (len(first),) readings of len(readers) texts each.
    """
    columns = {"prompt": first}
    for name in EXTRA_PROMPTS:
        if name in readers:
            columns[name] = texts_or_default(prefix + name, extra.get(name), first)
    return list(zip(*(columns[reader] for reader in readers)))
