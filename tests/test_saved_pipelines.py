"""Where `--model` / `--lora` point and how a pipeline folder loads
(clipcond.pipelines.saved_pipelines), in the parts that the CLI tests reach only in passing: the
dtype asked for, for every kind of folder, and the option named in a path's refusal."""

from __future__ import annotations

import pytest
import torch
from tiny_pipelines import build_sd

from clipcond.errors import UsageError
from clipcond.pipelines import (
    CLIPConditionedImg2ImgPipeline,
    CLIPConditionedInpaintPipeline,
    CLIPConditionedPipeline,
)
from clipcond.pipelines.saved_pipelines import SAVED_PIPELINE_CLASSES, load_pipeline, model_source

HALF = torch.float16
FOLDERS = {  # each stored in float16
    "diffusers": lambda: build_sd().to(HALF),
    "clipcond": lambda: CLIPConditionedPipeline.from_pipe(build_sd(), dtype=HALF),
    "clipcond_img2img": lambda: CLIPConditionedImg2ImgPipeline.from_pipe(build_sd(), dtype=HALF),
    "clipcond_inpaint": lambda: CLIPConditionedInpaintPipeline.from_pipe(build_sd(), dtype=HALF),
}


def _dtypes(pipe) -> set[torch.dtype]:
    return {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype}


@pytest.mark.parametrize("kind", list(FOLDERS))
def test_every_kind_of_folder_loads_as_text_to_image_in_the_dtype_asked_for(kind, tmp_path) -> None:
    """Every model of a folder stored in float16 loads in bfloat16 when asked, and in float32
    when no dtype is asked for (diffusers alone loads the UNet in float32 but transformers keeps
    the text encoder in float16; `from_pipe` casts to float32 unless given a dtype: a bfloat16
    load came back in float32 from all but a saved text-to-image folder)."""
    stored = FOLDERS[kind]()
    assert _dtypes(stored) == {HALF}
    stored.save_pretrained(tmp_path / kind)
    asked = load_pipeline(tmp_path / kind, torch_dtype=torch.bfloat16)
    assert type(asked) is CLIPConditionedPipeline and _dtypes(asked) == {torch.bfloat16}
    default = load_pipeline(tmp_path / kind)
    assert type(default) is CLIPConditionedPipeline and _dtypes(default) == {torch.float32}


def test_the_saved_classes_are_the_pipelines_of_those_names() -> None:
    assert SAVED_PIPELINE_CLASSES == tuple(
        klass.__name__
        for klass in (CLIPConditionedPipeline, CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline)
    )


@pytest.mark.parametrize("option", ["--model", "--lora"])
def test_a_path_no_file_system_takes_is_refused_naming_the_option(option) -> None:
    with pytest.raises(UsageError, match=rf"^{option} 'a\\x00b': "):
        model_source("a\x00b", option)
