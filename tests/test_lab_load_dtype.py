"""The dtype a lab setup's pipeline loads in (`clipcond.lab.loading.load_dtype`): float32 on a
CPU, the UNet's stored dtype elsewhere (read from its safetensors header; no CUDA is needed to
ask for "cuda"), float32 where it cannot be read."""

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_pipelines import build_sd

from clipcond.lab.loading import load_dtype
from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_gpu_loads_the_stored_dtype_and_a_cpu_float32(dtype, tmp_path) -> None:
    build_sd().to(dtype).save_pretrained(tmp_path)
    assert load_dtype(tmp_path, "cuda") == dtype
    assert load_dtype(str(tmp_path), "cuda:1") == dtype
    assert load_dtype(tmp_path, "cpu") == torch.float32


def test_the_bundled_model_is_stored_in_float16() -> None:
    assert load_dtype(BUNDLED_MODEL, "cuda") == torch.float16
    assert load_dtype(BUNDLED_MODEL, "cpu") == torch.float32


def test_a_float16_variant_file_is_not_the_weights_diffusers_loads(tmp_path) -> None:
    build_sd().save_pretrained(tmp_path)
    build_sd().to(torch.float16).save_pretrained(tmp_path / "half", variant="fp16")
    shutil.copy(
        tmp_path / "half" / "unet" / "diffusion_pytorch_model.fp16.safetensors",
        tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors",
    )
    assert load_dtype(tmp_path, "cuda") == torch.float32


def test_the_first_shard_names_the_dtype(tmp_path) -> None:
    build_sd().to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted((tmp_path / "unet").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1
    assert load_dtype(tmp_path, "cuda") == torch.bfloat16


@pytest.mark.parametrize("where", ["bin_weights", "no_unet", "cut_header"])
def test_unreadable_weights_load_in_float32(where, tmp_path) -> None:
    build_sd().to(torch.float16).save_pretrained(tmp_path, safe_serialization=where != "bin_weights")
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    if where == "no_unet":
        shutil.rmtree(tmp_path / "unet")
    elif where == "cut_header":
        weights.write_bytes(weights.read_bytes()[:20])
    assert load_dtype(tmp_path, "cuda") == torch.float32
