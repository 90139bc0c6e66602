"""Every subcommand answers a mistake the user can fix with one line, ``error: ...``, on stderr:
exit 2 for a wrong command line or file, 1 for a run that failed; ``--debug`` adds the
traceback, and an unexpected exception (a bug) keeps its traceback.

Most cases call `clipcond.cli.main` in-process; two run the installed ``clipcond`` script.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipcond.cli import main
from clipcond.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = str(REPO / "configs" / "models" / "clip-tiny.yaml")
PYTHON_TAG = '!!python/object/apply:os.system ["echo pwned > {marker}"]\n'


def one_error(capsys, argv: list[str], status: int) -> str:
    """Run `clipcond argv`, check its exit status and that stderr holds exactly one line
    starting with ``error:`` and no traceback; return that line."""
    assert main(argv) == status
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ------------------------------------------------------------------ generate


def test_generate_refuses_missing_local_paths_before_loading_anything(tmp_path, capsys) -> None:
    png = str(tmp_path / "a.png")
    for value in (str(tmp_path / "missing"), "./missing-model", "~/missing-model", "runs/a/model"):
        line = one_error(capsys, ["generate", "a", "-o", png, "--model", value], 2)
        assert f"--model {value}: no such file or folder" in line
    for value in (str(tmp_path / "lora.safetensors"), "my-lora.safetensors"):
        line = one_error(capsys, ["generate", "a", "-o", png, "--lora", value], 2)
        assert f"--lora {value}: no such file or folder" in line
    assert not (tmp_path / "a.png").exists()


def test_the_hub_id_rule(tmp_path, monkeypatch) -> None:
    """`name` and `org/name` are hub ids unless they exist on disk; other forms are local paths."""
    from clipcond.pipelines.saved_pipelines import model_source

    assert model_source("org/name", "--model") == "org/name"
    assert model_source("stable-diffusion-v1-5", "--model") == "stable-diffusion-v1-5"
    for local in ("./name", "/name", "~/name", "a/b/c", "a\\b", ".hidden", "org/name.safetensors", "org/../x"):
        with pytest.raises(UsageError, match="no such file or folder"):
            model_source(local, "--lora")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert model_source("org/name", "--model") == Path("org/name")  # on disk: the folder wins


def test_generate_checks_the_output_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    existing = tmp_path / "old.png"
    existing.write_bytes(b"precious")
    line = one_error(capsys, ["generate", "a", "-o", str(existing)], 2)
    assert "already exists; pass --force" in line and existing.read_bytes() == b"precious"
    monkeypatch.chdir(tmp_path)  # the default -o out.png is refused the same way
    Path("out.png").write_bytes(b"precious")
    assert "out.png already exists" in one_error(capsys, ["generate", "a"], 2)
    assert Path("out.png").read_bytes() == b"precious"
    (tmp_path / "file").write_text("")
    assert "is a file, not a folder" in one_error(capsys, ["generate", "a", "-o", "file/x/a.png"], 2)
    assert "must end in .png" in one_error(capsys, ["generate", "a", "-o", "a.jpg"], 2)
    (tmp_path / "folder.png").mkdir()
    assert "is a folder" in one_error(capsys, ["generate", "a", "-o", "folder.png"], 2)
    assert "--n and --steps must be >= 1" in one_error(capsys, ["generate", "a", "-o", "b.png", "--steps", "0"], 2)
    line = one_error(capsys, ["generate", "a", "-o", "b.png", "--lora-scale", "0.5"], 2)
    assert "--lora-scale 0.5 scales the --lora weights: give --lora too" in line
    line = one_error(capsys, ["generate", "a", "-o", "b.png", "--lora", "x", "--lora-scale", "inf"], 2)
    assert "--lora-scale must be a finite number, got inf" in line
    assert "--guidance must be a finite" in one_error(capsys, ["generate", "a", "-o", "b.png", "--guidance", "nan"], 2)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder nobody can create files in")
def test_generate_tries_writing_where_the_output_goes(capsys) -> None:
    line = one_error(capsys, ["generate", "a", "-o", "/proc/out.png"], 2)
    assert "-o/--output /proc/out.png: cannot write in /proc" in line


@pytest.mark.parametrize(
    "seed, n, taken",
    [
        (-(2**63), 1, True),  # torch.Generator.manual_seed's least seed
        (-(2**63) - 1, 1, False),
        (2**64 - 1, 1, True),  # its greatest, for one image
        (2**64 - 2, 2, True),  # two images: seeds 2**64 - 2 and 2**64 - 1
        (2**64 - 1, 2, False),
    ],
)
def test_generate_takes_every_seed_torch_takes_for_each_image_and_no_other(tmp_path, capsys, seed, n, taken) -> None:
    """At the edges of torch's seed range: a seed that is taken passes on to the next check (the
    `--model` given is a file, refused after the numbers)."""
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    argv = ["generate", "a", "-o", str(tmp_path / "a.png"), "--seed", str(seed), "--n", str(n), "--model", str(weights)]
    line = one_error(capsys, argv, 2)
    if taken:
        assert f"--model {weights} is a file" in line
    else:
        assert f"--seed must be in [-2**63, 2**64 - --n] (each image i takes seed + i), got {seed}" in line


def test_generate_answers_a_damaged_model_folder_or_a_seed_torch_cannot_take_in_one_line(tmp_path, capsys) -> None:
    import shutil

    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL

    png = str(tmp_path / "a.png")
    for seed in ("18446744073709551616", "18446744073709551615"):  # 2**64, and 2**64 - 1 with --n 2
        line = one_error(capsys, ["generate", "a", "-o", png, "--seed", seed, "--n", "2"], 2)
        assert "--seed must be in [-2**63, 2**64 - --n]" in line
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    line = one_error(capsys, ["generate", "a", "-o", png, "--model", str(weights)], 2)
    assert f"--model {weights} is a file; give the folder a pipeline was saved to" in line
    model = shutil.copytree(BUNDLED_MODEL, tmp_path / "model")
    (model / "vocabulary.txt").write_bytes(b"red \xff circle")
    line = one_error(capsys, ["generate", "a", "-o", png, "--model", str(model)], 2)
    assert f"--model {model}: {model / 'vocabulary.txt'} is not UTF-8 text" in line
    (model / "vocabulary.txt").unlink()
    encoder = model / "text_encoder" / "model.safetensors"
    encoder.write_bytes(encoder.read_bytes()[:5000])
    line = one_error(capsys, ["generate", "a", "-o", png, "--model", str(model)], 2)
    assert f"--model {model}: cannot load: " in line
    assert not Path(png).exists()


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu_allocator", "cuda_out_of_memory"])
def test_generate_out_of_memory_is_a_failed_run_in_one_line(tmp_path, capsys, monkeypatch, gpu) -> None:
    from types import SimpleNamespace

    import torch
    from diffusers import DDIMScheduler

    import clipcond.pipelines.generate as generate

    class Hungry:
        unet_reads_a_mask = False
        scheduler = DDIMScheduler()  # --steps is checked against it
        unet = SimpleNamespace(config=SimpleNamespace(sample_size=32))  # and --n images of the default size
        vae_scale_factor = 1  # against the memory there is
        config = SimpleNamespace(syntax="a1111")  # the vocabulary warning reads the prompt in it

        def __call__(self, *args, **kwargs):
            if gpu:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 19.00 GiB")
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(generate, "_load", lambda model, loras, embeddings: Hungry())
    monkeypatch.setattr(generate, "check_prompt_against", lambda pipe, *texts: None)
    png = tmp_path / "a.png"
    line = one_error(capsys, ["generate", "a", "-o", str(png), "--n", "400"], 1)
    assert "out of memory sampling 400 image(s) of default x default pixels; nothing was written. Lower --n" in line
    assert not png.exists()


def test_generate_reports_what_needs_the_model_in_one_line(tmp_path, capsys) -> None:
    png = str(tmp_path / "a.png")
    (tmp_path / "not-a-pipeline").mkdir()
    line = one_error(capsys, ["generate", "a", "-o", png, "--model", str(tmp_path / "not-a-pipeline")], 2)
    assert "cannot load" in line and "model_index.json" in line
    assert "--height must be a positive int for this model, got 0" in one_error(
        capsys, ["generate", "a", "-o", png, "--height", "0"], 2
    )
    assert "--clip-skip 40: `clip_skip` must be between" in one_error(
        capsys, ["generate", "a", "-o", png, "--clip-skip", "40"], 2
    )
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "weights.safetensors").write_bytes(b"not safetensors")
    line = one_error(capsys, ["generate", "a", "-o", png, "--lora", str(tmp_path / "lora"), "--steps", "1"], 2)
    assert f"--lora {tmp_path / 'lora'}: cannot load LoRA weights" in line
    assert not (tmp_path / "a.png").exists()


def test_generate_stops_on_non_finite_latents_and_writes_nothing(tmp_path, capsys, monkeypatch) -> None:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler  # the bundled model's

    original = EulerAncestralDiscreteScheduler.step

    def step_into_nan(self, model_output, timestep, sample, *args, **kwargs):
        (latents, *rest) = original(self, model_output, timestep, sample, *args, **kwargs)
        return (torch.full_like(latents, float("nan")), *rest) if self.step_index == 2 else (latents, *rest)

    monkeypatch.setattr(EulerAncestralDiscreteScheduler, "step", step_into_nan)
    line = one_error(capsys, ["generate", "a red circle", "-o", str(tmp_path / "a.png"), "--steps", "3"], 1)
    assert "latents became NaN or infinite at step 2 of 3" in line and "nothing was written" in line
    assert list(tmp_path.iterdir()) == []


def test_generate_names_a_hub_id_it_could_not_fetch(tmp_path, capsys, monkeypatch) -> None:
    """No such model on the hub (and here no hub at all). Only the error line is checked: in this
    process diffusers' logger may still write to a stream an earlier test's capture closed."""
    monkeypatch.chdir(tmp_path)  # "nobody/no-such-model" is no folder here
    assert main(["generate", "a", "-o", "a.png", "--model", "nobody/no-such-model"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: --model nobody/no-such-model: no such folder, and the Hugging Face Hub could not provide it: "
    ), errors
    assert not (tmp_path / "a.png").exists()


def test_generate_with_a_text_encoder_giving_nan_exits_1_and_writes_nothing(tmp_path, capsys, monkeypatch) -> None:
    import torch

    from clipcond import window_encoding

    original = window_encoding.run_clip

    def nan_states(*args, **kwargs):
        states, pooled = original(*args, **kwargs)
        return (None if states is None else torch.full_like(states, float("nan"))), pooled

    monkeypatch.setattr(window_encoding, "run_clip", nan_states)
    line = one_error(capsys, ["generate", "a red circle", "-o", str(tmp_path / "a.png"), "--steps", "2"], 1)
    assert "nothing was written: the CLIP encoder CLIPTextModel (torch.float32) gave NaN" in line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the training commands


def _clip_config(tmp_path: Path, **overrides) -> Path:
    settings = dict(model=TINY_MODEL, batch_size=8, steps=3, output_dir=str(tmp_path / "run"), **overrides)
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _snapshot(output_dir: Path, config) -> None:
    """A run folder holding `config`'s run (what `prepare_output_dir` writes)."""
    output_dir.mkdir(parents=True)
    (output_dir / "train_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


@pytest.mark.parametrize("command", ["train-clip", "train-diffusion", "train-t5"])
def test_training_commands_report_config_mistakes_in_one_line(command, tmp_path, capsys) -> None:
    line = one_error(capsys, [command, "--config", str(tmp_path / "missing.yaml")], 2)
    assert f"--config: no such file {tmp_path / 'missing.yaml'}" in line
    marker = tmp_path / "pwned"
    untrusted = tmp_path / "untrusted.yaml"
    untrusted.write_text("steps: " + PYTHON_TAG.format(marker=marker))
    line = one_error(capsys, [command, "--config", str(untrusted)], 2)
    assert "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply" in line
    assert str(untrusted) in line and not marker.exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1, 2\n")
    assert str(broken) in one_error(capsys, [command, "--config", str(broken)], 2)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("stepz: 3\n")
    assert "stepz" in one_error(capsys, [command, "--config", str(unknown)], 2)


def test_a_run_folder_of_another_run_or_config_is_refused_in_one_line(tmp_path, capsys) -> None:
    from clipcond.training.clip.config import TrainClipConfig

    path = _clip_config(tmp_path)
    _snapshot(tmp_path / "run", TrainClipConfig.from_yaml(path))
    line = one_error(capsys, ["train-clip", "--config", str(path), "--no-progress"], 2)
    assert f"{tmp_path / 'run'} already holds a run; pass --resume" in line
    line = one_error(capsys, ["train-clip", "--config", str(path), "--resume", "--steps", "5", "--no-progress"], 2)
    assert "the config changed (steps)" in line
    (tmp_path / "run" / "train_config.yaml").write_text("steps: [3\n")  # a corrupt snapshot
    line = one_error(capsys, ["train-clip", "--config", str(path), "--resume", "--no-progress"], 2)
    assert f"cannot resume {tmp_path / 'run'}: its train_config.yaml does not parse" in line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["train_config.yaml"]
    (tmp_path / "run" / "train_config.yaml").write_text("steps: 3\nbatch_size: 8\nmodel: conf")  # cut short, still YAML
    line = one_error(capsys, ["train-clip", "--config", str(path), "--resume", "--no-progress"], 2)
    assert "its train_config.yaml was cut short" in line and "the snapshot is damaged" in line
    shutil.rmtree(tmp_path / "run")
    _snapshot(tmp_path / "run", TrainClipConfig.from_yaml(path))
    (tmp_path / "run" / "checkpoints").write_text("")
    line = one_error(capsys, ["train-clip", "--config", str(path), "--resume", "--no-progress"], 2)
    assert f"{tmp_path / 'run' / 'checkpoints'} is not a folder, where the run keeps its checkpoints" in line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "train_config.yaml"]


