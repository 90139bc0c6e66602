"""A plain `pip install .` (a wheel, not the editable checkout) imports every subpackage
and carries the CLIP vocabulary and the bundled shapes model as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

CHECK = """
import sys, clipcond, clipcond.pipelines, clipcond.training, clipcond.models, clipcond.shapes, clipcond.losses, clipcond.cli, clipcond.lab
import clipcond.training.clip.loop, clipcond.training.diffusion.loop, clipcond.training.t5.loop
from clipcond import CLIPConditionedPipeline
site = sys.argv[1]
for module in (clipcond, clipcond.pipelines, clipcond.training, clipcond.models, clipcond.shapes, clipcond.training.clip.loop, clipcond.training.diffusion.loop, clipcond.training.t5.loop):
    assert module.__file__.startswith(site), (module.__name__, module.__file__)
from clipcond import clip_tokenizer
assert clip_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL
assert str(BUNDLED_MODEL).startswith(site) and (BUNDLED_MODEL / "model_index.json").is_file(), BUNDLED_MODEL
# the bundled model generates from the installed wheel, offline, with no --model (the command's own
# entry point in this interpreter: a second one would import torch and diffusers again, 5 s)
from clipcond.cli import main
assert main(["generate", "a red circle", "-o", sys.argv[2], "--steps", "5"]) == 0
print("ok")
"""


def test_wheel_installs_and_imports_every_subpackage(tmp_path):
    wheels = tmp_path / "wheels"
    build = ROOT / "build"  # where setuptools builds in the checkout: gone afterwards unless it was there
    was_there = build.exists()
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                str(ROOT),
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                str(wheels),
            ],
            check=True,
            cwd=tmp_path,
        )
    finally:
        if not was_there:
            shutil.rmtree(build, ignore_errors=True)
    (wheel,) = wheels.glob("clipcond-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(site), str(tmp_path / "out.png")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
    assert (tmp_path / "out.png").is_file()


def test_the_lower_bounds_are_the_tested_oldest_releases():
    """pyproject's lower bounds are the versions pinned in .ci/oldest-dependencies.txt, the set the
    whole test run was measured on (docs/contributing.md, "Dependency floors"); torch is the one
    dependency not varied."""
    import re

    from packaging.requirements import Requirement  # pytest's own dependency

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    declared = {}
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        (bound,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        declared[requirement.name.lower()] = bound
    pinned = dict(
        re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        for line in (ROOT / ".ci" / "oldest-dependencies.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert {name.lower(): version for name, version in pinned.items()} == {
        name: version for name, version in declared.items() if name != "torch"
    }
