"""What a `TextConditioner` is built from, checked before any work: encoders, recipe,
clip-skip, the optional learned projection and the cache (and where `TextConditioner.to` moves
it). Each check raises a ValueError or TypeError that names the argument and what was expected;
numbers are read as `clipcond.scalars` reads them (numpy's integers are ints) and passed on as
Python numbers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from clipcond.encoders import TextEncoder
from clipcond.families import FAMILIES, Family, custom_recipe, get_family, get_recipe
from clipcond.quoting import quoted
from clipcond.recipes import Recipe
from clipcond.scalars import as_int

if TYPE_CHECKING:  # the projection module needs diffusers; it is imported only when used
    from clipcond.projection import TextProjection

EncoderLike = TextEncoder | tuple[nn.Module, Any]

# Windows per encoder call: every batch diffusers' own encode_prompt is compared with fits in
# one call (so results stay equal to it), and a CLIP-G window batch of this size needs about
# 0.4 GB of activations per layer in float32.
DEFAULT_MAX_BATCH_WINDOWS = 256


def check_cache_size(value: object) -> int:
    """`value` as a Python int if it is an int >= 0 (0: no memory cache; numpy's integers and
    0-d integer tensors read as the int they hold); a TypeError or ValueError naming
    `cache_size` otherwise."""
    value = as_int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`cache_size` must be an int >= 0 (prompts kept in memory), got {value!r}")
    if value < 0:
        raise ValueError(f"`cache_size` must be an int >= 0 (prompts kept in memory), got {value}")
    return value


def check_cache_dir(value: object) -> str | os.PathLike | None:
    """`value` if it is None or a folder path; a TypeError or ValueError naming `cache_dir`
    otherwise. A blank string (what ``os.environ.get("CACHE", "")`` gives when the variable is
    unset) is refused: `Path("")` is the current folder, where entries would be written."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"`cache_dir` must be a folder path or None, got {type(value).__name__} {value!r}")
    if isinstance(value, str) and not value.strip():
        raise ValueError(
            f"`cache_dir` must be a folder path or None (no disk cache), got {value!r}; "
            'pass cache_dir="." to cache in the current folder'
        )
    return value


def device_and_dtype(device: Any, dtype: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """(device, dtype) of a ``to(device, dtype)`` call, read as `torch.nn.Module.to` reads them:
    a dtype given first (``to(torch.float16)``) is the dtype. A TypeError naming `dtype` for one
    that is no floating `torch.dtype` (a string included, as torch refuses it), a ValueError
    naming `device` for one torch cannot name; checked before anything moves."""
    if isinstance(device, torch.dtype):
        if dtype is not None:
            raise TypeError(f"`to` takes one dtype, got {device} and {dtype!r}")
        device, dtype = None, device
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"`dtype` must be a floating torch.dtype such as torch.float16, got {dtype!r}")
    if device is None:
        return None, dtype
    try:
        return torch.device(device), dtype
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"`device` must be a torch.device or its name ('cpu', 'cuda', 'cuda:1'), got {device!r} ({error})"
        ) from None


def check_max_batch_windows(value: object) -> int | None:
    """`value` if it is None or a positive int (as a Python int: numpy's integers and 0-d
    integer tensors read as the int they hold); a TypeError or ValueError naming
    `max_batch_windows` otherwise."""
    if value is None:
        return None
    value = as_int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`max_batch_windows` must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"`max_batch_windows` must be >= 1, got {value}")
    return value


def as_encoders(
    clip: Sequence[EncoderLike], t5: EncoderLike | None, compute_dtype: torch.dtype | None = None
) -> tuple[list[TextEncoder], TextEncoder | None]:
    """(CLIP encoders, T5 encoder) from `TextEncoder`s or (model, tokenizer) pairs, each of the
    kind its argument says, each computing in `compute_dtype` when it is given (a
    `TextEncoder` with its own `compute_dtype` keeps it)."""
    if isinstance(clip, (TextEncoder, nn.Module)) or (
        isinstance(clip, tuple) and len(clip) == 2 and isinstance(clip[0], nn.Module)
    ):
        raise TypeError("`clip` must be a sequence of encoders, e.g. clip=[(text_encoder, tokenizer)]")
    if compute_dtype is not None and (
        not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point
    ):
        raise TypeError(f"`compute_dtype` must be a floating torch.dtype such as torch.float32, got {compute_dtype!r}")
    clip_encoders = [_as_encoder(item, "clip") for item in clip]
    t5_encoder = None if t5 is None else _as_encoder(t5, "t5")
    for encoder in clip_encoders:
        if encoder.kind != "clip":
            raise TypeError(f"`clip` holds a {encoder.kind} model ({type(encoder.model).__name__}); pass it as `t5`")
    if t5_encoder is not None and t5_encoder.kind != "t5":
        raise TypeError(f"`t5` must be a T5 encoder, got {type(t5_encoder.model).__name__}")
    if compute_dtype is not None:  # checked per encoder (quantized refused) once each is known to be right
        clip_encoders = [_computing_in(encoder, compute_dtype) for encoder in clip_encoders]
        t5_encoder = None if t5_encoder is None else _computing_in(t5_encoder, compute_dtype)
    return clip_encoders, t5_encoder