def test_a_path_the_training_config_names_is_reported_in_one_line(tmp_path, capsys) -> None:
    config = {
        "text_encoder": str(tmp_path / "no-encoder"),
        "unet": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 8},
        "image_size": 16,
        "batch_size": 2,
        "steps": 1,
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "diffusion.yaml"
    path.write_text(yaml.safe_dump(config))
    line = one_error(capsys, ["train-diffusion", "--config", str(path), "--no-progress"], 2)
    assert f"no text encoder at {tmp_path / 'no-encoder'}" in line
    assert not (tmp_path / "run").exists()


@pytest.fixture
def sd_folder(diffusers_sd_folder) -> Path:
    """conftest's tiny StableDiffusionPipeline folder (read only)."""
    return diffusers_sd_folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _saved_projection_cut(path: Path) -> None:
    """A learned projection saved where a CLIPConditionedPipeline keeps it, then cut short."""
    from clipcond.projection import TextProjection

    TextProjection(projection_dim=32, clip_width=32).save_pretrained(path.parent)
    _truncate(path)


# (the key that names the damaged folder, the file damaged in it, the damage, what the error says)
DAMAGED_DIFFUSION_PARTS = {
    "text_encoder_weights_truncated": (
        "text_encoder",
        "text_encoder/model.safetensors",
        _truncate,
        "text_encoder/model.safetensors cannot be read as safetensors (Error while deserializing header",
    ),
    "text_encoder_weights_empty": (
        "text_encoder",
        "text_encoder/model.safetensors",
        lambda path: path.write_bytes(b""),
        "text_encoder/model.safetensors cannot be read as safetensors (Error while deserializing header",
    ),
    "text_encoder_config_empty": (
        "text_encoder",
        "text_encoder/config.json",
        lambda path: path.write_text(""),
        "text_encoder/config.json is empty",
    ),
    "text_encoder_config_a_list": (
        "text_encoder",
        "text_encoder/config.json",
        lambda path: path.write_text("[]"),
        "text_encoder/config.json holds a JSON list, not an object",
    ),
    "model_index_not_json": (
        "init_from",
        "model_index.json",
        lambda path: path.write_text("{oops"),
        "model_index.json: Expecting property name",
    ),
    "model_index_a_list": (
        "init_from",
        "model_index.json",
        lambda path: path.write_text("[]"),
        "model_index.json: expected a JSON object, got list",
    ),
    "unet_weights_truncated": (
        "init_from",
        "unet/diffusion_pytorch_model.safetensors",
        _truncate,
        "unet/diffusion_pytorch_model.safetensors cannot be read as safetensors",
    ),
    "unet_config_not_json": (
        "init_from",
        "unet/config.json",
        lambda path: path.write_text("{"),
        "config.json is no valid JSON",
    ),
    "scheduler_config_not_json": (
        "init_from",
        "scheduler/scheduler_config.json",
        lambda path: path.write_text("{"),
        "scheduler/scheduler_config.json is no valid JSON",
    ),
    "projection_weights_truncated": (
        "init_from",
        "text_projection/diffusion_pytorch_model.safetensors",
        _saved_projection_cut,
        "text_projection/diffusion_pytorch_model.safetensors cannot be read as safetensors",
    ),
    "vae_weights_empty": (
        "init_from",
        "vae/diffusion_pytorch_model.safetensors",
        lambda path: path.write_bytes(b""),
        "vae/diffusion_pytorch_model.safetensors cannot be read as safetensors",
    ),
    "vae_key_weights_empty": (
        "vae",
        "vae/diffusion_pytorch_model.safetensors",
        lambda path: path.write_bytes(b""),
        "vae/diffusion_pytorch_model.safetensors cannot be read as safetensors",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_DIFFUSION_PARTS))
