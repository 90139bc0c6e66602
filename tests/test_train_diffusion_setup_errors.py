"""`train-diffusion` parts that do not fit together: refused at setup, before the run folder is
made, as one `error:` line with exit 2 from the command; and a UNet that needs inputs the loop
does not give is refused only when diffusers' own UNet fails on what the loop gives it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import tiny_pipelines
import torch
import yaml
from test_train_diffusion import UNET, tiny_config

from clipcond.projection import TextProjection
from clipcond.training.diffusion.config import DiffusionLoraSettings
from clipcond.training.diffusion.loop import train_diffusion
from clipcond.training.loop import RunSetupError

# UNet settings (diffusers' `UNet2DConditionModel` arguments) that ask for inputs beyond
# `unet(noisy, timesteps, encoder_hidden_states=tokens)`, the call of the loop and the pipeline
NEEDS_MORE = {
    "addition_embed_type": dict(
        addition_embed_type="text_time",  # SDXL
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + tiny_pipelines.WIDTH,
    ),
    "class_embed_type": dict(class_embed_type="timestep"),
    "num_class_embeds": dict(num_class_embeds=10),
    "encoder_hid_dim": dict(encoder_hid_dim=16),  # 'text_proj': reads 16-wide tokens, not cross_attention_dim
}
READS_ITS_TOKENS = dict(addition_embed_type="text", addition_embed_type_num_heads=2)


def _call_as_the_loop_does(settings: dict) -> torch.Tensor:
    """diffusers' UNet with `settings`, called with what the loop gives it (tokens 32 wide)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **UNET, **settings, in_channels=3, out_channels=3, sample_size=16, cross_attention_dim=tiny_pipelines.WIDTH
    )
    tokens = torch.randn(2, 77, tiny_pipelines.WIDTH)
    return unet(torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), encoder_hidden_states=tokens).sample


