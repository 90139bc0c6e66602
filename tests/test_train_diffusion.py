"""The diffusion loop on a tiny pixel-space UNet, the shapes stream and a frozen tiny CLIP."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from killing import kill_after_checkpoint
from safetensors.torch import load_file

from clipcond import CLIPConditionedPipeline
from clipcond.training.diffusion.config import TrainDiffusionConfig
from clipcond.training.diffusion.loop import train_diffusion
from clipcond.training.loop import TrainingDiverged

UNET = dict(
    block_out_channels=[16, 32],
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=8,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
)


def tiny_config(text_encoder: Path, output_dir: Path, **overrides) -> TrainDiffusionConfig:
    settings = dict(
        text_encoder=str(text_encoder),
        unet=UNET,
        image_size=16,
        batch_size=4,
        steps=3,
        lr=1e-3,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        output_dir=str(output_dir),
        ema_decay=0.9,
    )
    settings.update(overrides)
    return TrainDiffusionConfig(**settings)


def unet_weights(pipeline_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_clip_text_path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("diffusion")
    return train_diffusion(
        tiny_config(tiny_clip_text_path, output, sample_every=3, sample_steps=2), show_progress=False
    ).pipeline_dir


def test_run_writes_a_pipeline_that_generates(trained: Path) -> None:
    pipe = CLIPConditionedPipeline.from_pretrained(trained)
    images = pipe(
        "a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    run = trained.parent
    assert (run / "samples" / "step-0000003.png").is_file()
    # trained on the shapes stream: the pipeline lists its captions' words, for generate's warning
    from clipcond.pipelines.vocabulary import read_vocabulary
    from clipcond.shapes.captions import caption_vocabulary

    max_objects = tiny_config(Path("x"), Path("y")).data.max_objects
    assert read_vocabulary(trained) == caption_vocabulary(max_objects)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000000002", "step-000000003"]


def test_a_text_tower_stored_in_float16_trains_as_its_float32_copy(tiny_clip_text_path, tmp_path: Path) -> None:
    """The bundled model stores its text tower in float16: a run on such a tower reads it in
    float32, as on a float32 copy of the same values (a dtype mismatch error before)."""
    from transformers import CLIPTextModel

    half, single = tmp_path / "half", tmp_path / "single"
    stored = CLIPTextModel.from_pretrained(tiny_clip_text_path).half()
    stored.save_pretrained(half)
    stored.float().save_pretrained(single)
    for folder in (half, single):
        shutil.copytree(
            tiny_clip_text_path,
            folder,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("*.safetensors", "config.json"),
        )
    weights = {}
    for name, folder in (("half", half), ("single", single)):
        run = train_diffusion(
            tiny_config(folder, tmp_path / f"run-{name}", steps=2, ema_decay=None), show_progress=False
        )
        weights[name] = unet_weights(run.pipeline_dir)
    assert all(torch.equal(weights["half"][key], weights["single"][key]) for key in weights["single"])


def test_final_unet_holds_the_ema_weights(tiny_clip_text_path, tmp_path: Path) -> None:
    with_ema = train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "ema", ema_decay=0.5), show_progress=False)
    without = train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "raw", ema_decay=None), show_progress=False)
    ema, raw = unet_weights(with_ema.pipeline_dir), unet_weights(without.pipeline_dir)
    trained_raw = load_file(str(tmp_path / "ema" / "checkpoints" / "step-000000003" / "unet.safetensors"))
    assert all(torch.equal(raw[k], trained_raw[k]) for k in raw)  # same training, EMA off
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_the_last_sample_grid_shows_the_pipeline_the_run_saves(
    ema_decay: float | None, tiny_clip_text_path, tmp_path: Path
) -> None:
    """As diffusers' train_text_to_image.py draws its validation images with the EMA weights it
    saves (store / copy_to / restore), the grid of the last step is the saved pipeline's images
    (same prompts, seed, steps, guidance 3.0). Before, with EMA on, it showed the raw weights
    (mean |difference| 14/255). Drawing it leaves the training as it was."""
    from PIL import Image

    prompts = ["a red circle", "a blue square"]
    settings = dict(steps=3, lr=1e-2, ema_decay=ema_decay, sample_steps=3, sample_prompts=prompts)
    run = train_diffusion(
        tiny_config(tiny_clip_text_path, tmp_path / "run", sample_every=3, **settings), show_progress=False
    )
    grid = np.asarray(Image.open(tmp_path / "run" / "samples" / "step-0000003.png").convert("RGB"))
    pipe = CLIPConditionedPipeline.from_pretrained(run.pipeline_dir)
    images = pipe(prompts, num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(grid, np.concatenate([np.asarray(image.convert("RGB")) for image in images], axis=1))
    unsampled = train_diffusion(
        tiny_config(tiny_clip_text_path, tmp_path / "unsampled", sample_every=0, **settings), show_progress=False
    )
    sampled_weights, unsampled_weights = unet_weights(run.pipeline_dir), unet_weights(unsampled.pipeline_dir)
    assert all(torch.equal(sampled_weights[k], unsampled_weights[k]) for k in unsampled_weights)


def test_a_lora_runs_last_grid_is_its_saved_pipeline_up_to_the_merges_rounding(
    trained: Path, tiny_clip_text_path, tmp_path: Path
) -> None:
    """A LoRA run draws its grids with the adapter unmerged and saves the UNet with it merged
    (W + scale * B @ A): the same images up to float rounding, which moves no pixel by more than
    one grey level of 255."""
    from PIL import Image

    prompts = ["a red circle", "a blue square"]
    settings = dict(steps=2, lr=1e-2, ema_decay=None, sample_steps=3, sample_prompts=prompts, sample_every=2)
    config = tiny_config(
        tiny_clip_text_path, tmp_path / "lora", unet=None, init_from=str(trained), train="lora", **settings
    )
    run = train_diffusion(config, show_progress=False)
    grid = np.asarray(Image.open(tmp_path / "lora" / "samples" / "step-0000002.png").convert("RGB")).astype(int)
    pipe = CLIPConditionedPipeline.from_pretrained(run.pipeline_dir)
    images = pipe(prompts, num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images
    saved = np.concatenate([np.asarray(image.convert("RGB")) for image in images], axis=1).astype(int)
    assert grid.shape == saved.shape and np.abs(grid - saved).max() <= 1
    base = CLIPConditionedPipeline.from_pretrained(trained)
    before = base(prompts, num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images
    before = np.concatenate([np.asarray(image.convert("RGB")) for image in before], axis=1).astype(int)
    assert np.abs(before - saved).max() > 1  # the LoRA moved the images: the grid had to show it


def test_v_prediction_and_lora_on_cross_attention(trained: Path, tiny_clip_text_path, tmp_path: Path) -> None:
    v = train_diffusion(
        tiny_config(tiny_clip_text_path, tmp_path / "v", prediction_type="v_prediction", steps=2), show_progress=False
    )
    assert np.isfinite(v.loss)
    assert CLIPConditionedPipeline.from_pretrained(v.pipeline_dir).scheduler.config.prediction_type == "v_prediction"
    lora = train_diffusion(
        tiny_config(
            tiny_clip_text_path,
            tmp_path / "lora",
            unet=None,
            init_from=str(trained),
            train="lora",
            steps=2,
            lr=1e-2,
            ema_decay=None,
        ),
        show_progress=False,
    )
    before, after = unet_weights(trained), unet_weights(lora.pipeline_dir)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2.to_" in k for k in changed)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_clip_text_path, tmp_path: Path, monkeypatch) -> None:
    import clipcond.training.diffusion.loop as loop

    calls = {"n": 0}
    real = loop.F.mse_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(loop.F, "mse_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="step 3.*step-000000002"):
        train_diffusion(tiny_config(tiny_clip_text_path, tmp_path, steps=5), show_progress=False)
    assert not (tmp_path / "pipeline").exists()


@pytest.mark.parametrize("poisoned", ["unet", "ema"])
def test_weights_that_became_nan_are_never_saved(tiny_clip_text_path, tmp_path: Path, monkeypatch, poisoned) -> None:
    """An update that leaves NaN in the trained UNet or in the EMA weights only (found before
    the checkpoint, before which the loss is still finite) stops the run. Before:
    checkpoints and the pipeline were written from them and the run ended normally."""
    from diffusers.training_utils import EMAModel

    real = EMAModel.step

    def step(self, parameters) -> None:
        parameters = list(parameters)
        real(self, parameters)
        with torch.no_grad():
            (parameters if poisoned == "unet" else self.shadow_params)[0].view(-1)[0] = float("nan")

    monkeypatch.setattr(EMAModel, "step", step)
    config = tiny_config(tiny_clip_text_path, tmp_path, steps=2, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=rf"NaN or inf in the update of step 1 \({poisoned}\.\S+\)"):
        train_diffusion(config, show_progress=False)
    assert not (tmp_path / "pipeline").exists() and not (tmp_path / "checkpoints").exists()


def test_a_save_that_fails_midway_leaves_no_half_pipeline(tiny_clip_text_path, tmp_path: Path, monkeypatch) -> None:
    """The pipeline is written into a hidden folder and renamed into place whole. Before: a
    failure (or a kill) after the components were written left ``pipeline/unet/`` and no
    ``model_index.json``. What a kill would leave (the hidden folders) goes at the next start,
    and the resumed run saves the pipeline."""

    def disk_full(self, *args, **kwargs) -> None:
        raise OSError("disk full")

    config = tiny_config(tiny_clip_text_path, tmp_path, steps=1, checkpoint_every=1)
    monkeypatch.setattr(CLIPConditionedPipeline, "save_config", disk_full)  # after the components
    with pytest.raises(OSError, match="disk full"):
        train_diffusion(config, show_progress=False)
    assert not (tmp_path / "pipeline").exists()
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]
    monkeypatch.undo()
    (tmp_path / ".tmp-pipeline-4242" / "unet").mkdir(parents=True)
    (tmp_path / ".old-pipeline-4242").mkdir()
    result = train_diffusion(config, resume=True, show_progress=False)
    assert (result.pipeline_dir / "model_index.json").is_file()
    assert CLIPConditionedPipeline.from_pretrained(result.pipeline_dir).unet is not None
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_an_output_dir_that_is_a_file_is_one_clear_error(tiny_clip_text_path, tmp_path: Path, capsys) -> None:
    """Before: a FileExistsError traceback from the run folder's lock."""
    from clipcond.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(tiny_config(tiny_clip_text_path, tmp_path / "run"))))
    written = path.read_text()
    capsys.readouterr()
    for output_dir in (path, path / "run"):
        assert main(["train-diffusion", "--config", str(path), "--output-dir", str(output_dir), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: output_dir {output_dir} ") and err.count("\n") == 1
        assert f"{path} is a file, not a folder" in err and "--output-dir" in err
    with pytest.raises(ValueError, match="is a file, not a folder"):  # the library call too
        train_diffusion(tiny_config(tiny_clip_text_path, path), show_progress=False)
    assert path.read_text() == written


def test_bad_configs(tiny_clip_text_path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        tiny_config(tiny_clip_text_path, tmp_path, init_from=str(tmp_path))
    with pytest.raises(ValueError, match="block_out_channel"):
        tiny_config(tiny_clip_text_path, tmp_path, unet={**UNET, "block_out_channel": [8]})
    with pytest.raises(ValueError, match="sample_size"):
        tiny_config(tiny_clip_text_path, tmp_path, unet={**UNET, "sample_size": 8})
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        train_diffusion(tiny_config(tmp_path / "missing", tmp_path / "run"), show_progress=False)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"text_encoder": "x", "unet": UNET, "stpes": 3}))
    with pytest.raises(ValueError, match="stpes"):
        TrainDiffusionConfig.from_yaml(path)


