"""`build_unet`'s from-scratch latent UNet (sample_size, channels) and the edges of its
input checks, called directly with a stand-in config and a tiny VAE (well under a second each)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
from diffusers import AutoencoderKL

from clipcond.training.diffusion.unet_setup import build_unet
from clipcond.training.loop import RunSetupError

UNET = dict(
    block_out_channels=[8, 16],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1,
    attention_head_dim=2,
    norm_num_groups=4,
)


def _vae(blocks: int) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[4] * blocks,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def _config(unet=None, coordinate_channels=False, image_size=32):
    return NS(
        init_from=None, unet={**UNET, **(unet or {})}, image_size=image_size, coordinate_channels=coordinate_channels
    )


@pytest.mark.parametrize(
    "blocks, coordinates, sample, channels_in", [(1, False, 32, 4), (3, False, 8, 4), (2, True, 16, 6)]
)
def test_a_new_unet_is_sized_for_the_latents(blocks, coordinates, sample, channels_in) -> None:
    unet = build_unet(_config(coordinate_channels=coordinates), 32, _vae(blocks))
    # the saved pipeline's default height is sample_size x the VAE's scale: a whole number of latents
    assert unet.config.sample_size == sample and isinstance(unet.config.sample_size, int)
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.cross_attention_dim) == (channels_in, 4, 32)
    pixels = build_unet(_config(coordinate_channels=coordinates), 32, None)
    assert (pixels.config.sample_size, pixels.config.in_channels, pixels.config.out_channels) == (
        32,
        3 + 2 * coordinates,
        3,
    )


def test_in_and_out_channels_equal_to_what_the_run_gives_are_accepted() -> None:
    unet = build_unet(_config({"in_channels": 4, "out_channels": 4}), 32, _vae(2))
    assert unet.config.in_channels == 4


def test_one_text_pooling_head_is_accepted_and_bad_head_counts_are_refused() -> None:
    assert (
        build_unet(_config({"addition_embed_type": "text", "addition_embed_type_num_heads": 1}), 32, None) is not None
    )
    for bad in (0, -2, True, 2.0, "2"):
        with pytest.raises(RunSetupError, match=rf"addition_embed_type_num_heads \({bad!r}\) attention heads"):
            build_unet(_config({"addition_embed_type": "text", "addition_embed_type_num_heads": bad}), 32, None)


@pytest.mark.parametrize(
    "settings, needs",
    [
        ({"addition_embed_type": "image"}, "inputs in added_cond_kwargs"),
        ({"encoder_hid_dim_type": "text_proj"}, "encoder_hid_dim-wide tokens or image embeddings"),
        ({"class_embed_type": "timestep"}, "class labels"),
    ],
)
def test_each_unfed_setting_is_named_with_what_it_needs(settings, needs) -> None:
    ((name, value),) = settings.items()
    with pytest.raises(RunSetupError) as refused:
        build_unet(_config(settings), 32, None)
    assert str(refused.value) == (
        f"unet: the UNet has {name} {value!r}, which needs {needs}; train-diffusion gives the UNet only the noisy "
        "input, the timesteps and the prompt's tokens (an SD-class UNet)"
    )
