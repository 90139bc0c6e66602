"""The run folder's resume checks in detail: which keys a resume names as changed (a section
that appears or goes, a free-form mapping's keys, several changes at once), a snapshot written
before a section existed, the damaged-snapshot and replaced-model refusals whole, and which
process is the first (the one that tries writing in the folder).

test_run_folder.py and test_run_folder_inputs.py cover the cases a user meets; these pin the
exact words and the edges, so that a message losing its remedy or a key going unnamed fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from clipcond.training.data.config import DataConfig
from clipcond.training.diffusion.config import DiffusionLoraSettings, TrainDiffusionConfig
from clipcond.training.run_folder import (
    CONFIG_SNAPSHOT,
    FROZEN_INPUTS_FILE,
    RunFolderError,
    check_output_dir,
    prepare_output_dir,
)


def _config(tmp_path: Path, **overrides) -> TrainDiffusionConfig:
    return TrainDiffusionConfig(
        **{"text_encoder": "clip", "unet": {}, "output_dir": str(tmp_path / "run"), **overrides}
    )


def _refusal(config: TrainDiffusionConfig) -> str:
    with pytest.raises(RunFolderError) as refused:
        check_output_dir(config, resume=True)
    return str(refused.value)


# ----------------------------------------------------------------------------- what changed


def test_a_mapping_that_appears_or_goes_is_named_as_its_key(tmp_path: Path) -> None:
    """`unet: null` in the snapshot (a run from a saved pipeline, `init_from`) and a mapping now,
    or the other way: the key is named, not compared inside."""
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    from_pipeline = _config(tmp_path, unet=None, init_from=str(pipeline))
    from_scratch = _config(tmp_path, unet={"layers_per_block": 1})
    prepare_output_dir(from_pipeline, resume=False)
    run = tmp_path / "run"
    assert _refusal(from_scratch) == f"cannot resume {run}: the config changed (init_from, unet)"
    (run / CONFIG_SNAPSHOT).unlink()
    prepare_output_dir(from_scratch, resume=True)
    assert _refusal(from_pipeline) == f"cannot resume {run}: the config changed (init_from, unet)"


def test_keys_added_to_or_gone_from_a_free_form_mapping_are_named_inside_it(tmp_path: Path) -> None:
    prepare_output_dir(_config(tmp_path, unet={"attention_head_dim": 8, "layers_per_block": 1}), resume=False)
    run = tmp_path / "run"
    added = _config(tmp_path, unet={"attention_head_dim": 8, "layers_per_block": 1, "norm_num_groups": 4})
    assert _refusal(added) == f"cannot resume {run}: the config changed (unet.norm_num_groups)"
    gone = _config(tmp_path, unet={"attention_head_dim": 8})
    assert _refusal(gone) == f"cannot resume {run}: the config changed (unet.layers_per_block)"


def test_every_changed_key_is_named_at_the_top_and_in_each_section(tmp_path: Path) -> None:
    prepare_output_dir(_config(tmp_path, unet={"layers_per_block": 1}), resume=False)
    changed = _config(
        tmp_path,
        lr=0.5,
        steps=7,
        unet={"layers_per_block": 2},
        data=DataConfig(split="all"),
        lora=DiffusionLoraSettings(r=4),
    )
    assert _refusal(changed) == (
        f"cannot resume {tmp_path / 'run'}: the config changed (data.split, lora.r, lr, steps, unet.layers_per_block)"
    )


def test_a_snapshot_written_before_a_section_existed_resumes_with_its_defaults(tmp_path: Path) -> None:
    """A section (a dataclass made by a default factory) missing from an older snapshot reads
    as the section's defaults: the run resumes; a section changed from them is named inside."""
    config = _config(tmp_path)
    prepare_output_dir(config, resume=False)
    snapshot = tmp_path / "run" / CONFIG_SNAPSHOT
    older = yaml.safe_load(snapshot.read_text())
    del older["lora"], older["data"]
    snapshot.write_text(yaml.safe_dump(older))
    check_output_dir(config, resume=True)
    lora = dataclasses.replace(config.lora, alpha=3.0)
    assert _refusal(dataclasses.replace(config, lora=lora)) == (
        f"cannot resume {tmp_path / 'run'}: the config changed (lora.alpha)"
    )


