"""`clipcond init-clip`: a random-init CLIP folder, the same for the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli_errors import one_error

from clipcond.models import load_clip
from clipcond.training.clip.random_init import init_clip
from clipcond.training.diffusion.frozen_encoders import load_frozen_text_encoder

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


def test_an_interrupted_save_leaves_no_folder_and_the_rerun_writes_it(tmp_path, monkeypatch):
    """A save stopped mid-way (Ctrl-C while writing the last file) leaves no `-o` folder, nor its
    hidden sibling: the rerun writes the folder, and an experiment's prepare step that creates it
    is still pending meanwhile (a partial folder once passed for a finished step)."""
    import clipcond.models.checkpoint as checkpoint
    from clipcond.lab.prepare import PrepareStep, pending_steps

    output = tmp_path / "model"
    write = checkpoint.save_file

    def interrupted(tensors, path, *args, **kwargs):
        if str(path).endswith("logit_scale.safetensors"):
            raise KeyboardInterrupt("Ctrl-C during the save")
        return write(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        init_clip(MODEL, output, seed=3)
    assert list(tmp_path.iterdir()) == []
    step = PrepareStep(command="init-clip", creates=str(output), args=["--model", str(MODEL), "-o", str(output)])
    assert pending_steps([step]) == [step]
    monkeypatch.setattr(checkpoint, "save_file", write)
    assert init_clip(MODEL, output, seed=3) == output
    assert [path.name for path in tmp_path.iterdir()] == ["model"]
    assert (output / "logit_scale.safetensors").is_file()
    expected = load_clip(init_clip(MODEL, tmp_path / "again", seed=3)).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in load_clip(output).state_dict().items())


def test_a_killed_saves_hidden_folder_goes_and_a_live_writers_stays(tmp_path):
    """A SIGKILL mid-save leaves `.tmp-<name>-<pid>` (nothing runs its clean-up): the next
    init-clip of that folder deletes it when its process is gone, and keeps a live one's."""
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f".tmp-model-{int(finished.stdout)}"
    (killed / "text_encoder").mkdir(parents=True)
    (killed / "text_encoder" / "model.safetensors").write_bytes(b"half")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".tmp-model-{running.pid}"
        live.mkdir()
        other = tmp_path / f".tmp-model2-{int(finished.stdout)}"  # another folder's: not this save's
        other.mkdir()
        init_clip(MODEL, tmp_path / "model", seed=0)
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["model", live.name, other.name])
    finally:
        running.kill()
        running.wait()


def _small_vocabulary_model(tmp_path: Path) -> Path:
    """clip-tiny with a 1000-token text vocabulary (its special ids inside it): CLIP's tokenizer gives ids up to 49407."""
    import yaml

    model = yaml.safe_load(MODEL.read_text())
    model["text"].update(vocab_size=1000, bos_token_id=998, eos_token_id=999, pad_token_id=999)
    path = tmp_path / "vocab1000.yaml"
    path.write_text(yaml.safe_dump(model))
    return path


def test_a_text_vocabulary_below_clips_is_refused_when_the_yaml_is_read(tmp_path, capsys):
    """init-clip wrote such a model and train-clip crashed on its first step with an IndexError."""
    import yaml

    model = _small_vocabulary_model(tmp_path)
    line = one_error(capsys, ["init-clip", "--model", str(model), "-o", str(tmp_path / "m")], 2)
    assert "text.vocab_size must be at least 49408" in line and "tokenizer" in line
    run = tmp_path / "run.yaml"
    run.write_text(
        yaml.safe_dump({"model": str(model), "steps": 1, "batch_size": 4, "output_dir": str(tmp_path / "r")})
    )
    line = one_error(capsys, ["train-clip", "--config", str(run), "--no-progress"], 2)
    assert "text.vocab_size must be at least 49408" in line and str(model) in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.yaml", "vocab1000.yaml"]


def test_a_run_that_finishes_second_is_refused_and_the_first_runs_folder_is_kept(tmp_path, capsys, monkeypatch):
    """Two init-clip runs into one -o at once: the first to finish keeps it; the other is refused
    in one line (its rename had replaced the first run's folder, and both said they saved it)."""
    import os
    import subprocess
    import sys

    import clipcond.models

    output = tmp_path / "clip"
    save_clip = clipcond.models.save_clip
    runs_of_b = []

    def save_then_let_b_init(model, folder, *args, **kwargs):
        saved = save_clip(model, folder, *args, **kwargs)
        command = [sys.executable, "-m", "clipcond.cli", "init-clip", "--model", str(MODEL), "--seed", "5"]
        runs_of_b.append(
            subprocess.run(
                [*command, "-o", str(output)],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        )
        return saved

    monkeypatch.setattr(clipcond.models, "save_clip", save_then_let_b_init)
    line = one_error(capsys, ["init-clip", "--model", str(MODEL), "--seed", "3", "-o", str(output)], 2)
    assert line.startswith(f"error: -o/--output: {output} was written by another run meanwhile"), line
    (b_run,) = runs_of_b
    assert b_run.returncode == 0, b_run.stderr
    monkeypatch.undo()
    kept = load_clip(output).state_dict()
    expected = load_clip(init_clip(MODEL, tmp_path / "seed5", seed=5)).state_dict()
    assert all(torch.equal(kept[k], expected[k]) for k in kept)  # B's model, as B said
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip", "seed5"]
