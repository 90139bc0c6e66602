"""IP-Adapter for `CLIPConditionedPipeline`, as Stable Diffusion has it.

An IP-Adapter conditions the UNet on an image as well as on the prompt: an image encoder
(`CLIPVisionModelWithProjection`) turns the image into an embedding, the adapter's image
projection turns that into a few extra context tokens, and extra key/value projections in
every cross-attention read them next to the text tokens (arXiv 2308.06721).

Nothing of that is ours. diffusers' `IPAdapterMixin` loads an adapter folder or state dict
into the UNet (and the image encoder and its `CLIPImageProcessor` where the pipeline has none),
and `StableDiffusionPipeline.encode_image` / `prepare_ip_adapter_image_embeds` turn images or
given embeddings into the UNet's `image_embeds`; the mixin below borrows those two functions
from SD's class (called, not copied), so the embeddings are SD's by construction. What is
ours: the checks that a call's IP-Adapter arguments fit the loaded adapters, made before any
work with messages that say what to do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.loaders import IPAdapterMixin
from diffusers.models.embeddings import (
    ImageProjection,
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
    MultiIPAdapterImageProjection,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from clipcond.pipelines.ip_adapter_loading import (
    check_image_encoder_folders,
    check_ip_adapter_scale,
    describe_source,
    rolled_back_on_failure,
)


def loaded_ip_adapters(unet: Any) -> int:
    """How many IP-Adapters `unet` holds (0 when none is loaded, or there is no UNet)."""
    projection = getattr(unet, "encoder_hid_proj", None)
    if not isinstance(projection, MultiIPAdapterImageProjection):  # `load_ip_adapter` sets one
        return 0
    return len(projection.image_projection_layers)


def projection_input(layer: Any) -> tuple[int | None, int | None]:
    """What one adapter's image projection reads: (rank of the embeddings a call gives it, width
    of their last dimension); None where the projection's kind does not fix it.

    An `ImageProjection` (the plain IP-Adapter) reads the image encoder's pooled embeddings,
    (batch, images, width); the "plus" kind reads its hidden states, (batch, images, tokens,
    width), which is what Stable Diffusion's `prepare_ip_adapter_image_embeds` gives each kind.
    The full and FaceID kinds fix the width only.
    """
    if isinstance(layer, ImageProjection):
        return 3, layer.image_embeds.in_features
    if isinstance(layer, IPAdapterPlusImageProjection):
        return 4, layer.proj_in.in_features
    if isinstance(layer, (IPAdapterFullImageProjection, IPAdapterFaceIDImageProjection)):
        return None, layer.ff.net[0].proj.in_features
    if isinstance(layer, IPAdapterFaceIDPlusImageProjection):
        return None, layer.proj.net[0].proj.in_features
    return None, None


def check_faceid_plus_clip_embeds(index: int, layer: Any, id_rows: int | None) -> None:
    """A FaceID-plus projection reads two inputs: the call's ID embeddings and the face
    image's CLIP hidden states, which diffusers takes from the layer's `clip_embeds` attribute,
    set by the user before the call: (rows, images, tokens, width), rows and images together
    as many as the ID embeddings' rows the layer sees (`id_rows`, None where not known). An
    unset one, one of another rank or width, or one of other rows fails inside the UNet at the
    first step; each is refused here. Layers of other kinds pass.

    Raises:
        ValueError: naming the layer's `clip_embeds` and what it holds.
    """
    if not isinstance(layer, IPAdapterFaceIDPlusImageProjection):
        return
    where = f"`pipe.unet.encoder_hid_proj.image_projection_layers[{index}].clip_embeds`"
    clip_embeds = layer.clip_embeds
    if not isinstance(clip_embeds, torch.Tensor):
        raise ValueError(
            f"IP-Adapter {index} (FaceID-plus) also reads the face image's CLIP hidden states from {where}, which "
            f"holds {type(clip_embeds).__name__}: set it before the call, to "
            "`pipe.prepare_ip_adapter_image_embeds(face_image, None, device, images, do_classifier_free_guidance)[0]`"
        )
    width = layer.proj_in.in_features
    if clip_embeds.ndim != 4 or clip_embeds.shape[-1] != width:
        raise ValueError(
            f"{where} has shape {tuple(clip_embeds.shape)}, but IP-Adapter {index} (FaceID-plus) reads the image "
            f"encoder's hidden states there, 4-D (rows, images, tokens, {width})"
        )
    rows = clip_embeds.shape[0] * clip_embeds.shape[1]
    if id_rows is not None and rows != id_rows:
        raise ValueError(
            f"{where} has shape {tuple(clip_embeds.shape)}, {rows} rows of hidden states, but the call gives IP-Adapter "
            f"{index} {id_rows} rows of ID embeddings (guided rows x images made x images per row): make "
            "`clip_embeds` for as many images, with the same guidance, as the call"
        )


def check_embeds_fit_projections(unet: Any, ip_adapter_image_embeds: list[torch.Tensor], images_count: int) -> None:
    """Refuse embeddings (one per adapter of `unet`, in order) of a rank or width that the
    matching adapter's image projection cannot read, and a FaceID-plus adapter's `clip_embeds`
    that do not fit them (`check_faceid_plus_clip_embeds`); diffusers fails on them inside the
    UNet, at the first step. Only what fails there is refused: a plain adapter also reads 4-D
    embeddings with one token per image, as diffusers' does. `images_count` is the number of
    images the call makes (prompts x `num_images_per_prompt`): the pipeline repeats each
    adapter's embeddings that many times."""
    layers = unet.encoder_hid_proj.image_projection_layers
    for index, (embeds, layer) in enumerate(zip(ip_adapter_image_embeds, layers)):
        rank, width = projection_input(layer)
        one_token_per_image = rank == 3 and embeds.ndim == 4 and embeds.shape[2] == 1
        if rank is not None and embeds.ndim != rank and not one_token_per_image:
            reads = "pooled image embeddings" if rank == 3 else "the image encoder's hidden states"
            raise ValueError(
                f"`ip_adapter_image_embeds`[{index}] has shape {tuple(embeds.shape)}, but IP-Adapter {index} "
                f"({type(layer).__name__}) reads {reads}, {rank}-D; make them with "
                "`pipe.prepare_ip_adapter_image_embeds(image, None, device, 1, do_classifier_free_guidance)`"
            )
        if width is not None and embeds.shape[-1] != width:
            raise ValueError(
                f"`ip_adapter_image_embeds`[{index}] has shape {tuple(embeds.shape)}, but IP-Adapter {index} "
                f"({type(layer).__name__}) reads embeddings of width {width}: make them with the image "
                "encoder the adapter was trained with"
            )
        check_faceid_plus_clip_embeds(index, layer, images_count * embeds.shape[:-1].numel())