# ----------------------------------------------------------------------------- refusals in full


def _damaged(run: Path, problem: str) -> str:
    snapshot = run / CONFIG_SNAPSHOT
    return (
        f"cannot resume {run}: its {CONFIG_SNAPSHOT} {problem}: the snapshot is damaged, so whether the config "
        f"changed cannot be told; if --config is the run's config, delete {snapshot} and resume again (the "
        "checkpoints are still checked against the models the config builds)"
    )


def test_a_damaged_snapshot_is_refused_in_full(tmp_path: Path) -> None:
    config = _config(tmp_path)
    prepare_output_dir(config, resume=False)
    run = tmp_path / "run"
    snapshot = run / CONFIG_SNAPSHOT
    snapshot.write_text("- a list\n- of lines\n")
    assert _refusal(config) == _damaged(run, "is not a mapping of config keys")
    snapshot.write_text("lr: [1,\n  steps: 3\n")
    try:
        yaml.safe_load(snapshot.read_bytes())
    except yaml.YAMLError as error:  # PyYAML's own words, on one line
        reason = " ".join(str(error).split())
    assert _refusal(config) == _damaged(run, f"does not parse ({reason})")
    assert "\n" not in _refusal(config)
    snapshot.write_bytes(b"lr: \xff\n")
    assert _refusal(config).startswith(f"cannot resume {run}: its {CONFIG_SNAPSHOT} does not parse (")


def test_a_replaced_frozen_model_is_refused_in_full(tmp_path: Path) -> None:
    model = tmp_path / "vae"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    config = _config(tmp_path, vae=str(model))
    prepare_output_dir(config, resume=False)
    assert json.loads((tmp_path / "run" / FROZEN_INPUTS_FILE).read_text()).keys() == {"vae"}
    (model / "config.json").write_text('{"a": 2}')
    assert _refusal(config) == (
        f"cannot resume {tmp_path / 'run'}: vae {model} was replaced since the run started (config.json differs); "
        "its checkpoints were trained against the model that was there: put it back, or start a new run in another "
        "output_dir"
    )


# ----------------------------------------------------------------------------- the first process


@pytest.mark.parametrize(("rank", "first"), [(None, True), ("", True), (" 0 ", True), ("0", True), ("1", False)])
def test_without_a_process_group_the_first_process_is_the_one_rank_names_zero(monkeypatch, rank, first) -> None:
    from clipcond.training.run_folder import _first_process

    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert _first_process() is first


def _record_first_process(folder: str) -> None:
    from clipcond.training.run_folder import _first_process

    rank = torch.distributed.get_rank()
    os.environ["RANK"] = "0"  # the group's rank, not the environment's, decides
    Path(folder, f"rank{rank}").write_text(json.dumps(_first_process()))


def test_with_a_process_group_the_first_process_is_its_rank_zero(tmp_path: Path) -> None:
    from accelerate import debug_launcher

    debug_launcher(_record_first_process, args=(str(tmp_path),), num_processes=2)
    assert {path.name: json.loads(path.read_text()) for path in tmp_path.iterdir()} == {"rank0": True, "rank1": False}


def test_a_key_only_the_snapshot_holds_is_named(tmp_path: Path) -> None:
    """A key the config no longer has (a setting a later version dropped, a hand edit) is a
    change: what it did to the checkpoints cannot be told."""
    config = _config(tmp_path)
    prepare_output_dir(config, resume=False)
    snapshot = tmp_path / "run" / CONFIG_SNAPSHOT
    snapshot.write_text(snapshot.read_text() + "retired_option: 3\n")
    assert _refusal(config) == f"cannot resume {tmp_path / 'run'}: the config changed (retired_option)"


