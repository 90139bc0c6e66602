"""The contrastive training loop end to end, on clip-tiny and a few steps of the shapes stream."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from killing import kill_after_checkpoint
from PIL import Image
from safetensors.torch import load_file
from shards import write_image_manifest

from clipcond.models import load_clip
from clipcond.training.clip.config import LoraSettings, TrainClipConfig
from clipcond.training.clip.loop import train_clip
from clipcond.training.data import DataConfig
from clipcond.training.loop import TrainingDiverged

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = str(REPO / "configs" / "models" / "clip-tiny.yaml")  # ResNet image tower
TINY_VIT_MODEL = str(REPO / "configs" / "models" / "clip-tiny-vit.yaml")


def tiny_config(output_dir: Path, **overrides) -> TrainClipConfig:
    settings = dict(
        model=TINY_MODEL,
        batch_size=8,
        steps=3,
        lr=1e-3,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        output_dir=str(output_dir),
        eval_images_per_class=1,
    )
    settings.update(overrides)
    return TrainClipConfig(**settings)


def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    clip = load_clip(folder)
    return {key: value.clone() for key, value in clip.clip_state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key].float() - b[key].float()).abs().max().item() for key in a)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A clip-tiny trained for 3 steps: the starting point of the fine-tuning modes."""
    output = tmp_path_factory.mktemp("pretrained")
    result = train_clip(tiny_config(output), show_progress=False)
    return result.model_dir


