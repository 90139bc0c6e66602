"""T5 pretraining: span corruption, the caption tokenizer, the loop end to end (a tiny T5 on the
shapes stream), resume exactness, and the saved encoder inside a conditioner."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from clipcond.shapes import ShapesStream
from clipcond.training.data import CaptionSource, DataConfig
from clipcond.training.t5.config import T5ModelSettings, T5TokenizerSettings, TrainT5Config
from clipcond.training.t5.loop import build_t5, train_t5
from clipcond.training.t5.span_corruption import (
    IGNORE_INDEX,
    SpanCorruption,
    corrupt_spans,
    max_spans,
    noise_mask,
    span_counts,
)
from clipcond.training.t5.tokenizer import sentinel_ids, sentinel_token, train_t5_tokenizer

REPO = Path(__file__).resolve().parents[1]
SENTINELS = tuple(range(1000, 1032))
EOS = 1


def tiny_config(output_dir: Path, **overrides) -> TrainT5Config:
    settings = dict(
        model=T5ModelSettings(
            d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, relative_attention_num_buckets=8
        ),
        tokenizer=T5TokenizerSettings(vocab_size=256, sentinels=8, train_captions=400, max_length=32),
        data=DataConfig(source="shapes", min_objects=1, max_objects=2),
        batch_size=8,
        steps=3,
        lr=3e-3,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        eval_captions=16,
        output_dir=str(output_dir),
    )
    settings.update(overrides)
    return TrainT5Config(**settings)


def reconstruct(inputs: list[int], targets: list[int], sentinels: tuple[int, ...]) -> list[int]:
    """Undo span corruption: put each span of the target back in place of its sentinel."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans: dict[int, list[int]] = {}
    current = None
    for token in targets[:-1]:
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            assert current is not None, "the target must start with a sentinel"
            spans[current].append(token)
    restored = []
    for token in inputs[:-1]:
        restored.extend(spans.pop(token) if token in sentinels else [token])
    assert not spans, "every span of the target has a sentinel in the input"
    return restored


# ---------------------------------------------------------------- span corruption


def test_span_corruption_reconstructs_the_caption_and_uses_one_sentinel_per_span() -> None:
    corruption = SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=0)
    rng = np.random.default_rng(0)
    for key in range(300):
        ids = [int(x) for x in rng.integers(3, 900, size=int(rng.integers(0, 60)))]
        inputs, targets = corruption.corrupt(ids, key)
        assert reconstruct(inputs, targets, SENTINELS) == ids
        mask = noise_mask(len(ids), 0.15, 3.0, corruption.rng(key))
        runs = int(mask[:1].sum()) + int((mask[1:] & ~mask[:-1]).sum())
        noise, spans = span_counts(len(ids), 0.15, 3.0)
        assert (int(mask.sum()), runs) == (noise, spans)
        used = [t for t in inputs if t in SENTINELS]
        assert used == list(SENTINELS[:spans]) == [t for t in targets if t in SENTINELS]
        assert len(inputs) == len(ids) - noise + spans + 1 and len(targets) == noise + spans + 1


def test_noise_fraction_and_span_length_follow_the_settings() -> None:
    rng = np.random.default_rng(1)
    noise_total = length_total = spans_total = 0
    for key in range(2000):
        length = int(rng.integers(20, 200))
        mask = noise_mask(length, 0.15, 3.0, np.random.default_rng(key))
        noise_total += int(mask.sum())
        length_total += length
        spans_total += int(mask[:1].sum()) + int((mask[1:] & ~mask[:-1]).sum())
        assert int(mask.sum()) == round(length * 0.15)
    assert abs(noise_total / length_total - 0.15) < 0.005
    assert abs(noise_total / spans_total - 3.0) < 0.1
    # the edges: nothing to drop, one token, two tokens (one kept)
    assert span_counts(0, 0.15, 3.0) == (0, 0)
    assert span_counts(1, 0.15, 3.0) == (1, 1)
    assert span_counts(2, 0.5, 1.0) == (1, 1)
    assert max_spans(64, 0.15, 3.0) == 3