@pytest.mark.slow(
    reason="two fresh processes (~24 s): the default run resumes exactly in process "
    "(test_clip_and_t5_with_a_projection_train_and_resume_exactly), and benchmarks/reliability.py kills train-clip"
)
def test_sigkill_and_resume_end_with_the_uninterrupted_weights(tiny_clip_text_path, tmp_path: Path) -> None:
    steps = 40
    reference = train_diffusion(
        tiny_config(tiny_clip_text_path, tmp_path / "reference", steps=steps, checkpoint_every=3, log_every=10),
        show_progress=False,
    )
    config = tiny_config(tiny_clip_text_path, tmp_path / "killed", steps=steps, checkpoint_every=3, log_every=10)
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    command = [sys.executable, "-m", "clipcond.training.train_diffusion", "--config", str(config_path), "--no-progress"]
    killed_at = kill_after_checkpoint(command, tmp_path / "killed", at_least=9)
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = unet_weights(reference.pipeline_dir), unet_weights(tmp_path / "killed" / "pipeline")
    difference = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert difference == 0.0, f"killed at {killed_at}: max difference {difference}"  # bit for bit


def projection_weights(pipeline_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(pipeline_dir / "text_projection" / "diffusion_pytorch_model.safetensors"))


def test_adapter_trains_only_the_projection_of_a_narrower_encoder(trained: Path, tmp_path: Path) -> None:
    from tiny_pipelines import clip_text_model, clip_tokenizer

    narrow = tmp_path / "narrow"
    clip_text_model(5, hidden_size=16, num_attention_heads=2).save_pretrained(narrow)
    clip_tokenizer().save_pretrained(narrow)
    config = tiny_config(
        narrow,
        tmp_path / "adapter",
        unet=None,
        init_from=str(trained),
        train="adapter",
        projection_dim=32,
        steps=2,
        lr=1e-2,
        ema_decay=None,
    )
    adapter = train_diffusion(config, show_progress=False)
    before, after = unet_weights(trained), unet_weights(adapter.pipeline_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the UNet is frozen
    learned = projection_weights(adapter.pipeline_dir)
    assert learned["layers.clip.weight"].shape == (32, 16)
    first = load_file(str(tmp_path / "adapter" / "checkpoints" / "step-000000002" / "projection.safetensors"))
    assert all(torch.equal(first[k], learned[k]) for k in learned)
    pipe = CLIPConditionedPipeline.from_pretrained(adapter.pipeline_dir)
    assert pipe.config.recipe == "custom" and pipe.text_projection is not None
    images = pipe(
        "a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()

    # adapter + LoRA on cross-attention, starting from that adapter: both move, nothing else
    both = train_diffusion(
        dataclasses.replace(
            config,
            init_from=str(adapter.pipeline_dir),
            projection_dim=None,
            adapter_lora=True,
            output_dir=str(tmp_path / "adapter_lora"),
        ),
        show_progress=False,
    )
    changed = {k for k, v in unet_weights(both.pipeline_dir).items() if not torch.equal(v, after[k])}
    assert changed and all(".attn2.to_" in k for k in changed)
    assert any(not torch.equal(v, learned[k]) for k, v in projection_weights(both.pipeline_dir).items())


def test_clip_and_t5_with_a_projection_train_and_resume_exactly(
    tiny_clip_text_path, tiny_t5_encoder_path, tmp_path: Path
) -> None:
    config = tiny_config(
        tiny_clip_text_path, tmp_path / "t5", t5_encoder=str(tiny_t5_encoder_path), projection_dim=24, t5_max_length=16
    )
    straight = train_diffusion(config, show_progress=False)
    pipe = CLIPConditionedPipeline.from_pretrained(straight.pipeline_dir)
    assert pipe.text_encoder_2 is not None and pipe.text_projection.input_widths() == {"clip": 32, "t5": 24}
    assert pipe.unet.config.cross_attention_dim == 24
    # the T5 budget of training is stored and used when sampling: 77 CLIP + 16 T5 tokens
    assert pipe.config.t5_max_length == 16
    assert tuple(pipe.conditioner.encode("a red circle").tokens.shape) == (1, 77 + 16, 24)
    images = pipe(
        "a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert np.isfinite(images).all()
    # the projection trained with the UNet: it differs from its step-2 state
    checkpoints = tmp_path / "t5" / "checkpoints"
    names = ("projection", "unet", "ema")
    step2 = {n: load_file(str(checkpoints / "step-000000002" / f"{n}.safetensors")) for n in names}
    step3 = {n: load_file(str(checkpoints / "step-000000003" / f"{n}.safetensors")) for n in names}
    assert any(not torch.equal(step2["projection"][k], v) for k, v in step3["projection"].items())
    # resume from step 2 and redo step 3: the same projection, UNet and EMA
    import shutil

    shutil.rmtree(checkpoints / "step-000000003")
    shutil.rmtree(straight.pipeline_dir)
    train_diffusion(config, resume=True, show_progress=False)
    for n in names:
        again = load_file(str(checkpoints / "step-000000003" / f"{n}.safetensors"))
        assert again.keys() == step3[n].keys()
        assert all(torch.equal(step3[n][k], again[k]) for k in again), n


def test_adapter_config_errors(tiny_clip_text_path, trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="init_from"):
        tiny_config(tiny_clip_text_path, tmp_path, train="adapter")
    with pytest.raises(ValueError, match="adapter_lora"):
        tiny_config(tiny_clip_text_path, tmp_path, adapter_lora=True)
    with pytest.raises(ValueError, match="projection_dim"):
        train_diffusion(
            tiny_config(tiny_clip_text_path, tmp_path / "a", unet=None, init_from=str(trained), train="adapter"),
            show_progress=False,
        )
    from tiny_pipelines import clip_text_model, clip_tokenizer

    narrow = tmp_path / "narrow"
    clip_text_model(5, hidden_size=16, num_attention_heads=2).save_pretrained(narrow)
    clip_tokenizer().save_pretrained(narrow)
    with pytest.raises(ValueError, match="projection_dim: 32"):
        train_diffusion(
            tiny_config(narrow, tmp_path / "b", unet=None, init_from=str(trained), train="lora"), show_progress=False
        )


def test_fine_tuning_a_stable_diffusion_unet_on_vae_latents(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from tiny_pipelines import build_sd

    sd = build_sd()
    sd.scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    )
    sd.save_pretrained(tmp_path / "sd")
    config = tiny_config(
        tmp_path / "sd", tmp_path / "tuned", unet=None, init_from=str(tmp_path / "sd"), steps=2, lr=1e-2, ema_decay=None
    )
    result = train_diffusion(config, show_progress=False)
    assert np.isfinite(result.loss)
    pipe = CLIPConditionedPipeline.from_pretrained(result.pipeline_dir)
    assert pipe.vae is not None and pipe.unet.config.in_channels == 4
    # the noise schedule (and prediction type) of the pipeline it started from
    for key in ("beta_schedule", "beta_start", "beta_end", "prediction_type"):
        assert pipe.scheduler.config[key] == sd.scheduler.config[key], key
    before = load_file(str(tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors"))
    after = unet_weights(result.pipeline_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    images = pipe(
        "a red circle",
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    # the diffusers pipeline loads the fine-tuned parts back as well
    tuned = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", unet=pipe.unet, safety_checker=None)
    assert tuned.unet is pipe.unet


def test_vae_that_does_not_fit_the_image_size_is_an_error(tiny_clip_text_path, tmp_path: Path) -> None:
    from tiny_pipelines import _small_vae

    _small_vae(
        block_out_channels=(4, 4),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="multiple of the VAE's downsampling"):
        train_diffusion(
            tiny_config(tiny_clip_text_path, tmp_path / "run", vae=str(tmp_path / "vae"), image_size=17),
            show_progress=False,
        )
    assert not (tmp_path / "run").exists()


def test_pipeline_from_the_last_checkpoint_equals_the_saved_pipeline(trained: Path) -> None:
    from clipcond.training.diffusion.setup import pipeline_from_checkpoint

    config = TrainDiffusionConfig.from_yaml(trained.parent / "train_config.yaml")
    pipe = pipeline_from_checkpoint(config, trained.parent / "checkpoints" / "step-000000003")
    saved = unet_weights(trained)
    assert all(torch.equal(saved[k], v) for k, v in pipe.unet.state_dict().items())
    raw = pipeline_from_checkpoint(config, trained.parent / "checkpoints" / "step-000000003", use_ema=False)
    assert any(not torch.equal(saved[k], v) for k, v in raw.unet.state_dict().items())


def test_cosine_schedule_min_snr_and_trailing_spacing_reach_the_saved_pipeline(
    tiny_clip_text_path, tmp_path: Path
) -> None:
    run = train_diffusion(
        tiny_config(
            tiny_clip_text_path,
            tmp_path / "cos",
            prediction_type="v_prediction",
            beta_schedule="squaredcos_cap_v2",
            snr_gamma=5.0,
            timestep_spacing="trailing",
            sample_scheduler="DDPMScheduler",
            steps=2,
        ),
        show_progress=False,
    )
    assert np.isfinite(run.loss)
    scheduler = CLIPConditionedPipeline.from_pretrained(run.pipeline_dir).scheduler
    assert type(scheduler).__name__ == "DDPMScheduler"
    scheduler = scheduler.config
    assert (scheduler.beta_schedule, scheduler.prediction_type, scheduler.timestep_spacing) == (
        "squaredcos_cap_v2",
        "v_prediction",
        "trailing",
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_each_example_by_its_clipped_snr(prediction_type: str) -> None:
    from diffusers import DDPMScheduler

    from clipcond.training.diffusion.loop import _denoising_loss

    schedule = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    timesteps = torch.tensor([5, 300, 900])
    prediction, target = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    alphas_cumprod = schedule.alphas_cumprod[timesteps].double()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = torch.clamp(snr, max=5.0) / (snr + 1 if prediction_type == "v_prediction" else snr)
    per_example = ((prediction - target) ** 2).mean(dim=(1, 2, 3)).double()
    expected = (per_example * weights).mean()
    assert torch.allclose(_denoising_loss(prediction, target, timesteps, schedule, 5.0).double(), expected, rtol=1e-5)
    assert weights[0] < 1 and weights[2] > weights[0]  # the low-noise example is down-weighted
    plain = _denoising_loss(prediction, target, timesteps, schedule, None)
    assert torch.allclose(plain, ((prediction - target) ** 2).mean())


def test_bad_snr_gamma_and_beta_schedule_are_rejected(tiny_clip_text_path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="snr_gamma"):
        tiny_config(tiny_clip_text_path, tmp_path, snr_gamma=0.0)
    for name in ("DDPMPipeline", "NoSuchScheduler", "DDPM"):
        with pytest.raises(ValueError, match="sample_scheduler"):
            tiny_config(tiny_clip_text_path, tmp_path, sample_scheduler=name)
    from clipcond.config import config_from_dict

    settings = dataclasses.asdict(tiny_config(tiny_clip_text_path, tmp_path))
    with pytest.raises(ValueError, match="beta_schedule"):
        config_from_dict(TrainDiffusionConfig, {**settings, "beta_schedule": "cosine"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mixed_precision", ["bf16", "fp16"])
def test_gpu_training_in_mixed_precision(tiny_clip_text_path, tmp_path: Path, mixed_precision: str) -> None:
    """On a GPU the loop runs under accelerate's autocast, keeps float32 master weights, its
    pipeline generates on the GPU, and a resume from a checkpoint redoes the last step exactly."""
    import shutil

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # accelerate keeps one mixed-precision setting per process
    config = tiny_config(tiny_clip_text_path, tmp_path, mixed_precision=mixed_precision)
    result = train_diffusion(config, show_progress=False)
    weights = unet_weights(result.pipeline_dir)
    assert all(tensor.dtype == torch.float32 and torch.isfinite(tensor).all() for tensor in weights.values())
    pipe = CLIPConditionedPipeline.from_pretrained(result.pipeline_dir).to("cuda")
    images = pipe(
        "a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    checkpoints = tmp_path / "checkpoints"
    step3 = load_file(str(checkpoints / "step-000000003" / "unet.safetensors"))
    shutil.rmtree(checkpoints / "step-000000003")
    shutil.rmtree(result.pipeline_dir)
    train_diffusion(config, resume=True, show_progress=False)
    again = load_file(str(checkpoints / "step-000000003" / "unet.safetensors"))
    assert (
        max((step3[name] - again[name]).abs().max().item() for name in step3) < 1e-4
    )  # GPU kernels need not be bit-exact
