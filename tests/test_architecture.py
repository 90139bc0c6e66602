"""The floors of the package and the direction of their imports (docs/architecture.md).

Every import statement counts, including the ones inside functions (lazy imports), since a
lazy import is still a dependency. Module names are the installed ones: `pipelines/` installs
as `clipcond.pipelines` and `training/` as `clipcond.training`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = {
    "clipcond": REPO / "clipcond",
    "clipcond.pipelines": REPO / "pipelines",
    "clipcond.training": REPO / "training",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if name.startswith("clipcond.pipelines") and package == "clipcond":
                continue  # not a folder of clipcond/ (pipelines/ is mapped), but be safe
            found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The clipcond modules `path` imports (a `from package import submodule` names the submodule)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
    return {target for target in targets if target in modules and target != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _floor(name: str) -> str:
    for floor in ("clipcond.pipelines", "clipcond.training", "clipcond.lab", "clipcond.cli", "clipcond.shapes"):
        if name == floor or name.startswith(floor + "."):
            return floor.split(".")[1]
    return "root" if name == "clipcond" else "core"


def test_the_module_walk_sees_every_floor() -> None:
    floors = {_floor(name) for name in _graph()}
    assert floors == {"root", "core", "shapes", "pipelines", "training", "lab", "cli"}


@pytest.mark.parametrize(
    ("floor", "forbidden"),
    [
        ("shapes", {"root", "core", "pipelines", "training", "lab", "cli"}),
        ("core", {"root", "pipelines", "training", "lab", "cli"}),
        ("pipelines", {"training", "lab", "cli"}),
        ("training", {"lab", "cli"}),
        ("lab", {"cli"}),
    ],
)
def test_floors_import_only_downwards(floor: str, forbidden: set[str]) -> None:
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if _floor(name) == floor
        for target in targets
        if _floor(target) in forbidden
    )
    assert not wrong, f"{floor} imports a floor it must not: {wrong}"


def test_no_import_cycles() -> None:
    """No module reaches itself through imports (the package roots' re-exports aside:
    `clipcond/__init__.py` and the sub-package `__init__`s only gather their children)."""
    graph = _graph()
    packages = {name for name in graph if (_modules()[name].name == "__init__.py")}
    edges = {name: {t for t in targets if t not in packages} for name, targets in graph.items() if name not in packages}
    cycles = []
    for start in edges:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for target in edges.get(node, ()):
                if target == start:
                    cycles.append(" -> ".join((*path, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*path, target)))
    assert not cycles, f"import cycles: {sorted(set(cycles))[:5]}"


def test_the_cycle_check_finds_a_planted_cycle(tmp_path, monkeypatch) -> None:
    """The walk would see the old conditioner_config <-> conditioning cycle (lazy imports)."""
    package = tmp_path / "clipcond"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from clipcond.b import g\n")
    (package / "b.py").write_text("def g():\n    from clipcond import a\n")
    monkeypatch.setitem(ROOTS, "clipcond", package)
    monkeypatch.setitem(ROOTS, "clipcond.pipelines", tmp_path / "none")
    monkeypatch.setitem(ROOTS, "clipcond.training", tmp_path / "none")
    with pytest.raises(AssertionError, match="clipcond.a -> clipcond.b -> clipcond.a"):
        test_no_import_cycles()


def test_a_module_over_400_lines_says_why_at_its_top() -> None:
    """Modules stay small; one that grows past 400 lines says why in its docstring."""
    unexplained = []
    for folder in ("clipcond", "pipelines", "training"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if len(text.splitlines()) > 400 and "Why this module is over 400 lines" not in text[:6000]:
                unexplained.append(f"{path.relative_to(REPO)} ({len(text.splitlines())} lines)")
    assert unexplained == []