@pytest.mark.parametrize("name", sorted(NEEDS_MORE))
def test_a_unet_that_needs_more_inputs_is_refused_before_the_run_folder(
    name: str, tiny_clip_text_path, tmp_path: Path
) -> None:
    """Before: the run started and failed at its first step inside diffusers (a TypeError,
    ValueError or shape error, exit 1, leaving train_config.failed.yaml)."""
    with pytest.raises((TypeError, ValueError, RuntimeError)):  # the peer: diffusers cannot run it so
        _call_as_the_loop_does(NEEDS_MORE[name])
    config = tiny_config(tiny_clip_text_path, tmp_path / "run", unet={**UNET, **NEEDS_MORE[name]}, steps=1)
    with pytest.raises(RunSetupError, match=rf"^unet: the UNet has {name} .*, which needs .*; train-diffusion gives"):
        train_diffusion(config, show_progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("heads", [None, 3])
def test_a_text_pooling_whose_heads_do_not_split_the_width_is_refused_before_the_run_folder(
    heads: int | None, tiny_clip_text_path, tmp_path: Path
) -> None:
    """addition_embed_type 'text' pools the 32-wide tokens with addition_embed_type_num_heads
    heads (64 by default): diffusers' UNet fails on the loop's inputs when they do not divide 32,
    and so did the run, at its first step (a RuntimeError, train_config.failed.yaml left)."""
    settings = dict(addition_embed_type="text", **({} if heads is None else {"addition_embed_type_num_heads": heads}))
    with pytest.raises(RuntimeError):  # the peer: diffusers cannot run it so
        _call_as_the_loop_does(settings)
    config = tiny_config(tiny_clip_text_path, tmp_path / "run", unet={**UNET, **settings}, steps=1)
    shown = 64 if heads is None else heads
    with pytest.raises(
        RunSetupError,
        match=rf"^unet: addition_embed_type 'text' pools the 32-wide tokens with "
        rf"addition_embed_type_num_heads \({shown}\) attention heads, which must divide 32; set "
        r"unet.addition_embed_type_num_heads to a divisor of 32$",
    ):
        train_diffusion(config, show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_unet_whose_added_embedding_reads_the_tokens_trains(tiny_clip_text_path, tmp_path: Path) -> None:
    """addition_embed_type 'text' is fed by the tokens themselves: diffusers runs it on the
    loop's inputs, and so does the run (it is not refused with the others)."""
    assert torch.isfinite(_call_as_the_loop_does(READS_ITS_TOKENS)).all()
    config = tiny_config(tiny_clip_text_path, tmp_path / "run", unet={**UNET, **READS_ITS_TOKENS}, steps=1)
    assert torch.isfinite(torch.tensor(train_diffusion(config, show_progress=False).loss))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """By name: a tiny SD folder (its UNet reads 32-wide tokens), the same with a UNet
    config.json that is a JSON list, a tiny SDXL folder (64, 'text_time'), a CLIP 16 wide and a
    VAE that halves the image."""
    root = tmp_path_factory.mktemp("setup_errors")
    tiny_pipelines.build_sd().save_pretrained(root / "sd")
    tiny_pipelines.build_sdxl().save_pretrained(root / "sdxl")
    tiny_pipelines.clip_text_model(5, hidden_size=16, num_attention_heads=2).save_pretrained(root / "narrow")
    tiny_pipelines.clip_tokenizer().save_pretrained(root / "narrow")
    tiny_pipelines._small_vae(
        block_out_channels=(4, 4),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).save_pretrained(root / "vae2")
    shutil.copytree(root / "sd", root / "sd_unet_config_a_list")
    (root / "sd_unet_config_a_list" / "unet" / "config.json").write_text("[]")
    # an adapter run's pipeline: its projection reads a 16-wide CLIP into the UNet's 32
    shutil.copytree(root / "sd", root / "sd_adapter")
    TextProjection(32, clip_width=16).save_pretrained(root / "sd_adapter" / "text_projection")
    return {path.name: path for path in root.iterdir()}


CASES = {
    # case: (text encoder, config overrides, fragments of the error line)
    "adapter without projection_dim": (
        "clip",
        dict(unet=None, init_from="sd", train="adapter"),
        ["`train: adapter` trains a projection: set `projection_dim`", "init_from {sd} has no text_projection/"],
    ),
    "UNet of another width": (
        "narrow",
        dict(unet=None, init_from="sd"),
        ["init_from {sd}: the UNet reads 32-wide tokens but the conditioner gives 16", "set projection_dim: 32"],
    ),
    "SDXL UNet": (
        "clip",
        dict(unet=None, init_from="sdxl", projection_dim=64),
        [
            "init_from {sdxl}: the UNet has addition_embed_type 'text_time', which needs pooled text embeddings and "
            "time ids (an SDXL-class UNet); train-diffusion gives the UNet only"
        ],
    ),
    "UNet config.json a list": (
        "clip",
        dict(unet=None, init_from="sd_unet_config_a_list"),
        [
            "init_from {sd_unet_config_a_list}: ",
            "{sd_unet_config_a_list}/unet/config.json holds a JSON list, not an object",
        ],
    ),
    "coordinate_channels other than init_from's": (
        "clip",
        dict(unet=None, init_from="sd", coordinate_channels=True),
        ["coordinate_channels: True differs from init_from's pipeline ({sd}: False)"],
    ),
    "image_size the VAE cannot take": (
        "clip",
        dict(vae="vae2", image_size=17),
        ["image_size (17) must be a multiple of the VAE's downsampling (2; vae {vae2})"],
    ),
    # before: peft's NoMatchingPeftModuleError / ValueError tracebacks
    "LoRA target matching no module": (
        "clip",
        dict(unet=None, init_from="sd", train="lora", lora=DiffusionLoraSettings(target_modules=["to_q", "nosuch"])),
        ["`lora.target_modules` ['nosuch'] match no module of the UNet; LoRA adapts linear and convolution layers"],
    ),
    "LoRA target that is not a layer": (
        "clip",
        dict(unet=None, init_from="sd", train="lora", lora=DiffusionLoraSettings(target_modules=["attn2"])),
        ["`lora.target_modules` {{'attn2': 'Attention'}} name modules, not layers"],
    ),
    # before: diffusers' ValueError tracebacks from UNet2DConditionModel(...)
    "UNet block type that does not exist": (
        "clip",
        dict(unet={**UNET, "down_block_types": ["DownBlock2D", "CrossAttnDownBlok2D"]}),
        ["unet: CrossAttnDownBlok2D does not exist"],
    ),
    "UNet with one block_out_channels too many": (
        "clip",
        dict(unet={**UNET, "block_out_channels": [16, 32, 32]}),
        ["unet: Must provide the same number of `block_out_channels` as `down_block_types`"],
    ),
    "UNet group norm that does not divide the channels": (
        "clip",
        dict(unet={**UNET, "norm_num_groups": 5}),
        ["unet: num_channels (16) must be divisible by num_groups (5)"],
    ),
    # before: a RuntimeError traceback inside diffusers at the first step
    "UNet in_channels other than the pixels'": (
        "clip",
        dict(unet={**UNET, "in_channels": 4}),
        ["unet: {{'in_channels': 4}}, but the UNet denoises pixels (RGB): the run gives it 3 input channels"],
    ),
    "UNet out_channels other than the latents'": (
        "clip",
        dict(unet={**UNET, "out_channels": 3}, vae="vae2"),
        ["unet: {{'out_channels': 3}}, but the UNet denoises the VAE's latents: the run gives it 4 input channels"],
    ),
    "text pooling heads that do not split the width": (
        "clip",
        dict(unet={**UNET, "addition_embed_type": "text"}),
        [
            "unet: addition_embed_type 'text' pools the 32-wide tokens",
            "unet.addition_embed_type_num_heads to a divisor",
        ],
    ),
    # before: the ValueError tracebacks of TextConditioner's projection checks
    "projection_dim other than init_from's": (
        "narrow",
        dict(unet=None, init_from="sd_adapter", train="adapter", projection_dim=48),
        ["projection_dim: 48 differs from the 32 of init_from {sd_adapter}'s text_projection/", "leave projection_dim"],
    ),
    "CLIP of another width than init_from's projection reads": (
        "clip",
        dict(unet=None, init_from="sd_adapter", train="adapter"),
        ["init_from {sd_adapter} text_projection/: the given projection has layers {{'clip': 16}}", "{{'clip': 32}}"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parts_that_do_not_fit_are_one_error_line_before_any_work(
    case: str, saved: dict[str, Path], tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    """Before: a ValueError traceback (exit 1) from the command; the SDXL UNet failed at the
    first step inside diffusers with a TypeError and left train_config.failed.yaml."""
    from clipcond.cli import main

    encoder, overrides, fragments = CASES[case]
    paths = {**{key: str(value) for key, value in saved.items()}, "clip": str(tiny_clip_text_path)}
    resolved = {key: paths.get(value, value) if isinstance(value, str) else value for key, value in overrides.items()}
    config = tiny_config(paths[encoder], tmp_path / "run", steps=1, ema_decay=None, **resolved)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    capsys.readouterr()
    assert main(["train-diffusion", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    # what a terminal keeps of each line (transformers draws its weight-loading bar with \r)
    lines = [line.rsplit("\r", 1)[-1] for line in err.splitlines()]
    lines = [line for line in lines if line.strip() and not line.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment.format(**paths) in err, (fragment, err)
    assert not (tmp_path / "run").exists()


CONFIG_CASES = {
    # case: (--set values, with a T5, fragment of the error line); before: accepted (the key
    # ignored without a T5), or a traceback from clipcond.recipes or peft
    "t5_max_length 1": (["t5_max_length=1"], True, "`t5_max_length` must be an integer >= 2 (EOS included)"),
    "t5_max_length without a T5": (["t5_max_length=64"], False, "`t5_max_length` needs a `t5_encoder`"),
    "no LoRA targets": (
        ["lora.target_modules=[]"],
        False,
        "`lora.target_modules` must be a non-empty list of module names (such as attn2.to_q)",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_values_that_cannot_be_built_are_one_error_line(
    case: str, tiny_clip_text_path, tiny_t5_encoder_path, tmp_path: Path, capsys
) -> None:
    from clipcond.cli import main

    assignments, with_t5, fragment = CONFIG_CASES[case]
    extra = dict(t5_encoder=str(tiny_t5_encoder_path), projection_dim=32) if with_t5 else {}
    config = tiny_config(tiny_clip_text_path, tmp_path / "run", steps=1, ema_decay=None, train="unet", **extra)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    overrides = [arg for assignment in assignments for arg in ("--set", assignment)]
    capsys.readouterr()
    assert main(["train-diffusion", "--config", str(path), "--no-progress", *overrides]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert not (tmp_path / "run").exists()
