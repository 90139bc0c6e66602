"""The contrastive loop's own bookkeeping, on three-step runs of clip-tiny (test_train_clip.py
trains it end to end): the temperature it logs, when the shapes zero-shot evaluation runs and
what it is given, the optimizer's settings, hard negatives reaching the loss, a relative model
YAML, the truncation line, the progress bar and what the result reports. Every run is made in
its test: a forked mutation run (tests/mutation_fork.py) keeps what a module fixture computed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from shards import write_image_manifest
from test_train_clip import TINY_MODEL, tiny_config

import clipcond.training.clip.loop as clip_loop
from clipcond.training.data import DataConfig


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _recording(target, name: str, calls: list):
    original = getattr(target, name)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    return mock.patch.object(target, name, recording)


def test_each_step_logs_the_temperature_as_the_inverse_of_the_scale(tmp_path) -> None:
    clip_loop.train_clip(tiny_config(tmp_path / "run"), show_progress=False)
    steps = [record for record in _records(tmp_path / "run") if "loss" in record]
    assert [record["step"] for record in steps] == [1, 2, 3]
    for record in steps:
        assert 1.0 < record["logit_scale"] <= 100.0
        assert record["temperature"] == pytest.approx(1.0 / record["logit_scale"], rel=1e-12)


def test_the_zero_shot_evaluation_runs_when_due_and_at_the_end(tmp_path, capsys) -> None:
    calls: list = []
    with _recording(clip_loop, "shapes_zero_shot", calls):
        result = clip_loop.train_clip(
            tiny_config(tmp_path / "run", steps=3, eval_every=2, eval_images_per_class=2), show_progress=False
        )
    evaluated = [record for record in _records(tmp_path / "run") if any(key.startswith("eval/") for key in record)]
    assert [record["step"] for record in evaluated] == [2, 3]
    assert [kwargs for _, kwargs in calls] == [{"images_per_class": 2}] * 2
    assert result.evaluation == {
        key.removeprefix("eval/"): value for key, value in evaluated[-1].items() if key != "step"
    }
    lines = [line for line in capsys.readouterr().out.splitlines() if "zero-shot" in line]
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 3"]
    assert all(line.startswith(f"step {step}: zero-shot ") for step, line in zip((2, 3), lines))


def test_without_eval_every_the_evaluation_runs_once_at_the_end(tmp_path) -> None:
    calls: list = []
    with _recording(clip_loop, "shapes_zero_shot", calls):
        clip_loop.train_clip(tiny_config(tmp_path / "run", steps=3, eval_every=0), show_progress=False)
    assert [record["step"] for record in _records(tmp_path / "run") if "eval/top1" in record] == [3]
    assert len(calls) == 1


def test_other_sources_are_not_evaluated_on_shapes(tmp_path) -> None:
    data = DataConfig(source="manifest", manifest=str(write_image_manifest(tmp_path, 6, 32)))
    calls: list = []
    with _recording(clip_loop, "shapes_zero_shot", calls):
        result = clip_loop.train_clip(
            tiny_config(tmp_path / "run", data=data, batch_size=4, steps=2, eval_every=1), show_progress=False
        )
    assert calls == [] and result.evaluation is None
    assert not [record for record in _records(tmp_path / "run") if "eval/top1" in record]


def test_the_optimizer_takes_the_configs_settings(tmp_path) -> None:
    calls: list = []
    with _recording(clip_loop, "adamw_with_warmup_cosine", calls):
        clip_loop.train_clip(
            tiny_config(tmp_path / "run", betas=[0.8, 0.95], eps=1e-7, weight_decay=0.05), show_progress=False
        )
    ((args, kwargs),) = calls
    assert args[1:] == (1e-3, 0.05, 1, 3)  # lr, weight decay, warm-up steps, steps
    assert kwargs == {"betas": [0.8, 0.95], "eps": 1e-7}


@pytest.mark.parametrize("hard_negatives", [False, True])
def test_hard_negatives_reach_the_loss(hard_negatives, tmp_path) -> None:
    calls: list = []
    with _recording(clip_loop, "clip_loss", calls):
        clip_loop.train_clip(tiny_config(tmp_path / "run", steps=1, hard_negatives=hard_negatives), show_progress=False)
    negatives = [kwargs["negative_text_features"] for _, kwargs in calls]
    assert negatives and all((features is not None) == hard_negatives for features in negatives)
    if hard_negatives:
        assert negatives[0].shape == (8, 64)


def test_a_relative_model_yaml_is_read_beside_the_config(tmp_path) -> None:
    config = tiny_config(tmp_path / "run", steps=1, model=Path(TINY_MODEL).name)
    assert not Path(config.model).exists()
    result = clip_loop.train_clip(config, config_dir=str(Path(TINY_MODEL).parent), show_progress=False)
    assert result.steps == 1 and (result.model_dir / "clip_config.yaml").is_file()


def test_truncated_captions_are_counted_in_a_line(tmp_path, capsys) -> None:
    model = tmp_path / "short.yaml"
    model.write_text(Path(TINY_MODEL).read_text().replace("context_length: 77", "context_length: 6"))
    clip_loop.train_clip(tiny_config(tmp_path / "run", steps=1, model=str(model)), show_progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("captions truncated")]
    assert len(lines) == 1 and lines[0].startswith("captions truncated to 6 tokens: ")
    assert int(lines[0].rsplit(" ", 1)[1]) > 0


def test_the_bar_is_drawn_by_default_named_for_the_command_and_not_when_asked_for_none(tmp_path, capsys) -> None:
    clip_loop.train_clip(tiny_config(tmp_path / "shown", steps=1))
    assert "train-clip" in capsys.readouterr().err
    clip_loop.train_clip(tiny_config(tmp_path / "quiet", steps=1), show_progress=False)
    assert "train-clip" not in capsys.readouterr().err


def test_the_result_reports_the_run(tmp_path) -> None:
    result = clip_loop.train_clip(tiny_config(tmp_path / "run"), show_progress=False)
    steps = [record for record in _records(tmp_path / "run") if "loss" in record]
    assert result.model_dir == tmp_path / "run" / "model" and result.steps == 3
    assert result.loss == steps[-1]["loss"] and math.isfinite(result.loss)
    assert result.samples_per_second > 0 and result.skipped == {}
    assert set(result.evaluation) >= {"top1"}


def test_micro_batches_of_the_configured_size_are_taken(tmp_path) -> None:
    sizes: list = []
    split = clip_loop.split_batch

    def recording(batch, size):
        sizes.append(size)
        return split(batch, size)

    with mock.patch.object(clip_loop, "split_batch", recording):
        clip_loop.train_clip(tiny_config(tmp_path / "run", steps=2, micro_batch_size=4), show_progress=False)
    assert sizes == [4, 4]


# ContrastiveStep on a stand-in model: which loss sees which features, and the clamp


def _step(siglip: bool, scale: float = 2.0) -> clip_loop.ContrastiveStep:
    import torch

    model = SimpleNamespace(
        logit_scale=torch.nn.Parameter(torch.tensor(scale)),
        logit_bias=torch.nn.Parameter(torch.tensor(-3.0)) if siglip else None,
    )
    accelerator = SimpleNamespace(unwrap_model=lambda module: module)
    optimizer = SimpleNamespace(step=lambda: None, zero_grad=lambda set_to_none: None)
    scheduler = SimpleNamespace(step=lambda: None)
    return clip_loop.ContrastiveStep(accelerator, model, optimizer, scheduler)


def _features(*shape):
    import torch

    torch.manual_seed(sum(shape))
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


@pytest.mark.parametrize("siglip", [False, True])
def test_the_loss_reads_the_positive_and_the_hard_negative_captions(siglip) -> None:
    import torch

    from clipcond.losses import clip_loss, siglip_loss

    step = _step(siglip)
    images, texts = _features(4, 8), _features(4, 2, 8)
    scale, bias = step.model.logit_scale, step.model.logit_bias
    if siglip:
        expected = siglip_loss(images, texts[:, 0], scale, bias, negative_text_features=texts[:, 1])
        without = siglip_loss(images, texts[:, 0], scale, bias)
    else:
        expected = clip_loss(images, texts[:, 0], scale, negative_text_features=texts[:, 1])
        without = clip_loss(images, texts[:, 0], scale)
    assert torch.equal(step._loss(images, texts), expected) and not torch.equal(expected, without)
    assert torch.equal(step._loss(images, texts[:, 0]), without)  # (batch, dim) texts: no negatives


@pytest.mark.parametrize(("siglip", "expected"), [(False, math.log(100.0)), (True, 7.0)])
def test_an_update_clamps_clips_temperature_and_leaves_siglips_free(siglip, expected) -> None:
    step = _step(siglip, scale=7.0)
    step.update()
    assert step.model.logit_scale.item() == pytest.approx(expected)
