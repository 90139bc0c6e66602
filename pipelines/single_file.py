"""`from_single_file` for clipcond's pipelines: one original-format checkpoint (A1111, civitai).

A single file (`.safetensors`, or a `.ckpt` read with `torch.load(weights_only=True)`) holds
an LDM Stable Diffusion or SDXL model: UNet under `model.diffusion_model.`, VAE, text
encoder(s). diffusers reads such a file into `StableDiffusion[XL][Img2Img|Inpaint]Pipeline`
(`FromSingleFileMixin`: key conversion, configs from `config=` or the hub, legacy keywords).
We do not convert anything ourselves: we pick the diffusers class that matches our class's
task and the file's UNet, let it load the file with the caller's keyword arguments, and hand
its components, the same objects, to our constructor.

Before any model is built, the file's keys and shapes are read (safetensors' header, or a
`torch.load` onto the meta device) and a file that is not an SD/SDXL UNet checkpoint is
refused with an error naming `pretrained_model_link_or_path`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from clipcond.pipelines.saved_folder_checks import check_pipeline_folder

ARGUMENT = "pretrained_model_link_or_path"
UNET_PREFIX = "model.diffusion_model."
# conv_in of LDM's UNetModel: every SD / SDXL UNet has it; LoRAs, VAEs, text encoders,
# ControlNets and SD3 / Flux transformers do not
UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
# the first Linear of SDXL's added embedding (pooled text + time ids; diffusers'
# `addition_embed_type="text_time"`): SD 1.x / 2.x UNets have no `label_emb`
SDXL_ADDED_EMBEDDING = UNET_PREFIX + "label_emb.0.0.weight"
# SD 2.x unCLIP's UNet has a `label_emb` too (the noised CLIP image embedding); the file also
# holds the noise augmentor of that embedding, which no SD or SDXL checkpoint has
UNCLIP_NOISE_AUGMENTOR = "noise_augmentor."
# what diffusers' `infer_diffusers_model_type` calls the checkpoints a Stable Diffusion or SDXL
# pipeline reads ("v1" is also its answer for any file it does not recognise)
READ_MODEL_TYPES = {"v1", "v2", "inpainting", "inpainting_v2", "xl_base", "xl_refiner", "xl_inpaint", "playground-v2-5"}
DIFFUSERS_STEMS = {"sd": "StableDiffusion", "sdxl": "StableDiffusionXL"}
# our classes (the most derived first in any MRO) -> the task part of diffusers' class names
TASKS = {
    "CLIPConditionedInpaintPipeline": "Inpaint",
    "CLIPConditionedImg2ImgPipeline": "Img2Img",
    "CLIPConditionedPipeline": "",
}
# keywords diffusers' `from_single_file` uses to fetch a file from the hub
HUB_KEYWORDS = ("force_download", "proxies", "token", "cache_dir", "local_files_only", "revision")


def checkpoint_shapes(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a single-file checkpoint as meta tensors (shapes, no data).

    Read as diffusers' `load_state_dict` reads the file (by its extension), without loading
    the weights: a `.safetensors` file's header; any other file with
    `torch.load(map_location="meta", weights_only=True)`, unwrapping the `state_dict` nesting
    of LDM `.ckpt` files. A pickle that needs more than weights is never unpickled.

    Raises:
        ValueError: the file cannot be read so, or holds no tensors (names the argument).
    """
    if path.endswith(".gguf"):
        raise ValueError(f"`{ARGUMENT}` {path!r} is a GGUF file; from_single_file reads .safetensors and .ckpt files")
    if path.endswith(".safetensors"):
        tensors = _safetensors_shapes(path)
    else:
        tensors = _torch_checkpoint_shapes(path)
    if not tensors:
        raise ValueError(f"`{ARGUMENT}` {path!r} holds no tensors")
    return tensors


