"""``clipcond encode``'s captions from a manifest or a prompt file: every usable caption
encoded (none held out), the lines it skipped counted in its report, and a source it cannot
read named first on its error line."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from test_encode_command import shard_contents, write_config
from test_train_diffusion import tiny_config

from clipcond.cli import main as clipcond
from clipcond.training.data.embedding_shards import caption_hash
from clipcond.training.diffusion.config import DiffusionDataConfig


@pytest.fixture
def run_yaml(tiny_clip_text_path, tmp_path: Path) -> Path:
    """The tiny train-diffusion run's config, as ``--train-config`` reads it."""
    return write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")


def _encode(config: Path, source: list[str], out: Path) -> int:
    return clipcond(["encode", "--train-config", str(config), *source, "--out", str(out), "--no-progress"])


def test_every_caption_of_a_manifest_is_encoded_and_its_skipped_lines_reported(
    run_yaml, tmp_path: Path, capsys
) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [
        json.dumps({"image": "a.png", "caption": "a red circle"}),
        "{not json",
        json.dumps({"image": "b.png", "caption": "a blue square"}),
        json.dumps({"image": "c.png", "caption": "a red circle"}),
        json.dumps({"image": "d.png", "caption": "a green star"}),  # the last: not held out
    ]
    manifest.write_text("\n".join(rows) + "\n")
    assert _encode(run_yaml, ["--manifest", str(manifest)], tmp_path / "emb") == 0
    report = capsys.readouterr().out.strip()
    assert report == (
        f"4 captions encoded into 1 new shard in {tmp_path / 'emb'} (0 already there, 1 duplicate; 4 captions "
        "in the folder); skipped samples: 1 (bad manifest line: 1)"
    )
    expected = ["", "a red circle", "a blue square", "a green star"]
    assert sorted(shard_contents(tmp_path / "emb")) == sorted(caption_hash(caption) for caption in expected)


