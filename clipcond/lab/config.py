"""The experiment config: which suites, through which setups, with which seeds and metrics.

An experiment YAML (``configs/experiments/*.yaml``)::

    name: bundled-vs-finetuned
    suites: [configs/suites/single.yaml, configs/suites/binding.yaml]
    setups:
      - name: bundled                      # a folder name: letters, digits, "_", "-", "."
        pipeline: clipcond/data/shapes-model
      - name: sd15-native
        pipeline: /models/stable-diffusion-v1-5
        native: true                       # run the diffusers pipeline as saved (see SetupConfig)
        guidance_scale: 7.5                # overrides the experiment's value for this setup
        steps: 30
      - name: trained-here                 # made by training commands before the run
        pipeline: runs/lab/clip-unet/pipeline
        prepare:                           # see clipcond.lab.prepare
          - command: train-diffusion
            args: [--config, configs/diffusion/shapes-tiny.yaml, --output-dir, runs/lab/clip-unet]
            creates: runs/lab/clip-unet/pipeline
    seeds: [0, 1, 2, 3]                    # one image per prompt and seed
    steps: 25
    guidance_scale: 5.0
    height: null                           # null: the pipeline's default size
    width: null
    metrics: [judge, clip_score]
    clip_score_model: runs/clip-tiny-shapes/model
    output_dir: runs/experiments/bundled-vs-finetuned
    batch_size: 8

Paths: `suites`, `pipeline` and `clip_score_model` are taken as written when they exist
relative to the working directory, else relative to the config file's folder (as
`clipcond train-clip` resolves its paths); `load_experiment_config` resolves them.
`output_dir` is relative to the working directory, like every run folder.

Checks happen in two places, both before any generation: `ExperimentConfig` checks values
(names, seeds, steps, metrics, a CLIP model when `clip_score` is asked); `check_experiment`
checks the files (every suite loads, every pipeline folder and the CLIP folder exist, and
`output_dir` lies outside them, whose digests would otherwise read the run's own files).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clipcond.config import load_config, quoted
from clipcond.lab.metrics import check_metrics
from clipcond.lab.prepare import PrepareStep
from clipcond.lab.suites import SAFE_NAME, PromptSuite, load_suite

_CLIPCOND_PIPELINE = "CLIPConditionedPipeline"
_WHERE = " (a relative path is read from the working directory, then from the config file's folder)"


@dataclass
class SetupConfig:
    """One conditioning setup: a saved pipeline and how to sample it.

    Attributes:
        name: names the setup in the report and its image folder.
        pipeline: folder of a saved `CLIPConditionedPipeline` or of a diffusers pipeline.
        guidance_scale, steps: override the experiment's values for this setup.
        native: for a diffusers pipeline folder, run the pipeline as saved, with its own
            `encode_prompt` (which truncates prompts at 77 tokens). False (the default) wraps a
            UNet pipeline with CLIP text encoders (Stable Diffusion 1.x/2.x, SDXL) in
            `CLIPConditionedPipeline`, so prompts go through clipcond's conditioner (long
            prompts in chunks); transformer pipelines and T5 encoders (SD3, Flux, PixArt, ...)
            need `native: true`. Ignored for a saved `CLIPConditionedPipeline`.
        prepare: commands that make the pipeline (and what it needs) when missing
            (`clipcond.lab.prepare`); run by `clipcond experiment` before anything else.
    """

    name: str
    pipeline: str
    guidance_scale: float | None = None
    steps: int | None = None
    native: bool = False
    prepare: list[PrepareStep] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not SAFE_NAME.match(self.name):
            raise ValueError(f"setup name {self.name!r} is not a folder name (letters, digits, '_', '-', '.')")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"setup {self.name!r}: steps must be >= 1, got {self.steps}")
        if self.guidance_scale is not None and not math.isfinite(self.guidance_scale):
            raise ValueError(f"setup {self.name!r}: guidance_scale must be finite, got {self.guidance_scale}")


@dataclass
class ExperimentConfig:
    """A prompt-following experiment (the YAML format is in the module docstring).

    Attributes:
        name: the experiment's name (report title).
        suites: suite files (`clipcond.lab.suites`); their names must differ.
        setups: the conditioning setups compared; their names must differ.
        seeds: one image per prompt and seed, each from `torch.Generator().manual_seed(seed)`.
        steps, guidance_scale: sampling settings of every setup that does not override them.
        height, width: image size in pixels; None lets each pipeline use its default.
        metrics: names from `clipcond.lab.metrics.METRICS`.
        clip_score_model: CLIP folder for `clip_score` (clipcond `save_clip` or transformers).
        output_dir: the run folder (images, results.jsonl, experiment.json, report).
        batch_size: images per pipeline call; not part of a result's key, since it changes
            an image only in the last bits (at most 1 grey level, `clipcond.lab.runner`).
    """

    name: str
    suites: list[str]
    setups: list[SetupConfig]
    seeds: list[int]
    output_dir: str
    steps: int = 25
    guidance_scale: float = 5.0
    height: int | None = None
    width: int | None = None
    metrics: list[str] = field(default_factory=lambda: ["judge"])
    clip_score_model: str | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name must be a non-empty string")
        for key in ("suites", "setups", "seeds"):
            if not getattr(self, key):
                raise ValueError(f"{key} must list at least one entry")
        _unique("setup names", [setup.name for setup in self.setups])
        _unique("seeds", self.seeds)
        if any(not 0 <= seed <= 2**64 - 1 for seed in self.seeds):  # what torch.Generator.manual_seed takes
            raise ValueError(f"seeds must be in [0, 2**64 - 1], got {quoted(self.seeds)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {self.guidance_scale}")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be a positive number of pixels or null, got {value}")
        check_metrics(self.metrics)
        _unique("metrics", self.metrics)
        if "clip_score" in self.metrics and not self.clip_score_model:
            raise ValueError(
                "metric clip_score needs `clip_score_model`: a CLIP folder (clipcond save_clip or transformers)"
            )

    def setup_steps(self, setup: SetupConfig) -> int:
        """Denoising steps of `setup` (its own, else the experiment's)."""
        return setup.steps if setup.steps is not None else self.steps

    def setup_guidance(self, setup: SetupConfig) -> float:
        """Guidance scale of `setup` (its own, else the experiment's)."""
        return setup.guidance_scale if setup.guidance_scale is not None else self.guidance_scale


def _unique(what: str, values: list) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} must differ, repeated: {repeated}")