IMAGE_TYPES = (
    PIL.Image.Image,
    np.ndarray,
    torch.Tensor,
    str,
)  # str: a path or URL, as transformers' processors read it


def check_image_entries(ip_adapter_image: Any) -> None:
    """`ip_adapter_image` as diffusers reads it: one image, or a list with one entry per
    adapter, each an image or a list of images (several for one adapter); an image is a PIL
    image, a numpy array, a tensor, or a path or URL (the image processor opens those).
    Anything else fails in the image processor, after the text encoders ran.

    Raises:
        TypeError: naming `ip_adapter_image` and the type found.
    """
    entries = ip_adapter_image if isinstance(ip_adapter_image, list) else [ip_adapter_image]
    for entry in entries:
        for image in entry if isinstance(entry, list) else [entry]:
            if not isinstance(image, IMAGE_TYPES):
                raise TypeError(
                    "`ip_adapter_image` must hold images (PIL images, numpy arrays, tensors, or paths or URLs), one "
                    f"per IP-Adapter or a list of them per adapter, got {type(image).__name__}"
                )


def _check_weight_name(source: Any, weight_name: Any) -> None:
    """A folder or repository (or a list of them) needs its adapter file's name: a string, or a
    list of strings; a state dict (or a list of state dicts) needs none."""
    sources = source if isinstance(source, list) else [source]
    if all(isinstance(item, dict) for item in sources):
        return
    names = weight_name if isinstance(weight_name, list) else [weight_name]
    if not all(isinstance(name, str) and name for name in names):
        raise TypeError(
            "`weight_name` must name the adapter's file in the folder or repository (a string such as "
            f"'ip-adapter_sd15.safetensors', or a list of them, one per adapter), got {weight_name!r:.80}"
        )


