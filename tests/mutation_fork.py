"""A faster way to run a staged module's mutants: pytest collects the selection once, runs it once
on the original code (the control, which also builds the session fixtures: the tiny pipelines),
and then forks one child per mutant, which runs the collected tests that reach the mutated
function (as mutmut does: its stats mode records, test by test, which functions the control
called) in order, fixtures and all, and stops at its first failure.

    python tests/mutation_fork.py TREE NAMES OUT [--timeout S] -- PYTEST_ARGS...

Without `--timeout`, each mutant may take `TIMEOUT_FACTOR` times the seconds its tests took in
the control, and never less than `TIMEOUT_FLOOR`: a mutant that makes a walk exponential or a loop
endless is stopped as a timeout (detected) in about that time, instead of running on, as one of
`yaml_reading`'s did, until it held 11 GB.

Run by `tests/mutation.py --fork` (docs/contributing.md); TREE is a staged tree whose mutants
mutmut has generated (`mutation.mutant_names`), NAMES a file of mutmut's full mutant names, one a
line, and OUT the results file, one line a mutant: ``name verdict seconds first-failure``, where
the verdict is killed, survived, timeout or "no tests" (no test of the selection calls the
mutated function: mutmut's verdict of the same name). Names already in OUT are skipped (a
resumed run).

mutmut itself starts every mutant's worker from a fork server that never ran a test, so each
worker rebuilds the fixtures its tests use: tens of seconds a mutant for the modules whose tests
build pipelines. A child forked after the control shares them, so a killed mutant costs about a
second. The price: what a session fixture computed in the control was computed with the
original code, and state a test leaves behind in-process is shared as in any one pytest run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

STATS = "stats"  # MUTANT_UNDER_TEST for the control: the original code, each function reached recorded
FORCED_FAIL = "fail"  # mutmut's own check: every mutated function raises, so some test must fail
# a forked child starts with the control's fixtures built and torch imported, so its tests take
# about their control seconds; the floor covers a loaded 2-core machine and the fork itself
TIMEOUT_FACTOR = 10.0
TIMEOUT_FLOOR = 30.0


def mutant_timeout(control_seconds: list[float], fixed: float | None = None) -> float:
    """Seconds a mutant's child may run: `fixed` when given, else `TIMEOUT_FACTOR` times the
    seconds `control_seconds` (its tests' times in the control run) add up to, at least
    `TIMEOUT_FLOOR`."""
    if fixed is not None:
        if fixed <= 0:
            raise ValueError(f"`fixed` must be a number of seconds > 0, got {fixed!r}")
        return fixed
    return max(TIMEOUT_FLOOR, TIMEOUT_FACTOR * sum(control_seconds))


def first_failure(items: list, after_each: Callable[[int], None] | None = None, log: bool = False) -> str:
    """Run pytest's collected `items` in order; '' when all pass, else the first failing test's
    node id, phase and last error line. `after_each(index)` runs after each test; `log` reports
    the results to pytest's terminal (the control's). The last test is followed by the first,
    so pytest keeps the session's fixtures for the children."""
    from _pytest.runner import runtestprotocol

    for index, item in enumerate(items):
        following = items[index + 1] if index + 1 < len(items) else items[0]
        reports = runtestprotocol(item, log=log, nextitem=following)
        if after_each is not None:
            after_each(index)
        for report in reports:
            if report.failed:
                lines = str(report.longrepr).strip().splitlines()
                error = next((line for line in reversed(lines) if line.startswith("E ")), lines[-1] if lines else "")
                return f"{item.nodeid} [{report.when}] {error.strip()[:200]}"
    return ""


def _fresh_progress_bar_locks() -> None:
    """Give this forked child tqdm write locks of its own. tqdm's lock holds a multiprocessing
    lock shared with every process forked after it was made: a child that exited while its
    monitor thread held it (or was killed at a timeout while drawing a bar) left it taken, and
    every later child hung at its first progress bar (counted as a timeout: 2 min each, seen on
    encode_command.py's mutants)."""
    import multiprocessing
    import threading

    from tqdm.std import TqdmDefaultWriteLock, tqdm

    TqdmDefaultWriteLock.th_lock = threading.RLock()
    TqdmDefaultWriteLock.mp_lock = multiprocessing.RLock()
    classes = [tqdm]
    while classes:  # tqdm and its subclasses (tqdm.auto's, transformers'), each lock set on one
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if "_lock" in vars(cls):
            cls._lock = TqdmDefaultWriteLock()


# torch's assert when a forked child does parallel work in a thread pool the parent left
# unusable (seen after transformers loaded bfloat16 weights in the control): the child broke, the
# mutant did not fail a test
BROKEN_POOL = "Invalid thread pool"


