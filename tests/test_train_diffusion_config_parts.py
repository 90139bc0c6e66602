"""`TrainDiffusionConfig`, its `lora` and `data` sections and `scheduler_class` on their own: each
refusal whole (the key, the bound, the value given), the edge of each range accepted.

The shared optimizer and seed checks are tested for every config in test_training_settings.py;
what the run does with each setting, in test_train_diffusion*.py."""

from __future__ import annotations

import re
from pathlib import Path

import diffusers
import pytest
import yaml

from clipcond.training.data import DataConfig
from clipcond.training.diffusion.config import (
    DiffusionDataConfig,
    DiffusionLoraSettings,
    TrainDiffusionConfig,
    scheduler_class,
)

SCRATCH = {"text_encoder": "clip", "unet": {}}
TUNED = {"text_encoder": "clip", "init_from": "runs/sd"}
MANIFEST = {"source": "manifest", "manifest": "captions.jsonl"}


def _refused(message: str, **settings) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainDiffusionConfig(**settings)


# ------------------------------------------------------------------ where the UNet comes from


def test_exactly_one_of_unet_and_init_from() -> None:
    message = "give exactly one of `unet` (a UNet from scratch) and `init_from` (a saved pipeline)"
    _refused(message, text_encoder="clip")
    _refused(message, text_encoder="clip", unet={}, init_from="runs/sd")
    assert TrainDiffusionConfig(**SCRATCH).unet == {}
    assert TrainDiffusionConfig(**TUNED).init_from == "runs/sd"


@pytest.mark.parametrize("train", ["lora", "adapter"])
def test_lora_and_adapter_train_against_a_trained_unet(train: str) -> None:
    _refused(f"`train: {train}` needs `init_from` (it trains against a trained UNet)", train=train, **SCRATCH)
    assert TrainDiffusionConfig(train=train, **TUNED).train == train


def test_adapter_lora_goes_with_train_adapter_only() -> None:
    message = "`adapter_lora` goes with `train: adapter` (for LoRA alone use `train: lora`)"
    _refused(message, adapter_lora=True, **SCRATCH)
    _refused(message, adapter_lora=True, train="lora", **TUNED)
    assert TrainDiffusionConfig(adapter_lora=True, train="adapter", **TUNED).adapter_lora


@pytest.mark.parametrize("width", [0, -8, True])
def test_a_projection_width_must_be_positive(width: object) -> None:
    _refused(f"`projection_dim` must be a positive int or null, got {width!r}", projection_dim=width, **SCRATCH)


def test_a_projection_width_of_one_is_taken() -> None:
    assert TrainDiffusionConfig(projection_dim=1, **SCRATCH).projection_dim == 1
    assert TrainDiffusionConfig(**SCRATCH).projection_dim is None


# ------------------------------------------------------------------ the unet section


def test_unknown_unet_arguments_are_listed_sorted() -> None:
    _refused(
        "unet: unknown UNet2DConditionModel arguments ['attention_heads', 'block_channels']",
        text_encoder="clip",
        unet={"block_channels": [8], "attention_heads": 2, "norm_num_groups": 4},
    )
    # the constructor's own first parameter is no argument
    _refused("unet: unknown UNet2DConditionModel arguments ['self']", text_encoder="clip", unet={"self": 1})


def test_the_run_sets_the_input_channels_with_coordinates() -> None:
    _refused(
        "unet: `in_channels` is set by the run with `coordinate_channels` (image channels + 2); remove it",
        text_encoder="clip",
        unet={"in_channels": 5},
        coordinate_channels=True,
    )
    assert TrainDiffusionConfig(text_encoder="clip", unet={"in_channels": 3}).unet == {"in_channels": 3}
    assert TrainDiffusionConfig(text_encoder="clip", unet={"in_channels": 3}, coordinate_channels=False).unet