def test_a_damaged_model_folder_the_diffusion_config_names_is_one_line_before_any_work(
    case, sd_folder, tmp_path, capsys
) -> None:
    """Damaged weights or configs in the folder `text_encoder`, `init_from` or `vae` names: one
    error: line naming the key, the folder and the damaged file, exit 2, as `clipcond encode`
    gives for the same folders; no run folder is made, and a resumed one is left as it was."""
    import shutil

    key, damaged_file, damage, message = DAMAGED_DIFFUSION_PARTS[case]
    folder = tmp_path / "damaged"
    shutil.copytree(sd_folder, folder)
    damage(folder / damaged_file)
    named = folder / "text_encoder" if key == "text_encoder" else folder
    if damaged_file == "model_index.json":
        named = folder / "model_index.json"
    config = {
        "text_encoder": str(named if key == "text_encoder" else sd_folder / "text_encoder"),
        "image_size": 16,
        "batch_size": 2,
        "steps": 1,
        "output_dir": str(tmp_path / "run"),
    }
    if key == "init_from":
        config["init_from"] = str(folder)
    else:
        config["unet"] = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 8}
    if key == "vae":
        config["vae"] = str(folder)
    path = tmp_path / "diffusion.yaml"
    path.write_text(yaml.safe_dump(config))
    line = one_error(capsys, ["train-diffusion", "--config", str(path), "--no-progress"], 2)
    assert line.startswith(f"error: {key} {named}: ") and message in line, line
    assert str(folder / damaged_file) in line, line
    assert not (tmp_path / "run").exists()
    # a run folder being resumed is left as it was
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    _snapshot(tmp_path / "run", TrainDiffusionConfig.from_yaml(path))
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    line = one_error(capsys, ["train-diffusion", "--config", str(path), "--resume", "--no-progress"], 2)
    assert line.startswith(f"error: {key} {named}: ") and message in line, line
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: _truncate(folder / "text_encoder" / "model.safetensors"), "Error while deserializing header"),
        (lambda folder: (folder / "logit_scale.safetensors").write_bytes(b""), "Error while deserializing header"),
        (lambda folder: (folder / "clip_config.yaml").write_text("text:\n\twidth: 8\n"), "not valid YAML: line 2"),
    ],
    ids=["text_weights_truncated", "logit_scale_empty", "clip_config_tab"],
)
def test_a_damaged_init_from_of_train_clip_is_one_line_before_any_work(
    damage, message, saved_clip, tmp_path, capsys
) -> None:
    """A `save_clip` folder with truncated or empty weights, or a model YAML YAML cannot read:
    one error: line naming `init_from` and the folder, as eval-clip gives; no run folder."""
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(saved_clip, folder)
    damage(folder)
    settings = ["--set", "mode=finetune", "--set", "model=null", "--set", f"init_from={folder}"]
    line = one_error(capsys, ["train-clip", "--config", str(_clip_config(tmp_path)), "--no-progress", *settings], 2)
    assert line.startswith(f"error: init_from {folder}: ") and message in line, line
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def saved_clip(tmp_path_factory) -> Path:
    """A clip-tiny at its random init, saved: what the fine-tuning modes start from."""
    from clipcond.models import ClipTwoTower, load_model_config, save_clip

    return save_clip(ClipTwoTower(load_model_config(TINY_MODEL)), tmp_path_factory.mktemp("init") / "clip")