def _safetensors_shapes(path: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {key: torch.empty(handle.get_slice(key).get_shape(), device="meta") for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"`{ARGUMENT}` {path!r} is not a readable safetensors file: {error}") from error


def _torch_checkpoint_shapes(path: str) -> dict[str, torch.Tensor]:
    from clipcond.torch_files import NeedsUnpickling, NotATorchFile, load_weights_only

    try:
        loaded = load_weights_only(path, map_location="meta")
    except NeedsUnpickling as error:
        raise ValueError(
            f"`{ARGUMENT}` {path!r} is a pickle that holds more than weights ({', '.join(error.names)}); "
            "reading it would run code from the file, so it is read only with torch.load(weights_only=True), "
            "as diffusers reads it. Convert it to .safetensors with a tool you trust"
        ) from error
    except (NotATorchFile, OSError) as error:
        if _looks_like_safetensors(path):
            raise ValueError(
                f"`{ARGUMENT}` {path!r} is a safetensors file without the `.safetensors` extension; diffusers picks "
                "its reader by the extension: rename the file to end in .safetensors"
            ) from error
        raise ValueError(
            f"`{ARGUMENT}` {path!r} is neither a safetensors file nor a torch checkpoint: {error}"
        ) from error
    while isinstance(loaded, dict) and "state_dict" in loaded:  # as diffusers' load_single_file_checkpoint
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"`{ARGUMENT}` {path!r} holds a {type(loaded).__name__}, not a state dict")
    return {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def _looks_like_safetensors(path: str) -> bool:
    """Whether the file starts as a safetensors file does: an 8-byte little-endian header
    length that fits in the file, then the JSON header's `{`."""
    with open(path, "rb") as handle:
        start = handle.read(9)
    if len(start) < 9 or start[8:9] != b"{":
        return False
    return 0 < int.from_bytes(start[:8], "little") <= os.path.getsize(path) - 8


def checkpoint_family(tensors: dict[str, torch.Tensor], path: str) -> str:
    """Which Stable Diffusion family's pipeline reads this checkpoint: "sd" or "sdxl".

    diffusers' `infer_diffusers_model_type` names what the file is, and anything that is not a
    Stable Diffusion or SDXL model (SD3, Flux, a ControlNet, an upscaler...) is refused with
    that name. It answers "v1" for files it does not recognise, though, so the file must also
    hold an LDM UNet (`model.diffusion_model.input_blocks.0.0.weight`): a LoRA, a bare VAE or a
    text encoder has none.

    SD or SDXL is then read from the UNet itself: an SDXL UNet has the added embedding
    `label_emb` (pooled text and time ids), which is also what makes our pipeline take recipe
    "sdxl". SD 2 unCLIP's UNet has a `label_emb` as well (an image embedding) and is refused by
    its noise augmentor, which diffusers' guess takes for "v2". diffusers' model type tells SDXL by its OpenCLIP's tenth layer, which says nothing
    about the UNet and misses a pruned or small text encoder. An inpainting UNet (9 input
    channels) is the same family: our class, not the file, says which task the pipeline runs,
    as diffusers' class does (`from_pipe` moves between them).

    Raises:
        ValueError: the file is not an SD / SDXL checkpoint (names the argument and what it is).
    """
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        model_type = infer_diffusers_model_type(tensors)
    except Exception:  # a branch of diffusers' guess that reads values, which meta tensors lack
        model_type = "unknown"
    if model_type not in READ_MODEL_TYPES:
        raise ValueError(
            f"`{ARGUMENT}` {path!r} is a {model_type!r} checkpoint (diffusers' infer_diffusers_model_type), not a "
            "Stable Diffusion or SDXL one; for another family, load it with its diffusers pipeline's "
            "from_single_file and condition it with TextConditioner.from_pipeline(pipe)"
        )
    if UNET_CONV_IN not in tensors:
        prefixes = sorted({key.split(".")[0] for key in tensors})
        raise ValueError(
            f"`{ARGUMENT}` {path!r} holds no Stable Diffusion UNet (no {UNET_CONV_IN!r}; its keys start with "
            f"{', '.join(prefixes[:6])}{', ...' if len(prefixes) > 6 else ''}): a LoRA loads with "
            "pipe.load_lora_weights, a VAE with AutoencoderKL.from_single_file"
        )
    if any(key.startswith(UNCLIP_NOISE_AUGMENTOR) for key in tensors):
        raise ValueError(
            f"`{ARGUMENT}` {path!r} is a Stable Diffusion 2 unCLIP checkpoint (it has `{UNCLIP_NOISE_AUGMENTOR[:-1]}`: "
            "its UNet reads a CLIP image embedding through `label_emb`), not a text-to-image one; diffusers "
            "reads it with StableUnCLIPImg2ImgPipeline, from a diffusers folder"
        )
    return "sdxl" if SDXL_ADDED_EMBEDDING in tensors else "sd"


def local_checkpoint(link_or_path: Any, hub_kwargs: dict[str, Any]) -> str:
    """The local path of the checkpoint: `link_or_path` itself, or the hub file a
    `https://huggingface.co/<repo>/blob/main/<file>` link names, fetched as diffusers fetches it.

    Raises:
        TypeError: `link_or_path` is not a str or os.PathLike.
        FileNotFoundError: no such file, and not a link.
        ValueError: it is a folder (a diffusers folder loads with `from_pretrained`), or a link
            that is not to a file on the hub (civitai's download links, for one).
    """
    if not isinstance(link_or_path, (str, os.PathLike)):
        raise TypeError(f"`{ARGUMENT}` must be a path or a hub link (str or os.PathLike), got {link_or_path!r}")
    path = os.fspath(link_or_path)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        raise ValueError(f"`{ARGUMENT}` {path!r} is a folder; a diffusers folder loads with from_pretrained")
    from diffusers.loaders.single_file_utils import _extract_repo_id_and_weights_name, is_valid_url

    if not is_valid_url(path):
        raise FileNotFoundError(f"`{ARGUMENT}`: no file {path!r} (nor a https://huggingface.co/... link)")
    from diffusers.utils.hub_utils import _get_model_file

    repo_id, weights_name = _extract_repo_id_and_weights_name(path)
    if not isinstance(repo_id, str) or not isinstance(weights_name, str):
        raise ValueError(
            f"`{ARGUMENT}` {path!r} is a link but not to a file on the Hugging Face hub; only "
            "https://huggingface.co/<repo>/blob/main/<file> links are fetched (another revision: `revision=`): "
            "download other links "
            "(civitai's, for one) and pass the file's path"
        )
    user_agent = {"file_type": "single_file", "framework": "pytorch"}  # as diffusers' load_single_file_checkpoint
    return _get_model_file(repo_id, weights_name=weights_name, user_agent=user_agent, **hub_kwargs)


def diffusers_pipeline_class(cls: type, family: str) -> type:
    """The diffusers pipeline that reads a `family` checkpoint for the task of `cls` (or of the
    clipcond class it derives from): inpaint -> `StableDiffusion[XL]InpaintPipeline`, img2img ->
    `...Img2ImgPipeline`, text to image -> `StableDiffusion[XL]Pipeline`. By name, so that this
    module need not import the classes that call it."""
    import diffusers

    task = next(TASKS[klass.__name__] for klass in cls.__mro__ if klass.__name__ in TASKS)
    return getattr(diffusers, f"{DIFFUSERS_STEMS[family]}{task}Pipeline")


def checked_config(config: Any, family: str, path: str) -> str | None:
    """The `config=` argument as diffusers takes it (a str: a path is turned into one), checked:
    a hub id or a folder (str or os.PathLike); a local folder with no damaged file among those
    diffusers reads from it (`check_pipeline_folder` without the weights: a tokenizer folder
    that lost its vocabulary loaded as a tokenizer of two tokens), and whose UNet is of the
    file's family (diffusers would fail deep in its key conversion). A hub id is not read.

    Raises:
        TypeError: `config` is neither None, a str nor a path.
        ValueError: a local folder with damaged files (naming each), whose UNet is of the
            other family, or whose `unet/config.json` is no JSON object.
    """
    import json

    if config is None:
        return None
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"`config` must be a hub id or a local diffusers folder (str or os.PathLike), got {config!r}")
    config = os.fspath(config)
    if os.path.isdir(config):  # diffusers reads its configs and tokenizers, not its weights
        try:
            check_pipeline_folder(config, use_safetensors=False)
        except ValueError as error:
            raise ValueError(f"`config` {config!r}: {error}") from error
    unet_config = os.path.join(config, "unet", "config.json")
    if os.path.isfile(unet_config):
        with open(unet_config, "rb") as handle:
            text = handle.read()
        try:
            settings = json.loads(text)
        except ValueError as error:  # json's errors, and UnicodeDecodeError, are ValueErrors
            raise ValueError(
                f"`config` {config!r}: {unet_config} cannot be read as JSON ({error}; a damaged file?)"
            ) from error
        if not isinstance(settings, dict):
            raise ValueError(f"`config` {config!r}: {unet_config} holds a {type(settings).__name__}, not a JSON object")
        folder_family = "sdxl" if settings.get("addition_embed_type") == "text_time" else "sd"
        if folder_family != family:
            raise ValueError(
                f"`config` {config!r} describes an {folder_family.upper()} UNet, but `{ARGUMENT}` {path!r} "
                f"holds an {family.upper()} one"
            )
    return config


