"""The run folder: config snapshots, what counts as a changed config on resume (not the folder's
own path), metrics cut back on resume, and the lock that keeps one live run per folder."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import yaml

from clipcond.training.data.config import DataConfig
from clipcond.training.diffusion.config import TrainDiffusionConfig
from clipcond.training.folder_writes import remove_unfinished_results, writing_atomically
from clipcond.training.run_folder import (
    CONFIG_SNAPSHOT,
    METRICS_FILE,
    RunFolderError,
    keep_metrics,
    prepare_output_dir,
)
from clipcond.training.run_lock import LOCK_FILE, RunFolderInUse, RunFolderLock


def test_a_snapshot_from_before_a_new_field_resumes_while_the_field_keeps_its_default(tmp_path):
    config = TrainDiffusionConfig(text_encoder="clip", unet={}, output_dir=str(tmp_path / "run"))
    prepare_output_dir(config, resume=False)
    snapshot = tmp_path / "run" / CONFIG_SNAPSHOT
    older = yaml.safe_load(snapshot.read_text())
    for added in ("adapter_lora", "vae", "t5_encoder"):
        del older[added]
    snapshot.write_text(yaml.safe_dump(older))
    assert prepare_output_dir(config, resume=True) == tmp_path / "run"
    snapshot.write_text(yaml.safe_dump(older))
    with pytest.raises(ValueError, match=r"config changed \(vae\)"):
        prepare_output_dir(dataclasses.replace(config, vae="somewhere"), resume=True)
    with pytest.raises(ValueError, match=r"config changed \(lr\)"):
        prepare_output_dir(dataclasses.replace(config, lr=0.5), resume=True)
    with pytest.raises(ValueError, match="--resume"):
        prepare_output_dir(config, resume=False)


def test_a_snapshot_from_before_data_shuffle_means_file_order_for_shards_and_manifests(tmp_path):
    """A data section written before `shuffle` existed read shards and manifests in file order:
    resuming it as shuffled would read other samples from the resumed step on, so the resume is
    refused naming data.shuffle until the config says false; a shapes run resumes as it is."""
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("")
    data = DataConfig(source="manifest", manifest=str(manifest), shuffle=False)
    config = TrainDiffusionConfig(text_encoder="clip", unet={}, output_dir=str(tmp_path / "run"), data=data)
    prepare_output_dir(config, resume=False)
    snapshot = tmp_path / "run" / CONFIG_SNAPSHOT
    older = yaml.safe_load(snapshot.read_text())
    del older["data"]["shuffle"], older["data"]["shuffle_buffer"]
    snapshot.write_text(yaml.safe_dump(older))
    shuffled = dataclasses.replace(config, data=dataclasses.replace(data, shuffle=True))
    with pytest.raises(RunFolderError, match=r"config changed \(data\.shuffle\)"):
        prepare_output_dir(shuffled, resume=True)
    assert prepare_output_dir(config, resume=True) == tmp_path / "run"

    shapes = TrainDiffusionConfig(text_encoder="clip", unet={}, output_dir=str(tmp_path / "shapes"))
    prepare_output_dir(shapes, resume=False)
    snapshot = tmp_path / "shapes" / CONFIG_SNAPSHOT
    older = yaml.safe_load(snapshot.read_text())
    del older["data"]["shuffle"], older["data"]["shuffle_buffer"]
    snapshot.write_text(yaml.safe_dump(older))
    assert prepare_output_dir(shapes, resume=True) == tmp_path / "shapes"
    with pytest.raises(RunFolderError, match=r"config changed \(data\.split\)"):
        prepare_output_dir(dataclasses.replace(shapes, data=DataConfig(split="all")), resume=True)


def test_a_moved_run_folder_resumes_while_other_changes_are_refused(tmp_path):
    config = TrainDiffusionConfig(text_encoder="clip", unet={}, output_dir=str(tmp_path / "run"))
    prepare_output_dir(config, resume=False)
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = dataclasses.replace(config, output_dir=str(tmp_path / "moved"))
    assert prepare_output_dir(moved, resume=True) == tmp_path / "moved"
    assert yaml.safe_load((tmp_path / "moved" / CONFIG_SNAPSHOT).read_text())["output_dir"] == moved.output_dir
    with pytest.raises(RunFolderError, match=r"config changed \(seed\)"):
        prepare_output_dir(dataclasses.replace(moved, seed=5), resume=True)


def test_a_snapshot_cut_short_is_named_damaged_with_what_to_do_not_a_changed_config(tmp_path):
    """A snapshot cut anywhere but at a line end (a copy or a disk that lost its tail) is named
    damaged, with the remedy, where it once read as 'the config changed (<the keys lost>)';
    deleting it, as the message says, resumes."""
    from clipcond.training.run_folder import check_output_dir

    config = TrainDiffusionConfig(text_encoder="clip", unet={}, output_dir=str(tmp_path / "run"))
    prepare_output_dir(config, resume=False)
    snapshot = tmp_path / "run" / CONFIG_SNAPSHOT
    whole = snapshot.read_bytes()
    cuts = [cut for cut in range(1, len(whole)) if whole[cut - 1 : cut] != b"\n"]
    assert len(cuts) > 100
    for cut in cuts:
        snapshot.write_bytes(whole[:cut])
        with pytest.raises(RunFolderError) as error:
            check_output_dir(config, resume=True)
        message = str(error.value)
        assert message.startswith(f"cannot resume {tmp_path / 'run'}: its {CONFIG_SNAPSHOT} "), (cut, message)
        assert "the snapshot is damaged" in message and f"delete {snapshot} and resume again" in message, message
        assert "config changed (" not in message
    snapshot.write_bytes(whole[:200])  # the probe's cut: mid-key, still a mapping
    with pytest.raises(RunFolderError, match=r"was cut short \(it ends mid-line, after 200 bytes\)"):
        check_output_dir(config, resume=True)
    snapshot.unlink()
    assert prepare_output_dir(config, resume=True) == tmp_path / "run"
    assert snapshot.read_bytes() == whole


def test_checkpoints_that_is_not_a_folder_is_refused(tmp_path):
    """A file named ``checkpoints`` in the run folder: refused before any work, fresh or resumed
    (the resume once restarted from step 0 and crashed at the first checkpoint)."""
    from clipcond.training.run_folder import check_output_dir

    config = TrainDiffusionConfig(text_encoder="clip", unet={}, output_dir=str(tmp_path / "run"))
    prepare_output_dir(config, resume=False)
    (tmp_path / "run" / "checkpoints").write_text("")
    for resume in (True, False):
        with pytest.raises(RunFolderError, match=re.escape(f"{tmp_path / 'run' / 'checkpoints'} is not a folder")):
            check_output_dir(config, resume=resume)


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    records = [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.5},
        {"step": 2, "eval/top1": 0.5},
        {"step": 3, "loss": 2.0},
    ]
    text = "".join(json.dumps(record) + "\n" for record in records) + '{"step": 4, "lo'  # cut by a kill
    (tmp_path / METRICS_FILE).write_text(text)
    assert keep_metrics(tmp_path, 3, step=2) == records[:3]
    assert (tmp_path / METRICS_FILE).read_text() == "".join(json.dumps(record) + "\n" for record in records[:3])
    (tmp_path / METRICS_FILE).write_text(text)
    assert keep_metrics(tmp_path, None, step=2) == records[:3]  # a checkpoint that did not count: by step
    assert keep_metrics(tmp_path / "nothing", 5, step=2) == []


# ---------------------------------------------------------------- the lock


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _hold_lock(folder):
    """A live process holding the lock of `folder` until its stdin closes."""
    code = (
        "import sys; from clipcond.training.run_lock import RunFolderLock; "
        f"lock = RunFolderLock({str(folder)!r}); lock.acquire(); print('held', flush=True); sys.stdin.read()"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_live_run_is_refused_and_the_lock_freed_when_its_holder_ends(tmp_path):
    holder = _hold_lock(tmp_path / "run")
    try:
        with pytest.raises(
            RunFolderInUse, match=rf"in use by another run \(pid {holder.pid} on {socket.gethostname()}"
        ):
            RunFolderLock(tmp_path / "run").acquire()
        with RunFolderLock(tmp_path / "other") as other:  # another folder is free
            assert other.held
    finally:
        holder.stdin.close()
        holder.wait()
    with RunFolderLock(tmp_path / "run") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(RunFolderInUse):  # the flock decides, even within one process
            RunFolderLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_dead_runs_lock_is_taken_over(tmp_path):
    dead = _dead_pid()
    stale = {"pid": dead, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(stale))
    lock = RunFolderLock(tmp_path)
    previous = lock.acquire()
    assert previous is not None and previous.pid == dead and not previous.is_alive_here()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    (tmp_path / LOCK_FILE).write_text('{"pi')  # a holder killed while writing it
    with RunFolderLock(tmp_path) as lock:
        assert lock.held


def test_a_lock_of_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "?"}))
    with pytest.raises(RunFolderInUse, match=rf"another host .*delete {re.escape(str(tmp_path / LOCK_FILE))}"):
        RunFolderLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "elsewhere.example"


def test_a_result_is_written_whole_and_replaces_an_older_one_only_once_complete(tmp_path):
    result = tmp_path / "pipeline"
    (result / "unet").mkdir(parents=True)
    (result / "model_index.json").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with writing_atomically(result) as folder:
            (folder / "unet").mkdir(parents=True)
            raise OSError("disk full")
    assert (result / "model_index.json").read_text() == "old"  # the older result, untouched
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pipeline"]
    with writing_atomically(result) as folder:
        assert folder.parent == tmp_path and folder.name.startswith(".tmp-pipeline-")
        assert (result / "model_index.json").read_text() == "old"  # until the new one is whole
        (folder / "vae").mkdir(parents=True)
        (folder / "model_index.json").write_text("new")
    assert sorted(path.name for path in result.iterdir()) == ["model_index.json", "vae"]
    assert (result / "model_index.json").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pipeline"]


def test_what_a_killed_save_of_the_result_left_is_removed(tmp_path):
    for name in (".tmp-model-12", ".old-model-34", ".tmp-pipeline-56", ".tmp-model-x", "model"):
        (tmp_path / name).mkdir()
    removed = remove_unfinished_results(tmp_path, "model")
    assert [path.name for path in removed] == [".old-model-34", ".tmp-model-12"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".tmp-model-x", ".tmp-pipeline-56", "model"]
