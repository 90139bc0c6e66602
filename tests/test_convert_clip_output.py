"""convert-clip's --output when another conversion writes the same folder at the same time:
each run writes its own hidden folder, the first to finish keeps --output, and the other is
refused in one line and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from test_cli_errors import one_error
from test_convert_clip_shapes import _reference_state

from clipcond.cli import main

TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"  # transformers' name of token_embedding.weight


def _checkpoint(path: Path, shift: float) -> Path:
    """The reference OpenAI-style CLIP state with every tensor shifted by `shift` (a distinct model)."""
    save_file({key: (value + shift).contiguous() for key, value in _reference_state().items()}, str(path))
    return path


def _convert_argv(checkpoint: Path, output: Path) -> list[str]:
    return ["convert-clip", "--checkpoint", str(checkpoint), "--output", str(output), "--text-heads", "2"]


def test_a_run_that_finishes_second_is_refused_and_the_first_runs_model_is_kept(tmp_path, capsys, monkeypatch) -> None:
    # probe13_files2 #2: both runs used `.model.tmp`; B deleted A's and A renamed B's model, then crashed
    import clipcond.models

    a, b = _checkpoint(tmp_path / "A.safetensors", 0.0), _checkpoint(tmp_path / "B.safetensors", 0.5)
    output = tmp_path / "model"
    save_clip = clipcond.models.save_clip
    runs_of_b = []

    def save_then_let_b_convert(model, folder, *args, **kwargs):
        """A has written its model; B (another process) converts into the same --output, whole."""
        saved = save_clip(model, folder, *args, **kwargs)
        command = [sys.executable, "-m", "clipcond.cli", *_convert_argv(b, output)]
        runs_of_b.append(
            subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        )
        return saved

    monkeypatch.setattr(clipcond.models, "save_clip", save_then_let_b_convert)
    line = one_error(capsys, _convert_argv(a, output), 2)
    assert (
        line
        == f"error: --output {output} was written by another run meanwhile; this conversion is not kept, choose a new folder"
    )
    (b_run,) = runs_of_b
    assert b_run.returncode == 0 and f"converted {b} -> {output}" in b_run.stdout, b_run.stderr
    kept = load_file(str(output / "text_encoder" / "model.safetensors"))[TOKEN_EMBEDDING]
    assert torch.equal(kept, load_file(str(b))["token_embedding.weight"])  # B's model, as B said
    assert sorted(path.name for path in tmp_path.iterdir()) == ["A.safetensors", "B.safetensors", "model"]


def test_a_dead_runs_hidden_folder_is_deleted_and_a_live_ones_kept(tmp_path, capsys) -> None:
    output = tmp_path / "model"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_folder = tmp_path / f".tmp-model-{int(dead.stdout)}"
    live_folder = tmp_path / f".tmp-model-{os.getppid()}"  # pytest's parent: alive, another writer for all we know
    for folder in (dead_folder, live_folder):
        folder.mkdir()
        (folder / "config.yaml").write_text("half-written")
    assert main(_convert_argv(_checkpoint(tmp_path / "A.safetensors", 0.0), output)) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["A.safetensors", live_folder.name, "model"])