LORA = ["--set", "mode=lora", "--set", "model=null", "--set", "init_from={init}"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ([*LORA, "--set", "lora.r=0"], "`lora.r` must be an integer >= 1, got 0"),
        ([*LORA, "--set", "lora.alpha=0"], "`lora.alpha` must be a number > 0"),
        ([*LORA, "--set", "lora.dropout=1.5"], "`lora.dropout` must be a number in [0, 1), got 1.5"),
        ([*LORA, "--set", "lora.target_modules=[]"], "`lora.target_modules` must be a non-empty list"),
        ([*LORA, "--set", "lora.target_modules=[foo]"], "`lora.target_modules` ['foo'] match no module"),
        (["--set", "mode=finetune", "--set", "init_from={init}"], "`model` is only read in mode 'pretrain'"),
        (["--set", "init_from={init}"], "mode 'pretrain' starts from random weights and does not read `init_from`"),
        (["--set", "log_with=bogus"], "`log_with` must be one of accelerate's trackers"),
        (["--set", "mixed_precision=fp16"], "mixed_precision 'fp16' needs a CUDA GPU"),
    ],
)
def test_train_clip_settings_that_cannot_run_are_one_line_before_any_work(
    settings, message, saved_clip, tmp_path, capsys
) -> None:
    import torch

    if "mixed_precision=fp16" in settings and torch.cuda.is_available():
        pytest.skip("fp16 is valid with a GPU")
    settings = [setting.format(init=saved_clip) for setting in settings]
    line = one_error(capsys, ["train-clip", "--config", str(_clip_config(tmp_path)), "--no-progress", *settings], 2)
    assert message in line
    assert not (tmp_path / "run").exists()


