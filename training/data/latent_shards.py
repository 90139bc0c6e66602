"""Pre-encoded images on disk: each training image's VAE latent distribution, in safetensors
shards keyed by image hash (`KeyedShards` of `LATENTS`).

A diffusion run on VAE latents encodes every image of every step with the frozen VAE, as
diffusers' ``train_text_to_image.py`` does; ``clipcond encode --latents DIR`` does it once per
distinct image, and ``train-diffusion`` with ``data.latents: DIR`` reads it instead. What is
stored is the distribution (its ``mean`` and ``std``, each (C, H/f, W/f) in the VAE's dtype),
not one sample of it: the run still draws a fresh latent per step from each sample's own
generator, exactly as with the live VAE (`latent_moments` is the computation both use).

An image's key is the hash of its pixels as the run transforms them (`image_hash`), so a
changed image, image size or transform misses and stops the run rather than reading another
image's latents; the shards' identity is the VAE's weights fingerprint, its class and dtype
(`vae_identity`): latents of another VAE are refused before any step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from clipcond.training.data.embedding_shards import (
    EmbeddingIdentity,
    KeyedShards,
    MissingRecord,
    ShardKind,
)

LATENTS = ShardKind(
    "clipcond-image-latents-v1",
    "latents",
    "latent",
    "image",
    "the run's VAE's",
    "clipcond encode --latents",
    "VAE",
    "VAE",
)


class MissingLatents(MissingRecord):
    """An image has no latents in the folder."""


def image_hash(pixels: torch.Tensor) -> str:
    """The key of a training image in the shards: sha256 (hex) of its (3, H, W) pixels as the
    run reads them (dtype and shape included, then the bytes)."""
    if pixels.dim() != 3:
        raise ValueError(f"image_hash takes one image (3, H, W), got shape {tuple(pixels.shape)}")
    data = pixels.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{data.dtype}|{tuple(data.shape)}|".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


@dataclass
class ImageLatents:
    """The VAE's latent distribution of one image: `mean` and `std`, each (C, H/f, W/f)."""

    mean: torch.Tensor
    std: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}


def latent_moments(vae: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE's latent distribution of (batch, 3, H, W) pixels in [-1, 1]:
    each (batch, C, H/f, W/f) in the VAE's dtype, without gradients."""
    with torch.no_grad():
        distribution = vae.encode(pixels.to(vae.dtype)).latent_dist
    # the mean is a view of half the VAE's output channels; contiguous, it has the layout of
    # the means read back from the shards, and the UNet computes the same bits from both
    return distribution.mean.contiguous(), distribution.std.contiguous()


# VAE settings the stored moments do not depend on: a run applies them when it reads the
# latents (the scaling and shift), or the VAE's encoder never reads them (force_upcast is a
# pipeline's choice of dtype; the moments are taken in the VAE's dtype, part of the identity)
_READ_TIME_SETTINGS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast")


def vae_identity(vae: nn.Module) -> EmbeddingIdentity:
    """What latents depend on besides the image: the VAE's weights (content hash), class, dtype
    and config (`clipcond.config_fingerprint`: the same weights under another activation or
    norm setting encode differently), but the settings applied when the latents are read."""
    from clipcond.config_fingerprint import config_fingerprint
    from clipcond.fingerprint import weights_hash

    config = config_fingerprint(vae, ignore=_READ_TIME_SETTINGS)
    return EmbeddingIdentity(weights_hash([vae]), f"{type(vae).__name__}|{vae.dtype}|config={config}")


class LatentShards(KeyedShards):
    """The finished latent shards of a folder, checked against `expected` (the run's
    `vae_identity`); each record read is checked against the digest its shard records, as
    every `KeyedShards` record is (the writer refused non-finite latents). See `KeyedShards` for
    the arguments and errors."""

    kind = LATENTS
    argument = "data.latents"

    def moments(
        self, pixels: torch.Tensor, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of each image of (batch, 3, H, W) `pixels`, stacked: each
        (batch, C, H/f, W/f), on `device` (default the CPU).

        Raises:
            MissingLatents: an image is not in the folder (the message names its hash).
            DamagedRecord: its latents are damaged (the message names the shard and the hash).
        """
        means, stds = [], []
        for position, image in enumerate(pixels):
            stored = self.required(image_hash(image), f"image {position} of the batch", MissingLatents, device)
            means.append(stored["mean"])
            stds.append(stored["std"])
        return torch.stack(means), torch.stack(stds)
