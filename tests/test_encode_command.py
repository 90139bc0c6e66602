"""``clipcond encode`` and ``train-diffusion`` on its shards (``data.embeddings``): the same
weights as the live frozen encoders, a SIGKILL and resume, stale and missing embeddings, and
bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from forward_counter import record_encoder_runs
from killing import kill_when
from safetensors import safe_open
from test_train_diffusion import tiny_config, unet_weights

from clipcond.cli import main as clipcond
from clipcond.training.data.embedding_shards import (
    EmbeddingShards,
    MissingEmbedding,
    StaleEmbeddings,
    caption_hash,
    shard_path,
    write_shard,
)
from clipcond.training.diffusion.config import DiffusionDataConfig, TrainDiffusionConfig
from clipcond.training.diffusion.loop import train_diffusion
from clipcond.training.diffusion.setup import build_conditioner


def write_config(config: TrainDiffusionConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    return path


def shard_contents(folder: Path, prefix: str = "embeddings") -> dict[str, dict[str, torch.Tensor]]:
    """key (caption or image hash) -> {field: tensor}, over every ``<prefix>-*`` shard of
    `folder` (each key once)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for path in sorted(folder.glob(f"{prefix}-*.safetensors")):
        with safe_open(str(path), framework="pt") as shard:
            for name in shard.keys():
                key, _, field = name.partition(".")
                assert key not in found or field not in found[key], f"{key} twice"
                found.setdefault(key, {})[field] = shard.get_tensor(name)
    return found


def max_weight_difference(a: Path, b: Path) -> float:
    first, second = unet_weights(a), unet_weights(b)
    assert first.keys() == second.keys()
    return max((first[k] - second[k]).abs().max().item() for k in first)


@pytest.mark.parametrize("encoders", ["clip", "clip+t5+projection"])
def test_training_on_encoded_shards_gives_the_weights_of_the_live_encoders(
    encoders: str, tiny_clip_text_path, tiny_t5_encoder_path, tmp_path: Path, monkeypatch
) -> None:
    extra = {}
    if encoders != "clip":  # the projection trains: records are stored before it, so it still learns
        extra = dict(t5_encoder=str(tiny_t5_encoder_path), projection_dim=24, t5_max_length=16)
    settings = dict(steps=4, caption_dropout=0.5, data=DiffusionDataConfig(max_objects=2), **extra)
    live = tiny_config(tiny_clip_text_path, tmp_path / "live", **settings)
    embeddings = DiffusionDataConfig(max_objects=2, embeddings=str(tmp_path / "emb"))
    read = tiny_config(tiny_clip_text_path, tmp_path / "read", **{**settings, "data": embeddings})
    # encoded from the config that reads them, which names the folder before it exists
    config_path = write_config(read, tmp_path / "read.yaml")
    assert (
        clipcond(["encode", "--train-config", str(config_path), "--out", str(tmp_path / "emb"), "--no-progress"]) == 0
    )
    encoder_runs = record_encoder_runs(monkeypatch)
    live_run = train_diffusion(live, show_progress=False)
    assert encoder_runs  # the live run runs the encoders ...
    encoder_runs.clear()
    read_run = train_diffusion(read, show_progress=False)
    assert encoder_runs == []  # ... the run on shards never does (not even for "")
    assert max_weight_difference(live_run.pipeline_dir, read_run.pipeline_dir) <= 1e-6
    if encoders != "clip":
        live_projection = tmp_path / "live" / "checkpoints" / "step-000000004" / "projection.safetensors"
        read_projection = tmp_path / "read" / "checkpoints" / "step-000000004" / "projection.safetensors"
        with safe_open(str(live_projection), "pt") as a, safe_open(str(read_projection), "pt") as b:
            assert all(torch.allclose(a.get_tensor(k), b.get_tensor(k), atol=1e-6, rtol=0) for k in a.keys())