def test_a_diverged_run_exits_1_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    import clipcond.training.clip.loop as loop
    from clipcond.training.loop import TrainingDiverged

    def diverging(config, **kwargs):
        raise TrainingDiverged("the loss became nan at step 3; the last good checkpoint is runs/x/step-000000002")

    monkeypatch.setattr(loop, "train_clip", diverging)
    line = one_error(capsys, ["train-clip", "--config", str(_clip_config(tmp_path)), "--no-progress"], 1)
    assert "loss became nan at step 3" in line


# ------------------------------------------------------------------ the CLIP commands


def test_eval_clip_mistakes(tmp_path, capsys) -> None:
    line = one_error(capsys, ["eval-clip", "--model", str(tmp_path / "missing")], 2)
    assert f"--model: no such folder {tmp_path / 'missing'}" in line
    assert "--pairs >= 2" in one_error(capsys, ["eval-clip", "--model", str(tmp_path), "--pairs", "1"], 2)
    line = one_error(capsys, ["eval-clip", "--model", str(tmp_path), "--manifest", str(tmp_path / "m.jsonl")], 2)
    assert "--manifest: no such file" in line
    (tmp_path / "taken.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for output, message in [
        (tmp_path / "taken.json", f"--output {tmp_path / 'taken.json'} already exists; pass --force"),
        (elsewhere, f"--output {elsewhere} is a folder; name a file"),
        (tmp_path / "clip_config.yaml", f"is inside --model {tmp_path}; write the metrics elsewhere"),
    ]:
        line = one_error(capsys, ["eval-clip", "--model", str(tmp_path), "--output", str(output), "--force"][:-1], 2)
        assert message in line
    assert (tmp_path / "taken.json").read_text() == "{}"  # refused before any work: nothing written
    line = one_error(capsys, ["eval-clip", "--model", str(tmp_path)], 2)  # a folder, but no CLIP in it
    assert f"--model {tmp_path}: cannot load a CLIP" in line


