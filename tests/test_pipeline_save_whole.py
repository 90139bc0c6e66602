"""`CLIPConditionedPipeline.save_pretrained` whole or not at all (clipcond/folder_saves.py).

A save over an earlier one that fails partway (here the VAE's writer raises, as on a full
disk) leaves the folder as it was: it loads the old pipeline, whose images are bit-identical,
and a user's files in it stay. diffusers' `StableDiffusionPipeline.save_pretrained`, on the
same failure, left the new `model_index.json` and the components written so far beside the
old ones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file
from test_lora_pipeline import saved_lora
from tiny_pipelines import build_sd

import clipcond.folder_saves as folder_saves
from clipcond import CLIPConditionedPipeline


def _pipeline(shift: float) -> CLIPConditionedPipeline:
    """A tiny SD pipeline of ours; `shift` added to one UNet weight tells two apart."""
    pipe = CLIPConditionedPipeline.from_pipe(build_sd())
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(shift)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe) -> np.ndarray:
    return pipe(
        "a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images


def _loaded_image(folder: Path) -> np.ndarray:
    pipe = CLIPConditionedPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return _image(pipe)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _siblings(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.parent.iterdir() if path.name != folder.name)


def _full_disk(pipe, component: str = "vae") -> None:
    """Make `component`'s writer fail, as a full disk would, after the components before it
    (ours writes the UNet, scheduler, text encoder and tokenizer before the VAE)."""

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    getattr(pipe, component).save_pretrained = fail


@pytest.fixture
def saved(tmp_path) -> tuple[Path, np.ndarray]:
    """A folder holding a saved pipeline, a user's README beside it and a note in `unet/`."""
    folder = tmp_path / "pipe"
    old = _pipeline(0.0)
    old.save_pretrained(folder)
    (folder / "README.md").write_text("my notes")
    (folder / "unet" / "NOTES.txt").write_text("trained on shapes")
    (folder / "unet" / "runs" / "first").mkdir(parents=True)
    (folder / "unet" / "runs" / "first" / "log.txt").write_text("loss 0.1")
    (folder / "unet" / "training_log.txt").write_text("sorted after config.json")
    (folder / "unet" / "latest").symlink_to("runs/first")
    (folder / "unet" / "links" / "deep").mkdir(parents=True)
    (folder / "unet" / "links" / "deep" / "current").symlink_to("../../runs/first")
    return folder, _image(old)


USERS_FILES = {
    "README.md": "my notes",
    "unet/NOTES.txt": "trained on shapes",
    "unet/runs/first/log.txt": "loss 0.1",
    "unet/training_log.txt": "sorted after config.json",
}


def _users_files_are_there(folder: Path) -> None:
    assert {name: (folder / name).read_text() for name in USERS_FILES} == USERS_FILES
    assert os.readlink(folder / "unet" / "latest") == "runs/first"
    assert os.readlink(folder / "unet" / "links" / "deep" / "current") == "../../runs/first"


def test_a_save_that_fails_partway_leaves_the_folder_as_it_was(saved) -> None:
    folder, old_image = saved
    before = _files(folder)
    new = _pipeline(0.5)
    _full_disk(new)
    with pytest.raises(OSError, match="No space left on device"):
        new.save_pretrained(folder)
    assert _files(folder) == before
    assert _siblings(folder) == []
    assert np.array_equal(_loaded_image(folder), old_image)
    _users_files_are_there(folder)


def test_diffusers_save_that_fails_partway_leaves_a_mix(saved) -> None:
    """Why: the same failure in diffusers' own writer changes the folder (SD writes the VAE,
    text encoder, tokenizer and UNet before its scheduler: the UNet is the new one)."""
    folder, _ = saved
    before = _files(folder)
    peer = build_sd()
    assert type(peer) is StableDiffusionPipeline
    with torch.no_grad():
        peer.unet.conv_out.bias.add_(0.5)
    _full_disk(peer, "scheduler")
    with pytest.raises(OSError):
        peer.save_pretrained(folder)
    changed = {name for name, data in _files(folder).items() if before.get(name) != data}
    assert "unet/diffusion_pytorch_model.safetensors" in changed


def test_a_whole_save_replaces_the_old_one_and_keeps_the_users_files(saved) -> None:
    folder, old_image = saved
    stale = folder / "unet" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    stale.write_bytes(b"an earlier save's shard")
    new = _pipeline(0.5)
    new = CLIPConditionedPipeline.from_pipe(new, scheduler=EulerDiscreteScheduler.from_config(new.scheduler.config))
    new.save_pretrained(folder)
    assert type(CLIPConditionedPipeline.from_pretrained(folder).scheduler) is EulerDiscreteScheduler
    image = _loaded_image(folder)
    assert np.array_equal(image, _image(new))
    assert not np.array_equal(image, old_image)
    _users_files_are_there(folder)
    assert not stale.exists()  # an earlier save's weights are not carried over
    assert _siblings(folder) == []


