"""The prompt-following lab: prompt suites through conditioning setups, measured and reported.

Public API:
    load_suite, PromptSuite, TextPrompt, LabPrompt     suite YAML files -> prompts (and scenes)
    ExperimentConfig, SetupConfig                       the experiment YAML
    PrepareStep, PREPARE_COMMANDS                       training commands that make a setup's models
    load_experiment_config, check_experiment            load (resolving paths), check every file
    run_experiment                                      generate, measure, record; resumable
    write_report                                        report.md, plots/, grids/ from a run folder
    METRICS, check_metrics                              the metric names ("judge", "clip_score")
    shapes_judge_metrics                                image + scene -> the judge's checks
    clip_score, clip_scorer, load_clip_scorer, ClipScorer   CLIP image-prompt cosine
    wilson_interval, bootstrap_interval, summarise, Cell    pooling with 95% intervals

diffusers (the pipelines) and matplotlib (the charts) are imported only when used.
The command line is `clipcond experiment CONFIG.yaml` (`clipcond.lab.experiment`).
"""

from clipcond.lab.config import ExperimentConfig, SetupConfig, check_experiment, load_experiment_config
from clipcond.lab.metrics import (
    JUDGE_VALUES,
    METRICS,
    ClipScorer,
    check_metrics,
    clip_score,
    clip_scorer,
    load_clip_scorer,
    shapes_judge_metrics,
)
from clipcond.lab.prepare import PREPARE_COMMANDS, PrepareStep
from clipcond.lab.report import write_report
from clipcond.lab.runner import run_experiment
from clipcond.lab.suites import LabPrompt, PromptSuite, TextPrompt, load_suite
from clipcond.lab.summary import Cell, bootstrap_interval, summarise, wilson_interval

__all__ = [
    "Cell",
    "ClipScorer",
    "ExperimentConfig",
    "JUDGE_VALUES",
    "LabPrompt",
    "METRICS",
    "PREPARE_COMMANDS",
    "PrepareStep",
    "PromptSuite",
    "SetupConfig",
    "TextPrompt",
    "bootstrap_interval",
    "check_experiment",
    "check_metrics",
    "clip_score",
    "clip_scorer",
    "load_clip_scorer",
    "load_experiment_config",
    "load_suite",
    "run_experiment",
    "shapes_judge_metrics",
    "summarise",
    "wilson_interval",
    "write_report",
]
