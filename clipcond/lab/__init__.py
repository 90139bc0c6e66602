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

Each name is imported from its module on first use (`clipcond.lazy_exports`), so torch,
diffusers (the pipelines) and matplotlib (the charts) load only when used.
The command line is `clipcond experiment CONFIG.yaml` (`clipcond.lab.experiment`).
"""

from clipcond.lazy_exports import lazy_exports

_EXPORTS = {
    "Cell": "clipcond.lab.summary",
    "ClipScorer": "clipcond.lab.metrics",
    "ExperimentConfig": "clipcond.lab.config",
    "JUDGE_VALUES": "clipcond.lab.metrics",
    "LabPrompt": "clipcond.lab.suites",
    "METRICS": "clipcond.lab.metrics",
    "PREPARE_COMMANDS": "clipcond.lab.prepare",
    "PrepareStep": "clipcond.lab.prepare",
    "PromptSuite": "clipcond.lab.suites",
    "SetupConfig": "clipcond.lab.config",
    "TextPrompt": "clipcond.lab.suites",
    "bootstrap_interval": "clipcond.lab.summary",
    "check_experiment": "clipcond.lab.config",
    "check_metrics": "clipcond.lab.metrics",
    "clip_score": "clipcond.lab.metrics",
    "clip_scorer": "clipcond.lab.metrics",
    "load_clip_scorer": "clipcond.lab.metrics",
    "load_experiment_config": "clipcond.lab.config",
    "load_suite": "clipcond.lab.suites",
    "run_experiment": "clipcond.lab.runner",
    "shapes_judge_metrics": "clipcond.lab.metrics",
    "summarise": "clipcond.lab.summary",
    "wilson_interval": "clipcond.lab.summary",
    "write_report": "clipcond.lab.report",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