def test_a_manifest_without_a_usable_caption_is_named_first_on_the_error_line(run_yaml, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{not json\n")
    assert _encode(run_yaml, ["--manifest", str(manifest)], tmp_path / "emb") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {manifest}: {manifest} holds 0 usable captions; " + _NONE_LEFT]
    assert not (tmp_path / "emb").exists()


_NONE_LEFT = "eval_captions (0) are held out of them and at least one must remain for training"


def test_a_prompt_file_that_cannot_be_read_is_named_with_its_option(run_yaml, tmp_path: Path, capsys) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    for path, message in [
        (tmp_path / "none.txt", f"prompt file not found: {tmp_path / 'none.txt'}"),
        (latin1, f"{latin1} is not UTF-8 text: "),
    ]:
        assert _encode(run_yaml, ["--prompts", str(path)], tmp_path / "emb") == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: --prompts: {message}"), errors
    assert not (tmp_path / "emb").exists()


def test_webdataset_captions_are_encoded_with_their_unusable_members_counted(run_yaml, tmp_path: Path, capsys) -> None:
    from shards import captions_of, png, write_shard, write_shards

    paths = write_shards(tmp_path / "shards", "train", 2, per_shard=2)
    # a member whose caption is no UTF-8, in a third shard
    paths.append(write_shard(tmp_path / "shards" / "train-000002.tar", [("000002000", png(7), b"caf\xe9")]))
    pattern = str(tmp_path / "shards" / "train-{000000..000002}.tar")
    assert _encode(run_yaml, ["--webdataset", pattern], tmp_path / "emb") == 0
    report = capsys.readouterr().out.strip()
    assert report.startswith(f"5 captions encoded into 1 new shard in {tmp_path / 'emb'} (0 already there")
    assert report.endswith("; skipped samples: 1 (caption not UTF-8: 1)"), report
    expected = ["", *captions_of(paths[:2], per_shard=2)]
    assert sorted(shard_contents(tmp_path / "emb")) == sorted(caption_hash(caption) for caption in expected)


def test_a_webdataset_pattern_without_shards_is_named_by_its_option(run_yaml, tmp_path: Path, capsys) -> None:
    pattern = str(tmp_path / "x-{0..1}.tar")
    assert _encode(run_yaml, ["--webdataset", pattern], tmp_path / "emb") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --webdataset: no shard matches {pattern!r}"], errors


def test_shapes_of_a_run_config_are_read_with_its_data_settings_and_seed(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    from clipcond.training.data import CaptionSource, DataConfig

    data = DiffusionDataConfig(min_objects=2, max_objects=3)
    run = dataclasses.replace(tiny_config(tiny_clip_text_path, tmp_path / "run", data=data), seed=11)
    config = write_config(run, tmp_path / "run.yaml")
    assert _encode(config, ["--shapes", "6"], tmp_path / "emb") == 0
    capsys.readouterr()
    source = CaptionSource(DataConfig(source="shapes", min_objects=2, max_objects=3), 11, heldout_count=0)
    expected = {"", *source.first(6)}
    assert sorted(shard_contents(tmp_path / "emb")) == sorted(caption_hash(caption) for caption in expected)
    default_seed = CaptionSource(DataConfig(source="shapes"), 0, heldout_count=0).first(6)
    assert set(default_seed) != set(source.first(6))  # the test tells the two apart


def test_a_conditioner_that_cannot_be_read_is_named_by_its_option(tiny_clip_text_path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    assert (
        clipcond(
            [
                "encode",
                "--conditioner",
                str(tmp_path / "none.yaml"),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "emb"),
            ]
        )
        == 2
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --conditioner: no such file {tmp_path / 'none.yaml'}"]
    damaged = tmp_path / "clip"
    shutil.copytree(tiny_clip_text_path, damaged)
    (damaged / "config.json").write_text("{")
    config = write_config(tiny_config(damaged, tmp_path / "run"), tmp_path / "run.yaml")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("")
    for out in (tmp_path / "new" / "deeper" / "emb", tmp_path / "kept" / "emb"):
        assert _encode(config, ["--prompts", str(prompts)], out) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: --train-config: "), errors
        assert str(damaged / "config.json") in errors[0], errors
    # the folders the command made for --out are gone again, the ones it found are kept
    assert not (tmp_path / "new").exists()
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == ["notes.txt"]


def test_a_batch_and_a_shard_of_one_record_each(run_yaml, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    source = ["--prompts", str(prompts), "--batch-size", "1", "--shard-size", "1"]
    assert _encode(run_yaml, source, tmp_path / "emb") == 0
    assert capsys.readouterr().out.startswith(f"3 captions encoded into 3 new shards in {tmp_path / 'emb'} ")
    assert len(shard_contents(tmp_path / "emb")) == 3


def test_the_command_lines_refused_before_any_work_in_whole_lines(
    tiny_clip_text_path, run_yaml, tmp_path: Path, capsys
) -> None:
    from clipcond.training.run_lock import RunFolderLock

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    missing = DiffusionDataConfig(source="manifest", manifest=str(tmp_path / "none.jsonl"))
    manifest_run = tiny_config(tiny_clip_text_path, tmp_path / "run", data=missing)
    no_manifest = write_config(manifest_run, tmp_path / "manifest.yaml")
    gopher = DiffusionDataConfig(source="webdataset", urls="gopher://host/a.tar")
    gopher_shards = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run", data=gopher), tmp_path / "w.yaml")
    out = str(tmp_path / "emb")
    cases = [
        (
            ["--conditioner", str(run_yaml), "--out", out],
            "give the captions: --prompts, --manifest, --webdataset or --shapes COUNT (or --train-config)",
        ),
        (
            ["--conditioner", str(run_yaml), "--latents", out, "--shapes", "2"],
            "--latents needs --train-config: the run's VAE, image size and (by default) data",
        ),
        (["--train-config", str(no_manifest), "--out", out], f"data.manifest: no such file {tmp_path / 'none.jsonl'}"),
        (
            ["--train-config", str(gopher_shards), "--out", out],
            "data.urls: webdataset has no way to open 'gopher://host/a.tar': no handler for the scheme 'gopher' (it "
            "opens local paths, file://, pipe: and the schemes of webdataset.gopen.gopen_schemes)",
        ),
    ]
    for argv, message in cases:
        assert clipcond(["encode", *argv, "--no-progress"]) == 2, argv
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {message}"], (argv, errors)
    held = RunFolderLock(tmp_path / "emb")
    held.acquire()  # another encode into it, still running
    try:
        assert _encode(run_yaml, ["--prompts", str(prompts)], tmp_path / "emb") == 2
    finally:
        held.release()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: --out: {tmp_path / 'emb'} is in use by another run"), (
        errors
    )


def test_records_that_do_not_fit_the_conditioners_spec_stop_the_command(
    run_yaml, tmp_path: Path, capsys, monkeypatch
) -> None:
    from clipcond import TextConditioner
    from clipcond.records import EncodedPrompt

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    real = TextConditioner.encode_records

    def narrowed(self, prompt):  # one width short: an encoder that is not the one the spec describes
        return [
            EncodedPrompt.from_tensors({name: tensor[..., :-1] for name, tensor in record.tensors().items()})
            for record in real(self, prompt)
        ]

    monkeypatch.setattr(TextConditioner, "encode_records", narrowed)
    empty = caption_hash("")  # the first record written
    for shard_size in ("1", "1000"):  # a shard written once full, and the last one
        out = tmp_path / f"emb{shard_size}"
        assert _encode(run_yaml, ["--prompts", str(prompts), "--shard-size", shard_size], out) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: stopped, the shards written kept: the caption of hash {empty}: `clip_tokens` has shape "
            f"(1, 77, 31), expected (windows, 77, 32); shard {out / 'embeddings-000000.safetensors'} was not written"
        ]
        assert list(out.glob("*.safetensors")) == []


def test_a_run_config_whose_vae_cannot_be_read_is_named_by_its_option(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "no_vae").mkdir()
    run = dataclasses.replace(tiny_config(tiny_clip_text_path, tmp_path / "run"), vae=str(tmp_path / "no_vae"))
    config = write_config(run, tmp_path / "run.yaml")
    assert clipcond(["encode", "--train-config", str(config), "--latents", str(tmp_path / "lat"), "--shapes", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --train-config: vae: no AutoencoderKL at {tmp_path / 'no_vae'} (expected config.json or vae/)"
    ]
    assert not (tmp_path / "lat").exists()


def test_a_run_config_or_a_model_index_that_cannot_be_read_is_one_error_line(tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    config = tmp_path / "run.yaml"
    config.write_text("steps: 1\nstep: 2\n")
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than Python's stack
    for option, source, start in [
        ("--train-config", config, f"error: {config}: key `step`: unknown key for TrainDiffusionConfig; "),
        ("--pipeline", folder, f"error: --pipeline {folder}: model_index.json: maximum recursion depth exceeded"),
    ]:
        argv = ["encode", option, str(source), "--prompts", str(prompts), "--out", str(tmp_path / "emb")]
        assert clipcond(argv) == 2, option
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(start), errors
    assert not (tmp_path / "emb").exists()