def test_each_distinct_caption_is_encoded_once_with_the_conditioners_identity(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue  square\na red circle\n(a green:1.3) star\na blue square\n")
    out = tmp_path / "emb"
    args = ["encode", "--train-config", str(config), "--prompts", str(prompts), "--out", str(out)]
    assert clipcond([*args, "--batch-size", "2", "--shard-size", "2", "--no-progress"]) == 0
    report = capsys.readouterr().out
    assert "4 captions encoded into 2 new shards" in report and "2 duplicates" in report
    assert "skipped samples: 1 (empty caption: 1)" in report
    captions = ["", "a red circle", "a blue square", "(a green:1.3) star"]
    contents = shard_contents(out)
    assert sorted(contents) == sorted(caption_hash(caption) for caption in captions)
    conditioner = build_conditioner(TrainDiffusionConfig.from_yaml(config))
    expected = conditioner.encode_records(captions)
    for caption, record in zip(captions, expected):
        stored = contents[caption_hash(caption)]
        assert stored.keys() == record.tensors().keys()
        assert all(torch.allclose(stored[k], v, atol=1e-6, rtol=0) for k, v in record.tensors().items())
    weights, settings = conditioner.identity()
    for path in out.glob("embeddings-*.safetensors"):
        with safe_open(str(path), "pt") as shard:
            assert (shard.metadata()["weights"], shard.metadata()["settings"]) == (weights, settings)
    # run again: everything is there, nothing is encoded
    assert clipcond([*args, "--no-progress"]) == 0
    assert "0 captions encoded into 0 new shards" in capsys.readouterr().out
    assert len(list(out.glob("embeddings-*.safetensors"))) == 2


def test_a_pipeline_folder_and_a_conditioner_yaml_encode_as_their_conditioners(sd_pipe, tmp_path: Path) -> None:
    from clipcond import TextConditioner

    sd_pipe.save_pretrained(tmp_path / "sd")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\na (red:1.4) cat BREAK on a mat\n")
    assert (
        clipcond(
            [
                "encode",
                "--pipeline",
                str(tmp_path / "sd"),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "a"),
                "--no-progress",
            ]
        )
        == 0
    )
    conditioner_yaml = tmp_path / "conditioner.yaml"
    conditioner_yaml.write_text(
        yaml.safe_dump(
            {
                "recipe": "sd",
                "clip": [{"path": str(tmp_path / "sd"), "subfolder": "text_encoder"}],
                "parse_weights": False,
            }
        )
    )
    assert (
        clipcond(
            [
                "encode",
                "--conditioner",
                str(conditioner_yaml),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "b"),
                "--no-progress",
            ]
        )
        == 0
    )
    captions = ["", *prompts.read_text().splitlines()]
    for folder, conditioner in (
        ("a", TextConditioner.from_pipeline(sd_pipe)),
        ("b", TextConditioner.from_config(conditioner_yaml)),
    ):
        shards = EmbeddingShards(tmp_path / folder)
        assert (shards.identity.weights, shards.identity.settings) == conditioner.identity()
        for caption, record in zip(captions, conditioner.encode_records(captions)):
            stored = shards.record(caption)
            assert all(torch.allclose(getattr(stored, k), v, atol=1e-6, rtol=0) for k, v in record.tensors().items())
    # the two differ in settings (weights parsed or not): their folders are not interchangeable
    assert (
        EmbeddingShards(tmp_path / "a")
        .identity.difference(EmbeddingShards(tmp_path / "b").identity)
        .startswith("conditioner settings")
    )


def test_a_settings_difference_is_quoted_where_it_is() -> None:
    """A difference late in a long setting (a recipe's repr) is shown around where it is, so
    the two quotes differ (cut from their starts, both read "Recipe(name='sd', ...")."""
    from clipcond.training.data.embedding_shards import EmbeddingIdentity

    long = "Recipe(" + "x" * 300 + ", emphasis='{}')"
    mine = EmbeddingIdentity("w", f"v4|{long.format('a1111')}|parse=True")
    theirs = EmbeddingIdentity("w", f"v4|{long.format('comfy')}|parse=True")
    tail = "x" * 28 + ", emphasis='{}')"
    expected = f"conditioner settings {'...' + tail.format('a1111')!r} instead of {'...' + tail.format('comfy')!r}"
    assert mine.difference(theirs) == expected


