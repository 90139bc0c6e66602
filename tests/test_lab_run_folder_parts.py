"""The lab's check of an experiment's output_dir on its own, with the config as a stand-in:
what it accepts before a record exists (the command's own files, prepare steps' outputs,
hidden names), a record of this experiment, and each refusal whole."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from clipcond.lab.run_folder import EXPERIMENT_NAME, check_run_folder


def config(output, name="compare", creates=()) -> SimpleNamespace:
    setups = [
        SimpleNamespace(prepare=[SimpleNamespace(creates=str(path)) for path in creates]),
        SimpleNamespace(prepare=[]),
    ]
    return SimpleNamespace(output_dir=str(output), name=name, setups=setups)


def refusal(experiment, **kwargs) -> str:
    with pytest.raises(ValueError) as raised:
        check_run_folder(experiment, **kwargs)
    return str(raised.value)


def test_a_missing_or_empty_folder_or_a_file_is_accepted(tmp_path) -> None:
    assert EXPERIMENT_NAME == "experiment.json"
    check_run_folder(config(tmp_path / "missing"))
    check_run_folder(config(tmp_path))
    (tmp_path / "file").write_text("x")
    check_run_folder(config(tmp_path / "file"))  # not a folder: left to the run's own writing


def test_what_the_command_writes_before_its_record_is_accepted(tmp_path) -> None:
    (tmp_path / "prepare-logs").mkdir()
    (tmp_path / "run.lock").write_text("")
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "clip").mkdir()
    (tmp_path / "nested").mkdir()
    creates = [tmp_path / "clip", tmp_path / "nested" / "model", tmp_path]  # the folder itself adds nothing
    check_run_folder(config(tmp_path, creates=creates))


def test_other_files_are_refused_naming_the_first_three(tmp_path) -> None:
    (tmp_path / "clip").mkdir()
    for name in ("b.png", "a.txt", "c"):
        (tmp_path / name).write_text("")
    outside = tmp_path.parent / "elsewhere"
    assert refusal(config(tmp_path, creates=[tmp_path / "clip"])) == (
        f"output_dir {tmp_path} is not empty (a.txt, b.png, c) and holds no experiment.json of an experiment: the run "
        "could delete its PNGs; choose an empty or new output_dir"
    )
    (tmp_path / "d").write_text("")
    assert refusal(config(tmp_path, creates=[outside]), label="exp.yaml: output_dir") == (
        f"exp.yaml: output_dir {tmp_path} is not empty (a.txt, b.png, c, ...) and holds no experiment.json of an "
        "experiment: the run could delete its PNGs; choose an empty or new output_dir"
    )


@pytest.mark.parametrize(
    "text",
    ["{not json", json.dumps([1]), json.dumps({"name": "compare"}), json.dumps({"fingerprint": "f", "name": 3}), ""],
)
def test_an_experiment_json_that_is_no_record_is_refused(tmp_path, text) -> None:
    (tmp_path / "experiment.json").write_text(text)
    assert refusal(config(tmp_path)) == (
        f"output_dir {tmp_path} holds an experiment.json that is not a clipcond experiment record; choose an empty "
        "or new output_dir"
    )


def test_another_experiments_record_is_refused_and_this_ones_accepted(tmp_path) -> None:
    (tmp_path / "experiment.json").write_text(json.dumps({"fingerprint": "f", "name": "other"}))
    (tmp_path / "images").mkdir()
    assert refusal(config(tmp_path)) == (
        f"output_dir {tmp_path} holds the run of experiment 'other', not 'compare': running here would drop its "
        f"results and delete its images; choose another output_dir (or delete {tmp_path} to replace that run)"
    )
    check_run_folder(config(tmp_path, name="other"))  # its own run: resumed, whatever else is there


def test_an_unreadable_record_is_no_record(tmp_path) -> None:
    (tmp_path / "experiment.json").write_bytes(b"\xff\xfe not utf-8")
    assert "is not a clipcond experiment record" in refusal(config(tmp_path))
    (tmp_path / "experiment.json").unlink()
    (tmp_path / "experiment.json").mkdir()  # a folder of that name is no record file: the other files decide
    assert "is not empty (experiment.json)" in refusal(config(tmp_path))


def test_four_other_files_are_three_and_an_ellipsis(tmp_path) -> None:
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).write_text("")
    assert f"output_dir {tmp_path} is not empty (a, b, c, ...) and holds" in refusal(config(tmp_path))


def test_a_record_is_read_as_utf8_whatever_the_locale(tmp_path) -> None:
    """Under an ASCII locale (Python's UTF-8 mode and locale coercion off) an experiment named
    with an accent still finds its own record."""
    import os
    import subprocess
    import sys

    (tmp_path / "experiment.json").write_text(
        json.dumps({"fingerprint": "f", "name": "café"}, ensure_ascii=False), encoding="utf-8"
    )
    code = (
        "import sys; from types import SimpleNamespace as N; from clipcond.lab.run_folder import check_run_folder; "
        "check_run_folder(N(output_dir=sys.argv[1], name='caf\\u00e9', setups=[])); print('accepted')"
    )
    environment = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=environment, capture_output=True, text=True
    )
    assert result.stdout == "accepted\n", result.stderr[-2000:]
