"""Where `clipcond generate` (and `encode`, the lab) finds a pipeline and how it loads one.

A `--model` or `--lora` value is a local path or a Hugging Face Hub id (`model_source`); a
pipeline folder holds a saved clipcond pipeline (text to image, img2img or inpainting) or a
diffusers Stable Diffusion / SDXL pipeline, each loaded as a `CLIPConditionedPipeline`
(`load_pipeline`). Without `--model`, `generate` runs the shapes model bundled as package data
(`BUNDLED_MODEL`).
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipcond.errors import UsageError
from clipcond.output_paths import nameable_path

if TYPE_CHECKING:
    import torch

# The tiny shapes model shipped as package data (found through importlib, so the same in a
# wheel install and in an editable checkout, where clipcond.pipelines lives outside clipcond/).
BUNDLED_MODEL = Path(str(importlib.resources.files("clipcond") / "data" / "shapes-model"))

# A Hugging Face Hub id: `name` or `org/name`, letters, digits, '-', '_' and '.', each part
# starting with a letter or a digit.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")

# The `_class_name` of a saved clipcond pipeline's model_index.json (text to image, img2img,
# inpainting): names, so that the CLI can tell them apart without importing the classes.
SAVED_PIPELINE_CLASSES = ("CLIPConditionedPipeline", "CLIPConditionedImg2ImgPipeline", "CLIPConditionedInpaintPipeline")


def model_source(value: str, option: str) -> str | Path:
    """Where `--model` or `--lora` (`option`) points: a local path, or a Hugging Face Hub id.

    The rule: a value that exists on disk is that path (``~`` expanded). Otherwise it is a hub
    id only if it has a hub id's form, ``name`` or ``org/name`` (letters, digits, ``-``, ``_``
    and ``.``, each part starting with a letter or digit) and is not a weights file name
    (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``). Anything else (starting
    with ``.``, ``/`` or ``~``, more than one ``/``, a backslash) is a local path that does not
    exist.

    Raises:
        UsageError: a local path that does not exist ("no such file or folder"), or that no file
            system could take (a NUL byte, a name over 255 bytes).
    """
    path = nameable_path(value, option)
    if path.exists():
        return path
    if _HUB_ID.fullmatch(value) and not value.lower().endswith(_WEIGHT_FILE_SUFFIXES):
        return value
    raise UsageError(f"{option} {value}: no such file or folder (a hub id is `name` or `org/name`)")


def load_pipeline(model: str | Path, torch_dtype: torch.dtype | None = None) -> Any:
    """A `CLIPConditionedPipeline` from a saved one (text to image, img2img or inpainting), or
    wrapping a diffusers SD or SDXL pipeline, every model in `torch_dtype` (None: float32).

    One dtype for all, whatever the folder stores (the bundled model is stored in float16 to
    keep the package small): without one, diffusers loads its models in float32 but
    transformers keeps an encoder's stored dtype, and `from_pipe`, which turns an img2img,
    inpainting or diffusers pipeline into this one, casts to float32 unless told otherwise.

    Raises:
        ValueError: the folder holds a pipeline without a UNet (SD3, Flux, PixArt), or a
            damaged file (`saved_folder_checks`, before any component loads, a diffusers
            pipeline's folder too; `component_configs`, for a config.json's value, after).
    """
    import torch
    from diffusers import DiffusionPipeline

    import clipcond.pipelines
    from clipcond.pipelines import CLIPConditionedPipeline, component_configs  # with its tokenizer's module
    from clipcond.pipelines.saved_folder_checks import check_pipeline_folder, saved_class_name

    dtype = torch.float32 if torch_dtype is None else torch_dtype
    saved_as = saved_class_name(model)
    if saved_as == CLIPConditionedPipeline.__name__:
        return CLIPConditionedPipeline.from_pretrained(model, dtype=dtype)
    if saved_as in SAVED_PIPELINE_CLASSES:  # a saved img2img or inpainting pipeline: text to image on its components
        saved = getattr(clipcond.pipelines, saved_as).from_pretrained(model, dtype=dtype)
        return CLIPConditionedPipeline.from_pipe(saved, dtype=dtype)
    if Path(model).is_dir():  # a diffusers pipeline's folder: checked first, as a saved one is
        check_pipeline_folder(model)
    with component_configs.naming_the_config(model):
        pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype)
    if getattr(pipe, "unet", None) is None:
        raise ValueError(
            f"it holds a {type(pipe).__name__}, which has no UNet: clipcond runs a saved CLIPConditionedPipeline, "
            "or a diffusers Stable Diffusion 1.x/2.x or SDXL pipeline"
        )
    return CLIPConditionedPipeline.from_pipe(pipe, dtype=dtype)
