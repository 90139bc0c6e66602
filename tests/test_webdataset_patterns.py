"""Webdataset shards named as users write them: a brace pattern, '::'-joined patterns, a list
of them or one path; a pattern that matches no shard is an error before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from shards import captions_of, write_shards

from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.clip.loop import train_clip
from clipcond.training.clip.random_init import init_clip
from clipcond.training.data import DataConfig, SkipCounter, shard_urls, webdataset_captions, webdataset_samples

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = str(REPO / "configs" / "models" / "clip-tiny.yaml")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """``train-000000..000002.tar`` and ``extra-000000..000001.tar``, 4 samples each."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, "train", 3)
    write_shards(folder, "extra", 2)
    return folder


def _forms(folder: Path) -> dict[str, tuple[str | list[str], list[Path]]]:
    """Each way of naming shards -> (the `urls` value, the shards it names, in order)."""
    train = [folder / f"train-{i:06d}.tar" for i in range(3)]
    extra = [folder / f"extra-{i:06d}.tar" for i in range(2)]
    return {
        "brace pattern": (f"{folder}/train-{{000000..000002}}.tar", train),
        "joined with ::": (
            f"{folder}/train-{{000000..000002}}.tar::{folder}/extra-{{000000..000001}}.tar",
            train + extra,
        ),
        "list of patterns": ([f"{folder}/extra-{{000000..000001}}.tar", str(train[1])], [*extra, train[1]]),
        "one path": (str(train[2]), [train[2]]),
    }


@pytest.mark.parametrize("form", ["brace pattern", "joined with ::", "list of patterns", "one path"])
def test_every_form_reads_the_shards_it_names_in_order(shards: Path, form: str) -> None:
    urls, named = _forms(shards)[form]
    assert shard_urls(urls) == [str(path) for path in named]
    skipped = SkipCounter()
    read = [caption for _, caption in webdataset_samples(urls, skipped)]
    assert read == captions_of(named)
    assert webdataset_captions(urls, SkipCounter()) == captions_of(named)
    assert skipped.total == 0


def test_a_brace_pattern_trains_clip_on_every_shard(shards: Path, tmp_path: Path) -> None:
    """12 samples in 3 shards, 3 steps of 4: one pass over all of them, none skipped."""
    data = DataConfig(source="webdataset", urls=f"{shards}/train-{{000000..000002}}.tar")
    config = TrainClipConfig(
        model=TINY_MODEL, data=data, batch_size=4, steps=3, warmup_steps=1, output_dir=str(tmp_path)
    )
    result = train_clip(config, show_progress=False)
    assert result.steps == 3 and result.skipped == {}


@pytest.mark.parametrize(
    "pattern,message",
    [
        ("missing-{000000..000002}.tar", r"no shard matches '.*missing-\{000000\.\.000002\}\.tar'"),
        ("train-{000000..000005}.tar", r"3 of the 6 shards of '.*train-\{000000\.\.000005\}\.tar' do not exist"),
        ("train-000000.tar::gone.tar", r"no shard matches '.*gone\.tar'"),
    ],
)
def test_a_pattern_without_its_shards_fails_before_any_work(
    shards: Path, tmp_path: Path, pattern: str, message: str
) -> None:
    urls = "::".join(f"{shards}/{part}" for part in pattern.split("::"))
    with pytest.raises(FileNotFoundError, match=message):
        shard_urls(urls)
    data = DataConfig(source="webdataset", urls=[urls])
    config = TrainClipConfig(model=TINY_MODEL, data=data, batch_size=4, steps=1, output_dir=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match=rf"data\.urls: {message}"):
        train_clip(config, show_progress=False)
    assert not (tmp_path / "run").exists()


def test_the_training_command_reports_a_missing_shard_in_one_line(tmp_path: Path, capsys) -> None:
    from clipcond.cli import main

    settings = {"model": TINY_MODEL, "data": {"source": "webdataset", "urls": f"{tmp_path}/none-{{0..9}}.tar"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "run")}))
    assert main(["train-clip", "--config", str(path), "--no-progress"]) == 2
    assert "data.urls: no shard matches" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_empty_patterns_are_config_errors() -> None:
    for urls in ("", [], ["train.tar", " "]):
        with pytest.raises(ValueError, match="data.urls"):
            DataConfig(source="webdataset", urls=urls)


def test_the_shipped_webdataset_recipe_reads_its_hundred_shards(tmp_path: Path, monkeypatch) -> None:
    """configs/train/clip-vit-b-32-webdataset.yaml names data/shards/train-{000000..000099}.tar."""
    config = TrainClipConfig.from_yaml(REPO / "configs" / "train" / "clip-vit-b-32-webdataset.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        shard_urls(config.data.urls)
    made = write_shards(Path("data/shards"), "train", 100, per_shard=1)
    assert shard_urls(config.data.urls) == [str(path) for path in made]
    assert webdataset_captions(config.data.urls, SkipCounter()) == captions_of(made, per_shard=1)


def test_eval_clip_takes_shard_patterns(shards: Path, tmp_path: Path, capsys) -> None:
    from clipcond.cli import main

    model = init_clip(TINY_MODEL, tmp_path / "model")
    output = tmp_path / "metrics.json"
    common = ["eval-clip", "--model", str(model), "--images-per-class", "1", "--pairs", "100", "--output", str(output)]
    pattern = f"{shards}/train-{{000000..000002}}.tar::{shards}/extra-000001.tar"
    assert main([*common, "--webdataset", pattern, f"{shards}/extra-000000.tar"]) == 0
    metrics = json.loads(output.read_text())
    assert metrics["retrieval"]["pairs"] == 20.0 and metrics["skipped"] == {}
    assert main([*common, "--webdataset", f"{shards}/nothing-{{0..3}}.tar"]) == 2
    assert re.search(r"--webdataset: no shard matches '.*nothing-\{0\.\.3\}\.tar'", capsys.readouterr().err)


def test_every_rank_of_a_multi_process_run_reads_every_shard(shards: Path, monkeypatch) -> None:
    """Each rank reads every shard and keeps its part of each step (`ImageCaptionBatches`):
    webdataset's node splitter, which refuses a multi-process launch, is not in the way."""
    monkeypatch.setenv("RANK", "1")  # what `accelerate launch` sets in each process
    monkeypatch.setenv("WORLD_SIZE", "2")
    urls, named = _forms(shards)["joined with ::"]
    skipped = SkipCounter()
    assert [caption for _, caption in webdataset_samples(urls, skipped)] == captions_of(named)
    assert webdataset_captions(urls, SkipCounter()) == captions_of(named)
    assert skipped.total == 0