@pytest.mark.slow(
    reason="two fresh processes (~19 s): the default run resumes an encode in process "
    "(test_one_shard_of_another_identity_or_format_is_named_to_remove_and_encoding_resumes)"
)
def test_sigkill_and_resume_give_every_caption_once_with_the_conditioners_records(
    tiny_clip_text_path, tmp_path: Path
) -> None:
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    captions = [f"caption number {i} with a {'red blue green'.split()[i % 3]} shape" for i in range(600)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(captions) + "\n")

    def command(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "clipcond.training.encode_command", "--train-config", str(config),
            "--prompts", str(prompts), "--out", str(out), "--batch-size", "10", "--shard-size", "20", "--no-progress",
        ]  # fmt: skip

    def two_shards() -> str | None:
        written = sorted((tmp_path / "killed").glob("embeddings-*.safetensors"))
        return f"{len(written)} shards" if len(written) >= 2 else None

    # one torch thread: on a shared 2-core machine two threads wait on each other (20x slower)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed_at = kill_when(command(tmp_path / "killed"), two_shards, env)
    before = shard_contents(tmp_path / "killed")
    assert 40 <= len(before) < len(captions) + 1, killed_at  # killed midway, finished shards kept whole
    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(captions) + 1 - len(before)} captions encoded" in resumed.stdout
    got = shard_contents(tmp_path / "killed")
    everything = ["", *captions]
    assert sorted(got) == sorted(caption_hash(c) for c in everything)  # each once (shard_contents checks)
    assert all(torch.equal(before[k]["clip_tokens"], got[k]["clip_tokens"]) for k in before)  # not rewritten
    # what an uninterrupted encode makes: the conditioner's records
    conditioner = build_conditioner(TrainDiffusionConfig.from_yaml(config))
    for caption, record in zip(everything, conditioner.encode_records(everything)):
        assert torch.allclose(got[caption_hash(caption)]["clip_tokens"], record.clip_tokens, atol=1e-6, rtol=0)
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_stale_shards_are_refused_before_any_step(tiny_clip_text_path, tmp_path: Path, capsys) -> None:
    from tiny_pipelines import clip_text_model, clip_tokenizer

    other = tmp_path / "other_clip"
    clip_text_model(12).save_pretrained(other)  # same architecture, other weights
    clip_tokenizer().save_pretrained(other)
    encoded = write_config(tiny_config(other, tmp_path / "x"), tmp_path / "other.yaml")
    assert clipcond(["encode", "--train-config", str(encoded), "--out", str(tmp_path / "emb"), "--no-progress"]) == 0
    config = tiny_config(
        tiny_clip_text_path, tmp_path / "run", data=DiffusionDataConfig(embeddings=str(tmp_path / "emb"))
    )
    with pytest.raises(StaleEmbeddings, match=r"embeddings-000000.safetensors was encoded with encoder weights"):
        train_diffusion(config, show_progress=False)
    assert not (tmp_path / "run").exists()
    # through the command: a one-line error, exit 2
    assert clipcond(["train-diffusion", "--config", str(write_config(config, tmp_path / "run.yaml"))]) == 2
    assert "stale" in capsys.readouterr().err
    # and encoding into that folder with other weights is refused, leaving it as it was
    before = sorted(p.name for p in (tmp_path / "emb").iterdir())
    mine = write_config(tiny_config(tiny_clip_text_path, tmp_path / "y"), tmp_path / "mine.yaml")
    assert clipcond(["encode", "--train-config", str(mine), "--out", str(tmp_path / "emb"), "--no-progress"]) == 2
    assert "--out: " in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == before


def test_a_missing_caption_stops_the_run_naming_its_hash_and_the_folder(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a caption the run never reads\n")
    config = tiny_config(
        tiny_clip_text_path, tmp_path / "run", data=DiffusionDataConfig(embeddings=str(tmp_path / "emb"))
    )
    config_path = write_config(config, tmp_path / "run.yaml")
    assert (
        clipcond(
            [
                "encode",
                "--train-config",
                str(config_path),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "emb"),
                "--no-progress",
            ]
        )
        == 0
    )
    with pytest.raises(MissingEmbedding) as missing:
        train_diffusion(config, show_progress=False)
    from clipcond.shapes import ShapesStream

    step_0 = [ShapesStream(0, 16, 1, 1, "train").sample(i).caption for i in range(config.batch_size)]
    named = re.search(r"caption '(.*)' \(hash ([0-9a-f]{64})\) is not in (\S+);", str(missing.value))
    assert named is not None, missing.value
    assert named[1] in step_0 and caption_hash(named[1]) == named[2] and named[3] == str(tmp_path / "emb")
    import shutil

    shutil.rmtree(tmp_path / "run")
    assert clipcond(["train-diffusion", "--config", str(config_path), "--no-progress"]) == 1
    assert "is not in" in capsys.readouterr().err


