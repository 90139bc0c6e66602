"""What a run folder is made of besides the config: a name (an empty `output_dir` is refused by
every training command), and the frozen models a run reads (`text_encoder`, `t5_encoder`, `vae`,
`init_from`), whose files' fingerprints a resume compares."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clipcond.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP_MODEL = str(REPO / "configs" / "models" / "clip-tiny.yaml")

# the smallest valid config of each training command, but for output_dir
MINIMAL_CONFIGS = {
    "train-clip": {"model": TINY_CLIP_MODEL, "batch_size": 8, "steps": 3},
    "train-diffusion": {"text_encoder": "clip", "unet": {"block_out_channels": [8, 16]}, "steps": 3},
    "train-t5": {"steps": 3},
}


@pytest.mark.parametrize("command", sorted(MINIMAL_CONFIGS))
@pytest.mark.parametrize("output_dir", ["", "  "])
def test_an_empty_output_dir_is_refused_in_one_line_and_nothing_is_written(
    command, output_dir, tmp_path, monkeypatch, capsys
) -> None:
    # probe12_clip #5: `output_dir: ""` is `Path("")`, the current folder: the run wrote among the user's files
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL_CONFIGS[command], "output_dir": output_dir}))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main([command, "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "output_dir is empty; name the run's folder in output_dir (--output-dir)" in errors[0]
    assert list(work.iterdir()) == []
