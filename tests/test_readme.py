"""Every Python snippet of README.md runs, as written, with tiny local models in place of the
hub ids and run folders it names (the substitution table below), so a README that drifts
from the code fails CI.

Each ```python block runs on its own, in a fresh namespace, with a temporary folder as the
working directory. The only change made to a block is the substitution of the quoted strings
in `SUBSTITUTIONS`; a `from_pretrained("...")` argument that is not in the table fails the
test, so a new snippet cannot reach for the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tiny_pipelines
import torch

README = Path(__file__).resolve().parent.parent / "README.md"

# README string -> the fixture that stands in for it (a folder made by `_stand_ins`).
SUBSTITUTIONS = {
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",  # a tiny StableDiffusionXLPipeline
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd",  # a tiny StableDiffusionPipeline
    "runs/my-clip/model/text_encoder": "tower",  # a CLIPTextModel as wide as the tiny SD UNet reads
}

# README text -> what the test runs instead: the tiny stand-ins need small images, not 512 pixels
SCALED_DOWN = {"(512, 512)": "(32, 32)", "(128, 128, 384, 384)": "(8, 8, 24, 24)"}


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("readme-models")
    made = {"sd": tiny_pipelines.build_sd(), "sdxl": tiny_pipelines.build_sdxl()}
    for name, pipe in made.items():
        pipe.save_pretrained(folder / name)
    tiny_pipelines.clip_text_model(5).save_pretrained(folder / "tower")
    return {readme: folder / name for readme, name in SUBSTITUTIONS.items()}


def test_the_readme_has_the_snippets_this_test_runs() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3
    used = {key for key in SUBSTITUTIONS if any(f'"{key}"' in block for block in blocks)}
    assert used == set(SUBSTITUTIONS), f"substitutions no snippet uses: {set(SUBSTITUTIONS) - used}"
    scaled = {key for key in SCALED_DOWN if any(key in block for block in blocks)}
    assert scaled == set(SCALED_DOWN), f"scaled-down texts no snippet has: {set(SCALED_DOWN) - scaled}"
    named = {name for block in blocks for name in re.findall(r'from_pretrained\("([^"]+)"', block)}
    assert named <= set(SUBSTITUTIONS), f"snippets load {named - set(SUBSTITUTIONS)}: add a tiny stand-in"


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text(encoding="utf-8")))))
def test_readme_snippet_runs(index: int, stand_ins, tmp_path, monkeypatch) -> None:
    block = python_blocks(README.read_text(encoding="utf-8"))[index]
    for name, path in stand_ins.items():
        block = block.replace(f'"{name}"', repr(str(path)))
    for text, small in SCALED_DOWN.items():
        block = block.replace(text, small)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    exec(compile(block, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})


def test_python_blocks_finds_fenced_python_only() -> None:
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = 2\nc = 3\n"]


DOCUMENTS = [
    README,
    *sorted((README.parent / "docs").glob("*.md")),
    README.parent / "clipcond/data/shapes-model/README.md",
]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(README.parent)))
def test_links_stay_in_the_repository_and_resolve(document: Path) -> None:
    """Every markdown link and image of the README, docs/ and the model card points at a file
    of this repository that exists (no web links, nothing outside the checkout)."""
    root = README.parent.resolve()
    text = document.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets or document != README, "the README has links: the pattern is broken"
    for target in targets:
        assert "://" not in target, f"{document.name}: a link leaves the repository: {target}"
        path = (document.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(root), f"{document.name}: {target} is outside the checkout"
        assert path.exists(), f"{document.name}: {target} does not exist"


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    """The quick start's test command (the last command of its second line) is a line of
    `.ci/run`, word for word but for `python3`, and the Develop section names the same one."""
    text = README.read_text(encoding="utf-8")
    quick_start = re.search(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert quick_start, "README has no bash quick start"
    command = quick_start.group(1).strip().splitlines()[1].split(" && ")[-1]
    assert command.startswith("python -m pytest"), command
    ci_lines = (README.parent / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command.replace("python ", "python3 ", 1) in ci_lines, f"{command!r} is not a line of .ci/run"
    assert f"The test command (`{command}`" in text