def child_verdict(exit_code: int, failure: str) -> str:
    """ "survived" for a child that passed, "killed" for one whose test failed, "broken child"
    when what failed was torch's thread pool in the child (`BROKEN_POOL`): check that mutant by hand."""
    if exit_code == 0:
        return "survived"
    return "broken child" if BROKEN_POOL in failure else "killed"


def run_forked(items: list, mutant: str, timeout: float) -> tuple[str, str]:
    """Run `items` in a child with `mutant` switched on; (verdict, first failure)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its output would interleave with the parent's, so it goes nowhere
        os.close(read)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.environ["MUTANT_UNDER_TEST"] = mutant
        try:
            _fresh_progress_bar_locks()
            failure = first_failure(items)
        except BaseException as error:  # noqa: BLE001 - whatever the mutant raises outside a test
            failure = f"runner: {type(error).__name__}: {error}"[:300]
        os.write(write, failure.encode()[:900])
        os._exit(1 if failure else 0)
    os.close(write)
    start = time.monotonic()
    exit_code = None  # None: timed out
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exit_code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - start > timeout:
                raise TimeoutError
            time.sleep(0.05)
    except BaseException as stop:  # the timeout, or the run stopped (Ctrl-C, SIGTERM): no child left behind
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if not isinstance(stop, TimeoutError):
            raise
    failure = os.read(read, 1000).decode(errors="replace").replace("\n", " ")
    os.close(read)
    return ("timeout" if exit_code is None else child_verdict(exit_code, failure)), failure


class ForkPerMutant:
    """A pytest plugin that replaces the test loop: control, forced fail, then each mutant."""

    def __init__(self, names: list[str], out: Path, timeout: float | None) -> None:
        self.names, self.out, self.timeout = names, out, timeout

    def pytest_runtestloop(self, session) -> bool:
        from mutmut.state import state

        items = session.items
        reached: dict[str, list[int]] = {}  # a mutated function -> the indices of the tests that call it
        seconds: list[float] = []  # each test's time in the control, fixtures included
        started = [time.monotonic()]

        def record(index: int) -> None:  # mutmut's record of the functions this test called
            for function in state()._stats:
                reached.setdefault(function, []).append(index)
            state()._stats.clear()
            now = time.monotonic()
            seconds.append(now - started[0])
            started[0] = now

        os.environ["MUTANT_UNDER_TEST"] = STATS
        state()._stats.clear()
        start = time.monotonic()
        failure = first_failure(items, record, log=True)  # pytest's summary counts the control
        print(f"{len(items)} tests; control in {time.monotonic() - start:.1f} s", flush=True)
        if failure:
            raise SystemExit(f"the original code fails its tests: {failure}")
        verdict, _ = run_forked(items, FORCED_FAIL, mutant_timeout(seconds, self.timeout))
        if verdict != "killed":
            raise SystemExit("no test fails when every mutated function raises: the selection never calls the module")
        done = set()
        if self.out.exists():
            done = {line.split()[0] for line in self.out.read_text().splitlines() if line.strip()}
        for name in self.names:
            if name in done:
                continue
            start = time.monotonic()
            callers = reached.get(name.rpartition("__mutmut_")[0])
            if callers:
                timeout = mutant_timeout([seconds[index] for index in callers], self.timeout)
                verdict, failure = run_forked([items[index] for index in callers], name, timeout)
            else:
                verdict, failure = "no tests", ""
            line = f"{name} {verdict.replace(' ', '_')} {time.monotonic() - start:.1f} {failure}".rstrip()
            with self.out.open("a", encoding="utf-8") as out:
                out.write(line + "\n")
            print(line[:200], flush=True)
        return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", type=Path, help="a staged tree with its mutants generated")
    parser.add_argument("names", type=Path, help="a file of mutmut mutant names, one a line")
    parser.add_argument("out", type=Path, help="the results file (appended to; its names are skipped)")
    parser.add_argument(
        "--timeout", type=float, help="seconds a mutant may take (default: from its tests' control seconds)"
    )
    args = parser.parse_args(argv[:split])
    names = [line.strip() for line in args.names.read_text().splitlines() if line.strip()]
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # a kill stops the child too
    out, mutants = args.out.resolve(), (args.tree / "mutants").resolve()
    os.chdir(mutants)  # the mutated package is imported from here, as mutmut's workers do
    sys.path[:0] = [str(mutants), str(mutants / "tests")]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pytest
    import torch

    torch.set_num_threads(1)
    from tqdm.std import tqdm

    tqdm.monitor_interval = 0  # no monitor thread in the process the children are forked from
    pytest_args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", *argv[split + 1 :]]
    return pytest.main(pytest_args, plugins=[ForkPerMutant(names, out, args.timeout)])


if __name__ == "__main__":
    sys.exit(main())
