"""Every recipe shipped in configs/ loads through its validated config class.

The README's commands name these files; a renamed key or a stale value in one of them must
fail here, not an hour into a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clipcond.cli import main as cli_main
from clipcond.lab.config import load_experiment_config
from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.diffusion.config import TrainDiffusionConfig
from clipcond.training.t5.config import TrainT5Config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _files(folder: str) -> list[Path]:
    files = sorted((CONFIGS / folder).glob("*.yaml"))
    assert files, f"no configs in configs/{folder}"
    return files


@pytest.mark.parametrize("path", _files("train"), ids=lambda p: p.name)
def test_training_recipes_load(path: Path) -> None:
    config_class = TrainT5Config if path.stem.startswith("t5-") else TrainClipConfig
    config = config_class.from_yaml(path)
    assert config.steps >= 1


@pytest.mark.parametrize("path", _files("diffusion"), ids=lambda p: p.name)
def test_diffusion_recipes_load(path: Path) -> None:
    config = TrainDiffusionConfig.from_yaml(path)
    assert config.steps >= 1


@pytest.mark.parametrize("path", _files("experiments"), ids=lambda p: p.name)
def test_experiments_load(path: Path) -> None:
    config = load_experiment_config(path)
    assert config.setups and config.suites


@pytest.mark.parametrize("path", _files("experiments"), ids=lambda p: p.name)
def test_experiments_plan_on_a_fresh_checkout(path: Path, tmp_path, monkeypatch, capsys) -> None:
    """`clipcond experiment X --check` passes with nothing trained yet: every model the
    experiment reads is there or made by one of its prepare steps."""
    for name in ("configs", "clipcond"):  # a checkout without runs/
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["experiment", f"configs/experiments/{path.name}", "--check"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # planned, nothing made


def test_bundled_recipe_reads_the_hard_negative_tower() -> None:
    """The bundled model's UNet recipe conditions on the tower its CLIP recipe writes."""
    clip = TrainClipConfig.from_yaml(CONFIGS / "train" / "clip-tiny-shapes-negclip.yaml")
    unet = TrainDiffusionConfig.from_yaml(CONFIGS / "diffusion" / "shapes-tiny.yaml")
    assert clip.hard_negatives and clip.mode == "pretrain"
    assert Path(unet.text_encoder) == Path(clip.output_dir) / "model"


def test_bundled_relations_recipe_fine_tunes_the_coordinate_run() -> None:
    """The bundled model's last step starts from the coordinate-channel run of shapes-tiny.yaml
    (README: `--set coordinate_channels=true --output-dir runs/shapes-tiny-coords`), on the
    same text tower, and trains on two-object scenes 3 times in 4 and single objects once in 4."""
    base = TrainDiffusionConfig.from_yaml(CONFIGS / "diffusion" / "shapes-tiny.yaml")
    relations = TrainDiffusionConfig.from_yaml(CONFIGS / "diffusion" / "shapes-tiny-relations.yaml")
    assert Path(relations.init_from) == Path("runs/shapes-tiny-coords/pipeline")
    assert relations.text_encoder == base.text_encoder and relations.unet is None
    assert (relations.data.min_objects, relations.data.max_objects) == (1, 2)
    assert relations.data.object_count_weights == [1, 3]
    assert relations.sample_scheduler == base.sample_scheduler and relations.timestep_spacing == base.timestep_spacing
