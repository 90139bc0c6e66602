"""Run an experiment: every (setup, suite prompt, seed) image generated once, measured, recorded.

The run folder (`ExperimentConfig.output_dir`)::

    experiment.json                  what the results depend on: the config, suite and model digests
    results.jsonl                    one line per image (`clipcond.lab.results`)
    images/<setup>/<suite>/<index>-<seed>.png
    report.md, plots/, grids/        written by `clipcond.lab.report`

Resuming and changed configs: every result line carries a `key`, a hash of everything its
values depend on: the setup's name, sampling settings and pipeline folder digest (all files,
`clipcond.lab.digests`), the suite's name, the entry's index, category, prompt, objects and
relation, the seed, the image size, the metric names and the CLIP folder digest (with
`clip_score`). A run keeps the lines whose key it would produce itself (and whose image exists
and reads as a PNG) and generates the rest; all other lines are dropped from results.jsonl (the
count is printed) before anything new is written, but only once every model a pending image
needs has opened (`clipcond.lab.loading`: a damaged weights file fails the run with every line
kept). So re-running a finished experiment generates nothing, adding a seed or a setup
generates only the new images, and a changed pipeline, suite entry or setting never leaves a
stale result in the report. experiment.json also holds one fingerprint of the whole experiment
for the record, and the file-hash cache that spares re-reading unchanged weights.

Each image gets its own `torch.Generator().manual_seed(seed)` and a batch only holds prompts
of equal conditioning length (long prompts take more CLIP windows, and a batch pads every
prompt to its longest), so an image's noise and conditioning do not depend on `batch_size` or
its batch neighbours. Its pixels do, in the last bits: the UNet and VAE kernels round
differently for another number of rows (docs/pipeline.md). Measured on the bundled model, the
same image drawn in batches of 1, 5 or 8 differs by at most 1 grey level (8-bit PNG) and its
`clip_score` by up to 1.0e-5 (tests/test_lab_checks.py holds 1 grey level and 2e-5 on tiny
pipelines); a judged pass/fail can, rarely, flip. So `batch_size` is not part of the key: a
resume with another `batch_size`, or a batch that splits differently on a resume (only the
pending images are batched), keeps the finished images, which differ from a fresh run's only within these bounds.

Images of the current plan are the only PNGs under ``images/``: one the plan no longer holds
(a lowered `seeds`, a removed setup or suite entry) is deleted with its result line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from clipcond.devices import resolve_device
from clipcond.lab.config import ExperimentConfig, SetupConfig, check_experiment
from clipcond.lab.digests import folder_digest, model_files
from clipcond.lab.loading import check_loadable, loading, setup_pipeline
from clipcond.lab.metrics import ClipScorer, load_clip_scorer, shapes_judge_metrics
from clipcond.lab.results import (
    RESULTS_NAME,
    append_results,
    image_path,
    image_problem,
    read_results,
    rewrite_results,
    save_image,
    write_json_atomic,
)
from clipcond.lab.run_folder import EXPERIMENT_NAME, check_run_folder
from clipcond.lab.suites import LabPrompt, PromptSuite, prompt_spec
from clipcond.progress_bars import library_progress_bars
from clipcond.training.run_lock import RunFolderLock

# Bump when generation or a metric changes meaning: every earlier result becomes stale.
LAB_VERSION = 1


@dataclass(frozen=True)
class ImageJob:
    """One image of the experiment.

    Attributes:
        setup: the setup that draws it.
        suite: the suite's name; index: the entry's position in the suite; entry: the entry.
        seed: seeds the image's own generator.
        key: hash of everything the image's results depend on (module docstring).
        image: path of its PNG, relative to the run folder.
    """

    setup: SetupConfig
    suite: str
    index: int
    entry: LabPrompt
    seed: int
    key: str

    @property
    def image(self) -> str:
        """Path of the image's PNG, relative to the run folder."""
        return image_path(self.setup.name, self.suite, self.index, self.seed)


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _setup_record(config: ExperimentConfig, setup: SetupConfig, digest: str) -> dict[str, Any]:
    return {
        "name": setup.name,
        "pipeline_digest": digest,
        "native": setup.native,
        "steps": config.setup_steps(setup),
        "guidance_scale": config.setup_guidance(setup),
        "height": config.height,
        "width": config.width,
    }


