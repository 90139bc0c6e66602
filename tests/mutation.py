"""Mutation testing of one core module against its own tests (mutmut), in a staged copy.

    nice -n 19 python tests/mutation.py clipcond/prompts.py [--max-children 1] [--only GLOB...] [--every K] [--keep]
    nice -n 19 python tests/mutation.py clipcond/prompts.py --fork [--timeout S] [--only GLOB...] [--every K]

Why a staged copy: pipelines/ and training/ install as `clipcond.pipelines` and
`clipcond.training` (pyproject's package-dir), but mutmut names a mutant after its file's path
(`training/checkpoint.py` gives `training.checkpoint`) while it records which tests reach a
function under the function's module name (`clipcond.training.checkpoint`); in the repository
the two never meet, and the tests would import the editable install's unmutated files. The staged
tree lays the package out as it installs (`clipcond/pipelines`, `clipcond/training`), so paths and
module names agree and the mutated copy is the one imported.

Each module gets its own tree under `.mutation/<module>/` (git-ignored), with a pyproject.toml
made of the repository's `[tool.pytest.ini_options]` and `[tool.mutmut]`, plus `only_mutate` for
the module and its tests from `[tool.mutmut.module_tests]`. mutmut's own commands work in it
afterwards (`mutmut results`, `mutmut show NAME`). A staged tree holds the tests of its day: after
writing a test, re-run survivors with `--only NAME...`, which stages afresh.

`--fork` runs the mutants with tests/mutation_fork.py instead of `mutmut run` (one process that
collects and runs the selection once, then forks a child per mutant: seconds a mutant where
mutmut's workers rebuild every fixture); its verdicts go to `<tree>/fork_results.txt`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path

try:
    from tomllib import loads as toml_loads
except ModuleNotFoundError:  # Python 3.10: mutmut brings `toml` there
    from toml import loads as toml_loads

REPO = Path(__file__).resolve().parents[1]
# mutmut stops a mutant's worker after (its tests' measured seconds + timeout_constant) x 15 s of
# wall time, a timeout. Its default constant (1 s) gives fast tests 15 s, less than a niced worker
# on a shared 2-core machine needs to start pytest and import torch: every families.py mutant timed
# out with it. The staged config gets this one unless [tool.mutmut] sets its own.
TIMEOUT_CONSTANT = 20.0
# where each top-level source folder sits in the installed package (pyproject's package-dir)
PACKAGE_LAYOUT = {"clipcond": "clipcond", "pipelines": "clipcond/pipelines", "training": "clipcond/training"}


def staged_path(module: str) -> str:
    """The path of a repository file in the staged tree: `training/checkpoint.py` ->
    `clipcond/training/checkpoint.py`."""
    top, _, rest = module.partition("/")
    if top not in PACKAGE_LAYOUT or not rest.endswith(".py"):
        raise ValueError(f"`module` must be a .py file under {sorted(PACKAGE_LAYOUT)}, got {module!r}")
    return f"{PACKAGE_LAYOUT[top]}/{rest}"


def _toml_value(value: object) -> str:
    # JSON's strings, numbers and lists of them are valid TOML; booleans are spelled the same
    return json.dumps(value, ensure_ascii=False)


def _toml_table(name: str, table: dict) -> str:
    lines = [f"[{name}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    return "\n".join(lines) + "\n"


def staged_pyproject(module: str, tests: list[str] | None = None) -> str:
    """The staged tree's pyproject.toml: pytest's options and mutmut's, for this module only.

    Args:
        module: a repository path listed in `[tool.mutmut.module_tests]`.
        tests: pytest selections replacing the module's listed tests (a smaller slice).
    """
    config = toml_loads((REPO / "pyproject.toml").read_text())
    mutmut = dict(config["tool"]["mutmut"])
    module_tests = mutmut.pop("module_tests")
    if module not in module_tests:
        raise ValueError(f"`module` must be one of [tool.mutmut.module_tests] {sorted(module_tests)}, got {module!r}")
    mutmut.setdefault("timeout_constant", TIMEOUT_CONSTANT)
    mutmut["only_mutate"] = [staged_path(module)]
    mutmut["pytest_add_cli_args_test_selection"] = list(tests or module_tests[module])
    return _toml_table("tool.pytest.ini_options", config["tool"]["pytest"]["ini_options"]) + _toml_table(
        "tool.mutmut", mutmut
    )


def _tree(module: str, root: Path) -> Path:
    return root / Path(module).with_suffix("").as_posix().replace("/", ".")


def stage(module: str, root: Path, tests: list[str] | None = None) -> Path:
    """Build a fresh staged tree for `module` under `root` and return its folder."""
    tree = _tree(module, root)
    if tree.exists():
        shutil.rmtree(tree)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for top, target in PACKAGE_LAYOUT.items():
        shutil.copytree(REPO / top, tree / target, ignore=ignore)
    for folder in ("tests", "configs", ".reference-wheels"):
        if (REPO / folder).exists():
            shutil.copytree(REPO / folder, tree / folder, ignore=ignore)
    (tree / "pyproject.toml").write_text(staged_pyproject(module, tests))
    return tree


def mutant_names(tree: Path) -> list[str]:
    """Every mutant mutmut makes in a staged tree, sorted by name; generates them (no test runs)."""
    # the steps of `mutmut run` before its first test run, in mutmut's own functions
    generate = (
        "import os; import mutmut.__main__ as m; os.makedirs('mutants', exist_ok=True); m.copy_src_dir(); "
        "m.copy_also_copy_files(); m.setup_source_paths(); m.store_lines_covered_by_tests(); m.create_mutants(1)"
    )
    subprocess.run([sys.executable, "-c", generate], cwd=tree, check=True)
    names = []
    for meta in (tree / "mutants").rglob("*.py.meta"):
        names += json.loads(meta.read_text())["exit_code_by_key"]
    return sorted(names)


def sample(names: list[str], every: int) -> list[str]:
    """A fixed sample of mutant names: the 1st, (1 + every)-th, ... of the sorted names."""
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"`every` must be a whole number >= 1, got {every!r}")
    return sorted(names)[::every]


def outcomes(tree: Path, module: str) -> dict[str, str]:
    """Each mutant's name and mutmut's verdict (killed, survived, timeout, no tests, ...)."""
    from mutmut.stats import status_by_exit_code

    meta = json.loads((tree / "mutants" / (staged_path(module) + ".meta")).read_text())
    return {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}


def run(
    module: str,
    root: Path,
    max_children: int = 1,
    only: str | Sequence[str] | None = None,
    tests: list[str] | None = None,
    keep: bool = False,
    every: int = 1,
    fork: bool = False,
    timeout: float | None = None,
) -> dict[str, str]:
    """Stage `module`, run mutmut on it (or on the mutants matching `only`, a mutmut name glob
    or a list of them, or on every `every`-th of its mutants' sorted names: a fixed sample) and
    return {mutant name: verdict} of the mutants run. `keep` resumes in the tree staged before:
    mutmut skips the mutants it has a verdict for. `fork`: run them with tests/mutation_fork.py
    instead, each stopped after `timeout` seconds (None: ten times its tests' seconds in the
    control run, at least 30; `mutation_fork.mutant_timeout`)."""
    if only and every != 1:
        raise ValueError("give `only` or `every`, not both")
    tree = _tree(module, root)
    if not (keep and tree.exists()):
        tree = stage(module, root, tests)
    if fork:
        return _run_forked(module, tree, only, every, timeout)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    names = ([only] if isinstance(only, str) else list(only)) if only else []
    if every != 1:
        names = sample(mutant_names(tree), every)
        if keep:  # mutmut re-runs every mutant it is named: name those without a verdict (or timed out)
            done = {
                name for name, verdict in outcomes(tree, module).items() if verdict not in ("not checked", "timeout")
            }
            names = [name for name in names if name not in done]
    if names or every == 1:
        subprocess.run(command + names, cwd=tree, check=True)
    verdicts = outcomes(tree, module)
    if only:
        return {name: verdict for name, verdict in verdicts.items() if any(fnmatch(name, glob) for glob in names)}
    return {name: verdicts[name] for name in sample(list(verdicts), every)} if every != 1 else verdicts


def _run_forked(
    module: str, tree: Path, only: str | Sequence[str] | None, every: int, timeout: float | None
) -> dict[str, str]:
    globs = ([only] if isinstance(only, str) else list(only)) if only else ["*"]
    names = [name for name in sample(mutant_names(tree), every) if any(fnmatch(name, glob) for glob in globs)]
    if not names:
        raise ValueError(
            f"`only` {globs} matches no mutant of {module}; mutmut's names are whole, as "
            f"{staged_path(module)[:-3].replace('/', '.')}.x_function__mutmut_1"
        )
    (tree / "fork_names.txt").write_text("".join(f"{name}\n" for name in names))
    results = tree / "fork_results.txt"
    # the selection the tree was staged with (`staged_pyproject`), as mutmut itself reads it
    selection = toml_loads((tree / "pyproject.toml").read_text())["tool"]["mutmut"][
        "pytest_add_cli_args_test_selection"
    ]
    runner = [sys.executable, str(REPO / "tests" / "mutation_fork.py"), str(tree), str(tree / "fork_names.txt")]
    limit = [] if timeout is None else ["--timeout", str(timeout)]
    subprocess.run([*runner, str(results), *limit, "--", *selection], check=True)
    verdicts = dict(line.split()[:2] for line in results.read_text().splitlines() if line.strip())
    return {name: verdicts[name].replace("_", " ") for name in names if name in verdicts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="a repository path listed in [tool.mutmut.module_tests]")
    parser.add_argument("--root", type=Path, default=REPO / ".mutation", help="where staged trees go")
    parser.add_argument("--max-children", type=int, default=1, help="mutmut's worker processes")
    parser.add_argument("--only", nargs="+", help="run only the mutants matching these mutmut names or globs")
    parser.add_argument("--every", type=int, default=1, help="run every K-th mutant of the sorted names (a sample)")
    parser.add_argument("--keep", action="store_true", help="resume in the staged tree of an earlier run")
    parser.add_argument("--fork", action="store_true", help="a forked child per mutant (tests/mutation_fork.py)")
    parser.add_argument(
        "--timeout", type=float, help="with --fork: seconds a mutant may take (default: 10 x its tests' control time)"
    )
    args = parser.parse_args(argv)
    verdicts = run(
        args.module,
        args.root,
        args.max_children,
        args.only,
        keep=args.keep,
        every=args.every,
        fork=args.fork,
        timeout=args.timeout,
    )
    counts = Counter(verdicts.values())
    made = f" (a sample: every {args.every}th)" if args.every != 1 else ""
    print(f"{args.module}: {len(verdicts)} mutants{made}, " + ", ".join(f"{n} {v}" for v, n in counts.most_common()))
    for name, verdict in sorted(verdicts.items()):
        if verdict != "killed":
            print(f"  {verdict}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