def check_filled(pipeline: Any, path: str) -> None:
    """Refuse a pipeline whose models diffusers left partly unloaded (meta tensors: weights the
    file did not provide, as when diffusers' reader takes one text encoder's keys for the other)."""
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module):
            empty = [key for key, value in component.state_dict().items() if value.is_meta]
            if empty:
                raise ValueError(
                    f"`{ARGUMENT}` {path!r}: diffusers' reader left {len(empty)} weights of `{name}` unloaded "
                    f"({', '.join(empty[:3])}...); the file does not hold that model as `config` describes it"
                )


def from_single_file(cls: type, pretrained_model_link_or_path: Any, **kwargs: Any) -> Any:
    """`cls` from one original-format SD / SDXL checkpoint, as diffusers' `from_single_file`.

    Keyword arguments mean what they mean to diffusers' `from_single_file` (`config`,
    `original_config`, `torch_dtype`, `local_files_only`, component overrides such as `unet=`
    or `scheduler=`...), except `cls`'s own settings and components diffusers' class lacks
    (`recipe`, `clip_skip`, `emphasis`, `window_split`, `text_projection`...), which go to
    `cls`. The components diffusers loads are handed over as they are (no copy, no cast).

    Raises:
        TypeError, FileNotFoundError, ValueError: from `local_checkpoint`, `checkpoint_family`
            and `checked_config`, before any model is built.
        ValueError: the file lacks weights of a model `config` describes (after diffusers read it).
    """
    # 1. Find the file and read what it holds, before any model is built
    hub_kwargs = {key: kwargs[key] for key in HUB_KEYWORDS if key in kwargs}
    path = local_checkpoint(pretrained_model_link_or_path, hub_kwargs)
    family = checkpoint_family(checkpoint_shapes(path), path)
    if "config" in kwargs:
        kwargs["config"] = checked_config(kwargs["config"], family, path)
    # 2. Split the keywords: what diffusers' class also takes goes to it, the rest to `cls`
    reader = diffusers_pipeline_class(cls, family)
    modules, settings = cls._get_signature_keys(cls)
    own_keys = {*modules, *settings} - set().union(*reader._get_signature_keys(reader))
    own = {key: kwargs.pop(key) for key in list(kwargs) if key in own_keys}
    # 3. diffusers reads the file (the local one: a hub file was fetched in step 1)
    try:
        pipeline = reader.from_single_file(path, **kwargs)
    except NotImplementedError as error:  # accelerate moving a model that diffusers left partly empty
        if "meta tensor" not in str(error):
            raise
        raise ValueError(
            f"`{ARGUMENT}` {path!r} lacks weights of a model that `config` describes (diffusers' reader left "
            "some of them unloaded); the file does not hold that model as `config` describes it"
        ) from error
    check_filled(pipeline, path)
    # 4. Its components and settings, the same objects, to our constructor
    carried = {key: value for key, value in pipeline.components.items() if key in modules}
    carried.update({key: value for key, value in pipeline.config.items() if key in settings})
    return cls(**{**carried, **own})
