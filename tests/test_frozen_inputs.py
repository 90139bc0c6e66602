"""Frozen-input fingerprints of a model folder whose component is a symlink to another folder
(`vae -> ../shared/vae`, how people share one component between pipelines): a resume must see
the linked component replaced exactly as it sees a component that is a real folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from clipcond.training.frozen_inputs import frozen_input_fingerprints, replaced_input


def _pipeline_folder(folder: Path) -> Path:
    """A pipeline-like folder: model_index.json, unet/ and vae/ (each a config and weights)."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    for component in ("unet", "vae"):
        (folder / component).mkdir()
        (folder / component / "config.json").write_text(f'{{"name": "{component}"}}')
        (folder / component / "model.safetensors").write_bytes(component.encode() * 64)
    return folder


def _replace_vae_weights(vae: Path) -> None:
    weights = vae / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(bytes([data[0] ^ 1]) + data[1:])


def _message_after_replacing_the_vae(base: Path, vae: Path) -> tuple[list[str], str | None]:
    """(the files recorded under init_from, replaced_input's words after vae's weights changed)."""
    config = SimpleNamespace(text_encoder=None, t5_encoder=None, vae=None, init_from=str(base))
    recorded = json.loads(json.dumps(frozen_input_fingerprints(config)))  # as the run folder reads it back
    _replace_vae_weights(vae)
    return sorted(recorded["init_from"]["files"]), replaced_input(recorded, frozen_input_fingerprints(config, recorded))


def test_a_replaced_component_linked_from_another_folder_is_seen_as_a_real_folder_is(tmp_path) -> None:
    # probe13_files2 #1: rglob did not go into the linked vae/, so --resume went on against another VAE
    real = _pipeline_folder(tmp_path / "real")
    control_files, control = _message_after_replacing_the_vae(real, real / "vae")
    assert control == f"init_from {real} was replaced since the run started (vae/model.safetensors differs)"

    linked = _pipeline_folder(tmp_path / "linked")
    (tmp_path / "shared").mkdir()
    shutil.move(linked / "vae", tmp_path / "shared" / "vae")
    (linked / "vae").symlink_to(Path("..", "shared", "vae"), target_is_directory=True)
    files, message = _message_after_replacing_the_vae(linked, tmp_path / "shared" / "vae")
    assert files == control_files
    assert message == control.replace(str(real), str(linked))


def test_a_link_back_to_a_folder_above_is_not_walked_again(tmp_path) -> None:
    base = _pipeline_folder(tmp_path / "base")
    (base / "vae" / "loop").symlink_to(base, target_is_directory=True)  # a cycle
    config = SimpleNamespace(text_encoder=None, t5_encoder=None, vae=None, init_from=str(base))
    files = sorted(frozen_input_fingerprints(config)["init_from"]["files"])
    expected = ["model_index.json"] + [
        f"{c}/{f}" for c in ("unet", "vae") for f in ("config.json", "model.safetensors")
    ]
    assert files == expected


def test_two_changed_files_are_counted_and_a_missing_model_is_left_to_loading(tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()
    for name in ("a.json", "b.bin", "c.bin"):
        (vae / name).write_bytes(name.encode() * 10)
    config = SimpleNamespace(vae=str(vae), text_encoder=str(tmp_path / "missing"))
    before = frozen_input_fingerprints(config)
    assert sorted(before) == ["vae"]  # the missing text encoder is not fingerprinted
    (vae / "b.bin").write_bytes(b"x" * 50)
    (vae / "c.bin").write_bytes(b"y" * 50)
    after = frozen_input_fingerprints(config, before)
    assert (
        replaced_input(before, after)
        == f"vae {vae} was replaced since the run started (b.bin differs and 1 more files)"
    )
    (vae / "a.json").write_bytes(b"z")
    assert replaced_input(before, frozen_input_fingerprints(config, after)).endswith(
        "(a.json differs and 2 more files)"
    )


def test_a_model_given_as_one_file(tmp_path):
    weights = tmp_path / "vae.safetensors"
    weights.write_bytes(b"1" * 64)
    config = SimpleNamespace(vae=str(weights))
    before = frozen_input_fingerprints(config)
    assert list(before["vae"]["files"]) == ["."]
    weights.write_bytes(b"2" * 64)
    assert replaced_input(before, frozen_input_fingerprints(config, before)) == (
        f"vae {weights} was replaced since the run started (. differs)"
    )