def plan_jobs(
    config: ExperimentConfig, suites: Sequence[PromptSuite], pipeline_digests: dict[str, str], clip_digest: str | None
) -> list[ImageJob]:
    """Every image of the experiment, in order setup, suite, entry, seed, each with its key.

    Args:
        pipeline_digests: setup name -> `folder_digest` of its pipeline folder.
        clip_digest: `folder_digest` of the CLIP folder when `clip_score` is measured, else None.
    """
    measured = {"metrics": sorted(config.metrics), "clip_digest": clip_digest, "lab_version": LAB_VERSION}
    jobs = []
    for setup in config.setups:
        record = _setup_record(config, setup, pipeline_digests[setup.name])
        for suite in suites:
            for index, entry in enumerate(suite.prompts):
                spec = prompt_spec(entry)
                for seed in config.seeds:
                    key = _hash(
                        {"setup": record, "suite": suite.name, "index": index, "entry": spec, "seed": seed, **measured}
                    )
                    jobs.append(ImageJob(setup, suite.name, index, entry, seed, key))
    return jobs


def _experiment_record(
    config: ExperimentConfig, suites: Sequence[PromptSuite], pipeline_digests: dict[str, str], clip_digest: str | None
) -> dict[str, Any]:
    """What experiment.json records; `fingerprint` hashes all of it but the paths."""
    settings = {
        key: value
        for key, value in dataclasses.asdict(config).items()
        if key not in ("output_dir", "batch_size", "suites", "setups", "clip_score_model")
    }
    identity = {
        "settings": settings,
        "setups": [_setup_record(config, setup, pipeline_digests[setup.name]) for setup in config.setups],
        "suites": [{"name": suite.name, "digest": suite.digest} for suite in suites],
        "clip_digest": clip_digest,
        "lab_version": LAB_VERSION,
    }
    return {
        "fingerprint": _hash(identity),
        **identity,
        "paths": {
            "suites": {suite.name: str(suite.path) for suite in suites},
            "pipelines": {setup.name: setup.pipeline for setup in config.setups},
            "clip_score_model": config.clip_score_model,
        },
        "suite_prompts": {suite.name: [prompt_spec(entry) for entry in suite.prompts] for suite in suites},
        "seeds": list(config.seeds),
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


_JOB_FIELDS = ("setup", "suite", "index", "category", "prompt", "seed", "image")


def _valid_results(output: Path, jobs: Sequence[ImageJob]) -> tuple[dict[str, dict[str, Any]], int]:
    """The result lines this config would write (not stale, torn, edited, duplicate, or image unreadable).

    A line is kept when its key is a job's and its fields are the ones that job writes (an
    edited `seed`, `image` or `category` under a matching key is dropped and drawn again).

    Returns:
        The lines kept by key, and how many lines `_keep_results` will drop; nothing is written.
    """
    lines, unreadable = read_results(output / RESULTS_NAME)
    wanted = {job.key: job for job in jobs}
    kept: dict[str, dict[str, Any]] = {}
    for line in lines:
        job = wanted.get(line["key"])
        if job is None or line["key"] in kept or image_problem(output / job.image) is not None:
            continue
        fields = (job.setup.name, job.suite, job.index, job.entry.category, job.entry.prompt, job.seed, job.image)
        if tuple(line[name] for name in _JOB_FIELDS) == fields:
            kept[line["key"]] = line
    return kept, unreadable + len(lines) - len(kept)


def _keep_results(output: Path, kept: dict[str, dict[str, Any]], dropped: int) -> None:
    """Rewrite results.jsonl to the `kept` lines when a line is dropped or the last one is torn."""
    path = output / RESULTS_NAME
    if dropped or (path.is_file() and not path.read_bytes().endswith(b"\n") and path.stat().st_size):
        rewrite_results(path, kept.values())


def _remove_stale_images(output: Path, jobs: Sequence[ImageJob]) -> int:
    """Delete the PNGs under images/ that no job of the plan writes; returns how many."""
    planned = {output / job.image for job in jobs}
    stale = [path for path in (output / "images").rglob("*.png") if path not in planned]
    for path in stale:
        path.unlink()
    for folder in sorted((output / "images").rglob("*"), key=lambda path: len(path.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):  # a removed setup's or suite's, emptied
            folder.rmdir()
    return len(stale)


def _conditioning_length(pipe: Any, prompt: str) -> int:
    """Sequence length of a prompt's conditioning: prompts of one batch must agree on it."""
    conditioner = getattr(pipe, "conditioner", None)
    if conditioner is None:  # a native diffusers pipeline pads (or truncates) every prompt to one length
        return 0
    return int(conditioner.encode([prompt]).tokens.shape[1])


def _batches(pipe: Any, jobs: Sequence[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Jobs in batches of at most `batch_size`, each holding one conditioning length."""
    lengths: dict[str, int] = {}
    groups: dict[int, list[ImageJob]] = {}
    for job in jobs:
        prompt = job.entry.prompt
        if prompt not in lengths:
            lengths[prompt] = _conditioning_length(pipe, prompt)
        groups.setdefault(lengths[prompt], []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def _generate(pipe: Any, config: ExperimentConfig, batch: Sequence[ImageJob]) -> list[Any]:
    setup = batch[0].setup
    kwargs: dict[str, Any] = dict(
        prompt=[job.entry.prompt for job in batch],
        num_inference_steps=config.setup_steps(setup),
        guidance_scale=config.setup_guidance(setup),
        generator=[torch.Generator().manual_seed(job.seed) for job in batch],
        output_type="pil",
    )
    if config.height is not None:
        kwargs["height"] = config.height
    if config.width is not None:
        kwargs["width"] = config.width
    return list(pipe(**kwargs).images)


def _measure(
    images: Sequence[Any], batch: Sequence[ImageJob], config: ExperimentConfig, scorer: ClipScorer | None
) -> list[dict[str, Any]]:
    lines = []
    for job, image in zip(batch, images):
        metrics: dict[str, Any] = {}
        if "judge" in config.metrics and job.entry.scene is not None:
            metrics.update(shapes_judge_metrics(image, job.entry.scene))
        lines.append(
            {
                "key": job.key,
                "setup": job.setup.name,
                "suite": job.suite,
                "index": job.index,
                "category": job.entry.category,
                "prompt": job.entry.prompt,
                "seed": job.seed,
                "image": job.image,
                "metrics": metrics,
            }
        )
    if scorer is not None:
        prompts = [job.entry.prompt for job in batch]
        scores = (scorer.embed_images(images) * scorer.embed_texts(prompts)).sum(dim=-1).cpu()
        for line, score, truncated in zip(lines, scores.tolist(), scorer.truncated(prompts)):
            line["metrics"]["clip_score"] = score
            line["clip_truncated"] = truncated
    return lines


def run_experiment(
    config: ExperimentConfig, show_progress: bool = True, device: str | None = None, write_report: bool = True
) -> Path:
    """Generate and measure every image not done yet, then write the report.

    Args:
        config: the experiment (`load_experiment_config` resolves a YAML's paths).
        show_progress: draw one progress bar over all (setup, prompt, seed) images; False also
            hides diffusers' and transformers' loading bars during the run.
        device: where pipelines and the CLIP run; None: "cuda" when available, else "cpu"
            (`clipcond.devices.resolve_device`). Not part of the results' keys (images on another device differ
            by rounding).
        write_report: write report.md, plots and grids at the end (`clipcond.lab.report`).

    Returns:
        The run folder.

    Raises:
        FileNotFoundError, ValueError: from `check_experiment`, `check_run_folder` (an
            output_dir that holds another experiment's run or other files), or a device this
            machine lacks or "meta" (`clipcond.devices.resolve_device`), before any file is written.
        ImportError: `write_report` without matplotlib installed, before any generation.
        ModelLoadFailed: a pipeline or the CLIP the run needs cannot be loaded; a damaged
            weights file or config is found before results.jsonl or an image is changed.
        RunFolderInUse: another live run holds the folder (its ``run.lock``), before any change.
    """
    suites = check_experiment(config)
    check_run_folder(config)  # another experiment's run, or the user's own files: refused
    if write_report:
        from clipcond.lab.report import check_report_dependencies

        check_report_dependencies()  # before hours of generation, not after
    device = resolve_device(device)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    # one live run per folder (the run.lock file, `clipcond.training.run_lock`): two runs at once
    # each drew every pending image and appended its results twice
    with RunFolderLock(output), library_progress_bars(show_progress):
        _run_pending(config, suites, output, device, show_progress)
        if write_report:
            from clipcond.lab.report import write_report as write

            write(output)
    return output


def _run_pending(
    config: ExperimentConfig, suites: list[PromptSuite], output: Path, device: str, show_progress: bool
) -> None:
    """`run_experiment`'s work, under the run folder's lock: plan, keep the valid results, then
    generate and measure what is pending."""
    previous = _read_json(output / EXPERIMENT_NAME)
    file_cache = previous.get("file_digests", {}) if isinstance(previous.get("file_digests"), dict) else {}
    pipeline_digests = {setup.name: folder_digest(setup.pipeline, file_cache) for setup in config.setups}
    clip_digest = folder_digest(config.clip_score_model, file_cache) if "clip_score" in config.metrics else None
    jobs = plan_jobs(config, suites, pipeline_digests, clip_digest)
    kept, dropped = _valid_results(output, jobs)
    pending = [job for job in jobs if job.key not in kept]
    # a damaged model fails here, before a result line is dropped or an image deleted (`clipcond.lab.loading`)
    for setup in config.setups:
        if any(job.setup is setup for job in pending):
            check_loadable(setup.pipeline, f"setup {setup.name}: pipeline")
    scorer = None
    if pending and clip_digest is not None:
        with loading("clip_score_model", config.clip_score_model):
            scorer = load_clip_scorer(config.clip_score_model, device)
    _keep_results(output, kept, dropped)
    done = set(kept)
    record = _experiment_record(config, suites, pipeline_digests, clip_digest)
    if dropped:
        changed = previous.get("fingerprint") not in (None, record["fingerprint"])
        why = "the experiment changed since the last run" if changed else "torn, edited, duplicate, or image unreadable"
        print(f"{output / RESULTS_NAME}: dropped {dropped} result line(s) ({why}); kept {len(done)}", file=sys.stderr)
    removed = _remove_stale_images(output, jobs)
    if removed:
        print(f"{output / 'images'}: removed {removed} image(s) the experiment no longer has", file=sys.stderr)
    # the hashes of the files the digests read (through symlinks too), not of files since removed
    folders = [setup.pipeline for setup in config.setups] + ([config.clip_score_model] if clip_digest else [])
    hashed = {str(path.resolve()) for folder in folders for path in model_files(folder)}
    file_cache = {path: entry for path, entry in file_cache.items() if path in hashed}
    write_json_atomic(output / EXPERIMENT_NAME, {**record, "name": config.name, "file_digests": file_cache})

    with tqdm(
        total=len(jobs),
        initial=len(jobs) - len(pending),
        desc=f"experiment {config.name}",
        unit="image",
        disable=not show_progress,
        dynamic_ncols=True,
    ) as progress:
        for setup in config.setups:
            todo = [job for job in pending if job.setup is setup]
            if not todo:
                continue
            pipe = setup_pipeline(setup, device)
            for batch in _batches(pipe, todo, config.batch_size):
                images = _generate(pipe, config, batch)
                for job, image in zip(batch, images):
                    save_image(image, output, job.image)
                append_results(output / RESULTS_NAME, _measure(images, batch, config, scorer))
                progress.update(len(batch))
            del pipe


__all__ = ["EXPERIMENT_NAME", "ImageJob", "LAB_VERSION", "plan_jobs", "run_experiment"]