def test_pretrain_writes_model_checkpoints_and_metrics(pretrained: Path) -> None:
    run = pretrained.parent
    clip = load_clip(pretrained)
    assert clip.config.embed_dim == 64
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert {"temperature", "samples_per_second", "lr"} <= set(records[0])
    assert any("eval/top1" in r for r in records)
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-000000002", "step-000000003"]
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    result = train_clip(
        tiny_config(tmp_path, steps=25, lr=2e-3, warmup_steps=2, checkpoint_every=100), show_progress=False
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    first = np.mean([r["loss"] for r in records[:3]])
    last = np.mean([r["loss"] for r in records[-3:]])
    assert last < first - 0.1, (first, last)
    assert result.steps == 25


@pytest.mark.parametrize("mode", ["finetune", "text_only", "lit", "lora"])
def test_modes_train_what_they_should(tmp_path: Path, pretrained: Path, mode: str) -> None:
    before = model_weights(pretrained)
    config = tiny_config(tmp_path, model=None, mode=mode, init_from=str(pretrained), steps=2, lr=1e-2)
    after = model_weights(train_clip(config, show_progress=False).model_dir)
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    text_keys = {key for key in before if key.startswith("text_model") or key.startswith("text_projection")}
    vision_keys = set(before) - text_keys - {"logit_scale"}
    if mode == "finetune":
        assert changed & text_keys and changed & vision_keys
    elif mode in ("text_only", "lit"):
        assert not changed & vision_keys
        assert changed & text_keys
    else:  # lora: adapters merged back; only attention projections (and the temperature) move
        assert changed & text_keys and changed & vision_keys
        assert all(
            any(part in key for part in ("q_proj", "k_proj", "v_proj", "out_proj")) for key in changed - {"logit_scale"}
        )
    if mode == "lit":
        # the text tower starts from scratch: far from the pretrained one, not a small update of it
        embedding = "text_model.embeddings.token_embedding.weight"
        assert (before[embedding] - after[embedding]).abs().max() > 0.05


def test_siglip_and_hard_negatives_run(tmp_path: Path) -> None:
    for name, overrides in {
        "siglip": dict(loss="siglip"),
        "negclip": dict(hard_negatives=True, data=DataConfig(max_objects=2)),
    }.items():
        result = train_clip(tiny_config(tmp_path / name, steps=2, **overrides), show_progress=False)
        assert np.isfinite(result.loss)
    weights = load_file(str(tmp_path / "siglip" / "checkpoints" / "step-000000002" / "model.safetensors"))
    assert "logit_bias" in weights


def test_siglip_bias_is_saved_with_the_model_and_a_siglip_fine_tune_starts_from_it(
    tmp_path: Path, pretrained: Path, caplog
) -> None:
    from clipcond.models import load_logit_bias
    from clipcond.training.clip.model_setup import build_contrastive_model

    run = train_clip(tiny_config(tmp_path / "siglip", steps=2, loss="siglip", lr=1e-2), show_progress=False)
    last = load_file(str(tmp_path / "siglip" / "checkpoints" / "step-000000002" / "model.safetensors"))
    saved = load_logit_bias(run.model_dir)
    assert saved is not None and torch.equal(saved, last["logit_bias"]) and saved.item() != -10.0
    assert load_logit_bias(pretrained) is None  # a CLIP-loss model has none
    for mode in ("finetune", "text_only", "lora"):
        settings = dict(model=None, init_from=str(run.model_dir), mode=mode, loss="siglip")
        model = build_contrastive_model(tiny_config(tmp_path / mode, **settings))
        assert torch.equal(model.logit_bias.detach(), saved), mode
        assert torch.equal(model.logit_scale.detach(), last["clip.logit_scale"]), mode
    # a folder without the bias (older clipcond, or a CLIP-loss run) still loads: bias -10, said
    with caplog.at_level("WARNING", logger="clipcond.training.clip.model_setup"):
        settings = dict(model=None, init_from=str(pretrained), mode="finetune", loss="siglip")
        model = build_contrastive_model(tiny_config(tmp_path / "old", **settings))
    assert model.logit_bias.item() == -10.0 and "has no logit_bias.safetensors" in caplog.text


def test_micro_batches_give_the_full_batch_gradients(tmp_path: Path) -> None:
    """The loop's step with micro-batches of 3 yields the gradients of the whole batch of 8
    (weights after AdamW are not compared: Adam's normalisation magnifies float rounding in
    near-zero gradients)."""
    from accelerate import Accelerator

    from clipcond.tokenization import clip_tokenizer
    from clipcond.training.clip.loop import ContrastiveStep, make_optimizer
    from clipcond.training.clip.model_setup import build_contrastive_model
    from clipcond.training.data import CaptionTokenizer
    from clipcond.training.data import ImageCaptionBatches as ContrastiveBatches

    # ViT towers: a batch-norm tower (ResNet) computes its statistics per micro-batch, which is
    # a different function of the batch, as it is under any data-parallel split.
    config = tiny_config(tmp_path, model=TINY_VIT_MODEL, hard_negatives=True, data=DataConfig(max_objects=2))
    tokenizer = CaptionTokenizer(clip_tokenizer(), 77)
    batch = next(ContrastiveBatches(config.data, tokenizer, 32, 8, seed=0, hard_negatives=True))
    gradients = {}
    for micro in (None, 3):
        torch.manual_seed(0)
        model = build_contrastive_model(config)
        optimizer, scheduler = make_optimizer(model, config)
        step = ContrastiveStep(Accelerator(cpu=True), model, optimizer, scheduler, micro_batch_size=micro)
        loss = step.backward(batch)
        gradients[micro] = (loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loss_whole, whole), (loss_split, split) = gradients[None], gradients[3]
    assert abs(loss_whole.item() - loss_split.item()) < 1e-6
    assert whole.keys() == split.keys() and len(whole) > 10
    assert max_difference(whole, split) < 1e-5  # gradients are O(0.1-1): float32 rounding


def test_a_warm_up_longer_than_the_run_is_a_warning(tmp_path: Path, caplog) -> None:
    """Accepted, as open_clip's schedule accepts it, but said: the rate never reaches `lr`."""
    with caplog.at_level("WARNING", logger="clipcond.training.clip.loop"):
        train_clip(tiny_config(tmp_path / "long", steps=2, warmup_steps=8), show_progress=False)
    assert "warmup_steps 8 > steps 2: the learning rate rises for the whole run and peaks at 0.25 x lr" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="clipcond.training.clip.loop"):
        train_clip(tiny_config(tmp_path / "short", steps=2, warmup_steps=2), show_progress=False)
    assert "warmup_steps" not in caplog.text