def _computing_in(encoder: TextEncoder, compute_dtype: torch.dtype) -> TextEncoder:
    """`encoder` computing in `compute_dtype`, unless it has a `compute_dtype` of its own."""
    if encoder.compute_dtype is not None:
        return encoder
    return dataclasses.replace(encoder, compute_dtype=compute_dtype)


def _as_encoder(value: EncoderLike, argument: str) -> TextEncoder:
    if isinstance(value, TextEncoder):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return TextEncoder(model=value[0], tokenizer=value[1])
    if isinstance(value, nn.Module):  # its repr is the whole module tree: name the class only
        got = f"a {type(value).__name__} without its tokenizer"
    else:
        got = f"{type(value).__name__} {quoted(value)}"
    raise TypeError(f"`{argument}` must hold TextEncoder objects or (model, tokenizer) pairs, got {got}")


def resolve_recipe(recipe: str | Recipe, has_clip: bool, has_t5: bool) -> Recipe:
    """A `Recipe` as given, a built-in one by name, or "custom" joined as the encoders suggest."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe == "custom":
        return custom_recipe(has_clip, has_t5)
    return get_recipe(recipe)


def family_of(recipe: Recipe) -> Family:
    """The family row of `recipe` (the custom row for a recipe of any other name)."""
    return get_family(recipe.name if recipe.name in FAMILIES else "custom")


def check_encoders(recipe: Recipe, clip_count: int, has_t5: bool, t5_zeros: tuple[int, int] | None) -> None:
    """The encoders fit the recipe's family and its join."""
    family = family_of(recipe)
    if not family.encoders_fit(clip_count, has_t5, t5_zeros is not None):  # the custom family fits any
        raise ValueError(
            f"recipe {recipe.name!r} needs {family.expected_encoders()}; got {clip_count} CLIP encoder(s) and "
            f"{'a' if has_t5 else 'no'} T5 encoder"
        )
    if clip_count == 0 and not has_t5:
        raise ValueError("a TextConditioner needs at least one encoder: pass `clip` and/or `t5`")
    # concat_channels without a CLIP is refused here (it has a T5) or just above (no encoder at all)
    if recipe.combine == "concat_channels" and has_t5:
        raise ValueError(
            "combine='concat_channels' joins CLIP encoders on channels and cannot take a T5 encoder "
            "(their sequence lengths differ); use 'concat_sequence' or 'clip_pooled_t5_tokens'"
        )
    if recipe.combine == "clip_pooled_t5_tokens" and not has_t5 and t5_zeros is None:
        raise ValueError("combine='clip_pooled_t5_tokens' needs a `t5` encoder")
    if recipe.pooled != "none" and clip_count == 0:
        raise ValueError(f"pooled={recipe.pooled!r} needs a `clip` encoder; use pooled='none'")


def check_clip_windows(recipe: Recipe, clip: Sequence[TextEncoder]) -> None:
    """A ValueError unless the CLIPs whose token states the recipe joins on the channel axis
    (more than one CLIP, any combine but "clip_pooled_t5_tokens": SDXL, SD3, custom) share one
    window length (`TextEncoder.window_length`, positions per window): their (windows,
    window_length, width) states are concatenated position by position, so a Long-CLIP of 248
    positions beside a 77-position CLIP cannot be joined. Pooled vectors alone (Flux's
    recipe) join whatever the lengths."""
    if len(clip) < 2 or recipe.combine == "clip_pooled_t5_tokens":
        return
    lengths = [encoder.window_length for encoder in clip]
    if len(set(lengths)) == 1:
        return
    components = [slot.model for slot in family_of(recipe).slots if slot.kind == "clip"]
    # Only a family's own CLIPs have a pipeline component's name ("text_encoder_2").
    where = [f", the pipeline's `{name}`" for name in components] if len(components) == len(clip) else [""] * len(clip)
    named = ", ".join(
        f"clip[{index}] ({type(encoder.model).__name__}{where[index]}): {length} positions"
        for index, (encoder, length) in enumerate(zip(clip, lengths))
    )
    raise ValueError(
        f"recipe {recipe.name!r} joins its CLIP encoders' token states on the channel axis, position by position, "
        f"so every CLIP must have the same context length; got {named}. A long-context CLIP (Long-CLIP, "
        "248 positions) must replace every CLIP of the pipeline, not only one"
    )


