"""The optimizer settings and seeds of every training config, refused before any work when
they cannot train: NaN or infinite numbers (accepted by torch, they turn every weight into NaN
at the first update), a gradient-norm limit <= 0 (reverses or zeroes the gradients), negative
warm-ups, an empty noise schedule, seeds NumPy cannot take, sample grids without prompts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.diffusion.config import TrainDiffusionConfig
from clipcond.training.loop import check_seed
from clipcond.training.optim import check_optimizer_settings
from clipcond.training.t5.config import TrainT5Config

REPO = Path(__file__).resolve().parents[1]
# the least each config needs besides the key under test
BASES = {
    "clip": (TrainClipConfig, {"model": str(REPO / "configs" / "models" / "clip-tiny.yaml")}),
    "t5": (TrainT5Config, {}),
    "diffusion": (TrainDiffusionConfig, {"text_encoder": "clip", "unet": {}}),
}
NAN, INF = float("nan"), float("inf")

# (key, value, what the message says), for every config
SHARED = [
    ("lr", INF, "`lr` must be a finite number > 0, got inf"),
    ("lr", NAN, "`lr` must be a finite number > 0, got nan"),
    ("lr", 0.0, "`lr` must be a finite number > 0, got 0.0"),
    ("lr", -1e-3, "`lr` must be a finite number > 0"),
    ("weight_decay", NAN, "`weight_decay` must be a finite number >= 0, got nan"),
    ("weight_decay", INF, "`weight_decay` must be a finite number >= 0, got inf"),
    ("weight_decay", -0.1, "`weight_decay` must be a finite number >= 0"),
    ("warmup_steps", -3, "`warmup_steps` must be an integer >= 0, got -3"),
    ("seed", -1, r"`seed` must be an integer in \[0, 2\*\*32 - 1\].*got -1"),
    ("seed", 2**32, r"`seed` must be an integer in \[0, 2\*\*32 - 1\].*got 4294967296"),
]
ADAM = [  # the configs with their own betas and eps
    ("betas", [0.9, NAN], r"`betas` must be two numbers in \[0, 1\), got \[0.9, nan\]"),
    ("betas", [0.9, 1.0], r"`betas` must be two numbers in \[0, 1\)"),
    ("betas", [0.9], r"`betas` must be two numbers in \[0, 1\)"),
    ("eps", 0.0, "`eps` must be a finite number > 0, got 0.0"),
    ("eps", NAN, "`eps` must be a finite number > 0, got nan"),
]
DIFFUSION = [
    ("max_grad_norm", NAN, "`max_grad_norm` must be a finite number > 0.*got nan"),
    ("max_grad_norm", INF, "`max_grad_norm` must be a finite number > 0.*got inf"),
    ("max_grad_norm", 0.0, "`max_grad_norm` must be a finite number > 0.*got 0.0"),
    ("max_grad_norm", -1.0, "`max_grad_norm` must be a finite number > 0.*got -1.0"),
    ("num_train_timesteps", 0, "`num_train_timesteps` must be an integer >= 1, got 0"),
    ("num_train_timesteps", -5, "`num_train_timesteps` must be an integer >= 1, got -5"),
]
CASES = [
    *[(name, *case) for name in BASES for case in SHARED],
    *[(name, *case) for name in ("clip", "t5") for case in ADAM],
    *[("diffusion", *case) for case in DIFFUSION],
]


def _write(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(settings))  # .nan and .inf in YAML
    return path


@pytest.mark.parametrize("name,key,value,message", CASES, ids=[f"{c[0]}-{c[1]}={c[2]}" for c in CASES])
def test_a_setting_that_cannot_train_is_refused_naming_the_key_and_the_file(
    tmp_path: Path, name: str, key: str, value: object, message: str
) -> None:
    config_class, base = BASES[name]
    path = _write(tmp_path, {**base, key: value})
    with pytest.raises(ValueError, match=message) as caught:
        config_class.from_yaml(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", sorted(BASES))
def test_the_edges_of_every_range_are_accepted(tmp_path: Path, name: str) -> None:
    config_class, base = BASES[name]
    for seed in (0, 2**32 - 1):
        config = config_class.from_yaml(
            _write(tmp_path, {**base, "seed": seed, "weight_decay": 0.0, "warmup_steps": 0})
        )
        assert config.seed == seed
    if name == "diffusion":
        config = config_class.from_yaml(_write(tmp_path, {**base, "num_train_timesteps": 1, "max_grad_norm": 1e-6}))
        assert config.num_train_timesteps == 1
    else:
        assert config_class.from_yaml(_write(tmp_path, {**base, "betas": [0.0, 0.999], "eps": 1e-12})).eps == 1e-12


def test_sample_every_needs_a_sample_prompt(tmp_path: Path) -> None:
    config_class, base = BASES["diffusion"]
    with pytest.raises(ValueError, match="`sample_every: 5` needs at least one prompt in `sample_prompts`"):
        config_class.from_yaml(_write(tmp_path, {**base, "sample_every": 5, "sample_prompts": []}))
    assert config_class.from_yaml(_write(tmp_path, {**base, "sample_prompts": []})).sample_every == 0


def test_the_checks_take_numbers_only() -> None:
    check_optimizer_settings(1e-3, 0.0, 0, betas=(0.9, 0.98), eps=1e-8, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="`warmup_steps` must be an integer"):
        check_optimizer_settings(1e-3, 0.0, 1.5)
    with pytest.raises(ValueError, match="`lr`"):
        check_optimizer_settings(True, 0.0, 0)
    with pytest.raises(ValueError, match="`max_grad_norm`"):
        check_optimizer_settings(1e-3, 0.0, 0, max_grad_norm=-math.inf)
    with pytest.raises(ValueError, match="`data.seed` must be an integer"):
        check_seed(1.0, "data.seed")
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        check_seed(True)
