"""`clipcond generate`'s checks against the loaded pipeline (clipcond.pipelines.generate_checks)
in their parts: each refusal whole on a pipeline that stands in for the loaded one, the memory
bound when the machine cannot be asked, and what a LoRA file's tensor names say. The CLI tests
(test_cli_errors.py, test_generate_limits.py, test_generate_memory.py) run them end to end."""

from __future__ import annotations

import argparse
import os
import resource

import pytest
import torch
from safetensors.torch import save_file

from clipcond.errors import UsageError
from clipcond.pipelines.generate_checks import check_against_model, memory_bytes, what_the_lora_holds


def _args(**overrides) -> argparse.Namespace:
    values = dict(model="runs/m", mask=None, height=None, width=None, steps=2, clip_skip=None)
    values.update(overrides)
    return argparse.Namespace(**values)


class _Pipeline:
    """What the checks read of a loaded pipeline; `conditioner_for` raises `refusal` if given."""

    def __init__(self, reads_a_mask: bool = False, refusal: Exception | None = None) -> None:
        from diffusers import DDIMScheduler

        self.unet_reads_a_mask = reads_a_mask
        self.vae_scale_factor = 8
        self.scheduler = DDIMScheduler()
        self.refusal = refusal

    def conditioner_for(self, clip_skip: int) -> None:
        if self.refusal is not None:
            raise self.refusal


def _refusal(args, pipe) -> str:
    with pytest.raises(UsageError) as raised:
        check_against_model(args, pipe)
    return str(raised.value)


def test_an_inpainting_unet_without_a_mask_is_refused_whole() -> None:
    assert _refusal(_args(), _Pipeline(reads_a_mask=True)) == (
        "--model runs/m: its UNet is an inpainting UNet (it reads a mask and the masked image beside the latents): "
        "give --image and --mask"
    )
    check_against_model(_args(mask="mask.png"), _Pipeline(reads_a_mask=True))


@pytest.mark.parametrize("option", ["--height", "--width"])
def test_a_size_the_vae_cannot_take_is_refused_naming_its_option(option) -> None:
    args = _args(**{option[2:]: 30})
    assert _refusal(args, _Pipeline()) == (
        f"{option} must be a positive multiple of 8 (the VAE's scale factor) for this model, got 30"
    )


@pytest.mark.parametrize("refusal", [ValueError("no such layer"), TypeError("not an int")])
def test_a_clip_skip_the_conditioner_refuses_is_the_users_error(refusal) -> None:
    assert _refusal(_args(clip_skip=9), _Pipeline(refusal=refusal)) == f"--clip-skip 9: {refusal}"


@pytest.mark.parametrize("error", [ValueError, OSError, AttributeError])
def test_the_memory_bound_without_the_machines_size_is_torchs_largest_storage(error, monkeypatch) -> None:
    def unreadable(name):
        raise error(name)

    monkeypatch.setattr(os, "sysconf", unreadable)
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert memory_bytes() == 2**63
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1000, resource.RLIM_INFINITY))
    assert memory_bytes() == 1000


def test_the_memory_bound_is_the_machines_ram_or_a_lower_address_space_limit(monkeypatch) -> None:
    sizes = {"SC_PHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", sizes.__getitem__)
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert memory_bytes() == 4096000
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (5000, resource.RLIM_INFINITY))
    assert memory_bytes() == 5000


def test_what_a_lora_file_holds(tmp_path) -> None:
    empty = tmp_path / "empty.safetensors"
    save_file({}, empty)
    assert what_the_lora_holds(empty) == " (it holds no tensors)"
    names = ["unet.a.weight", "text_encoder.b.weight", "lora_te1.c.weight", "lora_unet.d.weight", "unet.e.weight"]
    sd = tmp_path / "sd.safetensors"
    save_file({name: torch.zeros(1) for name in names}, sd)
    assert what_the_lora_holds(sd) == " (its tensor names start with 'lora_te1.', 'lora_unet.', 'text_encoder.')"
    flux = tmp_path / "flux.safetensors"
    save_file({"transformer.blocks.0.lora_A.weight": torch.zeros(1)}, flux)
    assert what_the_lora_holds(flux) == (
        " (its tensor names start with 'transformer.': a LoRA for a transformer model such as Flux or SD3?)"
    )


def test_a_lora_that_is_no_safetensors_file_is_not_read(tmp_path) -> None:
    bin_file = tmp_path / "lora.bin"
    torch.save({"unet.a.weight": torch.zeros(1)}, bin_file)
    for lora in (bin_file, tmp_path, tmp_path / "missing.safetensors", "org/some-lora"):
        assert what_the_lora_holds(lora) == ""
