"""IP-Adapter in `CLIPConditionedPipeline` equals Stable Diffusion's: a tiny random adapter saved
with safetensors in a local folder (with a tiny image encoder), loaded through
`load_ip_adapter` into both pipelines, gives the same images for the same image, embeddings,
scales and generator; misuse is refused before any work."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.callbacks import IPAdapterScaleCutoffCallback, SDCFGCutoffCallback
from tiny_ip_adapter import IMAGE_SIZE, save_ip_adapter
from tiny_pipelines import copy_sharing_tokenizers, sd_components, shared_tokenizers_kept
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from clipcond import CLIPConditionedPipeline


@pytest.fixture(scope="module")
def parts() -> Iterator[dict]:
    """The SD components the module's pipelines copy, their tokenizer shared: a test that
    changed it fails the module."""
    built = sd_components()
    built["scheduler"] = DDIMScheduler(steps_offset=1, clip_sample=False)  # as SD's constructor leaves it
    with shared_tokenizers_kept(built):
        yield built


@pytest.fixture(scope="module")
def adapter_folder(parts, tmp_path_factory):
    """Two adapters (seeds 0 and 1) and the image encoder, in one local folder."""
    folder = tmp_path_factory.mktemp("ip_adapter")
    for seed in (0, 1):
        save_ip_adapter(folder, parts["unet"], seed, name=f"adapter_{seed}")
    return folder


def picture(seed: int, size: tuple[int, int] = (40, 48)) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def loaded(pipeline_class, parts: dict, folder, adapters: int = 1, **load_kwargs):
    """A pipeline of `pipeline_class` on copies of `parts`, with `adapters` IP-Adapters loaded from `folder`."""
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = pipeline_class(**copy_sharing_tokenizers(parts), **extra)
    pipe.set_progress_bar_config(disable=True)
    names = [f"adapter_{seed}.safetensors" for seed in range(adapters)]
    pipe.load_ip_adapter([str(folder)] * adapters, subfolder=[""] * adapters, weight_name=names, **load_kwargs)
    return pipe


def images(pipe, **kwargs) -> np.ndarray:
    settings = dict(prompt="a red circle", num_inference_steps=2, guidance_scale=6.0, output_type="np")
    settings.update(kwargs)
    return pipe(generator=torch.Generator().manual_seed(0), **settings).images


def test_load_ip_adapter_brings_the_image_encoder_and_its_processor(parts, adapter_folder) -> None:
    """As in SD: the folder's `image_encoder` and a CLIPImageProcessor of its image size become
    the pipeline's optional components, and the UNet holds the adapter."""
    pipe = loaded(CLIPConditionedPipeline, parts, adapter_folder)
    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection)
    assert isinstance(pipe.feature_extractor, CLIPImageProcessor)
    assert pipe.feature_extractor.crop_size["height"] == IMAGE_SIZE
    assert pipe.unet.config.encoder_hid_dim_type == "ip_image_proj"


@pytest.mark.parametrize(
    "adapters, scale, kwargs",
    [
        (1, 1.0, dict(ip_adapter_image=picture(0), negative_prompt="blurry")),
        (1, 0.6, dict(ip_adapter_image=picture(0), guidance_scale=1.0)),
        (
            2,
            [0.5, 1.5],
            dict(
                prompt=["a red circle", "two blue squares"],
                ip_adapter_image=[picture(0), picture(1)],
                num_images_per_prompt=2,
            ),
        ),
    ],
    ids=["one_adapter", "no_guidance", "two_adapters_two_prompts"],
)
def test_images_equal_stable_diffusion_with_the_same_adapter(parts, adapter_folder, adapters, scale, kwargs) -> None:
    peer = loaded(StableDiffusionPipeline, parts, adapter_folder, adapters)
    pipe = loaded(CLIPConditionedPipeline, parts, adapter_folder, adapters)
    for each in (peer, pipe):
        each.set_ip_adapter_scale(scale)
    expected = images(peer, **kwargs)
    assert np.array_equal(images(pipe, **kwargs), expected)
    peer.set_ip_adapter_scale(0.0 if adapters == 1 else [0.0] * adapters)
    assert np.abs(images(peer, **kwargs) - expected).max() > 1e-3  # the adapter is read