def check_clip_layer(recipe: Recipe, clip: Sequence[TextEncoder]) -> None:
    """A ValueError unless the hidden state the recipe reads (`clip_layer_from_end`: 1 the last
    layer's) exists in the shallowest of its CLIPs."""
    if not clip or recipe.combine == "clip_pooled_t5_tokens":
        return
    deepest = min(encoder.num_layers for encoder in clip)
    if recipe.clip_layer_from_end > deepest:
        raise ValueError(
            f"`clip_layer_from_end` must be between 1 and {deepest} for a {deepest}-layer CLIP (1 reads the last "
            f"layer's states), got {recipe.clip_layer_from_end}"
        )


def clip_skip_as_int(clip_skip: Any) -> int | None:
    """`clip_skip` as a Python int (numpy's integers and 0-d integer tensors read as the int they
    hold) or None, before its range is checked: what a pipeline stores in its config and keys its
    conditioners by, so that ``True`` or ``1.0`` (equal to 1 as dict keys) never pass for 1.

    Raises:
        TypeError: anything else (a bool, a float, a string).
    """
    value = as_int(clip_skip)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"`clip_skip` must be an int or None, got {type(clip_skip).__name__} {clip_skip!r}")
    return value


def check_clip_skip(recipe: Recipe, clip: Sequence[TextEncoder], clip_skip: Any) -> int | None:
    """`clip_skip` as a Python int the recipe and the shallowest CLIP can take (or None); numpy's
    integers and 0-d integer tensors read as the int they hold (`clip_skip_as_int`)."""
    clip_skip = clip_skip_as_int(clip_skip)
    if clip_skip is None:
        return None
    if not clip or recipe.combine == "clip_pooled_t5_tokens":
        raise ValueError(f"`clip_skip` has no effect on recipe {recipe.name!r}: it reads no CLIP token states")
    deepest = min(encoder.num_layers for encoder in clip)
    limit = deepest - recipe.clip_layer_from_end
    if clip_skip < 0 or clip_skip > limit:
        raise ValueError(
            f"`clip_skip` must be between 0 and {limit} for recipe {recipe.name!r} with a "
            f"{deepest}-layer CLIP (it reads hidden state -{recipe.clip_layer_from_end} - clip_skip), "
            f"got {clip_skip}"
        )
    return clip_skip


def projection_widths(recipe: Recipe, clip_width: int, t5_width: int) -> dict[str, int]:
    """Source ("clip", "t5") -> input width of the projection layers the recipe's join needs."""
    if recipe.combine == "concat_channels":
        return {"clip": clip_width}
    if recipe.combine == "concat_sequence":
        return {**({"clip": clip_width} if clip_width else {}), **({"t5": t5_width} if t5_width else {})}
    return {"t5": t5_width}


def build_projection(
    recipe: Recipe,
    clip_width: int,
    t5_width: int,
    projection_dim: int | None,
    projection: TextProjection | None,
    like: TextEncoder,
) -> TextProjection | None:
    """The learned projection of a custom recipe: `projection` checked against the encoders'
    widths, or a new one of `projection_dim` on `like`'s device and dtype; None without either
    (then CLIP and T5 tokens joined on the sequence axis must already share a width)."""
    if projection_dim is None and projection is None:
        if recipe.combine == "concat_sequence" and clip_width and t5_width:
            if not recipe.pad_clip_to_t5_width and clip_width != t5_width:
                raise ValueError(
                    f"combine='concat_sequence' joins CLIP tokens (width {clip_width}) and T5 tokens "
                    f"(width {t5_width}) on the sequence axis; their widths differ, so set "
                    "`projection_dim` to project both to one width"
                )
        return None
    from clipcond.projection import TextProjection

    if recipe.name != "custom":
        raise ValueError(f"`projection_dim` / `projection` are for the 'custom' recipe only, not {recipe.name!r}")
    projection_dim = as_int(projection_dim)  # a Python int: it is saved in the projection's JSON config
    if projection_dim is not None and (
        isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1
    ):
        raise ValueError(f"`projection_dim` must be a positive int or None, got {projection_dim!r}")
    needed = projection_widths(recipe, clip_width, t5_width)
    if projection is None:
        built = TextProjection(projection_dim, clip_width=needed.get("clip"), t5_width=needed.get("t5"))
        return built.to(device=like.device, dtype=like.dtype)
    if not isinstance(projection, TextProjection):
        raise TypeError(f"`projection` must be a TextProjection, got {type(projection).__name__}")
    if projection_dim is not None and projection_dim != projection.config.projection_dim:
        raise ValueError(
            f"`projection_dim` ({projection_dim}) differs from the given projection's "
            f"({projection.config.projection_dim}); pass one of them"
        )
    if projection.input_widths() != needed:
        raise ValueError(
            f"the given projection has layers {projection.input_widths()} (source: input width) but recipe "
            f"{recipe.name!r} with these encoders needs {needed}"
        )
    return projection
