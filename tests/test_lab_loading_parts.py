"""`clipcond.lab.loading` on hand-made folders (no pipelines): `loading`'s one-line error for each
loader error it stands for (and what it lets through), and `check_loadable`'s findings one at a
time: a safetensors header cut, a JSON or YAML file that does not parse, a torch zip file cut
short (a legacy pickle left alone), a component `model_index.json` lists without its folder, a
component's config without weights (an index file counts), entries that are no component, a
tokenizer folder without its vocabulary; and whole folders that pass.

test_lab_checks.py and test_lab_safety.py damage real saved pipelines inside whole experiments;
these pin each rule and message on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import save_file

from clipcond.lab.loading import WEIGHTS_SUFFIXES, ModelLoadFailed, check_loadable, loading

WHAT = "setup a: pipeline"


def after(folder: Path, words: str) -> str:
    return (
        f"{WHAT} {folder} cannot be loaded ({words}); restore or remake it, then re-run: the finished results "
        "are kept until then"
    )


def failure(folder: Path) -> str:
    with pytest.raises(ModelLoadFailed) as error:
        check_loadable(folder, WHAT)
    return str(error.value)


def component(folder: Path, name: str, weights: str | None = "diffusion_pytorch_model.safetensors") -> Path:
    part = folder / name
    part.mkdir(parents=True)
    (part / "config.json").write_text('{"a": 1}')
    if weights is not None:
        save_file({"w": torch.zeros(2)}, str(part / weights))
    return part


def pipeline(folder: Path, index: dict | None = None) -> Path:
    """A folder whose model_index.json lists a `unet` (saved) and a null `safety_checker`."""
    folder.mkdir(parents=True, exist_ok=True)
    index = index or {"_class_name": "X", "unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index))
    if "unet" in index:
        component(folder, "unet")
    return folder


# ------------------------------------------------------------------ loading


@pytest.mark.parametrize(
    "error",
    [
        OSError("no file named x"),
        FileNotFoundError("gone"),
        ValueError("bad\n  config"),
        RuntimeError("size mismatch"),
        yaml.YAMLError("not yaml"),
        SafetensorError("header too large"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_loaders_error_becomes_one_line_naming_the_role_and_folder(tmp_path, error) -> None:
    with pytest.raises(ModelLoadFailed) as raised, loading(WHAT, tmp_path):
        raise error
    assert str(raised.value) == after(tmp_path, " ".join(str(error).split()))
    assert raised.value.__cause__ is error


def test_a_wordless_error_is_named_by_its_type(tmp_path) -> None:
    with pytest.raises(ModelLoadFailed) as raised, loading(WHAT, str(tmp_path)):
        raise RuntimeError()
    assert str(raised.value) == after(tmp_path, "RuntimeError")


@pytest.mark.parametrize("error", [KeyError("k"), TypeError("t"), KeyboardInterrupt()], ids=lambda e: type(e).__name__)
def test_other_errors_pass_through(tmp_path, error) -> None:
    with pytest.raises(type(error)), loading(WHAT, tmp_path):
        raise error


def test_nothing_raised_is_nothing_changed(tmp_path) -> None:
    with loading(WHAT, tmp_path):
        value = 1
    assert value == 1


# ------------------------------------------------------------------ whole folders that pass


def test_a_whole_pipeline_folder_passes(tmp_path) -> None:
    folder = pipeline(tmp_path / "p")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text('{"beta_start": 0.1}')
    (folder / "extra.yaml").write_text("a: [1, 2]\n")
    torch.save({"w": torch.zeros(1)}, folder / "unet" / "extra.bin")
    assert check_loadable(folder, WHAT) is None
    assert check_loadable(str(folder), WHAT) is None


def test_a_folder_without_model_index_is_not_checked_for_components(tmp_path) -> None:
    folder = tmp_path / "clip"
    component(folder, "text", weights=None)  # a config without weights, but no index lists it
    assert check_loadable(folder, WHAT) is None


def test_a_missing_folder_fails_in_one_line(tmp_path) -> None:
    message = failure(tmp_path / "gone")
    assert message.startswith(f"{WHAT} {tmp_path / 'gone'} cannot be loaded (")


# ------------------------------------------------------------------ files


def test_a_cut_safetensors_header_is_found(tmp_path) -> None:
    folder = pipeline(tmp_path / "p")
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    message = failure(folder)
    assert message.startswith(f"{WHAT} {folder} cannot be loaded (") and message.endswith(
        "); restore or remake it, then re-run: the finished results are kept until then"
    )


@pytest.mark.parametrize("name", ["unet/config.json", "model_index.json", "scheduler/scheduler_config.json"])
def test_a_json_file_that_does_not_parse_is_found(tmp_path, name) -> None:
    folder = pipeline(tmp_path / "p")
    path = folder / name
    path.parent.mkdir(exist_ok=True)
    path.write_text('{"a": ')
    assert failure(folder) == after(folder, "Expecting value: line 1 column 7 (char 6)")


def test_a_json_file_that_is_not_utf8_is_found(tmp_path) -> None:
    folder = pipeline(tmp_path / "p")
    (folder / "unet" / "config.json").write_bytes(b'{"\xff": 1}')
    assert "can't decode byte 0xff" in failure(folder)


def test_a_tokenizer_json_is_left_to_the_damage_check(tmp_path) -> None:
    # not parsed as the other JSON files are (1-4 MB); damaged_files reads it
    folder = pipeline(tmp_path / "p")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text("{")
    (folder / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": 77}')
    message = failure(folder)
    assert "cannot be loaded (tokenizer/tokenizer.json " in message and "(char 1)" not in message


@pytest.mark.parametrize("name", ["a.yaml", "b.yml", "c.YAML"])
def test_a_yaml_file_that_does_not_parse_is_found(tmp_path, name) -> None:
    folder = pipeline(tmp_path / "p")
    (folder / name).write_text("a: [1, 2\n")
    message = failure(folder)
    assert message.startswith(f"{WHAT} {folder} cannot be loaded (while parsing a flow sequence")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".BIN"])
def test_a_torch_zip_file_cut_short_is_found(tmp_path, suffix) -> None:
    folder = pipeline(tmp_path / "p")
    path = folder / "unet" / f"extra{suffix}"
    torch.save({"w": torch.zeros(64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert failure(folder) == after(folder, f"extra{suffix} is damaged (File is not a zip file; cut short?)")


def test_a_legacy_pickle_is_not_checked(tmp_path) -> None:
    folder = pipeline(tmp_path / "p")
    torch.save({"w": torch.zeros(64)}, folder / "unet" / "old.bin", _use_new_zipfile_serialization=False)
    path = folder / "unet" / "old.bin"
    path.write_bytes(path.read_bytes()[:40])  # cut, but no zip: nothing cheap tells
    assert check_loadable(folder, WHAT) is None


def test_a_torch_zip_file_whole_passes_beside_other_suffixes(tmp_path) -> None:
    folder = pipeline(tmp_path / "p")
    torch.save({"w": torch.zeros(4)}, folder / "unet" / "whole.pt")
    (folder / "unet" / "notes.ckpt").write_bytes(b"PK-but-not-read")  # .ckpt is not opened
    assert check_loadable(folder, WHAT) is None


# ------------------------------------------------------------------ components


def test_a_listed_component_without_its_folder_is_found(tmp_path) -> None:
    index = {"_class_name": "X", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    folder = pipeline(tmp_path / "p", index)
    assert failure(folder) == after(
        folder, "model_index.json lists the component 'vae' (AutoencoderKL), but vae/ is missing"
    )


def test_entries_that_are_no_component_are_skipped(tmp_path) -> None:
    index = {
        "_class_name": "X",
        "_diffusers_version": "0.42.1",
        "_private": ["diffusers", "Thing"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "safety_checker": [None, None],
        "feature_extractor": ["transformers", None],
        "image_encoder": [None, "CLIPVisionModel"],
        "one": ["diffusers"],
        "three": ["a", "b", "c"],
        "text": "a string",
        "force_zeros_for_empty_prompt": True,
    }
    assert check_loadable(pipeline(tmp_path / "p", index), WHAT) is None


def test_a_model_index_that_is_no_object_is_found(tmp_path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "model_index.json").write_text("[1, 2]")
    assert failure(folder) == after(folder, "model_index.json is not a JSON object")


@pytest.mark.parametrize("weights", [f"w{suffix}" for suffix in WEIGHTS_SUFFIXES] + ["w.safetensors.index.json"])
def test_a_component_with_a_config_needs_a_weights_file(tmp_path, weights) -> None:
    index = {"_class_name": "X", "text_encoder": ["transformers", "CLIPTextModel"]}
    folder = pipeline(tmp_path / "p", index)
    part = component(folder, "text_encoder", weights=None)
    assert failure(folder) == after(
        folder, "text_encoder/ holds a config but no weights file (.safetensors, .bin, .pt, .pth, .ckpt, .gguf)"
    )
    path = part / weights
    if weights.endswith(".safetensors"):
        save_file({"w": torch.zeros(1)}, str(path))
    elif weights.endswith(".json"):
        path.write_text('{"weight_map": {}}')
    elif weights.endswith((".bin", ".pt", ".pth")):
        torch.save({"w": torch.zeros(1)}, path)
    else:
        path.write_bytes(b"\x00")
    assert check_loadable(folder, WHAT) is None


def test_a_component_without_a_config_needs_no_weights(tmp_path) -> None:
    index = {"_class_name": "X", "scheduler": ["diffusers", "DDIMScheduler"]}
    folder = pipeline(tmp_path / "p", index)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    assert check_loadable(folder, WHAT) is None


def test_a_tokenizer_folder_without_its_vocabulary_is_found(tmp_path) -> None:
    index = {"_class_name": "X", "tokenizer": ["transformers", "CLIPTokenizer"]}
    folder = pipeline(tmp_path / "p", index)
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer_config.json").write_text('{"tokenizer_class": "CLIPTokenizer"}')
    message = failure(folder)
    assert "tokenizer/vocab.json" in message and "tokenizer/merges.txt" in message


def test_a_root_tokenizer_without_its_vocabulary_is_named_once_per_file(tmp_path) -> None:
    # a CLIP folder whose tokenizer sits at its root: the root is checked, and only once
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "CLIPTokenizer"}')
    (folder / "text").mkdir()
    (folder / "text" / "config.json").write_text("{}")
    message = failure(folder)
    words = message.removeprefix(f"{WHAT} {folder} cannot be loaded (").split("); restore")[0]
    problems = words.split("; ")
    assert len(problems) == 2 and len(set(problems)) == 2, problems
    assert sorted(problem.split()[0] for problem in problems) == ["merges.txt", "vocab.json"]


# ------------------------------------------------------------------ load_dtype's edges


def unet_weights(folder: Path, tensors: dict) -> Path:
    (folder / "unet").mkdir(parents=True)
    save_file(tensors, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    return folder


def test_a_unet_file_without_tensors_loads_in_float32(tmp_path) -> None:
    from clipcond.lab.loading import load_dtype

    assert load_dtype(unet_weights(tmp_path, {}), "cuda") == torch.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.float8_e4m3fn])
def test_a_unet_stored_in_another_dtype_loads_in_float32(tmp_path, dtype) -> None:
    from clipcond.lab.loading import load_dtype

    assert load_dtype(unet_weights(tmp_path, {"w": torch.zeros(2).to(dtype)}), "cuda") is torch.float32


# ------------------------------------------------------------------ setup_pipeline


@pytest.fixture(scope="module")
def saved_sd(tmp_path_factory) -> Path:
    from tiny_pipelines import build_sd

    folder = tmp_path_factory.mktemp("sd") / "sd"
    build_sd().to(torch.float16).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("native", [False, True])
def test_a_setup_loads_wrapped_or_as_saved_in_float32_on_the_cpu_with_its_bar_off(saved_sd, native) -> None:
    from diffusers import StableDiffusionPipeline

    from clipcond.lab.config import SetupConfig
    from clipcond.lab.loading import setup_pipeline
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    pipe = setup_pipeline(SetupConfig("a", str(saved_sd), native=native), "cpu")
    assert type(pipe) is (StableDiffusionPipeline if native else CLIPConditionedPipeline)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float32  # stored in float16
    assert pipe._progress_bar_config == {"disable": True}
    assert pipe.device.type == "cpu"


def test_a_setup_whose_folder_cannot_load_fails_in_one_line(saved_sd, tmp_path) -> None:
    import shutil

    from clipcond.lab.config import SetupConfig
    from clipcond.lab.loading import setup_pipeline

    folder = tmp_path / "sd"
    shutil.copytree(saved_sd, folder)
    (folder / "model_index.json").write_text("{")
    with pytest.raises(ModelLoadFailed) as error:
        setup_pipeline(SetupConfig("b", str(folder)), "cpu")
    assert str(error.value).startswith(f"setup b: pipeline {folder} cannot be loaded (")


@pytest.mark.parametrize("native", [False, True])
def test_off_the_cpu_a_setup_loads_in_its_stored_dtype_on_that_device(saved_sd, native) -> None:
    # "meta" stands for an accelerator: not the CPU, so the UNet's stored float16, and no GPU needed
    from clipcond.lab.config import SetupConfig
    from clipcond.lab.loading import setup_pipeline

    pipe = setup_pipeline(SetupConfig("a", str(saved_sd), native=native), "meta")
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float16
    assert pipe.unet.device.type == pipe.text_encoder.device.type == "meta"


def test_a_native_setup_of_a_saved_clipcond_pipeline_loads_it_as_ours(tmp_path) -> None:
    # diffusers' DiffusionPipeline cannot load it (its class is not in diffusers)
    from tiny_pipelines import build_sd

    from clipcond.lab.config import SetupConfig
    from clipcond.lab.loading import setup_pipeline
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    CLIPConditionedPipeline.from_pipe(build_sd()).save_pretrained(tmp_path / "ours")
    pipe = setup_pipeline(SetupConfig("a", str(tmp_path / "ours"), native=True), "cpu")
    assert type(pipe) is CLIPConditionedPipeline
