"""`swap_text_encoder`: put another CLIP text encoder into an existing UNet pipeline (SD 1.x/2.x, SDXL).

What a UNet reads from each encoder slot, checked before the swap:
- SD 1.x/2.x: `text_encoder`'s last hidden states, `unet.config.cross_attention_dim` wide.
- SDXL: both CLIPs' penultimate hidden states joined on the channel axis, so
  `cross_attention_dim` is `text_encoder`'s width plus `text_encoder_2`'s; and
  `text_encoder_2`'s pooled, projected vector (`projection_dim` wide) beside the time ids in
  the added embedding (`unet.add_embedding.linear_1`).
- `CLIPConditionedPipeline` with a `text_projection` adapter: the adapter's `clip_width`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate.hooks import CpuOffload
from diffusers import DiffusionPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedTokenizerBase

from clipcond.pipelines.sdxl_components import reads_text_time, time_id_count

logger = logging.getLogger(__name__)

_TOKENIZERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
_CLIP_CLASSES = (CLIPTextModel, CLIPTextModelWithProjection)


def swap_text_encoder(
    pipe: DiffusionPipeline, text_encoder: torch.nn.Module, tokenizer: Any = None, *, component: str = "text_encoder"
) -> DiffusionPipeline:
    """Put `text_encoder` (and `tokenizer`, when given) into `pipe`'s `component` slot, in place.

    Typical use: a CLIP text tower fine-tuned by `clipcond train-clip`
    (`transformers.CLIPTextModel.from_pretrained(run / "model" / "text_encoder")`) into a
    `StableDiffusionPipeline`, or either CLIP of a `StableDiffusionXLPipeline`.

    Args:
        pipe: a UNet pipeline whose text encoders are CLIPs: diffusers' Stable Diffusion 1.x/2.x
            and SDXL pipelines (their img2img / inpaint siblings and relatives with the same
            components) and `CLIPConditionedPipeline`. Transformer pipelines (SD3, Flux,
            PixArt) are refused: build them with the encoder instead,
            `type(pipe).from_pipe(pipe, text_encoder=...)`.
        text_encoder: the new encoder, of the class the slot is read as: a `CLIPTextModel` in
            `text_encoder` (diffusers' SD reads output [0] as the tokens, and SDXL would take a
            projection model's output [0] as the pooled vector instead of `text_encoder_2`'s;
            `CLIPConditionedPipeline` also takes a `CLIPTextModelWithProjection` there), a
            `CLIPTextModelWithProjection` in SDXL's `text_encoder_2` (its projection gives the
            pooled vector). Its `hidden_size` must be the width the UNet reads from the slot
            (SDXL: `cross_attention_dim` less the other CLIP's width), and in `text_encoder_2`
            its `projection_dim` the pooled width the UNet's added embedding reads.
        tokenizer: the encoder's tokenizer, put into the slot's tokenizer component
            (`tokenizer` / `tokenizer_2`); None keeps the pipeline's.
        component: "text_encoder" or, on an SDXL-class UNet, "text_encoder_2".

    The encoder is moved to the device and cast to the dtype of the encoder it replaces (of the
    UNet where the slot was empty), in place, as `pipe.to(...)` would: a tower from
    `from_pretrained` loads in float32, and a float16 pipeline could not run it. A cast is
    logged as a warning. Under diffusers' model offload (`pipe.enable_model_cpu_offload(...)`)
    the hooks are put on again with the same device, so the new encoder is offloaded like the
    rest, and the old one leaves without hooks, held by no hook of `pipe`. Other offloading
    hooks (sequential, disk or hand-made accelerate offload with the weights on the meta
    device; diffusers' group offload) cannot be re-created: they are refused.

    A `TextConditioner` made by `TextConditioner.from_pipeline(pipe)` before the swap keeps the
    encoders it was built with (it holds the models, not the pipeline): make a new one after
    swapping. `CLIPConditionedPipeline`'s own `pipe.conditioner` follows the swap.

    Returns:
        `pipe`, changed in place.

    Raises:
        TypeError: `pipe` has no such slot, no UNet (a transformer pipeline), or a slot that
            holds no CLIP (a T5); `text_encoder` is not of the class the slot is read as;
            `tokenizer` is not a transformers tokenizer (a hub id, a model).
        ValueError: an unknown `component`; widths that do not fit what the UNet reads (the
            message names the width that fits); a tokenizer (the given one, or the pipeline's)
            with ids beyond the encoder's embedding rows (textual-inversion tokens loaded before
            the swap, a smaller vocabulary); the replaced encoder offloaded with hooks the swap
            cannot re-create; weights on the meta device in it (in an empty slot, in the UNet) or
            in `text_encoder` (the message names the remedy, e.g. `pipe.remove_all_hooks()`
            first). Nothing in `pipe` or `text_encoder` has changed then.
    """
    _check_pipeline(pipe, component)
    _check_tokenizer(tokenizer)
    _check_class(pipe, text_encoder, component)
    _check_widths(pipe, text_encoder, component)
    _check_vocabulary(text_encoder, tokenizer if tokenizer is not None else getattr(pipe, _TOKENIZERS[component]))
    model_offload = _check_placement(pipe, text_encoder, component)
    old = getattr(pipe, component, None)
    reference = old if old is not None else pipe.unet
    if text_encoder.dtype != reference.dtype:
        logger.warning(
            "swap_text_encoder: casting `text_encoder` from %s to %s, the dtype of %s",
            text_encoder.dtype,
            reference.dtype,
            f"the pipe.{component} it replaces" if old is not None else "pipe.unet",
        )
    if model_offload:
        # the hooks chain the components in `model_cpu_offload_seq`: take them all off (the old
        # encoder leaves free of hooks, held by nothing of `pipe`), then hook the new set, as
        # diffusers' own `maybe_free_model_hooks` does after every call (it places the encoder)
        pipe.remove_all_hooks()
        modules = {component: text_encoder.to(dtype=reference.dtype)}
    else:
        modules = {component: text_encoder.to(device=reference.device, dtype=reference.dtype)}
    if tokenizer is not None:
        modules[_TOKENIZERS[component]] = tokenizer
    pipe.register_modules(**modules)
    if model_offload:
        pipe.enable_model_cpu_offload(device=pipe._offload_device)
    return pipe


def _check_tokenizer(tokenizer: Any) -> None:
    """Refuse a `tokenizer` that is not a transformers tokenizer (a hub id, a model), which
    diffusers' `register_modules` would fail on after the encoder was put in."""
    if tokenizer is not None and not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(
            "`tokenizer` must be a transformers tokenizer (PreTrainedTokenizerBase) or None, got "
            f"{type(tokenizer).__name__}; load one first, e.g. CLIPTokenizer.from_pretrained(...)"
        )


def _check_pipeline(pipe: Any, component: str) -> None:
    """Refuse a slot that is not a CLIP slot of a UNet pipeline."""
    if component not in _TOKENIZERS:
        raise ValueError(f"`component` must be 'text_encoder' or 'text_encoder_2', got {component!r}")
    name = type(pipe).__name__
    if component not in pipe.components:
        raise TypeError(f"{name} has no `{component}` component to swap")
    if getattr(pipe, "unet", None) is None:
        raise TypeError(
            f"swap_text_encoder serves UNet pipelines whose text encoders are CLIPs (Stable Diffusion 1.x/2.x, "
            f"SDXL, CLIPConditionedPipeline); {name} has no `unet`. Build it with the new encoder instead: "
            f"{name}.from_pipe(pipe, {component}=...), then make conditioners with TextConditioner.from_pipeline"
        )
    old = getattr(pipe, component, None)
    if old is not None and not isinstance(old, _CLIP_CLASSES):
        raise TypeError(
            f"swap_text_encoder swaps CLIP text encoders; {name}.{component} holds a {type(old).__name__}: "
            f"use {name}.from_pipe(pipe, {component}=...)"
        )
    if component == "text_encoder_2" and not reads_text_time(pipe.unet):
        raise ValueError(
            f"this UNet reads no `text_encoder_2` (it is not SDXL-class: addition_embed_type is "
            f"{pipe.unet.config.get('addition_embed_type')!r}); swap `text_encoder`"
        )


def _check_placement(pipe: Any, text_encoder: torch.nn.Module, component: str) -> bool:
    """Whether `pipe` runs under diffusers' model offload (`enable_model_cpu_offload`), which the
    swap re-applies. Refuse what it cannot re-create: accelerate's sequential, disk or hand-made
    offload (weights on the meta device, brought in layer by layer), diffusers' group offload,
    and weights on the meta device in either encoder."""
    old = getattr(pipe, component, None)
    model_hooks = {id(hook.hook) for hook in getattr(pipe, "_all_hooks", None) or ()}
    where = f"pipe.{component}" if old is not None else "pipe.unet (the slot is empty)"
    hooked = _hooked_parts(old) if old is not None else []
    if hooked == [""] and isinstance(old._hf_hook, CpuOffload) and id(old._hf_hook) in model_hooks:
        hooked = []  # the one hook `enable_model_cpu_offload` puts on a whole component
    if old is not None and _hooked_parts(old, "_diffusers_hook"):
        raise ValueError(
            f"{where} carries diffusers hooks (group offloading): swap_text_encoder cannot put them on the new "
            "encoder; swap before enabling group offloading"
        )
    if hooked:
        raise ValueError(
            f"pipe.{component} is offloaded by accelerate (hooks on {_count(hooked)}: "
            "enable_sequential_cpu_offload's, or hooks put on by hand); swap_text_encoder cannot give the new "
            "encoder the same hooks. Call pipe.remove_all_hooks() (for hooks put on a part by hand: "
            f"accelerate.hooks.remove_hook_from_module(pipe.{component}, recurse=True)), swap, then enable "
            "offloading again"
        )
    meta = _meta_weights(old if old is not None else pipe.unet)
    if meta:
        raise ValueError(
            f"{where} holds no weights (on the meta device: {meta[0]}), so the new encoder has no device to "
            "go to (the meta device would drop its weights); build the pipeline with it instead: "
            f"{type(pipe).__name__}.from_pipe(pipe, {component}=...)"
        )
    hooked, meta = _hooked_parts(text_encoder), _meta_weights(text_encoder)
    if hooked:
        raise ValueError(
            f"`text_encoder` is dispatched or offloaded by accelerate (hooks on {_count(hooked)}): swap it in "
            "without them, after accelerate.hooks.remove_hook_from_module(text_encoder, recurse=True) (which brings "
            "offloaded weights back), and offload the pipeline after the swap"
        )
    if meta:
        raise ValueError(f"`text_encoder` holds no weights (on the meta device: {meta[0]}); load them before swapping")
    return bool(model_hooks)


def _hooked_parts(module: torch.nn.Module, attribute: str = "_hf_hook") -> list[str]:
    """The names of `module`'s parts ('' for itself) that carry an accelerate hook (a diffusers
    one with `attribute="_diffusers_hook"`)."""
    return [name for name, part in module.named_modules() if attribute in part.__dict__]


def _meta_weights(module: torch.nn.Module) -> list[str]:
    return [name for name, weight in module.named_parameters() if weight.device.type == "meta"]


def _count(parts: list[str]) -> str:
    """'the encoder and 44 of its modules ('embeddings', 'embeddings.token_embedding', ...)'."""
    inner = [name for name in parts if name]
    listed = f" ({', '.join(repr(name) for name in inner[:2])}{', ...' if len(inner) > 2 else ''})"
    modules = f"{len(inner)} of its modules{listed}" if inner else ""
    return " and ".join(part for part in ("the encoder" if "" in parts else "", modules) if part)


def _check_class(pipe: Any, text_encoder: Any, component: str) -> None:
    """Refuse an encoder whose outputs the pipeline would read wrongly."""
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    if component == "text_encoder_2":
        expected, why = (CLIPTextModelWithProjection,), "the UNet's added embedding reads its projected pooled vector"
    elif isinstance(pipe, CLIPConditionedPipeline):
        expected, why = _CLIP_CLASSES, "CLIPConditionedPipeline reads the hidden states of either"
    else:
        expected, why = (CLIPTextModel,), f"{type(pipe).__name__} reads output [0] as the tokens or pooled vector"
    if not isinstance(text_encoder, expected):
        names = " or ".join(klass.__name__ for klass in expected)
        raise TypeError(
            f"`text_encoder` must be a {names} for pipe.{component} ({why}), got {type(text_encoder).__name__}"
        )


def _check_vocabulary(text_encoder: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer whose ids the encoder has no embedding rows for (a smaller
    vocabulary, or textual-inversion tokens loaded into the pipeline before the swap)."""
    if tokenizer is None:
        return
    rows = text_encoder.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return
    beyond = [token for token, index in tokenizer.get_added_vocab().items() if index >= rows]
    added = (
        f" (added tokens without a row: {', '.join(beyond[:5])}{' ...' if len(beyond) > 5 else ''})" if beyond else ""
    )
    raise ValueError(
        f"`text_encoder` has {rows} token embeddings but the tokenizer it would read gives {len(tokenizer)} ids"
        f"{added}: pass the tokenizer of its vocabulary as `tokenizer=`, and load textual inversions into the "
        "pipeline again after the swap"
    )


def _check_widths(pipe: Any, text_encoder: Any, component: str) -> None:
    """Refuse token (and, for SDXL's `text_encoder_2`, pooled) widths the UNet cannot read."""
    width = text_encoder.config.hidden_size
    projection = getattr(pipe, "text_projection", None)
    if projection is not None:
        expected, source = projection.config.clip_width, "text_projection.config.clip_width"
        if expected is None:
            raise ValueError("this pipeline's `text_projection` has no CLIP layer: it reads no CLIP tokens")
    else:
        joined = pipe.unet.config.cross_attention_dim
        others = {
            name: getattr(pipe, name).config.hidden_size
            for name in _TOKENIZERS
            if name != component and isinstance(getattr(pipe, name, None), _CLIP_CLASSES)
        }
        expected = joined - sum(others.values())
        source = f"unet.config.cross_attention_dim {joined}" + "".join(
            f" less {name}'s {other}" for name, other in others.items()
        )
        if expected <= 0:
            raise ValueError(f"this UNet reads no tokens from `{component}` ({source}): swap {' or '.join(others)}")
    if width != expected:
        hint = f"use a CLIP text encoder {expected} wide"
        if projection is None and not others and not reads_text_time(pipe.unet):
            hint += (
                f", or a learned adapter: CLIPConditionedPipeline.from_pipe(pipe, text_encoder=..., "
                f"text_projection=TextProjection(projection_dim={expected}, clip_width={width}), recipe='custom'), "
                "trained with `clipcond train-diffusion` (`train: adapter`)"
            )
        raise ValueError(
            f"`text_encoder` is {width} wide (config.hidden_size) but the UNet reads {expected}-wide tokens from "
            f"`{component}` ({source}); {hint}"
        )
    if component == "text_encoder_2":
        unet = pipe.unet
        ids = time_id_count(bool(pipe.config.get("requires_aesthetics_score", False)))
        per_id = unet.config.addition_time_embed_dim
        added = unet.add_embedding.linear_1.in_features
        pooled = added - per_id * ids
        if text_encoder.config.projection_dim != pooled:
            raise ValueError(
                f"`text_encoder`'s pooled vector is {text_encoder.config.projection_dim} wide (config.projection_dim) "
                f"but the UNet's added embedding reads a {pooled}-wide one (add_embedding.linear_1.in_features "
                f"{added} less {ids} time ids x addition_time_embed_dim {per_id}); use a "
                f"CLIPTextModelWithProjection with projection_dim {pooled}"
            )