def test_the_users_files_are_copied_where_hard_links_fail(saved, monkeypatch) -> None:
    folder, _ = saved

    def no_hard_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(folder_saves.os, "link", no_hard_links)
    _pipeline(0.5).save_pretrained(folder)
    _users_files_are_there(folder)


def test_every_file_written_is_flushed_to_disk_before_it_is_moved_in(saved, monkeypatch) -> None:
    folder, _ = saved
    flushed = []
    fsync = os.fsync

    def recording_fsync(descriptor):
        flushed.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")))
        return fsync(descriptor)

    monkeypatch.setattr(folder_saves.os, "fsync", recording_fsync)
    _pipeline(0.5).save_pretrained(folder)
    written = f".tmp-pipe-{os.getpid()}/"
    names = {str(path).split(written, 1)[1] for path in flushed if written in str(path)}
    # every file the folder now holds but the README beside the save (left where it was)
    links = ("unet/latest/", "unet/links/")  # what the links point to was flushed under its own name
    assert names == {name for name in _files(folder) if name != "README.md" and not name.startswith(links)}


def test_what_a_dead_save_with_this_pid_left_is_cleared_first(saved) -> None:
    """A save killed midway leaves hidden siblings named by its pid; a later process with the
    same pid clears them (a file or a folder) before it writes its own."""
    folder, _ = saved
    (folder.parent / f".tmp-pipe-{os.getpid()}").write_text("half a save")
    (folder.parent / f".old-pipe-{os.getpid()}" / "unet").mkdir(parents=True)
    new = _pipeline(0.5)
    new.save_pretrained(folder)
    assert _siblings(folder) == []
    assert np.array_equal(_loaded_image(folder), _image(new))
    (folder.parent / f".tmp-pipe-{os.getpid()}" / "vae").mkdir(parents=True)
    (folder.parent / f".old-pipe-{os.getpid()}").write_text("half a swap")
    new.save_pretrained(folder)
    assert _siblings(folder) == []


def test_a_save_into_a_new_folder_is_one_rename(tmp_path) -> None:
    pipe = _pipeline(0.0)
    folder = tmp_path / "new" / "pipe"
    folder.parent.mkdir()
    pipe.save_pretrained(folder)
    assert np.array_equal(_loaded_image(folder), _image(pipe))
    assert _siblings(folder) == []
    failing = _pipeline(0.5)
    _full_disk(failing)
    with pytest.raises(OSError):
        failing.save_pretrained(tmp_path / "new" / "other")
    assert _siblings(folder) == []  # no folder and no hidden sibling left for the failed one