def test_gradient_checkpointing_gives_the_same_step(tmp_path: Path) -> None:
    plain = train_clip(tiny_config(tmp_path / "plain", steps=2, checkpoint_every=10), show_progress=False)
    recompute = train_clip(
        tiny_config(tmp_path / "recompute", steps=2, checkpoint_every=10, gradient_checkpointing=True),
        show_progress=False,
    )
    assert max_difference(model_weights(plain.model_dir), model_weights(recompute.model_dir)) < 1e-6


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import clipcond.training.clip.loop as loop

    calls = {"n": 0}
    real_loss = loop.clip_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(loop, "clip_loss", poisoned)
    with pytest.raises(TrainingDiverged) as stopped:
        train_clip(tiny_config(tmp_path, steps=5, checkpoint_every=2), show_progress=False)
    assert str(stopped.value) == (
        "loss became nan at step 3; stopped without saving this state (the last good checkpoint is "
        f"{tmp_path / 'checkpoints' / 'step-000000002'}). Lower `lr`, raise `warmup_steps`, or use "
        "mixed_precision 'no' / 'bf16'."
    )
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000000002"
    assert not (tmp_path / "checkpoints" / "step-000000003").exists()
    assert not (tmp_path / "model").exists()


def _write_shard(path: Path) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for index in range(12):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buffer, format="PNG")
            image = buffer.getvalue()
            caption = f"a picture number {index}".encode()
            if index == 3:
                image = b"not an image at all"
            if index == 5:
                caption = b"   "
            add(f"{index:04d}.png", image)
            add(f"{index:04d}.txt", caption)


def test_webdataset_with_bad_samples_trains_and_counts_them(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    _write_shard(shard)
    config = tiny_config(
        tmp_path / "run", data=DataConfig(source="webdataset", urls=[str(shard)]), batch_size=4, steps=4
    )
    result = train_clip(config, show_progress=False)
    assert np.isfinite(result.loss)
    # 10 usable samples of 12 per pass; 4 steps x 4 samples read all of pass 1 and the first
    # 8 entries of pass 2 (where entries 3 and 5 are unusable again)
    assert result.skipped == {"undecodable image": 2, "empty caption": 2}


def test_run_folder_is_protected(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, steps=1)
    train_clip(config, show_progress=False)
    with pytest.raises(ValueError, match="--resume"):
        train_clip(config, show_progress=False)
    with pytest.raises(ValueError, match="config changed.*lr"):
        train_clip(dataclasses.replace(config, lr=0.5), resume=True, show_progress=False)


def test_bad_configs_fail_before_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16"):
        if torch.cuda.is_available():
            pytest.skip("fp16 is valid with a GPU")
        train_clip(tiny_config(tmp_path / "a", mixed_precision="fp16"), show_progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="init_from"):
        tiny_config(tmp_path, mode="finetune")
    with pytest.raises(FileNotFoundError, match="init_from"):
        train_clip(
            tiny_config(tmp_path / "b", model=None, mode="finetune", init_from=str(tmp_path / "nope")),
            show_progress=False,
        )
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "batch_sise": 8}))
    with pytest.raises(ValueError, match="batch_sise"):
        TrainClipConfig.from_yaml(path)