def test_max_spans_equals_the_most_spans_of_any_length_and_takes_constant_time() -> None:
    """The closed form (the spans of the longest caption) against the maximum over every
    length up to `max_length`, for densities and span lengths across their ranges (edges and
    random draws), and a `max_length` of 10**9 validated at once (it took about 20 minutes
    counting every length)."""
    import time

    start = time.perf_counter()
    for max_length, needed in ((10**7, 500_000), (10**9, 50_000_000)):
        with pytest.raises(ValueError, match=rf"tokenizer\.sentinels \(32\) is too few: .* up to {needed} noise spans"):
            TrainT5Config(tokenizer=T5TokenizerSettings(max_length=max_length))
        assert time.perf_counter() - start < 1.0

    def by_every_length(max_length: int, density: float, span: float) -> int:
        return max((span_counts(n, density, span)[1] for n in range(max_length)), default=0)

    rng = np.random.default_rng(0)
    densities = [1e-9, 0.01, 0.15, 1 / 3, 0.5, 0.51, 2 / 3, 0.9, 0.99, float(np.nextafter(1.0, 0.0)), 1.0]
    densities += [float(d) for d in rng.uniform(0.0, 1.0, 40) if d > 0]
    spans = [1.0, 1.5, 2.5, 3.0, 7.0, 1e9] + [float(m) for m in rng.uniform(1.0, 20.0, 15)]
    for density in densities:
        for span in spans:
            most = 0  # the maximum over the lengths 0 .. max_length - 1, kept as max_length grows
            for max_length in range(300):
                if max_length > 0:
                    most = max(most, span_counts(max_length - 1, density, span)[1])
                assert max_spans(max_length, density, span) == most, (max_length, density, span)
    for max_length in (1000, 4096, 12_345):
        assert max_spans(max_length, 0.15, 3.0) == by_every_length(max_length, 0.15, 3.0)
    with pytest.raises(ValueError, match=r"noise_density in \(0, 1\]"):
        max_spans(64, 1.5, 3.0)


def test_span_noise_is_a_function_of_seed_and_key() -> None:
    ids = list(range(3, 43))
    a = SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=7)
    assert a.corrupt(ids, 5) == a.corrupt(ids, 5)
    assert a.corrupt(ids, 5) == SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=7).corrupt(ids, 5)
    masks = {tuple(noise_mask(40, 0.15, 3.0, a.rng(key))) for key in range(20)}
    assert len(masks) > 10
    assert a.corrupt(ids, 5) != SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=8).corrupt(ids, 5)
    assert a.corrupt(ids, 5, stream=0) != a.corrupt(ids, 5, stream=1)


def test_span_batch_pads_inputs_with_pad_and_labels_with_ignore_index() -> None:
    corruption = SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=0)
    rows = [list(range(3, 23)), [5, 6, 7]]
    batch = corruption.batch(rows, [0, 1])
    pairs = [corruption.corrupt(row, key) for row, key in zip(rows, [0, 1])]
    for index, (inputs, targets) in enumerate(pairs):
        assert batch["input_ids"][index, : len(inputs)].tolist() == inputs
        assert (batch["input_ids"][index, len(inputs) :] == 0).all()
        assert batch["attention_mask"][index].tolist() == [1] * len(inputs) + [0] * (
            batch["input_ids"].shape[1] - len(inputs)
        )
        assert batch["labels"][index, : len(targets)].tolist() == targets
        assert (batch["labels"][index, len(targets) :] == IGNORE_INDEX).all()
    assert all(value.dtype == torch.long for value in batch.values())


def test_corrupt_spans_refuses_more_spans_than_sentinels() -> None:
    mask = np.array([True, False, True, False, True])
    with pytest.raises(ValueError, match="sentinel"):
        corrupt_spans([3, 4, 5, 6, 7], mask, (100, 101), EOS)


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def shapes_captions() -> list[str]:
    stream = ShapesStream(0, 16, 1, 2, "train")
    return [stream.sample(i).caption for i in range(2000)]


@pytest.fixture(scope="module")
def shapes_tokenizer(shapes_captions):
    return train_t5_tokenizer(shapes_captions, 512, 8, 64)


