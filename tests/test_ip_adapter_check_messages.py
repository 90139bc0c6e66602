"""`IPAdapterSupport.check_ip_adapter_inputs` on a stand-in pipeline (a UNet holding
`MultiIPAdapterImageProjection`, as `load_ip_adapter` leaves it): the whole message of each
refusal, names included, and 4-D embeddings (adapters that read hidden states) taken. No model
runs: each test is a few milliseconds."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

from clipcond.pipelines.ip_adapter import IPAdapterSupport, loaded_ip_adapters, projection_input


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
    layer, _ = _projections()["plus"]
    unet = SimpleNamespace(encoder_hid_proj=MultiIPAdapterImageProjection([layer]))
    pipe = SimpleNamespace(unet=unet, image_encoder=None)
    assert check(pipe, embeds=[torch.zeros(2, 1, 4, 12)]) is True
    assert check(pipe, embeds=[torch.zeros(1, 1, 4, 12)], guided=False) is True


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


def _projections() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    """One small image projection of each kind diffusers loads, with the embeddings shape (of a
    batch of 2 with 1 image) that Stable Diffusion's `prepare_ip_adapter_image_embeds` gives it,
    width 12 throughout."""
    from diffusers.models import embeddings as kinds

    plus = dict(hidden_dims=16, depth=1, dim_head=4, heads=2, num_queries=2)
    faceid_plus = kinds.IPAdapterFaceIDPlusImageProjection(
        embed_dims=8, output_dims=8, id_embeddings_dim=12, num_tokens=2, **plus
    )
    faceid_plus.clip_embeds = torch.randn(2, 1, 3, 16)  # set by the user before a call, as diffusers documents
    return {
        "plain": (
            kinds.ImageProjection(image_embed_dim=12, cross_attention_dim=8, num_image_text_embeds=2),
            (2, 1, 12),
        ),
        "plus": (kinds.IPAdapterPlusImageProjection(embed_dims=12, output_dims=8, **plus), (2, 1, 3, 12)),
        "full": (kinds.IPAdapterFullImageProjection(image_embed_dim=12, cross_attention_dim=8), (2, 1, 3, 12)),
        "faceid": (kinds.IPAdapterFaceIDImageProjection(image_embed_dim=12, cross_attention_dim=8), (2, 1, 12)),
        "faceid_plus": (faceid_plus, (2, 1, 12)),
    }


@pytest.mark.parametrize("kind", ["plain", "plus", "full", "faceid", "faceid_plus"])
def test_the_width_each_projection_is_said_to_read_is_the_one_its_forward_runs_on(kind) -> None:
    """The reference is diffusers' own projection: embeddings of the width `projection_input`
    names run through it, one wider fail in it, and the check refuses exactly those."""
    layer, shape = _projections()[kind]
    projection = MultiIPAdapterImageProjection([layer])
    pipe = SimpleNamespace(unet=SimpleNamespace(encoder_hid_proj=projection), image_encoder=None)
    assert projection_input(layer)[1] == shape[-1]
    fitting = torch.randn(shape)
    projection([fitting])
    assert check(pipe, embeds=[fitting]) is True
    wider = torch.randn(shape[:-1] + (shape[-1] + 1,))
    with pytest.raises(RuntimeError):
        projection([wider])
    expected = (
        f"`ip_adapter_image_embeds`[0] has shape {tuple(wider.shape)}, but IP-Adapter 0 ({type(layer).__name__}) "
        "reads embeddings of width 12: make them with the image encoder the adapter was trained with"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check(pipe, embeds=[wider])


@pytest.mark.parametrize(
    "kind, shape, diffusers_runs",
    [
        ("plain", (2, 1, 1, 12), True),  # one token per image: diffusers reads it as pooled
        ("plain", (2, 1, 3, 12), False),
        ("plus", (2, 1, 12), False),
    ],
    ids=["plain_4d_one_token", "plain_4d_three_tokens", "plus_3d"],
)
def test_a_rank_is_refused_exactly_where_diffusers_projection_fails(kind, shape, diffusers_runs) -> None:
    layer, _ = _projections()[kind]
    projection = MultiIPAdapterImageProjection([layer])
    pipe = SimpleNamespace(unet=SimpleNamespace(encoder_hid_proj=projection), image_encoder=None)
    embeds = torch.randn(shape)
    if diffusers_runs:
        projection([embeds])
        assert check(pipe, embeds=[embeds]) is True
        return
    with pytest.raises(RuntimeError):
        projection([embeds])
    reads = "pooled image embeddings, 3-D" if kind == "plain" else "the image encoder's hidden states, 4-D"
    expected = (
        f"`ip_adapter_image_embeds`[0] has shape {shape}, but IP-Adapter 0 ({type(layer).__name__}) reads {reads}; "
        "make them with `pipe.prepare_ip_adapter_image_embeds(image, None, device, 1, do_classifier_free_guidance)`"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check(pipe, embeds=[embeds])


def test_a_wrong_count_is_named_before_any_width() -> None:
    """Two embeddings of the wrong width for one adapter: the count is what is wrong first."""
    with pytest.raises(ValueError, match=r"has 2 entries but 1 IP-Adapter"):
        check(stand_in(), embeds=[torch.zeros(2, 1, 5)] * 2)


def test_the_second_adapter_is_named_when_only_its_embeddings_do_not_fit() -> None:
    with pytest.raises(ValueError, match=r"^`ip_adapter_image_embeds`\[1\] has shape \(2, 1, 5\), but IP-Adapter 1 "):
        check(stand_in(adapters=2), embeds=[torch.zeros(2, 1, 8), torch.zeros(2, 1, 5)])


@pytest.mark.parametrize(
    "image, found",
    [(3, "int"), (None.__class__, "type"), ([PIL.Image.new("RGB", (8, 8)), 2.5], "float"), ([[object()]], "object")],
    ids=["a_number", "a_class", "a_number_beside_an_image", "an_object_in_one_adapters_list"],
)
def test_an_image_argument_holding_no_image_is_named_with_what_it_holds(image, found) -> None:
    expected = (
        "`ip_adapter_image` must hold images (PIL images, numpy arrays, tensors, or paths or URLs), one per "
        f"IP-Adapter or a list of them per adapter, got {found}"
    )
    adapters = len(image) if isinstance(image, list) else 1
    with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
        check(stand_in(adapters=adapters), image=image)


@pytest.mark.parametrize(
    "image",
    [
        PIL.Image.new("RGB", (8, 8)),
        np.zeros((8, 8, 3), dtype=np.uint8),
        torch.zeros(3, 8, 8),
        "https://example.com/cat.png",  # the image processor opens paths and URLs
        [[PIL.Image.new("RGB", (8, 8)), PIL.Image.new("RGB", (8, 8))]],  # two images for one adapter
    ],
    ids=["pil", "numpy", "tensor", "url", "two_for_one_adapter"],
)
def test_every_kind_of_image_diffusers_reads_is_taken(image) -> None:
    assert check(stand_in(), image=image) is True


def _faceid_plus_pipe(clip_embeds) -> tuple[SimpleNamespace, MultiIPAdapterImageProjection]:
    layer, _ = _projections()["faceid_plus"]
    layer.clip_embeds = clip_embeds
    projection = MultiIPAdapterImageProjection([layer])
    return SimpleNamespace(unet=SimpleNamespace(encoder_hid_proj=projection), image_encoder=object()), projection


@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("images_count", [1, 2])
@pytest.mark.parametrize("images_per_row", [1, 2])
@pytest.mark.parametrize("clip_rows", [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2), (8, 1)])
def test_faceid_plus_clip_embeds_are_refused_exactly_where_diffusers_fails(
    guided, images_count, images_per_row, clip_rows
) -> None:
    """The reference is diffusers' own: Stable Diffusion's `prepare_ip_adapter_image_embeds`
    repeats the ID embeddings for the call's images (and guidance), and the FaceID-plus
    projection runs on them with the layer's `clip_embeds`; the check takes exactly the
    `clip_embeds` that run there."""
    from diffusers import StableDiffusionPipeline

    ids = torch.randn(2 if guided else 1, images_per_row, 12)
    pipe, projection = _faceid_plus_pipe(torch.randn(*clip_rows, 3, 16))
    repeated = StableDiffusionPipeline.prepare_ip_adapter_image_embeds(
        SimpleNamespace(), None, [ids], "cpu", images_count, guided
    )
    try:
        projection(repeated)
        diffusers_runs = True
    except RuntimeError:
        diffusers_runs = False
    if diffusers_runs:
        assert IPAdapterSupport.check_ip_adapter_inputs(pipe, None, [ids], guided, images_count) is True
        return
    id_rows = ids.shape[0] * images_per_row * images_count
    expected = (
        f"`pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds` has shape {(*clip_rows, 3, 16)}, "
        f"{clip_rows[0] * clip_rows[1]} rows of hidden states, but the call gives IP-Adapter 0 {id_rows} rows of ID "
        "embeddings (guided rows x images made x images per row): make `clip_embeds` for as many images, with the "
        "same guidance, as the call"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        IPAdapterSupport.check_ip_adapter_inputs(pipe, None, [ids], guided, images_count)


@pytest.mark.parametrize("image_input", [False, True], ids=["embeds", "image"])
@pytest.mark.parametrize("clip_embeds", [None, [torch.randn(2, 1, 3, 16)]], ids=["unset", "the_list_prepare_returns"])
def test_faceid_plus_without_clip_embeds_is_refused_naming_where_to_set_them(image_input, clip_embeds) -> None:
    """Unset, or set to the list `prepare_ip_adapter_image_embeds` returns instead of its
    first entry: diffusers fails at `clip_embeds.dtype` in the UNet's first step."""
    pipe, projection = _faceid_plus_pipe(clip_embeds)
    ids = torch.randn(2, 1, 12)
    with pytest.raises(AttributeError):  # diffusers: '... object has no attribute 'dtype'
        projection([ids])
    expected = (
        "IP-Adapter 0 (FaceID-plus) also reads the face image's CLIP hidden states from "
        "`pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds`, which holds "
        f"{type(clip_embeds).__name__}: set it before "
        "the call, to `pipe.prepare_ip_adapter_image_embeds(face_image, None, device, images, "
        "do_classifier_free_guidance)[0]`"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        if image_input:
            check(pipe, image=PIL.Image.new("RGB", (8, 8)))
        else:
            check(pipe, embeds=[ids])


@pytest.mark.parametrize("shape", [(2, 3, 16), (2, 1, 3, 17)], ids=["3d", "wider"])
def test_faceid_plus_clip_embeds_of_another_rank_or_width_name_what_the_layer_reads(shape) -> None:
    pipe, projection = _faceid_plus_pipe(torch.randn(shape))
    ids = torch.randn(2, 1, 12)
    with pytest.raises((IndexError, RuntimeError)):
        projection([ids])
    expected = (
        f"`pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds` has shape {shape}, but IP-Adapter 0 "
        "(FaceID-plus) reads the image encoder's hidden states there, 4-D (rows, images, tokens, 16)"
    )
    for kwargs in (dict(embeds=[ids]), dict(image=PIL.Image.new("RGB", (8, 8)))):
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            check(pipe, **kwargs)