def test_the_training_command_reports_a_bad_config_without_a_traceback(tmp_path: Path, capsys) -> None:
    from clipcond.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "batch_sise": 8}))
    assert main(["train-clip", "--config", str(path), "--no-progress"]) == 2
    assert "batch_sise" in capsys.readouterr().err
    assert main(["train-clip", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "--config: no such file" in capsys.readouterr().err
    good = _write_yaml(tmp_path / "good.yaml", tiny_config(tmp_path / "run", steps=1))
    assert main(["train-clip", "--config", str(good), "--set", "lr=fast", "--no-progress"]) == 2
    assert "lr" in capsys.readouterr().err and not (tmp_path / "run").exists()


def _write_yaml(path: Path, config: TrainClipConfig) -> Path:
    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    return path


# 16 s of subprocesses: the shared training loop's kill and resume stays in the default run through
# train-diffusion's test of the same name
@pytest.mark.slow
def test_sigkill_and_resume_end_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    steps = 60
    reference = train_clip(
        tiny_config(tmp_path / "reference", steps=steps, checkpoint_every=3, log_every=10), show_progress=False
    )

    config = tiny_config(tmp_path / "killed", steps=steps, checkpoint_every=3, log_every=10)
    config_path = _write_yaml(tmp_path / "killed.yaml", config)
    command = [sys.executable, "-m", "clipcond.training.train_clip", "--config", str(config_path), "--no-progress"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    killed_at = kill_after_checkpoint(command, tmp_path / "killed", at_least=9, env=env)

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    difference = max_difference(model_weights(reference.model_dir), model_weights(tmp_path / "killed" / "model"))
    assert difference == 0.0, f"killed at {killed_at}: max difference {difference}"  # bit for bit


def test_making_the_shapes_batches_draws_nothing_from_the_global_generator() -> None:
    from clipcond.training.data import ImageCaptionBatches

    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = ImageCaptionBatches(DataConfig(), None, image_size=32, batch_size=2, seed=5)
    batches.next_with_captions()
    assert torch.equal(torch.get_rng_state(), before)


def last_checkpoint_straight_and_resumed(config: TrainClipConfig, step: int) -> tuple[dict, dict]:
    """The weights of checkpoint `step` (the run's last) of the run of `config`, and of the same
    checkpoint written again by a resume from the one before it."""
    output_dir = Path(config.output_dir)
    train_clip(config, show_progress=False)
    last = output_dir / "checkpoints" / f"step-{step:09d}"
    straight = load_file(str(last / "model.safetensors"))
    shutil.rmtree(last)
    shutil.rmtree(output_dir / "model")
    train_clip(config, resume=True, show_progress=False)
    return straight, load_file(str(last / "model.safetensors"))


def test_a_resume_with_lora_dropout_redoes_the_steps_bit_for_bit(tmp_path: Path, pretrained: Path) -> None:
    """LoRA dropout draws from torch's generator, restored from the checkpoint: the batches
    made after the restore must not draw from it (they did: the resumed masks were one draw
    ahead)."""
    settings = dict(model=None, mode="lora", init_from=str(pretrained), steps=4, checkpoint_every=2, lr=1e-2)
    config = tiny_config(tmp_path, lora=LoraSettings(dropout=0.3), **settings)
    straight, resumed = last_checkpoint_straight_and_resumed(config, step=4)
    assert straight.keys() == resumed.keys() and any("lora_B" in key for key in straight)
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def test_cli_train_and_eval(tmp_path: Path, capsys) -> None:
    from clipcond.cli import main

    config_path = _write_yaml(tmp_path / "run.yaml", tiny_config(tmp_path / "run", steps=2))
    assert main(["train-clip", "--config", str(config_path), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("model saved to") == 1
    # under `accelerate launch` the other processes run the command too, and print nothing
    from accelerate import PartialState

    with mock.patch.object(PartialState, "is_main_process", new_callable=mock.PropertyMock, return_value=False):
        assert main(["train-clip", "--config", str(config_path), "--no-progress", "--resume"]) == 0
    assert capsys.readouterr().out == ""
    output = tmp_path / "metrics.json"
    assert (
        main(
            [
                "eval-clip",
                "--model",
                str(tmp_path / "run" / "model"),
                "--images-per-class",
                "2",
                "--pairs",
                "16",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    metrics = json.loads(output.read_text())
    again = ["eval-clip", "--model", str(tmp_path / "run" / "model"), "--images-per-class", "1", "--pairs", "4"]
    assert main([*again, "--output", str(output)]) == 2  # an existing file is kept...
    assert "already exists; pass --force" in capsys.readouterr().err and json.loads(output.read_text()) == metrics
    assert main([*again, "--output", str(output), "--force"]) == 0  # ...unless replacing it is asked for
    assert json.loads(output.read_text()) == json.loads(capsys.readouterr().out)  # this run's metrics
    assert not list(tmp_path.glob(".metrics.json*"))  # no temporary left
    assert 0.0 <= metrics["zero_shot"]["top1"] <= 1.0
    assert {"seen_top1", "heldout_top1"} <= set(metrics["zero_shot"])
    assert "image_to_text@1" in metrics["retrieval"]
    assert main(["eval-clip", "--model", str(tmp_path / "missing")]) == 2
    assert "--model: no such folder" in capsys.readouterr().err


def test_metrics_reach_the_tensorboard_tracker(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_clip(tiny_config(tmp_path, steps=2, log_with="tensorboard"), show_progress=False)
    accumulators = []
    for events in sorted(tmp_path.rglob("events.out.tfevents.*")):  # scalars, and hparams in a subfolder
        accumulators.append(EventAccumulator(str(events)))
        accumulators[-1].Reload()
    (accumulator,) = [a for a in accumulators if "loss" in a.Tags()["scalars"]]
    tags = set(accumulator.Tags()["scalars"])
    assert {"loss", "temperature", "samples_per_second", "eval/top1"} <= tags
    assert [event.step for event in accumulator.Scalars("loss")] == [1, 2]
    # the run's settings, as hparams: nested ones by dotted name, what is no number or string as text
    (hparams,) = [hparams for accumulator in accumulators for hparams in _tensorboard_hparams(accumulator)]
    assert {
        "lr": ("number_value", 1e-3),
        "batch_size": ("number_value", 8),
        "hard_negatives": ("number_value", 0),
        "mode": ("string_value", "pretrain"),
        "data.source": ("string_value", "shapes"),
        "data.shuffle_buffer": ("number_value", 1000),
        "lora.r": ("number_value", 8),
        "betas": ("string_value", "[0.9, 0.98]"),
        "init_from": ("string_value", "None"),
        "output_dir": ("string_value", str(tmp_path)),
    }.items() <= hparams.items()
    assert "data" not in hparams and "lora" not in hparams


def _tensorboard_hparams(accumulator) -> list[dict[str, tuple[str, object]]]:
    """The hparams a TensorBoard events file holds, each as {name: (kind, value)}."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    try:
        contents = accumulator.PluginTagToContent("hparams")
    except KeyError:  # a file without them
        return []
    found = []
    for raw in contents.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            values = data.session_start_info.hparams
            found.append({name: (v.WhichOneof("kind"), getattr(v, v.WhichOneof("kind"))) for name, v in values.items()})
    return found


def test_log_with_tensorboard_without_the_package_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(
        ValueError, match=r"^log_with 'tensorboard' needs the tensorboard package: pip install tensorboard$"
    ):
        train_clip(tiny_config(tmp_path / "run", steps=2, log_with="tensorboard"), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_converts_an_openai_checkpoint_and_refuses_untrusted_pickles(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from reference_openai_clip import OpenAIStyleCLIP
    from safetensors.torch import save_file

    from clipcond.cli import main

    torch.manual_seed(0)
    reference = OpenAIStyleCLIP(
        embed_dim=24,
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        context_length=16,
        vocab_size=49408,
        text_width=32,
        text_layers=2,
        text_heads=2,
    ).eval()
    pickle_path = tmp_path / "ViT-tiny.pt"
    torch.save(reference.state_dict(), pickle_path)
    heads = ["--text-heads", "2", "--vision-heads", "2"]
    assert main(["convert-clip", "--checkpoint", str(pickle_path), "--output", str(tmp_path / "a"), *heads]) == 2
    assert "refusing to load the pickle" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a*"))

    assert (
        main(
            [
                "convert-clip",
                "--checkpoint",
                str(pickle_path),
                "--output",
                str(tmp_path / "a"),
                *heads,
                "--trust-pickle",
            ]
        )
        == 0
    )
    safetensors_path = tmp_path / "ViT-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(safetensors_path))
    assert main(["convert-clip", "--checkpoint", str(safetensors_path), "--output", str(tmp_path / "b"), *heads]) == 0
    assert main(["convert-clip", "--checkpoint", str(safetensors_path), "--output", str(tmp_path / "b"), *heads]) == 2
    assert "already exists" in capsys.readouterr().err

    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.encode_image(pixels)
        for folder in ("a", "b"):
            converted = load_clip(tmp_path / folder)
            assert (converted.encode_image(pixels) - expected).abs().max() < 1e-5


def test_bf16_mixed_precision_and_a_manifest_source(tmp_path: Path) -> None:
    manifest = write_image_manifest(tmp_path, 6, 32, extra=[{"image": "missing.png", "caption": "gone"}])
    data = DataConfig(source="manifest", manifest=str(manifest))
    config = tiny_config(tmp_path / "run", data=data, batch_size=4, steps=2, mixed_precision="bf16")
    # its own process: accelerate keeps one mixed-precision setting per process
    command = [
        sys.executable,
        "-m",
        "clipcond.training.train_clip",
        "--no-progress",
        "--config",
        str(_write_yaml(tmp_path / "run.yaml", config)),
    ]
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "skipped samples: 1 (missing image: 1)" in finished.stdout
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) == 2 and np.isfinite(losses).all()


@pytest.mark.parametrize("source", ["manifest", "webdataset"])
def test_training_goes_on_past_every_kind_of_bad_sample(tmp_path: Path, source: str) -> None:
    from test_data import bad_manifest, bad_shard

    if source == "manifest":
        manifest, captions, per_pass = bad_manifest(tmp_path)
        data = DataConfig(source="manifest", manifest=str(manifest), shuffle=False)
    else:
        captions, per_pass = bad_shard(tmp_path / "bad-000.tar")
        data = DataConfig(source="webdataset", urls=str(tmp_path / "bad-000.tar"), shuffle=False)
    passes = 2
    config = tiny_config(tmp_path / "run", data=data, batch_size=len(captions), steps=passes, log_every=1)
    result = train_clip(config, show_progress=False)
    assert result.steps == passes and np.isfinite(result.loss)
    # every kind is counted: a bad caption each time its line or member is read, an image that
    # fails each time a batch slot tries it (a slot's stand-in comes from later positions, so
    # the second pass may reach fewer of them)
    assert set(result.skipped) == set(per_pass)
    assert all(count <= result.skipped[reason] <= passes * count for reason, count in per_pass.items())


def test_skipped_samples_are_counted_once_across_a_resume(tmp_path: Path) -> None:
    """The resumed run restores the counts its checkpoint kept and reaches its step without
    decoding: an image that failed before the checkpoint counts once, and a caption the run read
    ahead for a stand-in just before the checkpoint (the empty caption after position 16) is
    counted when a step reaches it, so once."""
    shard = tmp_path / "shard-000.tar"
    _write_shard(shard)
    data = DataConfig(source="webdataset", urls=[str(shard)], shuffle=False)
    settings = dict(data=data, batch_size=4, steps=6, checkpoint_every=2, keep_checkpoints=3)
    straight = train_clip(tiny_config(tmp_path / "straight", **settings), show_progress=False)
    train_clip(tiny_config(tmp_path / "resumed", **settings), show_progress=False)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000000006")
    resumed = train_clip(tiny_config(tmp_path / "resumed", **settings), resume=True, show_progress=False)
    assert straight.skipped == {"undecodable image": 2, "empty caption": 2}
    assert resumed.skipped == straight.skipped


def test_a_model_holding_nan_is_refused_before_the_first_step(pretrained: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    start = tmp_path / "start"
    shutil.copytree(pretrained, start)
    (weights,) = start.glob("*.safetensors")
    tensors = load_file(str(weights))
    name = sorted(key for key, value in tensors.items() if value.is_floating_point())[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(weights))
    config = tiny_config(tmp_path / "run", model=None, init_from=str(start), mode="finetune")
    with pytest.raises(TrainingDiverged) as refused:
        train_clip(config, show_progress=False)
    assert str(refused.value) == (
        f"the weights hold NaN or inf before the first step (model.clip.{name}); check the model the run starts "
        "from (`init_from`)"
    )
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "model").exists()


def test_a_run_launched_with_sharded_weights_is_refused_before_its_folder_is_made(tmp_path: Path, monkeypatch) -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType.FSDP))
    with pytest.raises(ValueError, match="^accelerate's FSDP is not supported by clipcond's training loops: "):
        train_clip(tiny_config(tmp_path / "run"), show_progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
def test_fp16_without_a_gpu_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as refused:
        train_clip(tiny_config(tmp_path / "run", mixed_precision="fp16"), show_progress=False)
    assert str(refused.value) == "mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no' on a CPU"
    assert not (tmp_path / "run").exists()