class IPAdapterSupport(IPAdapterMixin):
    """diffusers' `IPAdapterMixin` (`load_ip_adapter`, `set_ip_adapter_scale`,
    `unload_ip_adapter`) with Stable Diffusion's image-embedding steps, for a pipeline with
    `unet`, `image_encoder` and `feature_extractor` components."""

    encode_image = StableDiffusionPipeline.encode_image
    prepare_ip_adapter_image_embeds = StableDiffusionPipeline.prepare_ip_adapter_image_embeds

    def set_ip_adapter_scale(self, scale: Any) -> None:
        """diffusers' `set_ip_adapter_scale`, with `scale` checked first
        (`clipcond.pipelines.ip_adapter_loading.check_ip_adapter_scale`): a number, a dict of
        block scales, or a list of those, one per adapter; finite.

        Raises:
            TypeError, ValueError: a scale of another kind, or NaN or infinite, before any
                processor changes.
        """
        super().set_ip_adapter_scale(check_ip_adapter_scale(scale))

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict: Any,
        subfolder: Any,
        weight_name: Any,
        image_encoder_folder: str | None = "image_encoder",
        **kwargs: Any,
    ) -> None:
        """diffusers' `load_ip_adapter`, with the pipeline left as it was when loading fails
        or loads NaN or infinite weights (`clipcond.pipelines.ip_adapter_loading`).

        Raises:
            TypeError: a `weight_name` that is no file name (or list of them, one per adapter)
                beside a folder or repository (diffusers' `os.path.join` failed on None).
            ValueError: weights missing a key the adapter needs, a safetensors file that
                cannot be read, or weights holding NaN or infinite values, naming the source;
                damaged files in a local image-encoder folder, naming each; or what diffusers'
                loader raises.
        """
        _check_weight_name(pretrained_model_name_or_path_or_dict, weight_name)
        check_image_encoder_folders(self, pretrained_model_name_or_path_or_dict, subfolder, image_encoder_folder)
        source = describe_source(pretrained_model_name_or_path_or_dict, weight_name)
        with rolled_back_on_failure(self, source):
            super().load_ip_adapter(
                pretrained_model_name_or_path_or_dict, subfolder, weight_name, image_encoder_folder, **kwargs
            )

    def check_ip_adapter_inputs(
        self,
        ip_adapter_image: Any,
        ip_adapter_image_embeds: Any,
        do_classifier_free_guidance: bool,
        images_count: int = 1,
    ) -> bool:
        """Check a call's IP-Adapter arguments against the loaded adapters; returns whether the
        call uses an IP-Adapter.

        Args:
            ip_adapter_image: one image (PIL, array or tensor) or a list with one per adapter.
            ip_adapter_image_embeds: a list with one tensor per adapter, (2 x batch, images,
                width) under classifier-free guidance (negatives first), (batch, images, width)
                otherwise, as in Stable Diffusion; 4-D for adapters that read hidden states.
            do_classifier_free_guidance: whether the call runs guidance (then every tensor of
                `ip_adapter_image_embeds` holds negatives and positives: an even batch).
            images_count: the images the call makes (prompts x `num_images_per_prompt`); each
                adapter's embeddings are repeated that many times.

        Raises:
            ValueError: both arguments given, no IP-Adapter loaded, a count that is not the
                number of loaded adapters, image input without an `image_encoder`, embeddings
                that are not 3-D or 4-D, under guidance embeddings of an odd batch, or
                embeddings of a width or rank the matching adapter cannot read, or a FaceID-plus
                adapter whose `clip_embeds` are unset or do not fit the call.
            TypeError: `ip_adapter_image_embeds` is not a list of tensors, or
                `ip_adapter_image` holds something that is no image.
        """
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return False
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError("give at most one of `ip_adapter_image` and `ip_adapter_image_embeds`")
        name = "ip_adapter_image" if ip_adapter_image is not None else "ip_adapter_image_embeds"
        adapters = loaded_ip_adapters(self.unet)
        if adapters == 0:
            raise ValueError(
                f"`{name}` needs an IP-Adapter in the UNet, and none is loaded: call "
                "`pipe.load_ip_adapter(folder, subfolder=..., weight_name=...)` first"
            )
        if ip_adapter_image is not None:
            given = len(ip_adapter_image) if isinstance(ip_adapter_image, list) else 1
            if self.image_encoder is None:
                raise ValueError(
                    "`ip_adapter_image` needs an `image_encoder` (a CLIPVisionModelWithProjection); load one with "
                    "`load_ip_adapter(..., image_encoder_folder=...)`, or pass `ip_adapter_image_embeds`"
                )
            check_image_entries(ip_adapter_image)
            for index, layer in enumerate(self.unet.encoder_hid_proj.image_projection_layers):
                check_faceid_plus_clip_embeds(index, layer, None)
        else:
            if not isinstance(ip_adapter_image_embeds, list) or not all(
                isinstance(embeds, torch.Tensor) for embeds in ip_adapter_image_embeds
            ):
                raise TypeError(
                    f"`ip_adapter_image_embeds` must be a list of tensors, one per IP-Adapter, got "
                    f"{type(ip_adapter_image_embeds).__name__}"
                )
            dims = sorted({embeds.ndim for embeds in ip_adapter_image_embeds} - {3, 4})
            if dims:
                raise ValueError(
                    f"`ip_adapter_image_embeds` must hold 3-D (batch, images, width) or 4-D tensors, got {dims[0]}-D"
                )
            given = len(ip_adapter_image_embeds)
            odd = [(index, embeds) for index, embeds in enumerate(ip_adapter_image_embeds) if embeds.shape[0] % 2]
            if do_classifier_free_guidance and odd:
                index, embeds = odd[0]
                raise ValueError(
                    f"`ip_adapter_image_embeds`[{index}] has shape {tuple(embeds.shape)}: under classifier-free "
                    "guidance (guidance_scale > 1) each tensor holds the negative embeddings, then the positive "
                    "ones, so its first dimension must be even (2 x batch). Make them with "
                    "`pipe.prepare_ip_adapter_image_embeds(image, None, device, 1, do_classifier_free_guidance=True)`, "
                    "or call with guidance_scale <= 1"
                )
        if given != adapters:
            raise ValueError(
                f"`{name}` has {given} entries but {adapters} IP-Adapter(s) are loaded; give one per adapter, "
                "in the order they were loaded"
            )
        if ip_adapter_image_embeds is not None:
            check_embeds_fit_projections(self.unet, ip_adapter_image_embeds, images_count)
        return True


__all__ = [
    "IPAdapterSupport",
    "check_embeds_fit_projections",
    "check_faceid_plus_clip_embeds",
    "check_image_entries",
    "loaded_ip_adapters",
    "projection_input",
]