@pytest.mark.parametrize("layers", [0, True, [1, 0], [2, False], "2", 1.5])
def test_layers_per_block_must_be_integers_of_at_least_one(layers: object) -> None:
    _refused(
        f"unet: `layers_per_block` must be an integer >= 1 (or a list of them), got {layers!r}",
        text_encoder="clip",
        unet={"layers_per_block": layers},
    )


@pytest.mark.parametrize("layers", [1, 2, [1, 2], (3,)])
def test_layers_per_block_of_one_or_more_are_taken(layers: object) -> None:
    assert (
        TrainDiffusionConfig(text_encoder="clip", unet={"layers_per_block": layers}).unet["layers_per_block"] == layers
    )


@pytest.mark.parametrize(
    "fixed,named",
    [
        ({"sample_size": 32}, "['sample_size']"),
        ({"cross_attention_dim": 32}, "['cross_attention_dim']"),
        ({"sample_size": 32, "cross_attention_dim": 32}, "['cross_attention_dim', 'sample_size']"),
    ],
)
def test_the_run_sets_the_size_and_the_text_width(fixed: dict, named: str) -> None:
    _refused(
        f"unet: {named} are set by the run (image_size, the text encoder's width); remove them",
        text_encoder="clip",
        unet=fixed,
    )


# ------------------------------------------------------------------ numbers and their ranges


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"snr_gamma": 0.0}, "`snr_gamma` must be positive or null, got 0.0"),
        ({"snr_gamma": -5.0}, "`snr_gamma` must be positive or null, got -5.0"),
        ({"snr_gamma": float("nan")}, "`snr_gamma` must be positive or null, got nan"),
        ({"caption_dropout": -0.1}, "`caption_dropout` must be in [0, 1), got -0.1"),
        ({"caption_dropout": 1.0}, "`caption_dropout` must be in [0, 1), got 1.0"),
        ({"ema_decay": 0.0}, "`ema_decay` must be in (0, 1) or null, got 0.0"),
        ({"ema_decay": 1.0}, "`ema_decay` must be in (0, 1) or null, got 1.0"),
        ({"image_size": 7}, "`image_size` must be >= 8 and `batch_size`, `steps`, `checkpoint_every` >= 1"),
        ({"batch_size": 0}, "`image_size` must be >= 8 and `batch_size`, `steps`, `checkpoint_every` >= 1"),
        ({"steps": 0}, "`image_size` must be >= 8 and `batch_size`, `steps`, `checkpoint_every` >= 1"),
        ({"checkpoint_every": 0}, "`image_size` must be >= 8 and `batch_size`, `steps`, `checkpoint_every` >= 1"),
        ({"image_size": 15}, "`image_size` must be >= 16 with data.source 'shapes', got 15"),
        ({"keep_checkpoints": 0}, "`keep_checkpoints` must be >= 1, got 0"),
        ({"sample_every": -1}, "`sample_every` must be >= 0, `sample_steps` and `log_every` >= 1"),
        ({"sample_steps": 0}, "`sample_every` must be >= 0, `sample_steps` and `log_every` >= 1"),
        ({"log_every": 0}, "`sample_every` must be >= 0, `sample_steps` and `log_every` >= 1"),
        (
            {"sample_every": 3, "sample_prompts": []},
            "`sample_every: 3` needs at least one prompt in `sample_prompts` (it is empty); give prompts, or set sample_every: 0",
        ),
        (
            {"caption_window_split": "words"},
            "`caption_window_split` must be one of ('word', 'a1111', 'comfy', 'truncate'), got 'words'",
        ),
        ({"num_train_timesteps": True}, "`num_train_timesteps` must be an integer >= 1, got True"),
        ({"num_train_timesteps": 2.0}, "`num_train_timesteps` must be an integer >= 1, got 2.0"),
        (
            {"max_grad_norm": 0.0},
            "`max_grad_norm` must be a finite number > 0 (gradients are scaled down to this norm), got 0.0",
        ),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_a_number_out_of_its_range_is_refused(settings: dict, message: str) -> None:
    _refused(message, **SCRATCH, **settings)


