"""`clipcond init-clip`: a random-init CLIP folder, the same for the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipcond.models import load_clip
from clipcond.training.clip.random_init import init_clip
from clipcond.training.diffusion.setup import load_frozen_text_encoder

MODEL = Path(__file__).parents[1] / "configs" / "models" / "clip-tiny.yaml"


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = load_clip(init_clip(MODEL, tmp_path / "a", seed=3)).state_dict()
    b = load_clip(init_clip(MODEL, tmp_path / "b", seed=3)).state_dict()
    c = load_clip(init_clip(MODEL, tmp_path / "c", seed=4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)
    text = load_frozen_text_encoder(str(tmp_path / "a"))
    assert text.config.hidden_size == 64
    with pytest.raises(FileExistsError, match="already exists"):
        init_clip(MODEL, tmp_path / "a")


def test_the_command_line(tmp_path, capsys):
    from clipcond.cli import main

    assert main(["init-clip", "--model", str(MODEL), "--seed", "1", "-o", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "text_encoder" / "config.json").is_file()
    assert main(["init-clip", "--model", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "n")]) == 2
    assert "--model: no such file" in capsys.readouterr().err