def test_precomputed_image_embeds_equal_the_image(parts, adapter_folder) -> None:
    """`ip_adapter_image_embeds` made once with `prepare_ip_adapter_image_embeds` (SD's
    documented way to reuse them) give the images of `ip_adapter_image`, and SD's."""
    pipe = loaded(CLIPConditionedPipeline, parts, adapter_folder)
    embeds = pipe.prepare_ip_adapter_image_embeds(picture(0), None, "cpu", 1, True)
    by_image = images(pipe, ip_adapter_image=picture(0))
    assert np.array_equal(images(pipe, ip_adapter_image_embeds=embeds), by_image)
    peer = loaded(StableDiffusionPipeline, parts, adapter_folder)
    assert np.array_equal(images(peer, ip_adapter_image_embeds=embeds), by_image)


def test_from_pipe_keeps_the_adapter_and_unload_removes_it(parts, adapter_folder) -> None:
    """`from_pipe(sd_with_an_adapter)` shares the UNet (with its adapter) and the image encoder;
    after `unload_ip_adapter` the images are the plain pipeline's again."""
    peer = loaded(StableDiffusionPipeline, parts, adapter_folder)
    pipe = CLIPConditionedPipeline.from_pipe(peer)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_encoder is peer.image_encoder and pipe.unet is peer.unet
    assert np.array_equal(images(pipe, ip_adapter_image=picture(0)), images(peer, ip_adapter_image=picture(0)))
    plain = CLIPConditionedPipeline(**copy_sharing_tokenizers(parts))
    plain.set_progress_bar_config(disable=True)
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None
    assert np.array_equal(images(pipe), images(plain))


def _refused(pipe, monkeypatch, message, error=ValueError, prompt="a red circle", **kwargs) -> None:
    calls = []
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(error, match=message):
        pipe(prompt=prompt, num_inference_steps=2, **kwargs)
    assert not calls


@pytest.mark.parametrize(
    "kwargs",
    [dict(ip_adapter_image=picture(0)), dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 32)])],
    ids=["image", "embeds"],
)
def test_ip_adapter_input_without_a_loaded_adapter_is_refused(parts, monkeypatch, kwargs) -> None:
    pipe = CLIPConditionedPipeline(**copy_sharing_tokenizers(parts))
    _refused(
        pipe, monkeypatch, r"needs an IP-Adapter in the UNet, and none is loaded: call `pipe.load_ip_adapter", **kwargs
    )


@pytest.mark.parametrize(
    "kwargs, message, error",
    [
        (
            dict(ip_adapter_image=[picture(0), picture(1)]),
            r"`ip_adapter_image` has 2 entries but 1 IP-Adapter",
            ValueError,
        ),
        (dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 32)] * 3), r"has 3 entries but 1 IP-Adapter", ValueError),
        (
            dict(ip_adapter_image=picture(0), ip_adapter_image_embeds=[torch.zeros(2, 1, 32)]),
            "at most one of `ip_adapter_image` and `ip_adapter_image_embeds`",
            ValueError,
        ),
        (dict(ip_adapter_image_embeds=torch.zeros(2, 1, 32)), "must be a list of tensors", TypeError),
        (dict(ip_adapter_image=3), r"^`ip_adapter_image` must hold images .*, got int$", TypeError),
        (
            dict(ip_adapter_image_embeds=[torch.zeros(2, 32)]),
            r"3-D \(batch, images, width\) or 4-D tensors, got 2-D",
            ValueError,
        ),
        (
            dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 24)]),
            r"^`ip_adapter_image_embeds`\[0\] has shape \(2, 1, 24\), but IP-Adapter 0 \(ImageProjection\) reads "
            r"embeddings of width 32: make them with the image encoder the adapter was trained with$",
            ValueError,
        ),
        (
            dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 5, 32)]),
            r"^`ip_adapter_image_embeds`\[0\] has shape \(2, 1, 5, 32\), but IP-Adapter 0 \(ImageProjection\) "
            r"reads pooled image embeddings, 3-D; make them with `pipe\.prepare_ip_adapter_image_embeds",
            ValueError,
        ),
    ],
    ids=[
        "two_images_one_adapter",
        "three_embeds_one_adapter",
        "both",
        "embeds_not_a_list",
        "image_a_number",
        "embeds_2d",
        "embeds_of_another_width",
        "hidden_states_for_a_plain_adapter",
    ],
)
def test_ip_adapter_inputs_that_do_not_fit_the_adapters_are_refused(
    parts, adapter_folder, monkeypatch, kwargs, message, error
) -> None:
    pipe = loaded(CLIPConditionedPipeline, parts, adapter_folder)
    _refused(pipe, monkeypatch, message, error, **kwargs)


