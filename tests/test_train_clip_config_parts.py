"""`TrainClipConfig` and its `lora` section on their own: each refusal whole (the key, the bound,
the value given), the edge of each range accepted, and which keys each mode reads.

The shared optimizer and seed checks are tested for every config in test_training_settings.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clipcond.training.clip.config import LoraSettings, TrainClipConfig, check_log_with
from clipcond.training.data import DataConfig

MODEL = "configs/models/clip-tiny.yaml"


def _pretrain(**settings) -> TrainClipConfig:
    return TrainClipConfig(model=MODEL, **settings)


def _refused(message: str, **settings) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainClipConfig(**settings)


# ------------------------------------------------------------------ which mode reads which key


def test_pretrain_needs_a_model_and_reads_no_init_from() -> None:
    _refused("mode 'pretrain' needs `model` (a model YAML such as configs/models/clip-tiny.yaml)")
    _refused(
        "mode 'pretrain' starts from random weights and does not read `init_from`; to start from "
        "'runs/old/model', did you mean mode: finetune (or text_only, lit, lora)? Else remove `init_from`",
        model=MODEL,
        init_from="runs/old/model",
    )
    config = _pretrain()
    assert (config.mode, config.model, config.init_from) == ("pretrain", MODEL, None)


@pytest.mark.parametrize("mode", ["finetune", "text_only", "lit", "lora"])
def test_every_other_mode_needs_init_from_and_reads_no_model(mode: str) -> None:
    _refused(f"mode {mode!r} needs `init_from` (a saved CLIP folder)", mode=mode)
    _refused(
        f"`model` is only read in mode 'pretrain'; mode {mode!r} takes the architecture from `init_from`: remove `model`",
        mode=mode,
        model=MODEL,
        init_from="runs/old/model",
    )
    assert TrainClipConfig(mode=mode, init_from="runs/old/model").init_from == "runs/old/model"


@pytest.mark.parametrize("mode", ["pretrain", "finetune", "text_only", "lit"])
def test_a_lora_section_is_refused_outside_mode_lora_unless_it_is_the_default(mode: str) -> None:
    where = {"model": MODEL} if mode == "pretrain" else {"init_from": "runs/old/model"}
    _refused(
        f"`lora` is only read in mode 'lora'; mode {mode!r} would ignore {LoraSettings(r=4)}: "
        "set mode: lora, or remove the `lora` section",
        mode=mode,
        lora=LoraSettings(r=4),
        **where,
    )
    assert TrainClipConfig(mode=mode, lora=LoraSettings(), **where).lora == LoraSettings()


def test_mode_lora_takes_its_section() -> None:
    settings = LoraSettings(r=4, alpha=2.0, dropout=0.1, target_modules=["q_proj"])
    assert TrainClipConfig(mode="lora", init_from="runs/old/model", lora=settings).lora is settings


# ------------------------------------------------------------------ numbers and their ranges


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"eval_every": -1}, "`eval_every` must be >= 0 and `eval_images_per_class` >= 1"),
        ({"eval_images_per_class": 0}, "`eval_every` must be >= 0 and `eval_images_per_class` >= 1"),
        ({"log_every": 0}, "`log_every` and `keep_checkpoints` must be >= 1"),
        ({"keep_checkpoints": 0}, "`log_every` and `keep_checkpoints` must be >= 1"),
        ({"batch_size": 1}, "`batch_size` must be >= 2 for a contrastive loss, got 1"),
        ({"micro_batch_size": 0}, "`micro_batch_size` must be between 1 and batch_size, got 0"),
        ({"batch_size": 8, "micro_batch_size": 9}, "`micro_batch_size` must be between 1 and batch_size, got 9"),
        ({"steps": 0}, "`steps` and `checkpoint_every` must be >= 1"),
        ({"checkpoint_every": 0}, "`steps` and `checkpoint_every` must be >= 1"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_a_number_out_of_its_range_is_refused(settings: dict, message: str) -> None:
    _refused(message, model=MODEL, **settings)


def test_the_edges_of_the_ranges_are_accepted() -> None:
    config = _pretrain(
        eval_every=0,
        eval_images_per_class=1,
        log_every=1,
        keep_checkpoints=1,
        batch_size=2,
        steps=1,
        checkpoint_every=1,
    )
    assert (config.batch_size, config.micro_batch_size, config.steps) == (2, None, 1)
    for micro in (1, 8):
        assert _pretrain(batch_size=8, micro_batch_size=micro).micro_batch_size == micro


def test_the_betas_and_eps_reach_the_optimizer_checks() -> None:
    _refused("`betas` must be two numbers in [0, 1), got [0.9, 1.5]", model=MODEL, betas=[0.9, 1.5])
    _refused("`eps` must be a finite number > 0, got -1.0", model=MODEL, eps=-1.0)
    _refused("`warmup_steps` must be an integer >= 0, got -1", model=MODEL, warmup_steps=-1)


def test_hard_negatives_need_the_shapes_stream() -> None:
    manifest = DataConfig(source="manifest", manifest="captions.jsonl")
    _refused(
        "`hard_negatives` needs data.source 'shapes' (it swaps scene attributes)",
        model=MODEL,
        hard_negatives=True,
        data=manifest,
    )
    assert _pretrain(hard_negatives=True).hard_negatives
    assert _pretrain(data=manifest).data is manifest


# ------------------------------------------------------------------ the tracker


def test_a_tracker_accelerate_does_not_know_is_refused_listing_those_it_does() -> None:
    from accelerate.utils import LoggerType

    names = [kind.value for kind in LoggerType]
    assert "tensorboard" in names
    check_log_with(None)
    check_log_with("tensorboard")
    with pytest.raises(ValueError) as caught:
        check_log_with("tensorbord")
    assert str(caught.value) == f"`log_with` must be one of accelerate's trackers {names} or null, got 'tensorbord'"
    _refused(str(caught.value), model=MODEL, log_with="tensorbord")
    assert _pretrain(log_with="tensorboard").log_with == "tensorboard"


# ------------------------------------------------------------------ the lora section


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1, True, "0.1", None, float("nan")])
def test_a_dropout_outside_zero_to_one_or_no_number_is_refused(dropout: object) -> None:
    with pytest.raises(
        ValueError, match=f"^{re.escape(f'`lora.dropout` must be a number in [0, 1), got {dropout!r}')}$"
    ):
        LoraSettings(dropout=dropout)


@pytest.mark.parametrize("dropout", [0, 0.0, 0.999])
def test_a_dropout_in_zero_to_one_is_taken(dropout: float) -> None:
    assert LoraSettings(dropout=dropout).dropout == dropout


@pytest.mark.parametrize("modules", [[], [""], ["q_proj", ""], ["q_proj", 3], [None]])
def test_target_modules_must_be_names(modules: list) -> None:
    message = f"`lora.target_modules` must be a non-empty list of module names (such as q_proj), got {modules!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        LoraSettings(target_modules=modules)


def test_the_rank_and_alpha_are_checked_and_the_defaults_are_peft_like() -> None:
    with pytest.raises(ValueError, match=r"^`lora.r` must be an integer >= 1, got 0$"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match=r"^`lora.alpha` must be a number > 0"):
        LoraSettings(alpha=0)
    settings = LoraSettings()
    assert (settings.r, settings.alpha, settings.dropout) == (8, 16, 0.0)
    assert settings.target_modules == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert LoraSettings(target_modules=["q_proj"]).target_modules == ["q_proj"]


# ------------------------------------------------------------------ from YAML


def test_from_yaml_reads_every_section_and_names_the_file_of_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "mode": "lora",
                "init_from": "runs/old/model",
                "lora": {"r": 2, "target_modules": ["k_proj"]},
                "data": {"source": "manifest", "manifest": "m.jsonl"},
                "micro_batch_size": 16,
            }
        )
    )
    config = TrainClipConfig.from_yaml(path)
    assert config.lora == LoraSettings(r=2, target_modules=["k_proj"])
    assert (config.data.source, config.micro_batch_size, config.batch_size) == ("manifest", 16, 64)
    path.write_text(yaml.safe_dump({"mode": "finetune"}))
    with pytest.raises(ValueError, match="needs `init_from`") as caught:
        TrainClipConfig.from_yaml(path)
    assert str(path) in str(caught.value)
