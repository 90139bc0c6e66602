"""A checkpoint whose trainer.json `extra` still parses but holds values the loop never writes
(a count that is text, null, negative or a bool, a key gone, skipped samples that are no mapping
of counts) is damaged like any other: `--resume` names it in a warning, sets it aside and
resumes from the checkpoint before it, ending with the weights and metrics of the uninterrupted
run, instead of failing after the weights are loaded or resuming with the wrong values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_train_diffusion import tiny_config, unet_weights

from clipcond.training.diffusion.loop import train_diffusion


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(record["step"], record["loss"]) for record in records if "loss" in record]


@pytest.fixture(scope="module")
def uninterrupted(tiny_clip_text_path, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 4-step run (EMA on) keeping the checkpoints of steps 2, 3 and 4, and its final UNet."""
    run_dir = tmp_path_factory.mktemp("extra") / "run"
    config = tiny_config(tiny_clip_text_path, run_dir, steps=4, checkpoint_every=1, keep_checkpoints=3)
    train_diffusion(config, show_progress=False)
    return run_dir, unet_weights(run_dir / "pipeline")


@pytest.mark.parametrize(
    "edit",
    [
        {},  # every key gone (diffusion's ema_step included)
        {"ema_step": "3"},
        {"ema_step": None},
        {"ema_step": -5},
        {"metrics_records": "3"},
        {"metrics_records": True},
        {"metrics_records": 1.5},
        {"skipped_samples": {"empty caption": "abc"}},
        {"skipped_samples": {"empty caption": None}},
        {"skipped_samples": [1, 2]},
    ],
    ids=repr,
)
def test_a_checkpoint_with_wrong_extra_values_is_set_aside(
    uninterrupted, tiny_clip_text_path, tmp_path: Path, capsys, edit: dict
) -> None:
    reference, final_weights = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-000000004")  # killed after the checkpoint of step 3
    trainer_path = run_dir / "checkpoints" / "step-000000003" / "trainer.json"
    trainer = json.loads(trainer_path.read_text())
    trainer["extra"] = {**trainer["extra"], **edit} if edit else {}
    trainer_path.write_text(json.dumps(trainer))
    capsys.readouterr()

    config = tiny_config(tiny_clip_text_path, run_dir, steps=4, checkpoint_every=1, keep_checkpoints=3)
    train_diffusion(config, resume=True, show_progress=False)

    out, err = capsys.readouterr()
    assert "step-000000003 is damaged (trainer.json `extra`:" in err, err
    assert "resuming from" in out and "step-000000002 (step 2)" in out
    assert (run_dir / "checkpoints" / "damaged-step-000000003").is_dir()
    assert _losses(run_dir) == _losses(reference)
    resumed = unet_weights(run_dir / "pipeline")
    assert all(torch.equal(resumed[key], final_weights[key]) for key in final_weights)
