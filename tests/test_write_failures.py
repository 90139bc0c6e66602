"""A write the machine refuses (a full disk, a quota, a read-only or unwritable folder) ends a
command in one ``error:`` line and exit 1, not a traceback; a checkpoint write that fails leaves
no hidden temporary folder; a training run refuses up front an `output_dir` where no file can be
made.

The failures are made in-process: safetensors' Rust writer (`safetensors.torch.serialize_file`,
what `save_file` calls with the file's name) or a Python write raises what the kernel's refusal
gives, an ``OSError`` with the errno or a ``SafetensorError`` ending in ``(os error N)``. The
expected reason is `os.strerror` of that errno. The same cases were run once by hand on a real
full disk (a tmpfs of a few MB) and on immutable folders (``chattr +i``), which need root.
"""

from __future__ import annotations

import argparse
import errno
import os
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from clipcond.errors import run_command
from clipcond.training.checkpoint import checkpoint_folder, save_checkpoint
from clipcond.training.run_folder import RunFolderError, check_output_path

WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


def _rust_writer_fails(monkeypatch, number: int = errno.ENOSPC) -> None:
    """Make every safetensors write fail as its Rust writer reports the OSError `number`."""

    def serialize_file(tensors, filename, metadata=None) -> None:
        raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(number)} (os error {number})")

    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)


def _command(run, debug: bool = False, **options) -> int:
    return run_command(run, argparse.Namespace(debug=debug, **options))


def _checkpoint(run_dir: Path, step: int) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(run_dir, step, {"model": nn.Linear(3, 2)}, keep=2)


# ------------------------------------------------------------------ a refused write: one line, exit 1


def test_a_full_disk_in_a_checkpoint_is_one_line_naming_the_file_and_the_resume(tmp_path, monkeypatch, capsys) -> None:
    _rust_writer_fails(monkeypatch)
    status = _command(lambda args: _checkpoint(tmp_path / "run", 20), resume=False)
    err = capsys.readouterr().err
    assert status == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: cannot write "), err
    # safetensors' message names no file: the line takes it from save_file's argument
    assert f"/checkpoints/.tmp-step-000000020-{os.getpid()}/model.safetensors: " in err, err
    assert os.strerror(errno.ENOSPC) in err and "nothing was left half-written" in err, err
    assert "free space" in err and "--resume" in err, err  # a training command (it has --resume) resumes


@pytest.mark.parametrize("number", WRITE_FAILURES, ids=errno.errorcode.get)
def test_each_refused_write_of_an_os_error_is_one_line_with_its_reason(number, tmp_path, capsys) -> None:
    target = tmp_path / "out" / "shard-00002.safetensors"

    def run(args) -> int:
        raise OSError(number, os.strerror(number), str(target))

    assert _command(run) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: cannot write") and f" {target}: {os.strerror(number)};" in err, err
    assert "--resume" not in err, err  # a command without --resume: a plain rerun


def test_a_failed_write_that_names_no_file_names_the_commands_output(tmp_path, capsys) -> None:
    def run(args) -> int:  # what a write() on an open file raises: an errno, no file name
        with open(tmp_path / "x", "wb") as stream:
            stream.write(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    assert _command(run, out=str(tmp_path / "emb")) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot write to {tmp_path / 'emb'}: {os.strerror(errno.ENOSPC)}; " + (
        "nothing was left half-written: free space on its disk and rerun\n"
    )


@pytest.mark.parametrize("number", (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS))
def test_a_safetensors_error_of_each_errno_is_one_line(number, tmp_path, monkeypatch, capsys) -> None:
    _rust_writer_fails(monkeypatch, number)
    assert _command(lambda args: _checkpoint(tmp_path / "run", 1)) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"model.safetensors: {os.strerror(number)};" in err, err


def test_debug_keeps_the_traceback_of_a_refused_write(tmp_path, monkeypatch, capsys) -> None:
    _rust_writer_fails(monkeypatch)
    assert _command(lambda args: _checkpoint(tmp_path / "run", 1), debug=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "SafetensorError" in err, err
    assert err.splitlines()[-1].startswith("error: cannot write "), err


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOENT, os.strerror(errno.ENOENT), "missing.yaml"),  # not a refused write
        OSError(errno.EIO, os.strerror(errno.EIO)),
        SafetensorError("Error while deserializing header: HeaderTooLarge"),  # no OSError in it
        ValueError("a bug"),
    ],
    ids=["ENOENT", "EIO", "SafetensorError-header", "ValueError"],
)
def test_other_errors_stay_bugs_with_their_traceback(error, capsys) -> None:
    def run(args) -> int:
        raise error

    with pytest.raises(type(error)) as raised:
        _command(run)
    assert raised.value is error
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ a failed checkpoint: no hidden leftover


def test_a_failed_checkpoint_write_deletes_its_temporary_folder_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
) -> None:
    run_dir = tmp_path / "run"
    kept = _checkpoint(run_dir, 10)
    _rust_writer_fails(monkeypatch)
    with pytest.raises(SafetensorError, match=r"os error 28"):
        _checkpoint(run_dir, 20)
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["latest", kept.name]
    assert (run_dir / "checkpoints" / "latest").read_text() == kept.name
    assert not checkpoint_folder(run_dir, 20).exists()


def test_a_checkpoint_write_failing_after_its_files_deletes_its_temporary_folder(tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "run"

    def replace(source, target) -> None:  # the rename into place refused (an immutable folder)
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(source))

    monkeypatch.setattr("clipcond.training.checkpoint.os.replace", replace)
    with pytest.raises(PermissionError):
        _checkpoint(run_dir, 20)
    assert list((run_dir / "checkpoints").iterdir()) == []