def test_the_edges_of_the_ranges_are_accepted() -> None:
    config = TrainDiffusionConfig(
        **SCRATCH,
        snr_gamma=1e-6,
        caption_dropout=0.0,
        ema_decay=1e-6,
        image_size=16,
        batch_size=1,
        steps=1,
        checkpoint_every=1,
        keep_checkpoints=1,
        sample_every=0,
        sample_steps=1,
        log_every=1,
        num_train_timesteps=1,
    )
    assert (config.image_size, config.ema_decay, config.snr_gamma) == (16, 1e-6, 1e-6)
    assert TrainDiffusionConfig(**SCRATCH, caption_dropout=0.999, ema_decay=0.999999).caption_dropout == 0.999
    assert TrainDiffusionConfig(**SCRATCH, ema_decay=None, snr_gamma=None).ema_decay is None
    # the shapes scenes need 16 pixels; other sources only the 8 every UNet needs
    assert TrainDiffusionConfig(**SCRATCH, image_size=8, data=DiffusionDataConfig(**MANIFEST)).image_size == 8
    assert TrainDiffusionConfig(**SCRATCH, sample_every=1, sample_prompts=["a red circle"]).sample_every == 1
    for split in ("word", "a1111", "comfy", "truncate"):
        assert TrainDiffusionConfig(**SCRATCH, caption_window_split=split).caption_window_split == split


# ------------------------------------------------------------------ the T5 settings


def test_the_t5_settings_need_a_t5_encoder() -> None:
    _refused("`t5_attention_mask` needs a `t5_encoder`", t5_attention_mask=True, **SCRATCH)
    _refused("`t5_max_length` needs a `t5_encoder` (it is the T5's token budget)", t5_max_length=64, **SCRATCH)
    config = TrainDiffusionConfig(t5_encoder="t5", t5_attention_mask=True, t5_max_length=2, **SCRATCH)
    assert (config.t5_attention_mask, config.t5_max_length) == (True, 2)


@pytest.mark.parametrize("length", [1, 0, True, 8.0, "64"])
def test_a_t5_budget_must_hold_a_token_and_eos(length: object) -> None:
    _refused(
        f"`t5_max_length` must be an integer >= 2 (EOS included) or null, got {length!r}",
        t5_encoder="t5",
        t5_max_length=length,
        **SCRATCH,
    )


# ------------------------------------------------------------------ the sample scheduler


def test_scheduler_class_finds_diffusers_schedulers_only() -> None:
    assert scheduler_class("DDIMScheduler") is diffusers.DDIMScheduler
    assert scheduler_class("EulerAncestralDiscreteScheduler", "x") is diffusers.EulerAncestralDiscreteScheduler
    for name in ("DDIMSchedular", "UNet2DConditionModel", "SchedulerMixin_", "logging", 3, None):
        with pytest.raises(ValueError) as caught:
            scheduler_class(name, "sample_scheduler")
        assert str(caught.value) == (
            f"`sample_scheduler` must name a diffusers scheduler class (e.g. DDIMScheduler), got {name!r}"
        )
    with pytest.raises(ValueError, match=r"^`scheduler` must name"):
        scheduler_class("AutoencoderKL")


def test_a_sample_scheduler_is_checked_when_the_config_is_read() -> None:
    _refused(
        "`sample_scheduler` must name a diffusers scheduler class (e.g. DDIMScheduler), got 'DDIM'",
        sample_scheduler="DDIM",
        **SCRATCH,
    )
    assert TrainDiffusionConfig(sample_scheduler="DDPMScheduler", **SCRATCH).sample_scheduler == "DDPMScheduler"


# ------------------------------------------------------------------ the lora section