def test_eval_clip_with_fewer_than_2_usable_pairs_names_the_skips_in_one_line(saved_clip, tmp_path, capsys) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    manifest = tmp_path / "pairs.jsonl"
    lines = [{"image": "missing.png", "caption": "x"}, {"image": "a.png", "caption": "a red square"}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    line = one_error(capsys, ["eval-clip", "--model", str(saved_clip), "--manifest", str(manifest)], 2)
    assert f"--manifest {manifest}: retrieval needs at least 2 image-caption pairs, got 1" in line
    assert "(skipped samples: 1 (missing image: 1))" in line


def test_convert_clip_mistakes(tmp_path, capsys) -> None:
    import torch
    from safetensors.torch import save_file

    output = ["--output", str(tmp_path / "out")]
    line = one_error(capsys, ["convert-clip", "--checkpoint", str(tmp_path / "missing.pt"), *output], 2)
    assert "--checkpoint: no such file" in line
    pickled = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2)}, pickled)
    assert "refusing to load the pickle" in one_error(
        capsys, ["convert-clip", "--checkpoint", str(pickled), *output], 2
    )
    line = one_error(capsys, ["convert-clip", "--checkpoint", str(pickled), *output, "--trust-pickle"], 2)
    assert "not an OpenAI / open_clip ViT CLIP state dict" in line
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(pickled.read_bytes()[:50])
    line = one_error(capsys, ["convert-clip", "--checkpoint", str(truncated), *output, "--trust-pickle"], 2)
    assert line.startswith(f"error: --checkpoint {truncated}: ")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 16)
    assert f"--checkpoint {corrupt}: " in one_error(capsys, ["convert-clip", "--checkpoint", str(corrupt), *output], 2)
    weights = tmp_path / "w.safetensors"
    save_file({"weight": torch.zeros(2)}, str(weights))
    line = one_error(capsys, ["convert-clip", "--checkpoint", str(weights), "--output", str(tmp_path)], 2)
    assert "already exists" in line
    (tmp_path / "file").write_text("")
    line = one_error(
        capsys, ["convert-clip", "--checkpoint", str(weights), "--output", str(tmp_path / "file" / "b")], 2
    )
    assert f"{tmp_path / 'file'} is a file, not a folder" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_convert_clip_refuses_open_clip_variants_it_cannot_convert(tmp_path, capsys) -> None:
    """CLIPA (no visual.ln_pre) and a text tower of another vocabulary (*-worldwide): one line, rc 2."""
    import torch
    from reference_openai_clip import OpenAIStyleCLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sizes = dict(embed_dim=8, image_size=16, patch_size=8, vision_width=64, vision_layers=1, vision_heads=1)
    text = dict(context_length=8, text_width=64, text_layers=1, text_heads=1)
    state = OpenAIStyleCLIP(**sizes, **text, vocab_size=49408).state_dict()
    clipa = {key: value for key, value in state.items() if not key.startswith("visual.ln_pre.")}
    worldwide = OpenAIStyleCLIP(**sizes, **text, vocab_size=1000).state_dict()
    for name, weights, message in (
        ("clipa", clipa, "missing 'visual.ln_pre.weight': an open_clip CLIPA model"),
        ("worldwide", worldwide, "token_embedding.weight has 1000 rows, not CLIP's BPE vocabulary of 49408"),
    ):
        checkpoint = tmp_path / f"{name}.safetensors"
        save_file(weights, str(checkpoint))
        output = tmp_path / name
        line = one_error(capsys, ["convert-clip", "--checkpoint", str(checkpoint), "--output", str(output)], 2)
        assert line.startswith(f"error: --checkpoint {checkpoint}: {message}"), line
        assert not output.exists() and not list(tmp_path.glob(f".{name}*"))