# ------------------------------------------------------------------ an unwritable output_dir: refused up front


@pytest.fixture
def unwritable(monkeypatch):
    """Make a nameless temporary file in the folders added to the returned set fail, as in a
    folder without write permission, on a read-only mount or immutable (``chattr +i``)."""
    refused: set[Path] = set()
    original = tempfile.TemporaryFile

    def temporary_file(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).absolute() in refused:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(dir))
        return original(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    return refused


def test_an_output_dir_to_be_made_in_an_unwritable_folder_is_refused(tmp_path, unwritable) -> None:
    unwritable.add(tmp_path.absolute())
    run = tmp_path / "run" / "sub"
    with pytest.raises(RunFolderError) as refused:
        check_output_path(run)
    message = str(refused.value)
    assert f"output_dir {run}: cannot write in {tmp_path} ({os.strerror(errno.EPERM)})" in message, message
    assert "--output-dir" in message
    assert not (tmp_path / "run").exists()


def test_an_existing_run_folder_is_checked_itself_not_its_parent(tmp_path, unwritable) -> None:
    run = tmp_path / "run"
    run.mkdir()
    unwritable.add(tmp_path.absolute())  # the parent: not where the run writes
    check_output_path(run)
    unwritable.add(run.absolute())
    with pytest.raises(RunFolderError, match=rf"cannot write in {run} "):
        check_output_path(run)
    assert list(run.iterdir()) == []  # the check leaves nothing behind


def _train_clip_errors(run: Path, tmp_path: Path, capsys, status: int) -> list[str]:
    """Run ``clipcond train-clip`` on the tiny config with `output_dir` `run`; check its exit
    `status` and that it printed no traceback; return its ``error:`` lines."""
    from test_encode_command import write_config
    from test_train_clip import tiny_config

    from clipcond.cli import main as cli_main

    path = write_config(tiny_config(run), tmp_path / "clip.yaml")
    assert cli_main(["train-clip", "--config", str(path), "--no-progress"]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_train_clip_refuses_an_unwritable_output_dir_before_any_work(tmp_path, unwritable, capsys) -> None:

    locked = tmp_path / "locked"
    locked.mkdir()
    unwritable.add(locked.absolute())
    assert _train_clip_errors(locked / "run", tmp_path, capsys, status=2) == [
        f"error: output_dir {locked / 'run'}: cannot write in {locked} ({os.strerror(errno.EPERM)}); "
        "choose a folder you can write for output_dir (--output-dir)"
    ]
    assert list(locked.iterdir()) == []


def test_a_sample_grid_that_cannot_be_written_leaves_no_cut_png(tmp_path, monkeypatch) -> None:
    """train-diffusion's sample grid goes through `write_atomically`: a write refused at the rename
    (the last moment) leaves neither the PNG nor a temporary file (it had been saved in place)."""
    from types import SimpleNamespace

    from PIL import Image

    import clipcond.output_paths
    from clipcond.training.diffusion import loop

    def drawing_pipeline(models, denoiser):
        return lambda prompts, **kwargs: SimpleNamespace(images=[Image.new("RGB", (4, 4))] * len(prompts))

    def refused(source, target) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(loop, "make_pipeline", drawing_pipeline)
    monkeypatch.setattr(clipcond.output_paths.os, "replace", refused)
    path = tmp_path / "samples" / "step-0000003.png"
    config = SimpleNamespace(sample_prompts=("a red circle", "a blue square"), sample_steps=1)
    with pytest.raises(OSError):
        loop._write_samples(config, None, nn.Linear(1, 1), path)
    assert list(path.parent.iterdir()) == []


def test_only_the_first_process_tries_writing_in_the_run_folder(tmp_path, unwritable, monkeypatch) -> None:
    """A launched rank other than 0 never writes in the run folder, not even a nameless file: it
    leaves the check to rank 0 (tests/test_multiprocess_training.py audits every open of rank 1)."""
    unwritable.add(tmp_path.absolute())
    monkeypatch.setenv("RANK", "1")
    check_output_path(tmp_path / "run")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RunFolderError, match="cannot write in"):
        check_output_path(tmp_path / "run")


def test_a_file_whose_folder_was_removed_under_the_command_is_one_line(tmp_path, capsys) -> None:
    """An output folder removed while the command wrote in it (``rm -rf`` of a run's folder): the
    ENOENT is one line saying so, exit 1; an ENOENT whose folder exists stays a bug (above)."""
    gone = tmp_path / "emb" / ".embeddings-000002.safetensors.1.ab.tmp"

    def run(args) -> int:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(gone))

    assert _command(run, out=str(tmp_path / "emb")) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: cannot reach {gone}: its folder {gone.parent} no longer exists (removed while the command ran); "
        "nothing was left half-written there: rerun the command\n"
    )


def test_train_clip_whose_run_folder_is_removed_midway_fails_in_one_line_not_as_a_usage_error(
    tmp_path, monkeypatch, capsys
) -> None:
    """A training command turns a missing file named by its config into a usage error (exit 2); a
    file missing because the run folder was removed under the run is a failed run (exit 1)."""
    import shutil

    from clipcond.training.clip import loop

    def removed_midway(config, **options):
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(config.output_dir)  # another shell's rm -rf
        (Path(config.output_dir) / "metrics.jsonl").open("a")

    monkeypatch.setattr(loop, "train_clip", removed_midway)
    run = tmp_path / "run"
    assert _train_clip_errors(run, tmp_path, capsys, status=1) == [
        f"error: cannot reach {run / 'metrics.jsonl'}: its folder {run} no longer exists (removed while the command "
        "ran); nothing was left half-written there: rerun the command"
    ]
