"""`clipcond experiment`'s own work on stand-ins (no model is loaded): its options, the checks it
runs before anything, the --check plan and --report-only, what reaches the prepare steps and the
runner, and how an interrupt, a failed step, a damaged model and a refused write end the command.
Whole experiments through this command are test_lab.py's and test_lab_checks.py's."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

import pytest

from clipcond.cli import build_parser
from clipcond.errors import RunFailed, Terminated, UsageError
from clipcond.lab import experiment
from clipcond.lab.config import ExperimentConfig, SetupConfig
from clipcond.lab.prepare import PrepareStep
from clipcond.lab.suites import PromptSuite, TextPrompt


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["experiment", "exp.yaml", *argv])


def test_the_options_and_their_defaults() -> None:
    args = _args()
    assert (args.config, args.device, args.no_progress, args.jobs, args.check, args.report_only) == (
        "exp.yaml", None, False, 1, False, False
    )  # fmt: skip
    args = _args("--device", "cpu", "--no-progress", "--jobs", "3", "--check")
    assert (args.device, args.no_progress, args.jobs, args.check) == ("cpu", True, 3, True)
    assert _args("--report-only").report_only


def test_jobs_takes_one_and_more() -> None:
    assert [_args("--jobs", text).jobs for text in ("1", "2", "16")] == [1, 2, 16]


def test_every_option_says_what_it_does_in_the_help() -> None:
    parser = build_parser()
    (commands,) = [action for action in parser._actions if action.dest == "command"]
    options = commands.choices["experiment"]._actions
    helps = {action.dest: action.help for action in options}
    assert set(helps) == {"help", "config", "device", "no_progress", "jobs", "check", "report_only", "debug"}
    assert all(isinstance(text, str) and len(text) > 20 for text in helps.values())


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", ""])
def test_jobs_below_one_or_not_an_integer_is_a_usage_error(text, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        _args("--jobs", text)
    assert exit_.value.code == 2
    assert f"argument --jobs: expected an integer >= 1, got {text!r}" in capsys.readouterr().err


def test_check_and_report_only_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit):
        _args("--check", "--report-only")
    assert "not allowed with argument" in capsys.readouterr().err


class _Recorder:
    """Stands in for the machinery `experiment.run` imports; records what it is asked."""

    def __init__(self, tmp_path: Path, monkeypatch, **config_settings):
        import clipcond.lab.config as lab_config
        import clipcond.lab.prepare as prepare
        import clipcond.lab.report as report
        import clipcond.lab.runner as runner

        self.calls: list = []
        self.output = tmp_path / "run"
        settings = dict(
            name="exp",
            suites=["/suites/s.yaml"],
            setups=[SetupConfig("a", str(tmp_path / "a")), SetupConfig("b", str(tmp_path / "b"))],
            seeds=[0, 1, 2],
            output_dir=str(self.output),
        )
        self.config = ExperimentConfig(**{**settings, **config_settings})
        prompts = (TextPrompt("c", "one"), TextPrompt("c", "two"))
        self.suites = [PromptSuite("s", Path("/suites/s.yaml"), prompts, "d")]
        self.step_error: BaseException | None = None
        self.run_error: BaseException | None = None

        def load(path):
            self.calls.append(("load", path))
            return self.config

        def check_experiment(config, allow_pending=False):
            assert config is self.config
            self.calls.append(("check_experiment", allow_pending))
            return self.suites

        def run_steps(steps, jobs=1, log_dir=None):
            self.calls.append(("run_steps", list(steps), jobs, log_dir))
            if self.step_error is not None:
                raise self.step_error

        def run_experiment(config, show_progress=True, device=None):
            self.calls.append(("run_experiment", show_progress, device))
            if self.run_error is not None:
                raise self.run_error
            return Path(config.output_dir)

        def write_report(folder):
            self.calls.append(("write_report", folder))
            return Path(folder) / "report.md"

        monkeypatch.setattr(lab_config, "load_experiment_config", load)
        monkeypatch.setattr(lab_config, "check_experiment", check_experiment)
        monkeypatch.setattr(prepare, "run_steps", run_steps)
        monkeypatch.setattr(runner, "run_experiment", run_experiment)
        monkeypatch.setattr(report, "write_report", write_report)
        monkeypatch.setattr(report, "check_report_dependencies", lambda: self.calls.append("dependencies"))

    def names(self) -> list[str]:
        return [call if isinstance(call, str) else call[0] for call in self.calls]


@pytest.fixture
def recorder(tmp_path, monkeypatch) -> _Recorder:
    return _Recorder(tmp_path, monkeypatch)


def test_a_run_checks_then_prepares_then_runs_and_names_the_report(recorder, capsys) -> None:
    assert experiment.run(_args("--device", "cpu", "--jobs", "2")) == 0
    assert recorder.calls == [
        ("load", Path("exp.yaml")),
        ("check_experiment", True),
        "dependencies",
        ("run_steps", [], 2, recorder.output / "prepare-logs"),
        ("run_experiment", True, "cpu"),
    ]
    assert capsys.readouterr().out == f"wrote {recorder.output / 'report.md'}\n"


def test_no_progress_reaches_the_runner(recorder) -> None:
    experiment.run(_args("--no-progress", "--device", "cpu"))
    assert recorder.calls[-1] == ("run_experiment", False, "cpu")


def test_report_only_rewrites_the_report_and_checks_nothing_else(recorder, capsys) -> None:
    assert experiment.run(_args("--report-only")) == 0
    assert recorder.calls == [("load", Path("exp.yaml")), ("write_report", str(recorder.output))]
    assert capsys.readouterr().out == f"wrote {recorder.output / 'report.md'}\n"


def test_report_only_of_a_folder_without_results_is_a_usage_error(recorder, monkeypatch) -> None:
    import clipcond.lab.report as report

    def missing(folder):
        raise FileNotFoundError(f"{folder}/results.jsonl: no results yet")

    monkeypatch.setattr(report, "write_report", missing)
    with pytest.raises(UsageError) as caught:
        experiment.run(_args("--report-only"))
    assert str(caught.value) == f"{recorder.output}/results.jsonl: no results yet"


def test_an_output_dir_that_is_a_file_is_refused_before_any_step(recorder) -> None:
    recorder.output.write_text("not a folder")
    with pytest.raises(UsageError) as caught:
        experiment.run(_args())
    assert str(caught.value) == f"exp.yaml: output_dir {recorder.output} is a file, not a run folder"
    assert recorder.names() == ["load"]


def test_another_experiments_run_folder_is_refused_before_any_step(recorder) -> None:
    recorder.output.mkdir()
    (recorder.output / "experiment.json").write_text('{"name": "other", "fingerprint": "f"}')
    with pytest.raises(UsageError, match=r"^exp.yaml: output_dir .* holds the run of experiment 'other', not 'exp'"):
        experiment.run(_args())
    assert recorder.names() == ["load"]


def test_an_output_dir_below_a_broken_symlink_is_named_with_the_config(recorder, tmp_path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    recorder.config = ExperimentConfig(**{**vars(recorder.config), "output_dir": str(tmp_path / "link" / "run")})
    with pytest.raises(UsageError) as caught:
        experiment.run(_args())
    assert str(caught.value) == (
        f"exp.yaml: output_dir {tmp_path / 'link' / 'run'}: {tmp_path / 'link'} is a broken symlink "
        f"(it points to {tmp_path / 'gone'}, which is not there)"
    )
    assert recorder.names() == ["load"]


def test_a_missing_report_dependency_fails_a_run_but_not_a_check(recorder, monkeypatch) -> None:
    import clipcond.lab.report as report

    def missing():
        raise ImportError("the report needs matplotlib: pip install matplotlib")

    monkeypatch.setattr(report, "check_report_dependencies", missing)
    with pytest.raises(UsageError, match="^the report needs matplotlib"):
        experiment.run(_args())
    assert "run_steps" not in recorder.names()
    assert experiment.run(_args("--check", "--device", "cpu")) == 0


def test_a_device_this_machine_lacks_is_named_with_the_option_before_any_step(recorder) -> None:
    with pytest.raises(UsageError) as caught:
        experiment.run(_args("--device", "meta"))
    assert str(caught.value).startswith("--device: ")
    assert "meta" in str(caught.value)
    assert "run_steps" not in recorder.names()


def test_check_prints_the_pending_steps_and_the_image_count_and_runs_nothing(tmp_path, monkeypatch, capsys) -> None:
    made = tmp_path / "made"
    made.mkdir()
    steps_a = [PrepareStep("init-clip", str(tmp_path / "clip"), ["--seed", "1"]), PrepareStep("init-clip", str(made))]
    setups = [SetupConfig("a", str(tmp_path / "a"), prepare=steps_a), SetupConfig("b", str(tmp_path / "b"))]
    recorder = _Recorder(tmp_path, monkeypatch, setups=setups)
    import clipcond.lab.prepare as prepare

    monkeypatch.setattr(prepare, "check_steps", lambda steps: recorder.calls.append(("check_steps", list(steps))))
    assert experiment.run(_args("--check", "--device", "cpu")) == 0
    assert recorder.calls == [
        ("load", Path("exp.yaml")),
        ("check_steps", steps_a),
        ("check_experiment", True),
    ]
    assert capsys.readouterr().out == (
        f"prepare: clipcond init-clip --seed 1  (creates {tmp_path / 'clip'})\n"
        f"exp: 1 suite(s), 2 prompts x 3 seed(s) x 2 setup(s) = 12 images -> {recorder.output}\n"
    )


def test_check_tries_to_load_the_model_folders_that_exist(tmp_path, monkeypatch) -> None:
    import clipcond.lab.loading as loading

    (tmp_path / "a").mkdir()
    (tmp_path / "clip").mkdir()
    recorder = _Recorder(
        tmp_path, monkeypatch, metrics=["judge", "clip_score"], clip_score_model=str(tmp_path / "clip")
    )
    asked = []
    monkeypatch.setattr(loading, "check_loadable", lambda folder, what: asked.append((folder, what)))
    experiment.run(_args("--check", "--device", "cpu"))
    assert asked == [(str(tmp_path / "a"), "setup a: pipeline"), (str(tmp_path / "clip"), "clip_score_model")]

    def damaged(folder, what):
        raise loading.ModelLoadFailed(f"{what}: {folder}/unet/config.json is not JSON")

    monkeypatch.setattr(loading, "check_loadable", damaged)
    with pytest.raises(UsageError) as caught:
        experiment.run(_args("--check", "--device", "cpu"))
    assert str(caught.value) == f"setup a: pipeline: {tmp_path / 'a'}/unet/config.json is not JSON"
    assert recorder.names().count("run_steps") == 0


@pytest.mark.parametrize(
    "interrupt,status,word", [(KeyboardInterrupt(), 130, "interrupted"), (Terminated("t"), 143, "terminated")]
)
def test_an_interrupt_during_the_prepare_steps_says_they_resume(recorder, capsys, interrupt, status, word) -> None:
    recorder.step_error = interrupt
    assert experiment.run(_args("--device", "cpu")) == status
    assert capsys.readouterr().err == f"{word} during the prepare steps; re-run to resume them\n"
    assert "run_experiment" not in recorder.names()


def test_a_failed_prepare_step_fails_the_run_with_its_message(recorder) -> None:
    recorder.step_error = RuntimeError("prepare step 1/2 (init-clip) failed with exit status 1")
    with pytest.raises(RunFailed) as caught:
        experiment.run(_args("--device", "cpu"))
    assert str(caught.value) == "prepare step 1/2 (init-clip) failed with exit status 1"
    assert "run_experiment" not in recorder.names()


@pytest.mark.parametrize(
    "interrupt,status,word", [(KeyboardInterrupt(), 130, "interrupted"), (Terminated("t"), 143, "terminated")]
)
def test_an_interrupt_during_the_run_counts_the_results_kept(recorder, capsys, interrupt, status, word) -> None:
    recorder.output.mkdir()
    (recorder.output / "experiment.json").write_text('{"name": "exp", "fingerprint": "f"}')
    line = '{"key": "k%d", "setup": "a", "suite": "s", "index": 0, "category": "c", "prompt": "one", "seed": %d, "image": "images/a/s/0-%d.png", "metrics": {}}\n'
    (recorder.output / "results.jsonl").write_text("".join(line % (i, i, i) for i in range(3)) + '{"torn')
    recorder.run_error = interrupt
    assert experiment.run(_args("--device", "cpu")) == status
    assert capsys.readouterr().err == f"{word}; 3 results kept, re-run to continue\n"


def test_a_damaged_model_or_a_live_run_fails_the_run_in_one_line(recorder) -> None:
    from clipcond.lab.loading import ModelLoadFailed
    from clipcond.training.run_lock import RunFolderInUse

    for error in (ModelLoadFailed("setup a: pipeline: unet weights cut short"), RunFolderInUse("run.lock held by 12")):
        recorder.run_error = error
        with pytest.raises(RunFailed) as caught:
            experiment.run(_args("--device", "cpu"))
        assert str(caught.value) == str(error) and caught.value.__cause__ is error


@pytest.mark.parametrize(
    "error,where",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/full/run/images/a.png"), "/full/run/images/a.png"),
        (OSError(errno.ENOSPC, "No space left on device"), None),
        (OSError("quota"), None),
    ],
)
def test_a_refused_write_names_the_file_or_the_run_folder(recorder, error, where) -> None:
    recorder.run_error = error
    with pytest.raises(RunFailed) as caught:
        experiment.run(_args("--device", "cpu"))
    reason = error.strerror or "quota"
    assert str(caught.value) == f"{where or recorder.output}: {reason} (writing the experiment's results)"
    assert caught.value.__cause__ is error


def test_any_other_error_of_the_runner_is_a_bug_and_keeps_its_type(recorder) -> None:
    recorder.run_error = KeyError("setup")
    with pytest.raises(KeyError):
        experiment.run(_args("--device", "cpu"))


def test_the_command_is_wired_into_the_cli() -> None:
    args = _args("--device", "cpu")
    assert args.handler is experiment.run and args.command == "experiment"