def test_tokenizer_round_trips_and_follows_t5_ids(shapes_tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = shapes_tokenizer
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    sentinels = sentinel_ids(tokenizer)
    # as T5's tokenizers number them (and transformers' span-corruption collator reads them):
    # <extra_id_0> is the last id, <extra_id_k> the k-th before it
    assert sentinels == tuple(len(tokenizer) - 1 - k for k in range(8))
    heldout = ShapesStream(1, 16, 1, 2, "heldout")  # the object counts it was trained on (3+ add commas)
    for index in range(200):
        caption = heldout.sample(index).caption
        ids = tokenizer(caption)["input_ids"]
        assert ids[-1] == 1 and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == caption
    # every colour and shape word is one piece, not letters (the seeding of `train_t5_tokenizer`)
    for word in ("red", "blue", "green", "circle", "square", "triangle", "above"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    # sentinels are single tokens in text too, and survive save / AutoTokenizer
    text = f"a red {sentinel_token(0)} above {sentinel_token(1)}"
    assert sentinels[0] in tokenizer(text)["input_ids"] and sentinels[1] in tokenizer(text)["input_ids"]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert sentinel_ids(reloaded) == sentinels
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_tokenizer_training_gives_the_same_ids_every_time(shapes_captions, shapes_tokenizer) -> None:
    """The unigram trainer appends uncovered letters in hash-map order; the ids must not follow
    it (scores may differ in the last bit: its sums run in hash-map order too)."""
    import json

    first = json.loads(shapes_tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    for _ in range(3):
        again = train_t5_tokenizer(shapes_captions, 512, 8, 64)
        assert again.get_vocab() == shapes_tokenizer.get_vocab()
        scores = json.loads(again.backend_tokenizer.to_str())["model"]["vocab"]
        assert [piece for piece, _ in scores] == [piece for piece, _ in first]
        assert max(abs(a[1] - b[1]) for a, b in zip(scores, first)) < 1e-9


# ---------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("t5")
    train_t5(tiny_config(output), show_progress=False)
    return output


def test_training_writes_encoder_tokenizer_checkpoints_and_metrics(trained: Path) -> None:
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    final = records[-1]
    assert final["step"] == 3 and {"eval/loss", "eval/token_accuracy", "eval/span_token_accuracy"} <= set(final)
    checkpoints = sorted(p.name for p in (trained / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-000000002", "step-000000003"]
    assert (trained / "model" / "text_encoder" / "model.safetensors").is_file()
    assert not list(trained.rglob("*.bin")) and not list(trained.rglob("*.pt"))


def test_saved_encoder_is_the_trained_encoder(trained: Path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(trained / "model" / "tokenizer")
    full = build_t5(tiny_config(trained).model, len(tokenizer))
    full.load_state_dict(load_file(trained / "checkpoints" / "step-000000003" / "model.safetensors"), strict=False)
    full.tie_weights()
    encoder = T5EncoderModel.from_pretrained(trained / "model" / "text_encoder").eval()
    ids = tokenizer(["a red circle above a blue square", "two green triangles"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = full.eval().encoder(**ids).last_hidden_state
        actual = encoder(**ids).last_hidden_state
    assert torch.equal(actual, expected)


def test_saved_folder_loads_for_diffusion_and_conditions_prompts(trained: Path, tiny_clip_text_path) -> None:
    from transformers import AutoTokenizer, CLIPTextModel

    from clipcond import TextConditioner
    from clipcond.training.diffusion.frozen_encoders import load_frozen_t5

    model, tokenizer = load_frozen_t5(str(trained / "model"))
    assert model.config.d_model == 32 and not any(p.requires_grad for p in model.parameters())
    clip = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval()
    clip_tokenizer = AutoTokenizer.from_pretrained(tiny_clip_text_path)
    conditioner = TextConditioner("custom", clip=[(clip, clip_tokenizer)], t5=(model, tokenizer), projection_dim=16)
    embeds = conditioner.encode(["a red circle above a blue square", "two green triangles"])
    assert embeds.tokens.shape[0] == 2 and embeds.tokens.shape[2] == 16
    assert torch.isfinite(embeds.tokens).all()
    assert not torch.equal(embeds.tokens[0], embeds.tokens[1])


def test_resume_continues_exactly(tmp_path: Path) -> None:
    settings = dict(
        steps=4,
        checkpoint_every=2,
        keep_checkpoints=3,
        model=T5ModelSettings(
            d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.1
        ),
    )
    straight = tmp_path / "straight"
    train_t5(tiny_config(straight, **settings), show_progress=False)
    resumed = tmp_path / "resumed"
    train_t5(tiny_config(resumed, **settings), show_progress=False)
    shutil.rmtree(resumed / "checkpoints" / "step-000000004")
    result = train_t5(tiny_config(resumed, **settings), resume=True, show_progress=False)
    assert result.steps == 4
    a = load_file(straight / "checkpoints" / "step-000000004" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "step-000000004" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert any(
        not torch.equal(a[k], load_file(straight / "checkpoints" / "step-000000002" / "model.safetensors")[k])
        for k in a
    )


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (
            _cut_in_half,
            "the run's tokenizer has damaged files (cut short, or overwritten?): {tokenizer}/tokenizer.json is ",
        ),
        (Path.unlink, "tokenizer.json, the run's trained tokenizer, is missing: restore it"),
    ],
    ids=["tokenizer.json cut", "tokenizer.json removed"],
)
def test_a_resume_with_the_runs_tokenizer_damaged_is_one_setup_error_naming_it(trained, tmp_path, damage, said):
    """The kept tokenizer cannot be trained again (the checkpoints' ids are its): the resume
    stops naming its file, and leaves the run folder as it was. Before, a cut tokenizer.json was
    json's bare error and a removed one transformers' advice to install sentencepiece."""
    from clipcond.training.loop import RunSetupError

    run = shutil.copytree(trained, tmp_path / "run")
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    shutil.rmtree(newest)  # a run stopped before its last checkpoint: it resumes
    tokenizer = run / "tokenizer"
    damage(tokenizer / "tokenizer.json")
    before = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    expected = f"output_dir {tokenizer}: " + said.format(tokenizer=tokenizer)
    with pytest.raises(RunSetupError, match=re.escape(expected)):
        train_t5(tiny_config(run), resume=True, show_progress=False)
    assert {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()} == before


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    result = train_t5(
        tiny_config(tmp_path, steps=30, batch_size=16, warmup_steps=3, checkpoint_every=30), show_progress=False
    )
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert result.evaluation["loss"] < np.mean(losses[:5])


def test_an_existing_run_needs_resume(trained: Path) -> None:
    with pytest.raises(ValueError, match="--resume"):
        train_t5(tiny_config(trained), show_progress=False)


# ---------------------------------------------------------------- data sources


def test_manifest_captions_hold_out_the_last_ones(tmp_path: Path) -> None:
    manifest = tmp_path / "captions.jsonl"
    lines = [json.dumps({"image": f"{i}.png", "caption": f"caption  number {i}"}) for i in range(10)]
    manifest.write_text("\n".join([*lines[:5], "{not json", json.dumps({"text": ""}), *lines[5:]]) + "\n")
    source = CaptionSource(DataConfig(source="manifest", manifest=str(manifest)), seed=0, heldout_count=3)
    assert source.size == 7
    assert source.heldout == ["caption number 7", "caption number 8", "caption number 9"]
    assert source.caption(8) == "caption number 1"
    assert dict(source.skipped.counts) == {"bad manifest line": 1, "empty caption": 1}
    with pytest.raises(ValueError, match="eval_captions"):
        CaptionSource(DataConfig(source="manifest", manifest=str(manifest)), seed=0, heldout_count=10)


def test_webdataset_captions_never_decode_images(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for index in range(4):
            for suffix, data in ((".jpg", b"not an image"), (".txt", f"a red circle {index}".encode())):
                info = tarfile.TarInfo(f"{index:04d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    source = CaptionSource(DataConfig(source="webdataset", urls=[str(shard)]), seed=0, heldout_count=1)
    assert source.first(10) == ["a red circle 0", "a red circle 1", "a red circle 2"]
    assert source.heldout == ["a red circle 3"]


# ---------------------------------------------------------------- config and command


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "t5.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_validates() -> None:
    config = TrainT5Config.from_yaml(REPO / "configs" / "train" / "t5-tiny-shapes.yaml")
    assert config.data.source == "shapes" and config.model.d_model == 64


@pytest.mark.parametrize(
    "data,message",
    [
        ({"model": {"d_modle": 64}}, r"t5\.yaml.*model\.d_modle"),
        ({"noise_densty": 0.15}, r"t5\.yaml.*noise_densty"),
        ({"noise_density": 1.5}, "noise_density"),
        ({"mean_noise_span_length": 0.5}, "mean_noise_span_length"),
        ({"mean_noise_span_length": float("nan")}, "mean_noise_span_length"),
        ({"mean_noise_span_length": float("inf")}, "mean_noise_span_length"),
        ({"mixed_precision": "fp16"}, "mixed_precision"),
        ({"model": {"num_heads": 0}}, r"model\.num_heads"),
        ({"tokenizer": {"sentinels": 1, "max_length": 64}}, r"tokenizer\.sentinels"),
        ({"data": {"num_workers": 2}}, r"data\.num_workers"),
        ({"batch_size": "64"}, "batch_size"),
    ],
)
def test_bad_config_is_an_error_naming_the_key(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainT5Config.from_yaml(_write(tmp_path, data))


def test_cli_runs_train_t5(tmp_path: Path, capsys) -> None:
    from clipcond.cli import main

    config = tiny_config(tmp_path / "run", steps=2)
    data = {
        "model": vars(config.model),
        "tokenizer": vars(config.tokenizer),
        "data": {"min_objects": 1, "max_objects": 2},
        "batch_size": 8,
        "steps": 5,
        "warmup_steps": 1,
        "eval_captions": 8,
        "output_dir": str(tmp_path / "ignored"),
    }
    path = _write(tmp_path, data)
    assert (
        main(
            ["train-t5", "--config", str(path), "--steps", "2", "--output-dir", str(tmp_path / "run"), "--no-progress"]
        )
        == 0
    )
    output = capsys.readouterr().out
    assert "held-out: loss" in output and str(tmp_path / "run" / "model") in output
    assert (tmp_path / "run" / "model" / "tokenizer" / "tokenizer.json").is_file()


def test_too_few_captions_for_the_held_out_ones_is_one_error_line(tmp_path: Path, capsys) -> None:
    from clipcond.cli import main

    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("".join(json.dumps({"caption": f"caption {i}"}) + "\n" for i in range(3)))
    config = tiny_config(tmp_path / "run", steps=2)
    data = {
        "model": vars(config.model),
        "tokenizer": vars(config.tokenizer),
        "data": {"source": "manifest", "manifest": str(manifest)},
        "eval_captions": 16,
        "output_dir": str(tmp_path / "run"),
    }
    capsys.readouterr()
    assert main(["train-t5", "--config", str(_write(tmp_path, data)), "--no-progress"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert "holds 3 usable captions" in errors[0] and "eval_captions" in errors[0]


def test_bf16_mixed_precision_trains_on_cpu(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "run", mixed_precision="bf16")
    path = _write(tmp_path, dataclasses.asdict(config))
    # its own process: accelerate keeps one mixed-precision setting per process
    command = [sys.executable, "-m", "clipcond.training.train_t5", "--no-progress", "--config", str(path)]
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert "held-out: loss" in finished.stdout


def test_skipped_captions_are_counted_once_across_a_resume(tmp_path: Path) -> None:
    """Every invocation reads all the captions (and counts their skips) again: a resumed run's
    counts are those of one read, as the uninterrupted run's are."""
    manifest = tmp_path / "captions.jsonl"
    lines = [json.dumps({"caption": f"a red circle number {i}"}) for i in range(40)]
    manifest.write_text("\n".join([*lines[:5], "{not json", json.dumps({"caption": 7}), *lines[5:]]) + "\n")
    data = DataConfig(source="manifest", manifest=str(manifest))
    settings = dict(data=data, steps=4, checkpoint_every=2, keep_checkpoints=3, eval_captions=4)
    straight = train_t5(tiny_config(tmp_path / "straight", **settings), show_progress=False)
    train_t5(tiny_config(tmp_path / "resumed", **settings), show_progress=False)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000000004")
    resumed = train_t5(tiny_config(tmp_path / "resumed", **settings), resume=True, show_progress=False)
    assert straight.skipped == resumed.skipped == {"bad manifest line": 2}


def test_the_span_loss_is_transformers_t5_loss_for_the_same_batch() -> None:
    """`span_loss(span_logits(...))` against `T5ForConditionalGeneration(..., labels=...).loss`,
    which shifts the labels itself (start token, -100 read as padding)."""
    from clipcond.training.t5.model import span_logits, span_loss

    torch.manual_seed(0)
    model = build_t5(tiny_config(Path("unused")).model, vocab_size=1100).eval()
    corruption = SpanCorruption(0.15, 3.0, SENTINELS, EOS, 0, seed=0)
    batch = corruption.batch([list(range(3, 40)), [5, 6, 7, 8], list(range(50, 62))], [0, 1, 2])
    with torch.no_grad():
        ours, _ = span_loss(span_logits(model, batch), batch["labels"])
        theirs = model(**batch).loss
    assert torch.equal(ours, theirs)