def test_init_clip_mistakes(tmp_path, capsys) -> None:
    out = ["-o", str(tmp_path / "m")]
    assert "--model: no such file" in one_error(capsys, ["init-clip", "--model", str(tmp_path / "x.yaml"), *out], 2)
    marker = tmp_path / "pwned"
    untrusted = tmp_path / "untrusted.yaml"
    untrusted.write_text("text: " + PYTHON_TAG.format(marker=marker))
    assert "could not determine a constructor" in one_error(capsys, ["init-clip", "--model", str(untrusted), *out], 2)
    assert not marker.exists()
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(Path(TINY_MODEL).read_text() + "colour: red\n")
    assert "colour" in one_error(capsys, ["init-clip", "--model", str(unknown), *out], 2)
    line = one_error(capsys, ["init-clip", "--model", TINY_MODEL, "-o", str(tmp_path)], 2)
    assert "already exists" in line
    (tmp_path / "file").write_text("")
    line = one_error(capsys, ["init-clip", "--model", TINY_MODEL, "-o", str(tmp_path / "file" / "m")], 2)
    assert f"{tmp_path / 'file'} is a file, not a folder" in line
    line = one_error(capsys, ["init-clip", "--model", TINY_MODEL, *out, "--seed", str(10**20)], 2)
    assert f"--seed must be in [-2**63, 2**64 - 1], got {10**20}" in line and not (tmp_path / "m").exists()
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ experiment