def test_an_image_without_an_image_encoder_is_refused(parts, adapter_folder, monkeypatch) -> None:
    """An adapter loaded with `image_encoder_folder=None` reads embeddings only."""
    pipe = loaded(CLIPConditionedPipeline, parts, adapter_folder, image_encoder_folder=None)
    assert pipe.image_encoder is None
    _refused(pipe, monkeypatch, r"`ip_adapter_image` needs an `image_encoder`", ip_adapter_image=picture(0))


@pytest.mark.parametrize(
    "prompt, kwargs",
    [
        ("a [red:blue:0.5] circle", dict(ip_adapter_image=picture(0))),
        ("a [red|blue] circle", dict(ip_adapter_image=picture(0))),
        ("a red circle AND a blue square", dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 32)])),
    ],
    ids=["edit", "alternation", "and"],
)
def test_an_ip_adapter_with_a_planned_prompt_is_refused_before_the_text_encoder(
    parts, adapter_folder, monkeypatch, prompt, kwargs
) -> None:
    """The refusal comes before any prompt is encoded (it used to come after the plan's encoding)."""
    pipe = loaded(CLIPConditionedPipeline, parts, adapter_folder)
    message = "^an IP-Adapter cannot go with a prompt that edits, alternates or has AND; give a plain prompt$"
    _refused(pipe, monkeypatch, message, prompt=prompt, **kwargs)


def _no_op(pipe, step, timestep, tensors):
    return {}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(callback_on_step_end=_no_op),
        dict(callback_on_step_end=_no_op, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]),
        dict(
            callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5),
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        ),
        dict(callback_on_step_end=IPAdapterScaleCutoffCallback(cutoff_step_ratio=0.5)),
    ],
    ids=["no_op", "no_op_with_prompt_embeds", "cfg_cutoff", "ip_adapter_scale_cutoff"],
)
def test_step_callbacks_with_an_ip_adapter_equal_stable_diffusion(parts, adapter_folder, kwargs) -> None:
    """A step-end callback beside an IP-Adapter (the UNet's added conditioning then holds its
    image embeddings, and no SDXL text embeddings or time ids): SD's images, bit for bit."""
    settings = dict(ip_adapter_image=picture(0), num_inference_steps=4, **kwargs)
    expected = images(loaded(StableDiffusionPipeline, parts, adapter_folder), **settings)
    assert np.array_equal(images(loaded(CLIPConditionedPipeline, parts, adapter_folder), **settings), expected)


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_img2img_and_inpaint_with_an_ip_adapter_and_a_callback_equal_stable_diffusion(
    parts, adapter_folder, task
) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    from clipcond.pipelines import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline

    peer_class, our_class = {
        "img2img": (StableDiffusionImg2ImgPipeline, CLIPConditionedImg2ImgPipeline),
        "inpaint": (StableDiffusionInpaintPipeline, CLIPConditionedInpaintPipeline),
    }[task]
    settings = dict(image=picture(1, (32, 32)), strength=0.8, num_inference_steps=4, ip_adapter_image=picture(0))
    if task == "inpaint":
        settings["mask_image"] = PIL.Image.fromarray(np.tri(32, dtype=np.uint8) * 255)
    settings["callback_on_step_end"] = _no_op
    expected = images(loaded(peer_class, parts, adapter_folder), **settings)
    assert np.array_equal(images(loaded(our_class, parts, adapter_folder), **settings), expected)