@pytest.mark.parametrize("names", [[], [""], ["attn2.to_q", 2], "attn2.to_q", None])
def test_target_modules_must_be_a_list_of_names(names: object) -> None:
    message = f"`lora.target_modules` must be a non-empty list of module names (such as attn2.to_q), got {names!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DiffusionLoraSettings(target_modules=names)


def test_the_lora_defaults_and_checks() -> None:
    settings = DiffusionLoraSettings()
    assert (settings.r, settings.alpha) == (8, 8)
    assert settings.target_modules == ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
    assert DiffusionLoraSettings(target_modules=("attn2.to_q",)).target_modules == ("attn2.to_q",)
    with pytest.raises(ValueError, match=r"^`lora.r` must be an integer >= 1, got 0$"):
        DiffusionLoraSettings(r=0)
    with pytest.raises(ValueError, match=r"^`lora.alpha` must be a number > 0"):
        DiffusionLoraSettings(alpha=-1)


# ------------------------------------------------------------------ the data section


@pytest.mark.parametrize("name", ["embeddings", "latents"])
@pytest.mark.parametrize("value", ["", "   ", 3, ["dir"]])
def test_an_encoded_folder_must_be_a_path(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(f'data.{name} must be a folder path or null, got {value!r}')}$"):
        DiffusionDataConfig(**{name: value})


def test_the_data_section_still_checks_what_every_data_section_checks() -> None:
    with pytest.raises(ValueError, match=r"^data.source 'manifest' needs data.manifest$"):
        DiffusionDataConfig(source="manifest", embeddings="encoded")


def test_check_files_finds_the_encoded_folders(tmp_path: Path) -> None:
    (tmp_path / "encoded").mkdir()
    (tmp_path / "latents").mkdir()
    DiffusionDataConfig(embeddings=str(tmp_path / "encoded"), latents=str(tmp_path / "latents")).check_files()
    DiffusionDataConfig().check_files()
    for name in ("embeddings", "latents"):
        missing = tmp_path / f"no-{name}"
        with pytest.raises(FileNotFoundError) as caught:
            DiffusionDataConfig(**{name: str(missing)}).check_files()
        assert str(caught.value) == f"data.{name}: no such folder {missing}"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FileNotFoundError, match="^data.latents: no such folder"):
        DiffusionDataConfig(latents=str(tmp_path / "a-file")).check_files()
    with pytest.raises(FileNotFoundError, match="^data.manifest: no such file"):
        DiffusionDataConfig(**MANIFEST, embeddings=str(tmp_path / "encoded")).check_files()


def test_a_plain_data_section_built_in_code_becomes_a_diffusion_one() -> None:
    plain = DataConfig(**MANIFEST, shuffle=False)
    config = TrainDiffusionConfig(**SCRATCH, data=plain)
    assert type(config.data) is DiffusionDataConfig
    assert (config.data.source, config.data.manifest, config.data.shuffle) == ("manifest", "captions.jsonl", False)
    assert (config.data.embeddings, config.data.latents) == (None, None)
    kept = DiffusionDataConfig(embeddings="encoded")
    assert TrainDiffusionConfig(**SCRATCH, data=kept).data is kept


def test_from_yaml_reads_the_sections_and_names_the_file_of_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {**TUNED, "train": "lora", "lora": {"r": 2}, "data": {**MANIFEST, "embeddings": "encoded"}, "snr_gamma": 5}
        )
    )
    config = TrainDiffusionConfig.from_yaml(path)
    assert (config.lora.r, config.lora.alpha, config.snr_gamma) == (2, 8, 5)
    assert (type(config.data), config.data.embeddings) == (DiffusionDataConfig, "encoded")
    path.write_text(yaml.safe_dump({**SCRATCH, "ema_decay": 1.5}))
    with pytest.raises(ValueError, match=re.escape("`ema_decay` must be in (0, 1) or null, got 1.5")) as caught:
        TrainDiffusionConfig.from_yaml(path)
    assert str(path) in str(caught.value)
