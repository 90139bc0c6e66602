"""`IPAdapterSupport.check_ip_adapter_inputs` on a stand-in pipeline (a UNet holding
`MultiIPAdapterImageProjection`, as `load_ip_adapter` leaves it): the whole message of each
refusal, names included, and 4-D embeddings (adapters that read hidden states) taken. No model
runs: each test is a few milliseconds."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

from clipcond.pipelines.ip_adapter import IPAdapterSupport, loaded_ip_adapters


def stand_in(adapters: int = 1, image_encoder: object | None = object()) -> SimpleNamespace:
    layers = [
        ImageProjection(image_embed_dim=8, cross_attention_dim=8, num_image_text_embeds=1) for _ in range(adapters)
    ]
    unet = SimpleNamespace(encoder_hid_proj=MultiIPAdapterImageProjection(layers) if adapters else None)
    return SimpleNamespace(unet=unet, image_encoder=image_encoder)


def check(pipe, image=None, embeds=None, guided=True):
    return IPAdapterSupport.check_ip_adapter_inputs(pipe, image, embeds, guided)


def test_embeds_without_an_adapter_are_refused_by_their_own_name() -> None:
    with pytest.raises(ValueError, match=r"^`ip_adapter_image_embeds` needs an IP-Adapter in the UNet"):
        check(stand_in(adapters=0), embeds=[torch.zeros(2, 1, 8)])


def test_a_count_of_embeds_that_is_not_the_adapters_names_the_embeds_and_the_order() -> None:
    expected = (
        "`ip_adapter_image_embeds` has 2 entries but 1 IP-Adapter(s) are loaded; give one per adapter, "
        "in the order they were loaded"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check(stand_in(), embeds=[torch.zeros(2, 1, 8)] * 2)


def test_an_image_without_an_image_encoder_says_how_to_load_one_or_what_to_pass() -> None:
    expected = (
        "`ip_adapter_image` needs an `image_encoder` (a CLIPVisionModelWithProjection); load one with "
        "`load_ip_adapter(..., image_encoder_folder=...)`, or pass `ip_adapter_image_embeds`"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check(stand_in(image_encoder=None), image=object())


def test_embeds_that_are_no_list_name_the_type_given() -> None:
    with pytest.raises(TypeError, match=r"one per IP-Adapter, got Tensor$"):
        check(stand_in(), embeds=torch.zeros(2, 1, 8))


def test_odd_embeds_under_guidance_also_offer_guidance_off() -> None:
    with pytest.raises(ValueError, match=r"\(2 x batch\)\. Make them with .*, or call with guidance_scale <= 1$"):
        check(stand_in(), embeds=[torch.zeros(1, 1, 8)])


def test_4d_embeds_of_an_adapter_reading_hidden_states_are_taken() -> None:
    """(2 x batch, images, tokens, width), as `prepare_ip_adapter_image_embeds` makes them for
    IP-Adapter Plus (`output_hidden_states`)."""
    assert check(stand_in(), embeds=[torch.zeros(2, 1, 4, 8)]) is True
    assert check(stand_in(), embeds=[torch.zeros(1, 1, 4, 8)], guided=False) is True


def test_an_image_beside_embeds_is_refused_with_the_whole_message() -> None:
    expected = "give at most one of `ip_adapter_image` and `ip_adapter_image_embeds`"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check(stand_in(), image=object(), embeds=[torch.zeros(2, 1, 8)])


def test_loaded_ip_adapters_counts_zero_without_a_unet_or_an_adapter_and_each_one_loaded() -> None:
    """Its documented contract (it is exported): 0 for no UNet, an object without the
    attribute, or `encoder_hid_proj=None`; the number of projection layers otherwise."""
    assert loaded_ip_adapters(None) == 0
    assert loaded_ip_adapters(object()) == 0
    assert loaded_ip_adapters(stand_in(adapters=0).unet) == 0
    assert loaded_ip_adapters(stand_in(adapters=2).unet) == 2