def test_experiment_mistakes(tmp_path, capsys, monkeypatch) -> None:
    import clipcond.lab.prepare as prepare

    assert str(tmp_path / "x.yaml") in one_error(capsys, ["experiment", str(tmp_path / "x.yaml")], 2)
    marker = tmp_path / "pwned"
    untrusted = tmp_path / "untrusted.yaml"
    untrusted.write_text("name: " + PYTHON_TAG.format(marker=marker))
    assert "could not determine a constructor" in one_error(capsys, ["experiment", str(untrusted)], 2)
    assert not marker.exists()

    def failing(*args, **kwargs):
        raise RuntimeError("prepare step `clipcond train-clip` failed with status 2")

    monkeypatch.setattr(prepare, "run_steps", failing)
    for name in ("configs", "clipcond"):  # a checkout without runs/: the shipped experiment plans its prepare steps
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    line = one_error(capsys, ["experiment", "configs/experiments/example-bundled.yaml", "--no-progress"], 1)
    assert "prepare step `clipcond train-clip` failed with status 2" in line

    shipped = yaml.safe_load((REPO / "configs" / "experiments" / "example-bundled.yaml").read_text())
    (tmp_path / "afile").write_text("")
    for change, message in [
        (dict(output_dir="afile"), "output_dir afile is a file, not a run folder"),
        (dict(output_dir="afile/run"), f"output_dir afile/run: {tmp_path / 'afile'} is a file, not a folder"),
        (dict(seeds=[0, 2**64]), f"seeds must be in [0, 2**64 - 1], got [0, {2**64}]"),
    ]:
        path = tmp_path / "changed.yaml"
        path.write_text(yaml.safe_dump({**shipped, **change}))
        for check in ([], ["--check"]):  # found by --check too, before any prepare step
            assert message in one_error(capsys, ["experiment", str(path), "--no-progress", *check], 2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps: 1\ndata:\n\tsource: shapes\n", r"line 3, column 1: .*found character '\\t'"),
        ("steps: 1\n---\nsteps: 2\n", "line 2, column 1: expected a single document"),
        ("steps: 1\n? [a, b]\n: 1\n", r"line 2: a key must be a plain value \(a name or a number\), got the list"),
        ("? {a: 1}\n: 1\n", r"line 1: a key must be a plain value \(a name or a number\), got the dict"),
    ],
    ids=["tab", "two_documents", "list_key", "mapping_key"],
)
def test_yaml_that_cannot_be_read_is_one_line_from_every_command(text, message, tmp_path, capsys) -> None:
    """Every command that reads a YAML names it, and the line, for text YAML cannot read and for
    a key that is a list or a mapping (`encode --conditioner` was a traceback for the first,
    `experiment --check` for the second, the others an unnamed 'unhashable type')."""
    import re

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "out"
    for argv in (
        ["encode", "--conditioner", str(path), "--prompts", str(prompts), "--out", str(out), "--no-progress"],
        ["train-clip", "--config", str(path), "--no-progress"],
        ["train-diffusion", "--config", str(path), "--no-progress"],
        ["init-clip", "--model", str(path), "-o", str(out)],
        ["experiment", str(path), "--check"],
    ):
        line = one_error(capsys, argv, 2)
        assert re.search(f"{re.escape(str(path))}: .*{message}", line), (argv, line)
    assert not out.exists()


# ------------------------------------------------------------------ --debug, and bugs


def test_debug_shows_the_traceback(tmp_path, capsys) -> None:
    for argv in (["--debug", "generate", "a", "-o", "a.jpg"], ["generate", "a", "-o", "a.jpg", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "UsageError" in err
        assert err.splitlines()[-1] == "error: -o/--output must end in .png, got a.jpg"
    path = tmp_path / "broken.yaml"
    path.write_text("steps: [1, 2\n")
    assert main(["--debug", "train-t5", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "yaml.parser.ParserError" in err and "The above exception was the direct cause" in err


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch) -> None:
    import clipcond.pipelines.generate as generate

    def buggy(args):
        raise ValueError("a bug, not a mistake of the user")

    monkeypatch.setattr(generate, "_check_arguments", buggy)
    with pytest.raises(ValueError, match="a bug"):
        main(["generate", "a"])


def test_the_installed_command_prints_one_line(tmp_path) -> None:
    """The console script, end to end: exactly one line on stderr, status 2; --debug adds the traceback."""
    script = Path(sys.executable).with_name("clipcond")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "clipcond.cli"]
    argv = ["generate", "a red circle", "--model", str(tmp_path / "missing")]
    done = subprocess.run([*command, *argv], capture_output=True, text=True, cwd=tmp_path, env={**os.environ})
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr
        == f"error: --model {tmp_path / 'missing'}: no such file or folder (a hub id is `name` or `org/name`)\n"
    )
    done = subprocess.run([*command, "--debug", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("Traceback (most recent call last)")


def test_generate_names_what_it_runs_for_a_pipeline_without_a_unet(tmp_path, capsys, t5_tokenizer_path) -> None:
    """A Flux folder: before, diffusers' list of the components from_pipe could not place."""
    from tiny_pipelines import build_flux

    from clipcond.cli import main

    build_flux(t5_tokenizer_path).save_pretrained(tmp_path / "flux")
    code = main(["generate", "a cat", "--model", str(tmp_path / "flux"), "-o", str(tmp_path / "x.png"), "--steps", "1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the loading progress bars
    assert (
        code == 2
        and last.startswith("error: --model")
        and last.endswith(
            "it holds a FluxPipeline, which has no UNet: clipcond runs a saved CLIPConditionedPipeline, "
            "or a diffusers Stable Diffusion 1.x/2.x or SDXL pipeline"
        )
    )
    assert not (tmp_path / "x.png").exists()
