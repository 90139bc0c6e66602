"""`--no-progress` draws no progress bar at all: the command's own, and the loading bars
diffusers and transformers draw by themselves (the lab's run: tests/test_lab_safety.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_encode_command import write_config
from test_train_diffusion import tiny_config

from clipcond.cli import main


@pytest.mark.parametrize("no_progress", [True, False])
def test_a_training_command_with_no_progress_draws_no_loading_bars(
    tiny_clip_text_path, tmp_path: Path, capfd, no_progress
) -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run", steps=1), tmp_path / "run.yaml")
    capfd.readouterr()
    assert main(["train-diffusion", "--config", str(config), *(["--no-progress"] if no_progress else [])]) == 0
    err = capfd.readouterr().err
    assert ("Loading weights" in err) is not no_progress  # transformers' bar, loading the text encoder
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("no_progress", [True, False])
def test_encode_with_no_progress_draws_no_loading_bars(tiny_clip_text_path, tmp_path: Path, capfd, no_progress) -> None:
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    capfd.readouterr()
    argv = ["encode", "--train-config", str(config), *(["--no-progress"] if no_progress else [])]
    assert main([*argv, "--out", str(tmp_path / "emb")]) == 0
    err = capfd.readouterr().err
    assert ("Loading weights" in err) is not no_progress  # the libraries' bars
    assert ("encode:" in err) is not no_progress  # the command's
