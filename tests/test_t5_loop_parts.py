"""The T5 pretraining loop's own bookkeeping, on two-step runs of the tiny T5 (test_train_t5.py
trains it end to end): the token accuracy each step logs against the counts its loss saw, the
held-out evaluations (when, under which autocast, the lines and records they write), the
throughput's name, the progress bar, and the tokenizer a fresh start trains even when a failed
attempt left one behind."""

from __future__ import annotations

import contextlib
import io
import json
from unittest import mock

import pytest
import torch
from test_train_t5 import tiny_config

import clipcond.training.t5.loop as t5_loop
from clipcond.training.t5.span_corruption import IGNORE_INDEX


@pytest.fixture
def recorded_run(tmp_path):
    """(Per test, not per module: a forked mutation run (tests/mutation_fork.py) keeps what a
    wider fixture computed with the original code.) A 4-step run (held-out evaluations every 2 steps; a learning rate at which the first
    tokens come right within it) with what each step's loss saw and what the
    evaluation was given recorded; its stdout and stderr kept."""
    output = tmp_path / "run"
    steps: list[dict[str, float]] = []
    evaluations: list[dict] = []
    optimizers: list[dict] = []
    span_loss, evaluate = t5_loop.span_loss, t5_loop.evaluate_span_corruption
    make_optimizer = t5_loop.adamw_with_warmup_cosine

    def recording_optimizer(model, *args, **kwargs):
        optimizers.append({"args": args, "kwargs": kwargs})
        return make_optimizer(model, *args, **kwargs)

    def recording_loss(logits, labels):
        loss, correct = span_loss(logits, labels)
        steps.append({"correct": int(correct), "targets": int((labels != IGNORE_INDEX).sum())})
        return loss, correct

    def recording_evaluation(model, batches, markers, autocast=None):
        evaluations.append({"autocast": autocast, "training": model.training})
        return evaluate(model, batches, markers, autocast)

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(t5_loop, "span_loss", recording_loss),
        mock.patch.object(t5_loop, "evaluate_span_corruption", recording_evaluation),
        mock.patch.object(t5_loop, "adamw_with_warmup_cosine", recording_optimizer),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        result = t5_loop.train_t5(
            tiny_config(output, steps=4, lr=2e-2, eval_every=2, betas=[0.8, 0.95], eps=1e-7, weight_decay=0.05),
            show_progress=False,
        )
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return dict(
        result=result,
        steps=steps,
        evaluations=evaluations,
        optimizers=optimizers,
        records=records,
        out=out.getvalue(),
        err=err.getvalue(),
    )


def test_each_steps_token_accuracy_is_its_correct_targets_over_its_targets(recorded_run) -> None:
    logged = [record for record in recorded_run["records"] if "loss" in record]
    assert [record["step"] for record in logged] == [1, 2, 3, 4]
    assert len(recorded_run["steps"]) == 4
    assert any(seen["correct"] > 0 for seen in recorded_run["steps"])
    for record, seen in zip(logged, recorded_run["steps"]):
        assert 0 <= seen["correct"] < seen["targets"]
        assert record["token_accuracy"] == pytest.approx(seen["correct"] / seen["targets"], abs=1e-12)


def test_the_throughput_is_logged_as_captions_per_second(recorded_run) -> None:
    logged = [record for record in recorded_run["records"] if "loss" in record]
    assert all(record["captions_per_second"] > 0 and "samples_per_second" not in record for record in logged)
    assert recorded_run["result"].captions_per_second > 0


def test_the_held_out_evaluation_runs_when_due_and_once_at_the_end(recorded_run) -> None:
    evaluated = [record for record in recorded_run["records"] if "eval/loss" in record]
    assert [record["step"] for record in evaluated] == [2, 4]  # due at 2 and 4, the last: 4 once
    keys = {"eval/loss", "eval/token_accuracy", "eval/span_token_accuracy", "eval/majority_span_accuracy"}
    assert all(set(record) == {"step", *keys} for record in evaluated)
    final = {key.removeprefix("eval/"): value for key, value in evaluated[-1].items() if key != "step"}
    assert recorded_run["result"].evaluation == final