def test_bad_input_is_refused_before_any_work(tiny_clip_text_path, tmp_path: Path, capsys) -> None:
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    (tmp_path / "file").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    base = ["encode", "--train-config", str(config), "--no-progress"]
    cases = {
        "--batch-size": [*base, "--prompts", str(prompts), "--out", str(tmp_path / "o"), "--batch-size", "0"],
        "--shard-size": [*base, "--prompts", str(prompts), "--out", str(tmp_path / "o"), "--shard-size", "0"],
        "not a folder": [*base, "--prompts", str(prompts), "--out", str(tmp_path / "file")],
        f"--out {tmp_path / 'file' / 'o'}: {tmp_path / 'file'} is a file, not a folder": [
            *base,
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "file" / "o"),
        ],
        "prompt file not found": [*base, "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")],
        "not UTF-8": [*base, "--prompts", str(tmp_path / "latin1.txt"), "--out", str(tmp_path / "o")],
        "--manifest": [*base, "--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")],
        "no shard matches": [*base, "--webdataset", str(tmp_path / "x-{0..1}.tar"), "--out", str(tmp_path / "o")],
        "--shapes": [*base, "--shapes", "0", "--out", str(tmp_path / "o")],
        "--train-config: no such file": ["encode", "--train-config", str(tmp_path / "no.yaml"), "--out", "o"],
        "--pipeline: no such folder": [
            "encode",
            "--pipeline",
            str(tmp_path / "none"),
            "--prompts",
            str(prompts),
            "--out",
            "o",
        ],
        "give the captions": ["encode", "--conditioner", str(tmp_path / "file"), "--out", str(tmp_path / "o")],
        "--device: 'bogus' is not a device": [
            *base,
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "bogus",
        ],
        "--device: 'meta' is not a device that computes": [
            *base,
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "meta",
        ],
    }
    if not torch.cuda.is_available():  # torch raised AssertionError for CUDA it was built without: a traceback
        cases["--device: 'cuda' is not a device"] = [*base, "--prompts", str(prompts), "--out", "o", "--device", "cuda"]
    for expected, argv in cases.items():
        assert clipcond(argv) == 2, expected
        assert expected in capsys.readouterr().err, expected
    assert not (tmp_path / "o").exists()
    # the run config's data.embeddings is checked with its other files
    bad = tiny_config(
        tiny_clip_text_path, tmp_path / "r", data=DiffusionDataConfig(embeddings=str(tmp_path / "nowhere"))
    )
    assert clipcond(["train-diffusion", "--config", str(write_config(bad, tmp_path / "bad.yaml"))]) == 2
    assert "data.embeddings: no such folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="data.embeddings must be a folder path"):
        DiffusionDataConfig(embeddings=" ")


