"""diffusers' dummy components for its SDXL, img2img and inpaint fast tests, built offline.

Each builder makes, model for model and seed for seed, what upstream's `get_dummy_components`
makes in tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py and
tests/pipelines/stable_diffusion/test_stable_diffusion_{img2img,inpaint}.py, with one change:
upstream loads the hub's `hf-internal-testing/tiny-random-clip` tokenizer (1,000 tokens), we
build OpenAI's tokenizer offline (`clipcond.tokenization`), so the text encoders' vocabulary
is CLIP's 49,408 tokens and their BOS / EOS ids are CLIP's. Every constructor argument of our
pipelines that is a component is in the dict, the optional ones None, as
`test_components_function` expects.
"""

from __future__ import annotations

import random

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from clipcond import CLIPConditionedPipeline
from clipcond.tokenization import CLIP_VOCAB_SIZE, clip_tokenizer


def _text_config() -> CLIPTextConfig:
    """upstream's tiny CLIP text config (width 32, 5 layers), with CLIP's vocabulary and ids."""
    tokenizer = clip_tokenizer()
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_act="gelu",
        projection_dim=32,
    )


def _vae(**extra) -> AutoencoderKL:
    """upstream's two-block VAE (a factor of 2: 32 latent cells are 64 pixels)."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        **extra,
    )


def _with_optional_none(parts: dict) -> dict:
    for name in CLIPConditionedPipeline._optional_components:
        parts.setdefault(name, None)
    return parts


def sd_image_components(unet_in_channels: int = 4, time_cond_proj_dim: int | None = None) -> dict:
    """`StableDiffusionImg2ImgPipelineFastTests.get_dummy_components` (`unet_in_channels` 4)
    and `StableDiffusionInpaintPipelineFastTests`' (9: an inpainting UNet; its "simple" variant
    takes 4): a UNet of widths (32, 64), the VAE, PNDM without PRK steps, one CLIP encoder."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        time_cond_proj_dim=time_cond_proj_dim,
        sample_size=32,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = _vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config())
    return _with_optional_none(
        dict(
            unet=unet,
            scheduler=PNDMScheduler(skip_prk_steps=True),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
        )
    )


def sdxl_components(time_cond_proj_dim: int | None = None) -> dict:
    """`StableDiffusionXLPipelineFastTests.get_dummy_components`: an SDXL-class UNet of widths
    (2, 4) reading 64-wide tokens (two 32-wide CLIPs joined) and 6 time ids, a leading-spaced
    Euler scheduler, the VAE (64-pixel images), and the two text encoders of one seed."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4),
        layers_per_block=2,
        time_cond_proj_dim=time_cond_proj_dim,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the 32-wide pooled vector
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    vae = _vae(sample_size=128)
    torch.manual_seed(0)  # one seed for both encoders: the second continues the first's draws
    config = _text_config()
    text_encoder = CLIPTextModel(config)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    return _with_optional_none(
        dict(
            unet=unet,
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            text_encoder_2=text_encoder_2,
            tokenizer_2=clip_tokenizer(),
        )
    )


def random_floats(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """upstream's `floats_tensor(shape, rng=random.Random(seed))`: float32 in [0, 1), drawn in
    row-major order from Python's `random`, so the same seed gives upstream's numbers."""
    rng = random.Random(seed)
    count = 1
    for size in shape:
        count *= size
    return torch.tensor([rng.random() for _ in range(count)], dtype=torch.float32).view(shape)


__all__ = ["random_floats", "sd_image_components", "sdxl_components"]
