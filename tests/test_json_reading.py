"""Large JSON documents (a CLIP `tokenizer.json`) are parsed with the cyclic garbage collector
paused (clipcond/json_reading.py): the same values as `json.loads`, no collection during the
parse, the collector's state restored afterwards, also after an error; and the two checks that
parse a tokenizer's JSON on every load (the folder check, the BPE tables check) go through it.
The time it saves is measured by benchmarks/bench_load.py, not asserted here."""

from __future__ import annotations

import gc
import json

import pytest

from clipcond.bpe_tables import unmade_tokens
from clipcond.file_damage import damaged_files
from clipcond.json_reading import collector_paused, read_json_with_collector_paused
from clipcond.lab.loading import check_loadable
from clipcond.tokenization import clip_tokenizer

# 60,000 two-element lists, as a tokenizer.json's merges are written
MERGES = json.dumps({"model": {"merges": [[f"a{index}", "b"] for index in range(60_000)]}})


@pytest.fixture
def collections():
    """The generations of the collections the cyclic collector runs while the test runs."""
    seen: list[int] = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)


@pytest.fixture
def parses(monkeypatch) -> list[tuple[int, bool]]:
    """(length of the text, whether the collector was on) of every `json.loads` while the test
    runs (`json.load` goes through it too)."""
    seen: list[tuple[int, bool]] = []
    plain = json.loads

    def recording(text, *args, **kwargs):
        seen.append((len(text), gc.isenabled()))
        return plain(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", recording)
    return seen


def test_the_value_is_json_loads_and_no_collection_runs_while_it_is_used(collections) -> None:
    states = []

    def use(value):
        states.append(gc.isenabled())
        return value

    assert gc.isenabled()
    assert read_json_with_collector_paused(MERGES, use) == json.loads(MERGES)
    assert states == [False] and gc.isenabled()
    collections.clear()
    read_json_with_collector_paused(MERGES, len)
    assert collections == []
    json.loads(MERGES)  # the reference: a plain parse of the same text runs the collector
    assert collections != []


def test_the_collector_is_restored_after_an_error_and_left_off_when_it_was_off() -> None:
    with pytest.raises(json.JSONDecodeError):
        read_json_with_collector_paused(MERGES[:-1], len)
    assert gc.isenabled()

    def failing(value):
        raise RuntimeError("use failed")

    with pytest.raises(RuntimeError, match="use failed"):
        read_json_with_collector_paused(MERGES, failing)
    assert gc.isenabled()
    gc.disable()
    try:
        assert read_json_with_collector_paused("[1]", len) == 1
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_load_checks_parse_a_tokenizers_json_with_the_collector_paused(tmp_path, parses) -> None:
    """The folder check's parse of tokenizer.json, the BPE check's parse of the loaded
    tokenizer's state and the lab's check of a model folder: each large document is parsed
    with the collector off."""
    tokenizer = clip_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert damaged_files(tmp_path, ["tokenizer"], None, safetensors=True) == []
    assert unmade_tokens(tokenizer) == []
    check_loadable(tmp_path / "tokenizer", "the lab's model")  # every JSON file of a model folder
    large = [enabled for length, enabled in parses if length > 1_000_000]
    assert large == [False, False, False]  # tokenizer.json, the backend's state, tokenizer.json


def test_collector_paused_pauses_restores_and_leaves_it_off_when_it_was_off() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("inside")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_tokenizer_loaders_read_transformers_files_with_the_collector_paused(tmp_path, parses) -> None:
    """transformers parses tokenizer.json and vocab.json while loading a tokenizer: a conditioner
        YAML's loader and train-diffusion's frozen CLIP loader run that load with the collector off,
    through `load_saved_tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from clipcond.conditioner_config import EncoderSource
    from clipcond.encoder_loading import load_tokenizer
    from clipcond.tokenization import load_saved_tokenizer
    from clipcond.training.diffusion.frozen_encoders import load_text_encoder_tokenizer

    clip_tokenizer().save_pretrained(tmp_path / "tokenizer")
    tower = CLIPTextModel(
        CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    )
    for load in (
        lambda: load_saved_tokenizer(tmp_path / "tokenizer"),
        lambda: load_tokenizer(EncoderSource(path=str(tmp_path / "tokenizer")), "clip"),
        lambda: load_text_encoder_tokenizer(str(tmp_path), tower),
    ):
        parses.clear()
        assert load()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        large = [enabled for length, enabled in parses if length > 500_000]
        assert len(large) >= 2 and not any(large)  # tokenizer.json and vocab.json at least
    assert gc.isenabled()


def test_a_saved_pipeline_loads_its_tokenizer_with_the_collector_paused_and_restores_it(
    tmp_path, monkeypatch, parses
) -> None:
    from diffusers import DiffusionPipeline
    from tiny_pipelines import sd_components

    from clipcond.pipelines import CLIPConditionedPipeline

    CLIPConditionedPipeline(**sd_components()).save_pretrained(tmp_path / "pipe")
    pipe = CLIPConditionedPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    large = [enabled for length, enabled in parses if length > 500_000]
    assert len(large) >= 2 and not any(large)  # the folder check's and transformers' parses of large files
    assert gc.isenabled()

    def failing(*args, **kwargs):
        assert not gc.isenabled()
        raise OSError("a component could not be read")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", failing)
    with pytest.raises(OSError, match="could not be read"):
        CLIPConditionedPipeline.from_pretrained(tmp_path / "pipe")
    assert gc.isenabled()
