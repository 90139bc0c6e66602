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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from clipcond.errors import one_line
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


def check_loadable(folder: str | Path, what: str) -> None:
    """Open the header of every ``.safetensors`` file of `folder` and parse every ``.json`` and
    ``.yaml`` file, so that a damaged model fails here in one line (`ModelLoadFailed`).

    Args:
        folder: a model folder (a saved pipeline, a CLIP folder); files as `folder_digest` sees them.
        what: names the folder's role in the message, e.g. ``"setup a: pipeline"``.
    """
    from safetensors import safe_open

    with loading(what, folder):
        for path in model_files(folder):
            suffix = path.suffix.lower()
            if suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            elif suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif suffix in (".yaml", ".yml"):
                yaml.safe_load(path.read_text(encoding="utf-8"))


@contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """diffusers' and transformers' own progress bars ("Loading pipeline components", "Loading
    weights") as `enabled` says inside the block, as they were before it afterwards.

    The switches are the two libraries' process-wide settings, so they are restored on exit
    (an exception included); with `enabled` True nothing is touched.
    """
    if enabled:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    were_enabled = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in zip(libraries, were_enabled):
            if was_enabled:
                library.enable_progress_bar()


def setup_pipeline(setup: SetupConfig, device: str) -> Any:
    """Load a setup's pipeline on `device`, progress bar off (the experiment draws its own).

    On a CPU the weights load in float32 whatever their stored dtype (a float16 pipeline such
    as the bundled model would otherwise run in half precision, which CPUs do slowly or not
    at all); elsewhere they keep the stored dtype.

    Raises:
        ModelLoadFailed: the folder cannot be loaded.
    """
    from diffusers import DiffusionPipeline

    # diffusers loads a component only from a module already imported, and a folder holding
    # clipcond's tokenizer names `clipcond.tokenization` (a native folder too)
    import clipcond.tokenization  # noqa: F401
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline
    from clipcond.pipelines.generate import load_pipeline

    dtype = torch.float32 if torch.device(device).type == "cpu" else None
    with loading(f"setup {setup.name}: pipeline", setup.pipeline):
        index = json.loads((Path(setup.pipeline) / "model_index.json").read_text(encoding="utf-8"))
        if setup.native and index.get("_class_name") != CLIPConditionedPipeline.__name__:
            pipe = DiffusionPipeline.from_pretrained(setup.pipeline, **({} if dtype is None else {"dtype": dtype}))
        else:
            pipe = load_pipeline(setup.pipeline, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


__all__ = ["ModelLoadFailed", "check_loadable", "library_progress_bars", "loading", "setup_pipeline"]