def test_a_move_that_fails_puts_every_entry_back(saved, monkeypatch) -> None:
    """The moves into an existing folder: when one fails (here the third), the entries
    already moved in go back out and the old ones back in."""
    folder, old_image = saved
    before = _files(folder)
    moves = []
    replace = os.replace

    def failing_replace(source, target):
        moves.append((source, target))
        if len(moves) == 5:  # aside, in, aside, in, then this one: the third entry's move aside
            raise OSError(5, "Input/output error")
        return replace(source, target)

    monkeypatch.setattr(folder_saves.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        _pipeline(0.5).save_pretrained(folder)
    monkeypatch.undo()
    assert _files(folder) == before
    assert _siblings(folder) == []
    assert np.array_equal(_loaded_image(folder), old_image)


@pytest.mark.parametrize(
    "directory, error, message",
    [
        (3, TypeError, r"^`save_directory` must be a path \(str or os.PathLike\), got int$"),
        ("file", ValueError, r"^`save_directory` must be a folder, got the file .*file$"),
    ],
)
def test_a_save_directory_that_is_no_folder_is_refused_before_any_write(tmp_path, directory, error, message) -> None:
    if directory == "file":
        directory = tmp_path / "file"
        directory.write_text("kept")
    with pytest.raises(error, match=message):
        _pipeline(0.0).save_pretrained(directory)
    assert sorted(path.name for path in tmp_path.iterdir()) == (["file"] if error is ValueError else [])


def _lora_layers(tmp_path: Path, seed: int) -> dict:
    """`save_lora_weights`' keyword arguments for a random LoRA of the tiny SD pipeline."""
    weights = load_file(next(saved_lora(tmp_path / f"lora-{seed}", seed=seed).glob("*.safetensors")))
    layers = {}
    for component in ("unet", "text_encoder"):
        part = {
            key.removeprefix(f"{component}."): value
            for key, value in weights.items()
            if key.startswith(f"{component}.")
        }
        layers[f"{component}_lora_layers"] = part
    return layers


def _half_then_full_disk(weights, filename) -> None:
    Path(filename).write_bytes(b"half a file")
    raise OSError(28, "No space left on device")


def test_a_lora_save_that_fails_partway_keeps_the_earlier_file(tmp_path) -> None:
    folder = tmp_path / "saves" / "lora"
    folder.parent.mkdir()
    CLIPConditionedPipeline.save_lora_weights(folder, **_lora_layers(tmp_path, 1))
    before = _files(folder)
    with pytest.raises(OSError, match="No space left on device"):
        CLIPConditionedPipeline.save_lora_weights(
            folder, **_lora_layers(tmp_path, 2), save_function=_half_then_full_disk
        )
    assert _files(folder) == before
    assert _siblings(folder) == []
    shutil.copytree(folder, tmp_path / "peer")  # why: diffusers' writer cuts the file short in place
    with pytest.raises(OSError):
        StableDiffusionPipeline.save_lora_weights(
            tmp_path / "peer", **_lora_layers(tmp_path, 2), save_function=_half_then_full_disk
        )
    assert _files(tmp_path / "peer") == {"pytorch_lora_weights.safetensors": b"half a file"}


def test_a_lora_save_takes_the_layers_by_position_as_diffusers_does(tmp_path) -> None:
    """SDXL's signature: the UNet's and the text encoder's layers after the folder, by position,
    write the file that diffusers' own save writes from them."""
    layers = _lora_layers(tmp_path, 1)
    by_position = (layers["unet_lora_layers"], layers["text_encoder_lora_layers"])
    CLIPConditionedPipeline.save_lora_weights(tmp_path / "ours", *by_position)
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "theirs", *by_position)
    assert _files(tmp_path / "ours") == _files(tmp_path / "theirs")
    saved = load_file(tmp_path / "ours" / "pytorch_lora_weights.safetensors")
    assert {key.split(".")[0] for key in saved} == {"unet", "text_encoder"}


def test_a_lora_save_into_a_file_is_refused(tmp_path) -> None:
    """diffusers logged an error and returned: nothing saved, no exception."""
    path = tmp_path / "file"
    path.write_text("kept")
    with pytest.raises(ValueError, match=r"^`save_directory` must be a folder, got the file "):
        CLIPConditionedPipeline.save_lora_weights(path, **_lora_layers(tmp_path, 1))
    assert path.read_text() == "kept"


@pytest.mark.parametrize(
    ("args", "kwargs", "unet_file"),
    [
        ((False,), {}, "diffusion_pytorch_model.bin"),
        ((), {"safe_serialization": False}, "diffusion_pytorch_model.bin"),
        ((), {"variant": "fp16"}, "diffusion_pytorch_model.fp16.safetensors"),
    ],
    ids=["safe_serialization by position", "safe_serialization by name", "variant"],
)
def test_a_whole_save_writes_the_files_diffusers_save_writes_for_its_arguments(tmp_path, args, kwargs, unet_file):
    """The arguments after the folder (by position or by name) reach diffusers' save: the same
    file names as `StableDiffusionPipeline.save_pretrained` with them, and the folder loads."""
    ours = _pipeline(0.0)
    ours.save_pretrained(tmp_path / "ours", *args, **kwargs)
    build_sd().save_pretrained(tmp_path / "theirs", *args, **kwargs)
    names = {str(path.relative_to(tmp_path / "ours")) for path in (tmp_path / "ours").rglob("*") if path.is_file()}
    assert f"unet/{unet_file}" in names
    assert {name for name in names if "/" in name} == {
        str(path.relative_to(tmp_path / "theirs")) for path in (tmp_path / "theirs").rglob("*/*") if path.is_file()
    }
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "ours", variant=kwargs.get("variant"))
    assert torch.equal(loaded.unet.conv_out.bias, ours.unet.conv_out.bias)


def test_push_to_hub_is_diffusers_own_save_into_the_folder_named(tmp_path, monkeypatch) -> None:
    """With `push_to_hub` the save is diffusers' own, unchanged (its upload needs the hub): it
    gets the folder named and every argument, and no hidden sibling is made."""
    from diffusers import DiffusionPipeline

    calls = []
    monkeypatch.setattr(
        DiffusionPipeline, "save_pretrained", lambda self, *args, **kwargs: calls.append((args, kwargs))
    )
    _pipeline(0.0).save_pretrained(tmp_path / "pipe", False, push_to_hub=True, repo_id="someone/tiny")
    assert calls == [((tmp_path / "pipe", False), {"push_to_hub": True, "repo_id": "someone/tiny"})]
    assert list(tmp_path.iterdir()) == []
