"""What an SDXL-class UNet asks of the pipeline around it, checked before any work.

An SDXL UNet (`addition_embed_type: "text_time"`) reads, besides the cross-attention tokens,
an added embedding built from the second CLIP's pooled, projected text vector and a few
"time ids": (original size, crop corner, target size) for the base model, or (original size,
crop corner, aesthetic score) for the refiner. Its `add_embedding.linear_1` takes exactly
`addition_time_embed_dim x ids + pooled width` inputs, so the components must fit it: the
second text encoder must be a `CLIPTextModelWithProjection` (the pooled vector comes from its
projection), and the number of time ids decides whether the UNet is a refiner
(`requires_aesthetics_score`).
"""

from __future__ import annotations

from typing import Any

import torch

SDXL_RECIPE = "sdxl"
BASE_TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)
REFINER_TIME_IDS = 5  # original (h, w), crop (top, left), aesthetic score


def reads_text_time(unet: Any) -> bool:
    """Whether `unet` is SDXL-class: its added embedding reads pooled text and time ids."""
    return unet is not None and unet.config.get("addition_embed_type") == "text_time"


def resolve_recipe(recipe: str | None, unet: Any, text_encoder_2: Any) -> str:
    """The pipeline's recipe: the one given, or the one its components imply (None): "sdxl"
    for an SDXL-class UNet (or, without a UNet, a second encoder with a text projection),
    "sd" otherwise.

    Raises:
        ValueError: an unknown recipe, or one that does not fit the UNet (an SDXL UNet needs
            "sdxl", and "sdxl" needs an SDXL UNet).
    """
    if recipe is None:
        if unet is not None:
            return SDXL_RECIPE if reads_text_time(unet) else "sd"
        return SDXL_RECIPE if type(text_encoder_2).__name__ == "CLIPTextModelWithProjection" else "sd"
    if recipe not in ("sd", SDXL_RECIPE, "custom"):
        raise ValueError(f"`recipe` must be 'sd', 'sdxl' or 'custom' (rows of clipcond.families), got {recipe!r}")
    if unet is not None and reads_text_time(unet) != (recipe == SDXL_RECIPE):
        kind = "an SDXL-class UNet (addition_embed_type 'text_time')"
        if recipe == SDXL_RECIPE:
            raise ValueError(
                f"`recipe` 'sdxl' needs {kind}; this UNet's addition_embed_type is "
                f"{unet.config.get('addition_embed_type')!r}: use recipe 'sd' or 'custom'"
            )
        raise ValueError(f"`recipe` {recipe!r} cannot drive {kind}: use recipe 'sdxl' (or leave `recipe` unset)")
    return recipe


def check_sdxl_components(
    unet: Any, text_encoder: Any, text_encoder_2: Any, requires_aesthetics_score: bool | None
) -> bool:
    """Check that an SDXL pipeline's encoders fit its UNet; returns `requires_aesthetics_score`
    resolved (None: whatever the UNet's added embedding takes, 5 time ids = a refiner).

    A pipeline may have no text encoders at all (prompts then come as embeddings, as diffusers
    allows), or only `text_encoder_2` (the refiner's layout), but not a first CLIP alone: the
    pooled vector SDXL's UNet reads comes from the second.

    Raises:
        TypeError: `text_encoder_2` is not a `CLIPTextModelWithProjection`, or
            `requires_aesthetics_score` is not a bool or None.
        ValueError: a `text_encoder` without `text_encoder_2`, or encoders and time ids whose
            widths do not add up to the UNet's `add_embedding` input.
    """
    if requires_aesthetics_score is not None and not isinstance(requires_aesthetics_score, bool):
        raise TypeError(f"`requires_aesthetics_score` must be a bool or None, got {requires_aesthetics_score!r}")
    if text_encoder_2 is not None and type(text_encoder_2).__name__ != "CLIPTextModelWithProjection":
        raise TypeError(
            "an SDXL UNet reads the pooled, projected text of its second CLIP: `text_encoder_2` must be a "
            f"CLIPTextModelWithProjection, got {type(text_encoder_2).__name__}"
        )
    if text_encoder is not None and text_encoder_2 is None:
        raise ValueError(
            "an SDXL UNet needs two CLIP text encoders (or `text_encoder_2` alone, as the refiner): got "
            "`text_encoder` but no `text_encoder_2` (a CLIPTextModelWithProjection) for the pooled embedding"
        )
    if unet is None:
        return bool(requires_aesthetics_score)
    pooled_width = None if text_encoder_2 is None else int(text_encoder_2.config.projection_dim)
    if requires_aesthetics_score is None:
        requires_aesthetics_score = _takes_ids(unet, pooled_width) == REFINER_TIME_IDS
    if pooled_width is not None:
        check_added_width(unet, pooled_width, requires_aesthetics_score)
    return requires_aesthetics_score


