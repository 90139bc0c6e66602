"""The files of a model folder, symlinked folders included: the one walk that both the lab's
content digests (`clipcond.lab.digests`) and a training run's frozen-input fingerprints
(`clipcond.training.frozen_inputs`) read.

A pipeline folder may link a component to another folder's (`vae -> ../shared/vae`, to share
one VAE between pipelines); that component's weights are then as much the pipeline's as its own
files, so the walk follows symlinked folders (`Path.rglob` does not, on Python < 3.13). A link
back to a folder it sits in (a cycle) is not followed. Hidden files and folders (a hub
download's ``.cache/``) are not the model and are left out.
"""

from __future__ import annotations

import os
from pathlib import Path


def folder_files(folder: str | Path) -> list[Path]:
    """Every file under `folder` (symlinked files and folders followed, cycles not; hidden names
    left out), as paths that start with `folder`, sorted.

    Raises:
        FileNotFoundError: `folder` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    files = []
    # each walked folder -> the resolved paths of it and the folders above it, up to `folder`
    chains = {str(folder): (os.path.realpath(folder),)}
    for root, dirs, names in os.walk(folder, followlinks=True):
        chain = chains.pop(root)
        walked = []
        for name in dirs:
            real = os.path.realpath(os.path.join(root, name))
            if not name.startswith(".") and real not in chain:
                chains[os.path.join(root, name)] = (*chain, real)
                walked.append(name)
        dirs[:] = walked
        files += [Path(root, name) for name in names if not name.startswith(".") and Path(root, name).is_file()]
    return sorted(files)


__all__ = ["folder_files"]