@pytest.mark.parametrize("kind", ["file", "fifo", "dangling link"])
def test_an_output_dir_or_a_folder_above_it_that_is_no_folder_is_refused_in_full(tmp_path: Path, kind: str) -> None:
    from clipcond.training.run_folder import check_output_path

    taken = tmp_path / "taken"
    if kind == "file":
        taken.write_text("")
    elif kind == "fifo":
        os.mkfifo(taken)
    else:
        taken.symlink_to(tmp_path / "nowhere")
    what = "a file, not a folder" if kind == "file" else "not a folder"
    advice = "; choose a folder (new or existing) for output_dir (--output-dir)"
    with pytest.raises(RunFolderError) as refused:
        check_output_path(taken)
    assert str(refused.value) == f"output_dir {taken} is {what}{advice}"
    with pytest.raises(RunFolderError) as refused:
        check_output_path(taken / "run")
    assert str(refused.value) == f"output_dir {taken / 'run'} cannot be made: {taken} is {what}{advice}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]


def test_an_empty_output_dir_is_refused_in_full() -> None:
    from clipcond.training.run_folder import check_output_path

    for empty in ("", "   "):
        with pytest.raises(RunFolderError) as refused:
            check_output_path(empty)
        assert str(refused.value) == (
            "output_dir is empty; name the run's folder in output_dir (--output-dir), e.g. runs/my-run (an empty one "
            "would be the current folder, and the run would write among its files)"
        )


# ----------------------------------------------------------------------------- what the folder holds


def test_a_new_run_makes_every_missing_folder_and_snapshots_keys_in_field_order(tmp_path: Path) -> None:
    config = _config(tmp_path, output_dir=str(tmp_path / "runs" / "day" / "run"))
    assert prepare_output_dir(config, resume=False) == tmp_path / "runs" / "day" / "run"
    snapshot = yaml.safe_load((tmp_path / "runs" / "day" / "run" / CONFIG_SNAPSHOT).read_text())
    assert list(snapshot) == [field.name for field in dataclasses.fields(TrainDiffusionConfig)]
    assert {path.name for path in (tmp_path / "runs" / "day" / "run").iterdir()} == {
        CONFIG_SNAPSHOT,
        FROZEN_INPUTS_FILE,
    }


def test_a_new_run_ignores_a_damaged_record_a_failed_start_left(tmp_path: Path) -> None:
    """A run that fails before its first checkpoint sets its snapshot aside (the folder holds no
    run) and leaves its `frozen_inputs.json`; a new run there writes its own record, never reading
    the old one (which only a resume checks)."""
    model = tmp_path / "vae"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / FROZEN_INPUTS_FILE).write_text("{cut")
    prepare_output_dir(_config(tmp_path, vae=str(model)), resume=False)
    assert json.loads((tmp_path / "run" / FROZEN_INPUTS_FILE).read_text()).keys() == {"vae"}


def test_metrics_kept_on_resume_skip_bad_lines_and_later_steps_wherever_they_are(tmp_path: Path) -> None:
    from clipcond.training.run_folder import METRICS_FILE, keep_metrics

    lines = [
        b'{"step": 1, "loss": 1.0}\n',
        b"{cut by a kill\n",
        b'{"step": 5, "loss": 0.5}\n',  # past the checkpoint (step 2), logged before an earlier evaluation line
        b"[1, 2]\n",  # JSON, but no record
        b'{"step": 2, "loss": 0.8}',  # the last line, without its line break
    ]
    metrics = tmp_path / METRICS_FILE
    metrics.write_bytes(b"".join(lines))
    kept = keep_metrics(tmp_path, None, 2)
    assert kept == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.8}]
    assert metrics.read_bytes() == b'{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.8}\n'
    metrics.write_bytes(b"".join(lines))
    assert keep_metrics(tmp_path, 3, 2) == [{"step": 1, "loss": 1.0}, {"step": 5, "loss": 0.5}]  # by count


@pytest.mark.parametrize("recorded", ['{"step": true}', '{"step": "3"}', '{"step": 2.0}', "[3]", "{cut"])
def test_a_finished_marker_without_an_int_step_reads_as_none(tmp_path: Path, recorded: str) -> None:
    from clipcond.training.run_folder import FINISHED_MARKER, finished_step, mark_finished

    (tmp_path / FINISHED_MARKER).write_text(recorded)
    assert finished_step(tmp_path) is None
    mark_finished(tmp_path, 7)
    assert finished_step(tmp_path) == 7