def test_a_folder_another_encode_fills_is_refused_before_any_weight_loads(
    tiny_clip_text_path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The --out lock is taken before the conditioner's weights load (they loaded first, and a
    large encoder was read in full before the refusal); a folder the command made and an error
    left empty is removed again, its missing parents with it."""
    from clipcond.training import encode_command
    from clipcond.training.run_lock import RunFolderLock

    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    loads = []
    real_conditioner = encode_command._conditioner
    monkeypatch.setattr(encode_command, "_conditioner", lambda *a: loads.append(a) or real_conditioner(*a))
    base = ["encode", "--train-config", str(config), "--prompts", str(prompts), "--no-progress"]
    held = RunFolderLock(tmp_path / "busy")
    held.acquire()  # another encode into it, still running
    try:
        assert clipcond([*base, "--out", str(tmp_path / "busy")]) == 2
    finally:
        held.release()
    assert "is in use by another run (pid" in capsys.readouterr().err and loads == []
    monkeypatch.setattr(encode_command, "_conditioner", lambda *a: (_ for _ in ()).throw(ValueError("no weights")))
    with pytest.raises(ValueError, match="no weights"):
        clipcond([*base, "--out", str(tmp_path / "new" / "deeper" / "emb")])
    assert not (tmp_path / "new").exists()


def test_shards_are_written_once_and_readers_see_only_finished_ones(tiny_clip_text_path, tmp_path: Path) -> None:
    from clipcond.training.data.embedding_shards import EmbeddingIdentity, EmbeddingShardError

    conditioner = build_conditioner(tiny_config(tiny_clip_text_path, tmp_path / "run"))
    identity = EmbeddingIdentity(*conditioner.identity())
    record = conditioner.encode_records("a red circle")[0]
    with pytest.raises(EmbeddingShardError, match="no embedding shard"):
        EmbeddingShards(tmp_path)
    write_shard(tmp_path, 0, {caption_hash("a red circle"): record}, identity)
    with pytest.raises(FileExistsError):
        write_shard(tmp_path, 0, {caption_hash("a blue square"): record}, identity)
    with pytest.raises(ValueError, match="caption_hash"):
        write_shard(tmp_path, 1, {"a red circle": record}, identity)
    (tmp_path / ".embeddings-000001.safetensors.123.abcd.tmp").write_bytes(b"half a shard")
    shards = EmbeddingShards(tmp_path, identity)
    assert len(shards) == 1 and shards.next_index == 1
    assert torch.equal(shards.record("a red circle").clip_tokens, record.clip_tokens)
    shard_path(tmp_path, 1).write_bytes(b"not a shard")
    with pytest.raises(EmbeddingShardError, match="not a readable embedding shard") as refused:
        EmbeddingShards(tmp_path, identity)
    assert str(refused.value).endswith(
        f"; delete embeddings-000001.safetensors and run `clipcond encode` into {tmp_path} again (it encodes only "
        "what the folder lacks)"
    )


def test_a_reader_keeps_a_bounded_number_of_shards_open(tiny_clip_text_path, tmp_path: Path, monkeypatch) -> None:
    from clipcond.training.data import embedding_shards
    from clipcond.training.data.embedding_shards import EmbeddingIdentity

    conditioner = build_conditioner(tiny_config(tiny_clip_text_path, tmp_path / "run"))
    identity = EmbeddingIdentity(*conditioner.identity())
    captions = ["a red circle", "a blue square", "a green star"]
    records = conditioner.encode_records(captions)
    for index, (caption, record) in enumerate(zip(captions, records)):
        write_shard(tmp_path, index, {caption_hash(caption): record}, identity)
    monkeypatch.setattr(embedding_shards, "_OPEN_SHARDS", 2)
    shards = EmbeddingShards(tmp_path, identity)
    for caption, record in [*zip(captions, records), *zip(captions[::-1], records[::-1])]:
        assert torch.equal(shards.record(caption).clip_tokens, record.clip_tokens)
        assert len(shards._open) <= 2


# a run that reads captions as a pipeline reads prompts (what `encode --pipeline` encodes with)
AS_PIPELINE = {"caption_syntax": True, "caption_window_split": "word"}


def test_pipelines_clipcond_saved_encode_what_a_run_on_them_reads(tiny_clip_text_path, tmp_path: Path) -> None:
    """A train-diffusion result and the bundled shapes model are CLIPConditionedPipelines, whose
    tokenizer is clipcond's: `encode --pipeline` reads them as `generate` does (diffusers alone
    cannot), and a run whose text encoder is that folder reads the shards back: the records of
    its own conditioner, and the weights of the run with the live encoder. The runs read their
    captions as a pipeline reads prompts (`caption_syntax`, `caption_window_split: word`), which
    is what `--pipeline` encodes with."""
    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL
    from clipcond.training.data import CaptionSource, DataConfig
    from clipcond.training.data.embedding_shards import EmbeddingIdentity

    trained = train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "first", steps=1), show_progress=False)
    captions = ["", *CaptionSource(DataConfig(source="shapes"), seed=0, heldout_count=0).first(4)]
    for name, pipeline in (("trained", trained.pipeline_dir), ("bundled", BUNDLED_MODEL)):
        out = tmp_path / f"emb-{name}"
        argv = ["encode", "--pipeline", str(pipeline), "--shapes", "4", "--out", str(out), "--no-progress"]
        assert clipcond(argv) == 0, name
        read = tiny_config(
            pipeline, tmp_path / f"read-{name}", steps=1, data=DiffusionDataConfig(embeddings=str(out)), **AS_PIPELINE
        )
        conditioner = build_conditioner(read)
        shards = EmbeddingShards(out, EmbeddingIdentity(*conditioner.identity()), spec=conditioner.record_spec)
        assert len(shards) == len(set(captions)), name
        for caption, live in zip(captions, conditioner.encode_records(captions)):
            stored = shards.record(caption)
            assert stored.tensors().keys() == live.tensors().keys()
            assert all(torch.equal(getattr(stored, k), v) for k, v in live.tensors().items()), (name, caption)
    # a run that reads captions its own way (literal, truncated: the defaults) is told which keys to set
    with pytest.raises(StaleEmbeddings, match="set caption_syntax: true and caption_window_split: word to use them"):
        train_diffusion(
            tiny_config(
                trained.pipeline_dir,
                tmp_path / "defaults",
                steps=1,
                data=DiffusionDataConfig(embeddings=str(tmp_path / "emb-trained")),
            ),
            show_progress=False,
        )
    # a run on the trained pipeline's shards: the weights of the run with its live encoder
    live_run = train_diffusion(
        tiny_config(trained.pipeline_dir, tmp_path / "live", steps=1, **AS_PIPELINE), show_progress=False
    )
    shards_config = DiffusionDataConfig(embeddings=str(tmp_path / "emb-trained"))
    read_run = train_diffusion(
        tiny_config(trained.pipeline_dir, tmp_path / "read", steps=1, data=shards_config, **AS_PIPELINE),
        show_progress=False,
    )
    assert max_weight_difference(live_run.pipeline_dir, read_run.pipeline_dir) <= 1e-6


def test_a_folder_that_is_no_pipeline_is_a_one_line_error_naming_the_option(tmp_path: Path, capsys) -> None:
    import shutil

    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL

    def copy(name: str) -> Path:
        return Path(shutil.copytree(BUNDLED_MODEL, tmp_path / name))

    (tmp_path / "run" / "pipeline").mkdir(parents=True)
    garbled = copy("garbled")
    (garbled / "model_index.json").write_text("{garbage")
    unknown = copy("unknown")
    index = json.loads((unknown / "model_index.json").read_text())
    (unknown / "model_index.json").write_text(json.dumps({**index, "_class_name": "FooPipeline"}))
    truncated = copy("truncated")
    weights = truncated / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    cases = {
        truncated: "Error while deserializing header",
        unknown: "model_index.json names the pipeline class 'FooPipeline', which --pipeline cannot read",
        garbled: "model_index.json: Expecting property name",
        tmp_path / "run": "no model_index.json: not a saved pipeline (a run: use its pipeline/)",
    }
    for folder, expected in cases.items():
        argv = ["encode", "--pipeline", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "o")]
        assert clipcond([*argv, "--no-progress"]) == 2, folder
        error = capsys.readouterr().err.strip().splitlines()
        assert error[-1].startswith(f"error: --pipeline {folder}: ") and expected in error[-1], error[-1]
        assert not any("Traceback" in line for line in error)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_diffusers_folder_with_clipconds_tokenizer_encodes_in_a_fresh_process(sd_pipe, tmp_path: Path) -> None:
    """diffusers loads a component's library only once its module is imported: in a process that
    has not imported clipcond's pipelines, a folder naming `clipcond.tokenization` failed."""
    sd_pipe.save_pretrained(tmp_path / "sd")
    assert json.loads((tmp_path / "sd" / "model_index.json").read_text())["tokenizer"][0] == "clipcond.tokenization"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\n")
    command = [
        sys.executable, "-m", "clipcond.training.encode_command", "--pipeline", str(tmp_path / "sd"),
        "--prompts", str(prompts), "--out", str(tmp_path / "emb"), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    from clipcond import TextConditioner

    conditioner = TextConditioner.from_pipeline(sd_pipe)
    shards = EmbeddingShards(tmp_path / "emb")
    assert (shards.identity.weights, shards.identity.settings) == conditioner.identity()
    live = conditioner.encode_records(["", "a lighthouse at dusk"])
    for caption, record in zip(["", "a lighthouse at dusk"], live):
        assert torch.allclose(shards.record(caption).clip_tokens, record.clip_tokens, atol=1e-6, rtol=0)


def test_a_saved_img2img_or_inpainting_pipeline_encodes_as_its_text_to_image_form(tmp_path: Path) -> None:
    """`--pipeline` on a saved CLIPConditioned img2img or inpainting folder: the same shards as on
    the text-to-image folder of the same components (it was refused: a class --pipeline could
    not read)."""
    import importlib

    import tiny_pipelines
    from safetensors.torch import load_file

    from clipcond.pipelines import CLIPConditionedPipeline
    from clipcond.pipelines.saved_pipelines import SAVED_PIPELINE_CLASSES

    sd = tiny_pipelines.build_sd()
    shards = {}
    for name in SAVED_PIPELINE_CLASSES:
        task = getattr(importlib.import_module("clipcond.pipelines"), name)  # `clipcond` is the command here
        assert issubclass(task, CLIPConditionedPipeline)
        task.from_pipe(sd).save_pretrained(tmp_path / name)
        out = tmp_path / f"emb-{name}"
        argv = ["encode", "--pipeline", str(tmp_path / name), "--shapes", "3", "--out", str(out), "--no-progress"]
        assert clipcond(argv) == 0, name
        shards[name] = load_file(str(out / "embeddings-000000.safetensors"))
    first, *others = shards.values()
    for other in others:
        assert first.keys() == other.keys() and all(torch.equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_out_is_refused_rather_than_read_as_the_current_folder(
    empty: str, tiny_clip_text_path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`--out "$EMB"` with EMB unset: a usage error naming --out, and nothing written in the
    current folder (it was Path("") == ".": the shards landed beside the user's files)."""
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["encode", "--train-config", str(config), "--prompts", str(prompts), "--out", empty, "--no-progress"]
    assert clipcond(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: --out: expected a folder path, got {empty!r}"
    assert list(cwd.iterdir()) == []


def test_a_tilde_in_out_is_the_home_folder_where_the_shards_go(
    tiny_clip_text_path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`--out=~/emb` (the shell leaves a ~ after = as typed): the shards go to $HOME/emb, as the
    check read it; they went to a folder literally named ~ in the current folder."""
    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    argv = ["encode", "--train-config", str(config), "--prompts", str(prompts), "--out=~/emb", "--no-progress"]
    assert clipcond(argv) == 0
    assert f"in {home / 'emb'} " in capsys.readouterr().out
    assert sorted(caption_hash(c) for c in ("", "a red circle")) == sorted(shard_contents(home / "emb"))
    assert list(cwd.iterdir()) == []


def test_a_broken_symlink_as_out_or_latents_is_refused_before_any_work(
    tiny_clip_text_path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`--out` (or `--latents`, or a folder above either) a symlink to nothing: a one-line usage
    error naming the link, before the encoders are loaded (it was a FileExistsError traceback
    from creating the folder, after they were). `check_output_location` decides, for every
    command that writes a file or folder."""
    from clipcond.errors import UsageError
    from clipcond.output_paths import check_new_file, check_output_location
    from clipcond.training.diffusion import setup

    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")

    def no_loading(*args, **kwargs):
        raise AssertionError("the encoders were loaded")

    monkeypatch.setattr(setup, "build_conditioner", no_loading)
    monkeypatch.setattr(setup, "load_vae", no_loading)
    base = ["encode", "--train-config", str(config), "--no-progress"]
    for option, folder, link in (
        ("--out", dangling, dangling),
        ("--out", dangling / "emb", dangling),
        ("--out", tmp_path / "loop", tmp_path / "loop"),
        ("--latents", dangling, dangling),
    ):
        source = ["--prompts", str(prompts)] if option == "--out" else ["--shapes", "2"]
        assert clipcond([*base, *source, option, str(folder)]) == 2, folder
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: {option} {folder}: {link} is a broken symlink (it points to "), error
        assert "\n" not in error
    assert not (tmp_path / "nowhere").exists()
    for check in (lambda: check_output_location(dangling, "-o"), lambda: check_new_file(dangling, "-o", force=True)):
        with pytest.raises(UsageError, match=f"{dangling} is a broken symlink .* which is not there"):
            check()
    assert check_output_location(tmp_path / "new" / "emb", "-o") == tmp_path / "new" / "emb"  # a plain missing path


def test_one_shard_of_another_identity_or_format_is_named_to_remove_and_encoding_resumes(
    tiny_clip_text_path, tmp_path: Path, capsys
) -> None:
    """A shard whose `weights` or `format` metadata was damaged, beside shards of the reader's:
    the folder is refused naming that shard to remove, then `encode` resumes and the folder
    reads whole. It was refused as stale ("encode again into an empty folder"), or with no
    remedy for the format, though only that shard was wrong."""
    from safetensors.torch import load_file, save_file

    from clipcond.training.data.embedding_shards import EmbeddingIdentity, EmbeddingShardError

    config = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "run.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green star\na red square\n")
    identity = EmbeddingIdentity(*build_conditioner(TrainDiffusionConfig.from_yaml(config)).identity())

    def encode(folder: Path) -> list[str]:
        argv = ["encode", "--train-config", str(config), "--prompts", str(prompts), "--out", str(folder)]
        status = clipcond([*argv, "--shard-size", "2", "--no-progress"])
        captured = capsys.readouterr()
        return [str(status), captured.out, captured.err.strip().splitlines()[-1] if captured.err.strip() else ""]

    def damage(path: Path, key: str, value: str) -> None:
        with safe_open(str(path), "pt") as shard:
            metadata = shard.metadata()
        save_file(load_file(str(path)), str(path), metadata={**metadata, key: value})

    for key in ("weights", "format"):
        folder = tmp_path / f"emb-{key}"
        assert encode(folder)[0] == "0"
        whole = shard_contents(folder)
        assert len(whole) == 5 and len(list(folder.glob("embeddings-*"))) == 3
        damaged = shard_path(folder, 1)
        damage(damaged, key, identity.weights[::-1] if key == "weights" else "clipcond-caption-embeddingz-v1")
        remedy = (
            "remove embeddings-000001.safetensors from the folder and run `clipcond encode` into it again (it "
            "encodes only the captions the folder lacks)"
        )
        for expected in (identity, None):  # a reader's identity, or the folder's own (most shards')
            with pytest.raises(EmbeddingShardError) as refused:
                EmbeddingShards(folder, expected)
            message = str(refused.value)
            assert message.startswith(f"embeddings: {damaged} ") and message.endswith(remedy), message
            assert f"unlike the other 2 shards in {folder}" in message and not isinstance(
                refused.value, StaleEmbeddings
            )
        status, _, error = encode(folder)  # encode into it is refused the same way
        assert status == "2" and error.startswith(f"error: --out: {folder}: {damaged} ") and remedy in error
        damaged.unlink()  # as the message says
        status, report, _ = encode(folder)
        assert status == "0" and report.startswith("2 captions encoded into 1 new shard")
        resumed = shard_contents(folder)
        assert resumed.keys() == whole.keys()
        assert all(torch.equal(resumed[k]["clip_tokens"], whole[k]["clip_tokens"]) for k in whole)
        assert len(EmbeddingShards(folder, identity)) == 5


def test_an_encoder_read_as_another_class_is_named_as_such() -> None:
    """The same train-clip folder read as CLIPTextModelWithProjection (a conditioner YAML) and as
    CLIPTextModel (train-diffusion): the weights hashes differ (the projection), but the message
    names the class, not a changed model."""
    from clipcond.training.data.embedding_shards import EmbeddingIdentity

    settings = "v4|Recipe(name='sd')|parse=False|{}:77:False:sdpa:computes_in=None:tokenizer=t:config=c"
    mine = EmbeddingIdentity("w1", settings.format("CLIPTextModelWithProjection"))
    theirs = EmbeddingIdentity("w2", settings.format("CLIPTextModel"))
    assert mine.difference(theirs).startswith("encoder classes CLIPTextModelWithProjection instead of CLIPTextModel")
    assert EmbeddingIdentity("w1", settings.format("X")).difference(EmbeddingIdentity("w2", settings.format("X"))) == (
        "encoder weights w1... instead of w2..."
    )
