"""The latents folder's parts on their own: an image's key against a hash written out here, the
moments in the VAE's dtype, the identity's class, and where `moments` puts what it read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from tiny_pipelines import _small_vae

from clipcond.training.data.embedding_shards import write_shard
from clipcond.training.data.latent_shards import (
    LATENTS,
    ImageLatents,
    LatentShards,
    image_hash,
    latent_moments,
    vae_identity,
)


def _key_written_out(prefix: str, data: bytes) -> str:
    return hashlib.sha256(prefix.encode() + data).hexdigest()


def test_an_images_key_is_the_sha256_of_its_dtype_shape_and_bytes() -> None:
    # the keys of folders already encoded: a key computed otherwise misses every image in them
    pixels = torch.tensor([[[0.5, -1.0]], [[0.25, 1.0]], [[0.0, -0.5]]])  # (3, 1, 2)
    data = np.array([0.5, -1.0, 0.25, 1.0, 0.0, -0.5], dtype="<f4").tobytes()
    assert image_hash(pixels) == _key_written_out("torch.float32|(3, 1, 2)|", data)
    as_bfloat16 = pixels.to(torch.bfloat16)
    bfloat16_bits = np.array([0x3F00, 0xBF80, 0x3E80, 0x3F80, 0x0000, 0xBF00], dtype="<u2")  # the same values
    assert image_hash(as_bfloat16) == _key_written_out("torch.bfloat16|(3, 1, 2)|", bfloat16_bits.tobytes())


def test_an_empty_image_is_keyed_by_its_dtype_and_shape_alone() -> None:
    # a transposed empty tensor stays as it is under .contiguous(), and torch cannot view it as bytes
    empty = torch.zeros(3, 0, 5).transpose(1, 2)
    assert image_hash(empty) == _key_written_out("torch.float32|(3, 5, 0)|", b"")
    assert image_hash(torch.zeros(3, 0, 0)) == _key_written_out("torch.float32|(3, 0, 0)|", b"")


def test_moments_are_taken_in_the_vaes_dtype() -> None:
    vae = _small_vae().to(torch.float64)
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean, std = latent_moments(vae, pixels)  # float32 pixels into a float64 VAE
    expected = vae.encode(pixels.double()).latent_dist
    assert mean.dtype == std.dtype == torch.float64
    assert torch.equal(mean, expected.mean) and torch.equal(std, expected.std)
    assert mean.is_contiguous() and std.is_contiguous() and not mean.requires_grad


class _RenamedVAE(AutoencoderKL):
    """The same weights and config under another class."""


def test_the_identity_names_the_vaes_class_and_dtype() -> None:
    vae = _small_vae()
    renamed = _RenamedVAE(**vae.config)
    renamed.load_state_dict(vae.state_dict())
    identity, other = vae_identity(vae), vae_identity(renamed)
    assert identity.weights == other.weights
    assert identity.settings.startswith("AutoencoderKL|torch.float32|config=")
    assert other.settings == identity.settings.replace("AutoencoderKL|", "_RenamedVAE|", 1)


def test_moments_come_back_on_the_device_asked_for(tmp_path: Path) -> None:
    identity = vae_identity(_small_vae())
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    latents = [ImageLatents(torch.randn(4, 2, 2), torch.rand(4, 2, 2)) for _ in images]
    write_shard(tmp_path, 0, {image_hash(i): v for i, v in zip(images, latents)}, identity, LATENTS)
    shards = LatentShards(tmp_path, identity)
    mean, std = shards.moments(images)
    assert mean.device.type == std.device.type == "cpu"
    assert torch.equal(mean, torch.stack([latent.mean for latent in latents]))
    assert torch.equal(std, torch.stack([latent.std for latent in latents]))
    on_meta = shards.moments(images, device="meta")
    assert [tensor.device.type for tensor in on_meta] == ["meta", "meta"]
    assert on_meta[0].shape == (2, 4, 2, 2)