# what `DiffusionPipeline.load_config` takes of `from_pretrained`'s keywords to find model_index.json
_CONFIG_LOOKUP_KEYWORDS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def components_saved_as_none(source: Any, names: tuple[str, ...], load_kwargs: dict) -> list[str]:
    """Which of `names` the pipeline saved at `source` (a folder or a hub id) records as None
    (``[null, null]`` in its model_index.json): an SDXL refiner's `text_encoder` and
    `tokenizer`. [] when the index cannot be read (`from_pretrained` then says why)."""
    from diffusers import DiffusionPipeline

    lookup = {key: load_kwargs[key] for key in _CONFIG_LOOKUP_KEYWORDS if key in load_kwargs}
    try:
        index = DiffusionPipeline.load_config(source, **lookup)
    except (OSError, ValueError, TypeError):
        return []
    return [name for name in names if name in index and list(index[name] or ()) == [None, None]]


def time_id_count(requires_aesthetics_score: bool) -> int:
    """How many time ids the UNet reads: 5 for a refiner, 6 otherwise."""
    return REFINER_TIME_IDS if requires_aesthetics_score else BASE_TIME_IDS


def _takes_ids(unet: Any, pooled_width: int | None) -> int | None:
    """The number of time ids the UNet's added embedding has room for (None: unknown)."""
    per_id = unet.config.addition_time_embed_dim
    if pooled_width is None or not per_id:
        return None
    room = unet.add_embedding.linear_1.in_features - pooled_width
    return room // per_id if room % per_id == 0 else None


def check_added_width(unet: Any, pooled_width: int, requires_aesthetics_score: bool) -> None:
    """Refuse pooled vectors and time ids that do not fill the UNet's added embedding exactly.

    Raises:
        ValueError: naming both widths, and `requires_aesthetics_score` when the other
            setting would fit (the refiner reads 5 time ids, the base model 6).
    """
    per_id = unet.config.addition_time_embed_dim
    expected = unet.add_embedding.linear_1.in_features
    ids = time_id_count(requires_aesthetics_score)
    given = per_id * ids + pooled_width
    if given == expected:
        return
    hint = "check `unet.config.addition_time_embed_dim` and `text_encoder_2.config.projection_dim`"
    other = time_id_count(not requires_aesthetics_score)
    if per_id * other + pooled_width == expected:
        hint = f"this UNet reads {other} time ids: pass requires_aesthetics_score={not requires_aesthetics_score}"
    raise ValueError(
        f"the UNet's added embedding takes {expected} inputs (unet.add_embedding.linear_1.in_features), but "
        f"{ids} time ids x addition_time_embed_dim {per_id} + the pooled text width {pooled_width} = {given}; {hint}"
    )


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """SDXL's decode: (n, channels, h, w) latents -> (n, 3, H, W) images in [-1, 1].

    As `StableDiffusionXLPipeline`: a float16 VAE whose config says `force_upcast` decodes in
    float32 (it overflows in float16) and is cast back; latents are denormalised by the VAE's
    `latents_mean` / `latents_std` when it has them, by `scaling_factor` alone otherwise.
    """
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
        latents = latents.to(torch.float32)
    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    if mean is not None and std is not None:
        channels = latents.shape[1]
        mean = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    try:
        return vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


__all__ = [
    "SDXL_RECIPE",
    "check_added_width",
    "check_sdxl_components",
    "decode_latents",
    "reads_text_time",
    "resolve_recipe",
    "time_id_count",
]