@pytest.mark.parametrize("batch", [1, 3], ids=["made_without_guidance", "odd_batch"])
def test_image_embeds_of_an_odd_batch_under_guidance_are_refused(parts, adapter_folder, monkeypatch, batch) -> None:
    """Under guidance each tensor holds negatives then positives: an odd first dimension (embeds
    made without guidance) is refused before any work, naming the argument and how to make them;
    without guidance the same embeds run."""
    pipe = loaded(CLIPConditionedPipeline, parts, adapter_folder)
    embeds = pipe.prepare_ip_adapter_image_embeds(picture(0), None, "cpu", 1, False)  # [(1, 1, width)]
    embeds = [torch.cat([embeds[0]] * batch)]
    _refused(
        pipe,
        monkeypatch,
        rf"`ip_adapter_image_embeds`\[0\] has shape \({batch}, 1, 32\): under classifier-free guidance .* "
        r"must be even \(2 x batch\)\. Make them with `pipe\.prepare_ip_adapter_image_embeds\(image, None, device, 1, "
        r"do_classifier_free_guidance=True\)`",
        ip_adapter_image_embeds=embeds,
        guidance_scale=6.0,
    )
    if batch == 1:
        monkeypatch.undo()
        peer = loaded(StableDiffusionPipeline, parts, adapter_folder)
        settings = dict(ip_adapter_image_embeds=embeds, guidance_scale=1.0)
        assert np.array_equal(images(pipe, **settings), images(peer, **settings))


def _with_faceid_plus(pipe, clip_images: int):
    """`pipe` with its adapter's image projection swapped for a FaceID-plus one (4 tokens of the
    UNet's cross-attention width, as the adapter's attention reads), its `clip_embeds` the
    image encoder's hidden states of `picture(0)` for `clip_images` guided images, as
    diffusers' FaceID-plus example sets them."""
    from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

    torch.manual_seed(3)
    layer = IPAdapterFaceIDPlusImageProjection(
        embed_dims=8,
        output_dims=pipe.unet.config.cross_attention_dim,
        hidden_dims=pipe.image_encoder.config.hidden_size,
        id_embeddings_dim=12,
        depth=1,
        dim_head=4,
        heads=2,
        num_tokens=4,
    )
    pipe.unet.encoder_hid_proj.image_projection_layers[0] = layer
    layer.clip_embeds = pipe.prepare_ip_adapter_image_embeds(picture(0), None, "cpu", clip_images, True)[0]
    return pipe


def test_faceid_plus_equals_stable_diffusion_and_clip_embeds_for_too_few_images_are_refused_first(
    parts, adapter_folder, monkeypatch
) -> None:
    """With `clip_embeds` made for the call's 2 images, the images are SD's; made for 1 image,
    SD fails in the UNet's first step and ours refuses before the text encoder runs."""
    ids = [torch.randn(2, 1, 12, generator=torch.Generator().manual_seed(1))]
    kwargs = dict(ip_adapter_image_embeds=ids, num_images_per_prompt=2)
    peer = _with_faceid_plus(loaded(StableDiffusionPipeline, parts, adapter_folder), clip_images=2)
    pipe = _with_faceid_plus(loaded(CLIPConditionedPipeline, parts, adapter_folder), clip_images=2)
    assert np.array_equal(images(pipe, **kwargs), images(peer, **kwargs))
    for each in (peer, pipe):
        each.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = each.prepare_ip_adapter_image_embeds(
            picture(0), None, "cpu", 1, True
        )[0]
    with pytest.raises(RuntimeError):
        images(peer, **kwargs)
    message = (
        r"clip_embeds` has shape \(2, 1, 17, 32\), 2 rows of hidden states, but the call gives IP-Adapter 0 4 rows"
    )
    _refused(pipe, monkeypatch, message, **kwargs)
