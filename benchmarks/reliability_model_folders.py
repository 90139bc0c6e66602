"""The reliability benchmark's "model-folder" group: model folders damaged as an interrupted copy
or a lost file leaves them, read by each ``clipcond`` command that loads one. Every case expects
one ``error:`` line naming the damaged file, exit status 1 or 2, and no output; the first also
records what diffusers alone makes of the same folder (a tokenizer of two tokens, no error)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import yaml
from reliability_cases import Case, cli, last_line
from result_paths import REPO

GROUP = "model-folder"


def _cut_in_half(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _vocabulary_removed(tokenizer: Path) -> Path:
    """A CLIP tokenizer folder without tokenizer.json, vocab.json and merges.txt; returns the
    file the error is expected to name."""
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (tokenizer / name).unlink()
    return tokenizer / "vocab.json"


def _merges_cut_at_a_line_end(tokenizer: Path) -> Path:
    """A CLIP tokenizer folder in the hub's layout (vocab.json and merges.txt, no tokenizer.json)
    whose merges.txt kept only its first 1,000 rules, as a copy stopped at a line's end leaves
    it; returns it."""
    (tokenizer / "tokenizer.json").unlink()
    merges = tokenizer / "merges.txt"
    lines = merges.read_text(encoding="utf-8").splitlines(keepends=True)
    merges.write_text("".join(lines[:1001]), encoding="utf-8")  # line 0: the #version header
    return merges


def _diffusers_sd_folder(folder: Path) -> Path:
    """A small StableDiffusionPipeline (random weights) saved by diffusers."""
    from bench_pipeline import components
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **components("small"), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder)
    return folder


def _refusal(name: str, argv: list[str], folder: Path, named: str, output: Path | None, note: str = "") -> Case:
    """Run ``clipcond <argv>``: it must exit 1 or 2 with one ``error:`` line naming `folder` and
    the damaged file `named` (as the message writes it: a pipeline's files behind their
    folder, other files by their whole path), print no traceback, and leave `output` (when
    given) absent."""
    status, _, err = cli(*argv)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    names = len(errors) == 1 and str(folder) in errors[0] and named in errors[0]
    written = output is not None and output.exists()
    passed = status in (1, 2) and names and "Traceback" not in err and not written
    observed = (
        f"{note}exit {status}; {len(errors)} error line(s), naming {named}: {'yes' if names else 'no'}; "
        f"{last_line(err)[:200]}" + ("; output written" if written else "")
    )
    return Case(GROUP, name, "exit 1 or 2, one error line naming the damaged file; no output", observed, passed)


def _copy(source: Path, folder: Path, damage: Callable[[Path], Path]) -> tuple[Path, Path]:
    """A copy of `source` at `folder` with `damage` done to it; (the copy, the file named)."""
    shutil.copytree(source, folder)
    return folder, damage(folder)


def model_folder_cases(work: Path) -> list[Case]:
    """generate, encode, eval-clip, train-diffusion (its text_encoder and init_from) and train-t5
    on damaged model folders."""
    from diffusers import StableDiffusionPipeline

    from clipcond.models import ClipTwoTower, load_model_config, save_clip
    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL

    root = work / "model-folders"
    sd = _diffusers_sd_folder(root / "sd")
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\n", encoding="utf-8")
    cases = []

    folder, _ = _copy(sd, root / "sd-no-vocabulary", lambda f: _vocabulary_removed(f / "tokenizer"))
    tokens = len(StableDiffusionPipeline.from_pretrained(folder).tokenizer)
    output = root / "no-vocabulary.png"
    argv = ["generate", "a red circle", "--model", str(folder), "-o", str(output), "--steps", "1"]
    note = f"diffusers alone: a tokenizer of {tokens} tokens, no error; clipcond: "
    name = "generate --model: a diffusers folder's tokenizer without its vocabulary"
    cases.append(_refusal(name, argv, folder, "tokenizer/vocab.json", output, note))

    folder, _ = _copy(sd, root / "sd-merges-cut", lambda f: _merges_cut_at_a_line_end(f / "tokenizer"))
    word = "photograph"
    pieces = len(StableDiffusionPipeline.from_pretrained(folder).tokenizer(word).input_ids) - 2
    whole = len(StableDiffusionPipeline.from_pretrained(sd).tokenizer(word).input_ids) - 2
    output = root / "merges-cut.png"
    argv = ["generate", "a red circle", "--model", str(folder), "-o", str(output), "--steps", "1"]
    note = f"diffusers alone: {word!r} read as {pieces} tokens (whole: {whole}), no error; clipcond: "
    name = "generate --model: a diffusers folder's merges.txt cut at a line's end (the hub's tokenizer layout)"
    cases.append(_refusal(name, argv, folder, "tokenizer/merges.txt", output, note))

    unet = "unet/diffusion_pytorch_model.safetensors"
    folder, _ = _copy(sd, root / "sd-unet-cut", lambda f: _cut_in_half(f / unet))
    output = root / "unet-cut.png"
    argv = ["generate", "a red circle", "--model", str(folder), "-o", str(output), "--steps", "1"]
    cases.append(_refusal("generate --model: a diffusers folder's UNet weights cut short", argv, folder, unet, output))

    folder, _ = _copy(sd, root / "sd-tokenizer-cut", lambda f: _cut_in_half(f / "tokenizer/tokenizer.json"))
    output = root / "encoded"
    argv = ["encode", "--pipeline", str(folder), "--prompts", str(prompts), "--out", str(output), "--no-progress"]
    name = "encode --pipeline: a diffusers folder's tokenizer.json cut short"
    cases.append(_refusal(name, argv, folder, "tokenizer/tokenizer.json", output))

    clip = save_clip(ClipTwoTower(load_model_config(REPO / "configs/models/clip-tiny.yaml")), root / "clip")
    folder, named = _copy(clip, root / "clip-cut", lambda f: _cut_in_half(f / "text_encoder/model.safetensors"))
    argv = ["eval-clip", "--model", str(folder), "--pairs", "8", "--images-per-class", "1"]
    name = "eval-clip --model: a save_clip folder's text weights cut short"
    cases.append(_refusal(name, argv, folder, str(named), None))

    folder, named = _copy(BUNDLED_MODEL, root / "bundled-no-vocabulary", lambda f: _vocabulary_removed(f / "tokenizer"))
    output = root / "diffusion-run"
    config = root / "diffusion.yaml"
    config.write_text(yaml.safe_dump(_diffusion_config(folder, output)), encoding="utf-8")
    argv = ["train-diffusion", "--config", str(config), "--no-progress"]
    name = "train-diffusion: the text_encoder's tokenizer without its vocabulary"
    cases.append(_refusal(name, argv, folder, str(named), output))

    folder, named = _copy(sd, root / "sd-init-unet-cut", lambda f: _cut_in_half(f / unet))
    output = root / "init-from-run"
    config = root / "init-from.yaml"
    settings = {**_diffusion_config(sd / "text_encoder", output), "init_from": str(folder)}
    del settings["unet"]
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    argv = ["train-diffusion", "--config", str(config), "--no-progress"]
    cases.append(_refusal("train-diffusion: init_from's UNet weights cut short", argv, folder, str(named), output))

    cases.append(_t5_resume_case(root))
    return cases


def _diffusion_config(text_encoder: Path, output_dir: Path) -> dict:
    """The bundled model's train-diffusion config (configs/diffusion/shapes-tiny.yaml), reading
    `text_encoder`, cut to 2 steps of two 16x16 images."""
    settings = yaml.safe_load((REPO / "configs/diffusion/shapes-tiny.yaml").read_text(encoding="utf-8"))
    settings.update(
        text_encoder=str(text_encoder), output_dir=str(output_dir), image_size=16, batch_size=2, steps=2, warmup_steps=1
    )
    return settings


def _t5_resume_case(root: Path) -> Case:
    """train-t5 stopped before its last checkpoint, its kept tokenizer.json then cut short:
    ``--resume`` must name the file and leave the run folder as it was."""
    run = root / "t5-run"
    config = root / "t5.yaml"
    settings = yaml.safe_load((REPO / "configs/train/t5-tiny-shapes.yaml").read_text(encoding="utf-8"))
    settings.update(
        model={**settings["model"], "d_model": 16, "d_ff": 32, "d_kv": 8, "num_layers": 1},
        tokenizer={**settings["tokenizer"], "train_captions": 400, "vocab_size": 128},
        batch_size=4,
        steps=4,
        checkpoint_every=2,
        eval_every=0,
        eval_captions=16,
        log_every=1,
        output_dir=str(run),
    )
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    status, _, err = cli("train-t5", "--config", str(config), "--no-progress")
    if status != 0:
        return Case(
            GROUP, "train-t5 --resume: the kept tokenizer.json cut short", "", f"setup run: {last_line(err)}", None
        )
    shutil.rmtree(sorted((run / "checkpoints").glob("step-*"))[-1])  # stopped before its last checkpoint
    named = _cut_in_half(run / "tokenizer" / "tokenizer.json")
    before = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    case = _refusal(
        "train-t5 --resume: the kept tokenizer.json cut short",
        ["train-t5", "--config", str(config), "--resume", "--no-progress"],
        run,
        str(named),
        None,
    )
    after = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    unchanged = before == after
    return case._replace(
        expected=case.expected + "; the run folder unchanged",
        observed=case.observed + ("; run folder unchanged" if unchanged else "; run folder CHANGED"),
        passed=bool(case.passed) and unchanged,
    )