def _resolve(path: str, config_dir: Path) -> str:
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists() or not (config_dir / candidate).exists():
        return str(candidate)  # when neither exists, the error names the path as written
    return str(config_dir / candidate)


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Load an experiment YAML and resolve its input paths (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: `path` is a folder; an unknown or mistyped key, or a bad value (named
            with the file).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the experiment YAML file (see configs/experiments/)")
    config = load_config(ExperimentConfig, path)
    folder = path.parent
    return replace(
        config,
        suites=[_resolve(suite, folder) for suite in config.suites],
        setups=[replace(setup, pipeline=_resolve(setup.pipeline, folder)) for setup in config.setups],
        clip_score_model=None if config.clip_score_model is None else _resolve(config.clip_score_model, folder),
    )


# What `CLIPConditionedPipeline.from_pipe` can wrap (`clipcond.pipelines.saved_pipelines.load_pipeline`):
# a UNet, a first CLIP text encoder and, for SDXL, a second CLIP with its projection.
_UNET = "UNet2DConditionModel"
_CLIP_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")
_SECOND_ENCODERS = ("CLIPTextModelWithProjection",)
_NOT_WRAPPED = ("transformer", "text_encoder_3")  # SD3, Flux, PixArt: a transformer denoiser, T5 encoders


def _read_index(folder: Path, setup: SetupConfig) -> dict[str, Any]:
    index = folder / "model_index.json"
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"setup {setup.name!r}: {index} cannot be read as JSON ({error})") from error
    if not isinstance(components, dict):
        raise ValueError(
            f"setup {setup.name!r}: {index} must hold a JSON object (a saved pipeline's components), "
            f"got {type(components).__name__}"
        )
    return components


def _component_class(components: dict[str, Any], name: str) -> str | None:
    """The class name `model_index.json` records for a component; None when absent or null."""
    entry = components.get(name)
    return entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None


def _why_not_wrapped(components: dict[str, Any]) -> str | None:
    """Why `CLIPConditionedPipeline` cannot wrap the pipeline, or None when it can."""
    for name in _NOT_WRAPPED:
        if _component_class(components, name) is not None:
            return f"a `{name}`"
    if _component_class(components, "unet") != _UNET:
        return f"no {_UNET} `unet`"
    if _component_class(components, "text_encoder") not in _CLIP_ENCODERS:
        return f"`text_encoder` {_component_class(components, 'text_encoder')}, not a CLIP text model"
    second = _component_class(components, "text_encoder_2")
    if second is not None and second not in _SECOND_ENCODERS:
        return f"`text_encoder_2` {second}, not SDXL's CLIPTextModelWithProjection"
    return None


