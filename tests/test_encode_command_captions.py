"""``clipcond encode``'s captions from a manifest or a prompt file: every usable caption
encoded (none held out), the lines it skipped counted in its report, and a source it cannot
read named first on its error line."""

from __future__ import annotations

import json
from pathlib import Path

from test_encode_command import shard_contents, write_config
from test_train_diffusion import tiny_config

from clipcond.cli import main as clipcond
from clipcond.training.data.embedding_shards import caption_hash


def _encode(config: Path, source: list[str], out: Path) -> int:
    return clipcond(["encode", "--train-config", str(config), *source, "--out", str(out), "--no-progress"])


def test_every_caption_of_a_manifest_is_encoded_and_its_skipped_lines_reported(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    manifest = tmp_path / "m.jsonl"
    rows = [
        json.dumps({"image": "a.png", "caption": "a red circle"}),
        "{not json",
        json.dumps({"image": "b.png", "caption": "a blue square"}),
        json.dumps({"image": "c.png", "caption": "a red circle"}),
        json.dumps({"image": "d.png", "caption": "a green star"}),  # the last: not held out
    ]
    manifest.write_text("\n".join(rows) + "\n")
    assert _encode(config, ["--manifest", str(manifest)], tmp_path / "emb") == 0
    report = capsys.readouterr().out.strip()
    assert report == (
        f"4 captions encoded into 1 new shard in {tmp_path / 'emb'} (0 already there, 1 duplicate; 4 captions "
        "in the folder); skipped samples: 1 (bad manifest line: 1)"
    )
    expected = ["", "a red circle", "a blue square", "a green star"]
    assert sorted(shard_contents(tmp_path / "emb")) == sorted(caption_hash(caption) for caption in expected)


def test_a_manifest_without_a_usable_caption_is_named_first_on_the_error_line(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{not json\n")
    assert _encode(config, ["--manifest", str(manifest)], tmp_path / "emb") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {manifest}: {manifest} holds 0 usable captions; " + _NONE_LEFT]
    assert not (tmp_path / "emb").exists()


_NONE_LEFT = "eval_captions (0) are held out of them and at least one must remain for training"


def test_a_prompt_file_that_cannot_be_read_is_named_with_its_option(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    for path, message in [
        (tmp_path / "none.txt", f"prompt file not found: {tmp_path / 'none.txt'}"),
        (latin1, f"{latin1} is not UTF-8 text: "),
    ]:
        assert _encode(config, ["--prompts", str(path)], tmp_path / "emb") == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: --prompts: {message}"), errors
    assert not (tmp_path / "emb").exists()
