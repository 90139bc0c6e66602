"""Load the lab's models (setups' pipelines, the clip_score CLIP), or fail in one line naming
the setup and the folder.

A model folder can be damaged after a finished run (a weights file cut short by an interrupted
copy or sync, a config edited by hand). Its digest then changes, so all of its results become
stale; were the run to notice only when it loads the model, it would already have dropped
those results and deleted their images, and restoring the folder would not bring them back.
So `check_loadable` opens every weights file's header and parses every config of a folder
(cheap: nothing is loaded into memory) before the run drops a result line or deletes an image,
and the loaders turn what they raise into `ModelLoadFailed` too.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from clipcond.errors import one_line
from clipcond.file_damage import damaged_files
from clipcond.json_reading import read_json_with_collector_paused
from clipcond.lab.config import SetupConfig
from clipcond.lab.digests import model_files


class ModelLoadFailed(Exception):
    """A model folder of the experiment cannot be loaded; the message names it and what to do."""


def _loader_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, yaml.YAMLError, SafetensorError)


@contextmanager
def loading(what: str, folder: str | Path) -> Iterator[None]:
    """Inside the block, a loader's error (a missing or damaged file, a bad config) is raised
    again as `ModelLoadFailed` naming `what` (e.g. ``"setup a: pipeline"``) and `folder`."""
    try:
        yield
    except _loader_errors() as caught:
        raise ModelLoadFailed(
            f"{what} {folder} cannot be loaded ({one_line(caught)}); restore or remake it, then "
            "re-run: the finished results are kept until then"
        ) from caught


WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
"""File suffixes that hold a component's weights (an index ``*.safetensors.index.json`` too)."""


def check_loadable(folder: str | Path, what: str) -> None:
    """Fail in one line (`ModelLoadFailed`) on a model folder that cannot be loaded, reading
    headers only (nothing is loaded into memory):

    - every ``.safetensors`` header opens, every ``.json`` / ``.yaml`` file parses;
    - every torch zip file (``.bin``, ``.pt``, ``.pth``) has its central directory (a file cut
      short loses it); a legacy non-zip pickle is not checked;
    - every component that ``model_index.json`` lists has its folder, and every component
      folder with a model ``config.json`` holds a weights file;
    - every tokenizer folder holds the vocabulary its loader reads, and a ``merges.txt`` read
      without a ``tokenizer.json`` fits its ``vocab.json`` (`clipcond.file_damage`: without
      them, transformers built a tokenizer of its special tokens alone, with no error).

    Args:
        folder: a model folder (a saved pipeline, a CLIP folder); files as `folder_digest` sees them.
        what: names the folder's role in the message, e.g. ``"setup a: pipeline"``.
    """
    from safetensors import safe_open

    folder = Path(folder)
    with loading(what, folder):
        files = model_files(folder)
        for path in files:
            suffix = path.suffix.lower()
            if suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            elif suffix == ".json" and path.name != "tokenizer.json":  # that one (1-4 MB): by damaged_files below
                read_json_with_collector_paused(path.read_text(encoding="utf-8"), type)
            elif suffix in (".yaml", ".yml"):
                yaml.safe_load(path.read_text(encoding="utf-8"))
            elif suffix in (".bin", ".pt", ".pth"):
                _check_torch_zip(path)
        index = folder / "model_index.json"
        if index.is_file():
            _check_components(folder, json.loads(index.read_text(encoding="utf-8")))
        subfolders = sorted({path.parent.relative_to(folder).as_posix() for path in files} - {"."})
        found = damaged_files(folder, ["", *subfolders], None, safetensors=False)  # headers opened above
        if found:
            raise ValueError("; ".join(found))


def _check_torch_zip(path: Path) -> None:
    """A torch.save zip file whose central directory (at its end) is missing is cut short."""
    with open(path, "rb") as handle:
        if handle.read(2) != b"PK":
            return  # torch's legacy pickle format: nothing cheap to check
    try:
        zipfile.ZipFile(path).close()
    except zipfile.BadZipFile as error:
        raise OSError(f"{path.name} is damaged ({error}; cut short?)") from None


def _check_components(folder: Path, index: Any) -> None:
    """The components `model_index.json` names have their folders, and model folders weights."""
    if not isinstance(index, dict):
        raise ValueError("model_index.json is not a JSON object")
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue
        component = folder / name
        if not component.is_dir():
            raise OSError(f"model_index.json lists the component {name!r} ({entry[1]}), but {name}/ is missing")
        if (component / "config.json").is_file() and not any(
            path.name.endswith(WEIGHTS_SUFFIXES) or path.name.endswith(".index.json") for path in component.iterdir()
        ):
            raise OSError(f"{name}/ holds a config but no weights file ({', '.join(WEIGHTS_SUFFIXES)})")


# a safetensors header's dtype names, for the dtypes a pipeline is stored in
_STORED_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def load_dtype(pipeline: str | Path, device: str) -> torch.dtype:
    """The dtype every model of the pipeline folder `pipeline` loads in on `device`.

    On a CPU, float32 whatever is stored (a float16 pipeline such as the bundled model would
    otherwise run in half precision, which CPUs do slowly or not at all). Elsewhere the dtype
    its UNet is stored in: that of the first tensor of ``unet/diffusion_pytorch_model*.safetensors``
    (the first shard; a ``.fp16`` variant file is not what diffusers loads by default), read
    from the header alone; float32 where none can be read (``.bin`` weights, no UNet folder).
    Without a dtype, diffusers would load the UNet in float32 beside a text encoder in its
    stored dtype.
    """
    if torch.device(device).type == "cpu":
        return torch.float32
    from safetensors import SafetensorError, safe_open

    files = sorted(
        path
        for path in (Path(pipeline) / "unet").glob("diffusion_pytorch_model*.safetensors")
        if path.name.count(".") == 1
    )
    if not files:
        return torch.float32
    try:
        with safe_open(str(files[0]), framework="pt") as opened:
            key = next(iter(opened.keys()), None)
            stored = opened.get_slice(key).get_dtype() if key is not None else None
    except (SafetensorError, OSError):  # a damaged file: `check_loadable` names it
        return torch.float32
    return _STORED_DTYPES.get(stored, torch.float32)


def setup_pipeline(setup: SetupConfig, device: str) -> Any:
    """Load a setup's pipeline on `device`, progress bar off (the experiment draws its own),
    every model in `load_dtype(setup.pipeline, device)`.

    Raises:
        ModelLoadFailed: the folder cannot be loaded.
    """
    from diffusers import DiffusionPipeline

    # diffusers loads a component only from a module already imported, and a folder holding
    # clipcond's tokenizer names `clipcond.tokenization` (a native folder too)
    import clipcond.tokenization  # noqa: F401
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline
    from clipcond.pipelines.saved_pipelines import load_pipeline

    with loading(f"setup {setup.name}: pipeline", setup.pipeline):
        dtype = load_dtype(setup.pipeline, device)
        index = json.loads((Path(setup.pipeline) / "model_index.json").read_text(encoding="utf-8"))
        if setup.native and index.get("_class_name") != CLIPConditionedPipeline.__name__:
            pipe = DiffusionPipeline.from_pretrained(setup.pipeline, dtype=dtype)
        else:
            pipe = load_pipeline(setup.pipeline, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


__all__ = [
    "WEIGHTS_SUFFIXES",
    "ModelLoadFailed",
    "check_loadable",
    "load_dtype",
    "loading",
    "setup_pipeline",
]