def test_the_evaluation_says_its_step_and_label(recorded_run) -> None:
    lines = [line for line in recorded_run["out"].splitlines() if "held-out" in line]
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"]
    assert all(line.startswith(f"step {step}: held-out loss ") for step, line in zip((2, 4), lines))


def test_the_evaluation_runs_under_the_accelerators_autocast_on_the_training_model(recorded_run) -> None:
    from accelerate import Accelerator

    assert len(recorded_run["evaluations"]) == 2
    for evaluation in recorded_run["evaluations"]:
        autocast = evaluation["autocast"]
        assert autocast.__name__ == "autocast" and isinstance(autocast.__self__, Accelerator)
        assert evaluation["training"]  # the model it is handed is the one being trained


def test_no_bar_when_asked_for_none(recorded_run) -> None:
    assert "train-t5" not in recorded_run["err"]  # (transformers' own "Writing model shards" bar is there)


def test_the_bar_is_drawn_by_default_and_named_for_the_command(tmp_path, capsys) -> None:
    t5_loop.train_t5(tiny_config(tmp_path / "run", steps=1, eval_captions=8))
    assert "train-t5" in capsys.readouterr().err


def test_a_fresh_start_trains_its_tokenizer_over_one_a_failed_attempt_left(tmp_path, t5_tokenizer_path) -> None:
    import shutil

    from transformers import AutoTokenizer

    output = tmp_path / "run"
    shutil.copytree(t5_tokenizer_path, output / "tokenizer")  # another vocabulary, no checkpoint beside it
    foreign = len(AutoTokenizer.from_pretrained(t5_tokenizer_path))
    result = t5_loop.train_t5(tiny_config(output, steps=1), resume=True, show_progress=False)
    saved = AutoTokenizer.from_pretrained(result.model_dir / "tokenizer")
    assert len(saved) == result.vocab_size != foreign
    assert saved.model_max_length == 32  # the config's tokenizer.max_length
    kept = AutoTokenizer.from_pretrained(output / "tokenizer")
    assert kept.get_vocab() == saved.get_vocab()


def test_the_trained_tokenizer_keeps_the_configured_length(recorded_run) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(recorded_run["result"].model_dir / "tokenizer")
    assert saved.model_max_length == 32
    assert torch.is_tensor(saved("a red circle", return_tensors="pt").input_ids)


def test_the_optimizer_takes_the_configs_settings(recorded_run) -> None:
    (optimizer,) = recorded_run["optimizers"]
    assert optimizer["args"] == (2e-2, 0.05, 1, 4)  # lr, weight decay, warm-up steps, steps
    assert optimizer["kwargs"] == {"betas": [0.8, 0.95], "eps": 1e-7}


def test_the_tokenizer_line_counts_pieces_and_sentinels(recorded_run) -> None:
    pieces = recorded_run["result"].vocab_size - 8
    assert f"tokenizer: {pieces} pieces (at most 256 asked) + 8 sentinels\n" in recorded_run["out"]
    assert 8 < pieces <= 256


def test_truncated_captions_are_counted_in_a_line(tmp_path, capsys) -> None:
    from clipcond.training.t5.config import T5TokenizerSettings

    tokenizer = T5TokenizerSettings(vocab_size=256, sentinels=8, train_captions=400, max_length=6)
    t5_loop.train_t5(tiny_config(tmp_path / "run", steps=1, tokenizer=tokenizer), show_progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("captions truncated")]
    assert len(lines) == 1 and lines[0].startswith("captions truncated to 6 tokens: ")
    assert int(lines[0].rsplit(" ", 1)[1]) > 0


def test_too_few_captions_for_the_held_out_ones_is_a_setup_error(tmp_path) -> None:
    from clipcond.training.data import DataConfig
    from clipcond.training.loop import RunSetupError

    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("".join(json.dumps({"caption": f"caption {i}"}) + "\n" for i in range(3)))
    config = tiny_config(tmp_path / "run", data=DataConfig(source="manifest", manifest=str(manifest)))
    with pytest.raises(RunSetupError, match="holds 3 usable captions"):
        t5_loop.train_t5(config, show_progress=False)