def _vae_scale_factor(folder: Path, components: dict[str, Any], setup: SetupConfig) -> int:
    """Pixels per latent cell, as diffusers' pipelines compute it (1 without a VAE)."""
    if _component_class(components, "vae") is None:
        return 1
    path = folder / "vae" / "config.json"
    try:
        blocks = json.loads(path.read_text(encoding="utf-8"))["block_out_channels"]
        return 2 ** (len(blocks) - 1)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"setup {setup.name!r}: {path} does not give the VAE's block_out_channels") from error


def _check_pipeline(config: ExperimentConfig, setup: SetupConfig, allow_pending: bool) -> None:
    from clipcond.pipelines.input_checks import image_size_fits, image_size_rule

    folder = Path(setup.pipeline)
    if allow_pending and not folder.exists() and any(Path(step.creates) == folder for step in setup.prepare):
        return  # a prepare step will make it
    if not (folder / "model_index.json").is_file():
        reason = (
            "has no model_index.json (not a saved diffusers pipeline)" if folder.exists() else f"does not exist{_WHERE}"
        )
        raise FileNotFoundError(f"setup {setup.name!r}: pipeline folder {folder} {reason}")
    components = _read_index(folder, setup)
    if components.get("_class_name") != _CLIPCOND_PIPELINE and not setup.native:
        why = _why_not_wrapped(components)
        if why is not None:
            raise ValueError(
                f"setup {setup.name!r}: {folder} holds a {components.get('_class_name')} with {why}; clipcond wraps "
                "UNet pipelines with CLIP text encoders (Stable Diffusion 1.x/2.x and SDXL); set `native: true` to "
                "run it as saved"
            )
    sizes = {key: getattr(config, key) for key in ("height", "width") if getattr(config, key) is not None}
    scale = _vae_scale_factor(folder, components, setup) if sizes else 1
    for key, value in sizes.items():
        if not image_size_fits(value, scale):
            raise ValueError(f"{key} must be {image_size_rule(scale)} for setup {setup.name!r}, got {value}")


def _check_output_outside_models(config: ExperimentConfig) -> None:
    """Refuse an output_dir inside a pipeline folder or the CLIP folder: a model folder's digest
    (part of every result's key) reads every file under it, so the run's own images and
    results.jsonl would change it and every rerun would drop and draw every image again."""
    output = Path(config.output_dir).resolve()
    folders = {f"the pipeline folder of setup {setup.name!r}": setup.pipeline for setup in config.setups}
    if "clip_score" in config.metrics:
        folders["the clip_score_model folder"] = config.clip_score_model
    for what, folder in folders.items():
        if output.is_relative_to(Path(folder).resolve()):
            raise ValueError(
                f"output_dir {config.output_dir} lies inside {what} {folder}: the model's digest reads every file "
                "under its folder, so the run's own files would change it and every rerun would draw every image "
                "again; put output_dir outside the model folder"
            )


def check_experiment(config: ExperimentConfig, allow_pending: bool = False) -> list[PromptSuite]:
    """Check every file the experiment reads, before any generation; returns the loaded suites.

    With `allow_pending`, a missing pipeline folder that one of its setup's prepare steps
    creates passes, and so does a missing `clip_score_model` that any prepare step creates
    (for checking a plan before training; `run_experiment` checks again after preparing).

    Raises:
        FileNotFoundError: a suite file, pipeline folder or the CLIP folder is missing.
        ValueError: an output_dir inside a pipeline folder or the CLIP folder (both named), a
            malformed suite entry (file and entry named), two suites of one name,
            a model_index.json that is not a JSON object, a pipeline clipcond cannot wrap
            without `native: true`, or a height or width the pipeline's VAE cannot take.
    """
    _check_output_outside_models(config)
    suites = [load_suite(path) for path in config.suites]
    _unique("suite names", [suite.name for suite in suites])
    for setup in config.setups:
        _check_pipeline(config, setup, allow_pending)
    if "clip_score" in config.metrics:
        folder = Path(config.clip_score_model)
        made_by_prepare = any(Path(step.creates) == folder for setup in config.setups for step in setup.prepare)
        if allow_pending and not folder.exists() and made_by_prepare:
            return suites  # a prepare step will make it
        if not ((folder / "clip_config.yaml").is_file() or (folder / "config.json").is_file()):
            raise FileNotFoundError(
                f"clip_score_model {folder} is not a CLIP folder: expected clip_config.yaml (clipcond save_clip) "
                f"or config.json (transformers CLIPModel){'' if folder.exists() else '; it does not exist' + _WHERE}"
            )
    return suites


__all__ = ["ExperimentConfig", "SetupConfig", "check_experiment", "load_experiment_config"]
