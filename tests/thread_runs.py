"""Run a test's work in several threads at once and collect what they raised."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_in_threads(work: Callable[[int], None], count: int) -> list[str]:
    """Run `work(index)` for index 0 to `count - 1`, each in its own thread, all at once; what
    the threads raised, as text (a thread stops at its first exception)."""
    failures: list[str] = []

    def run(index: int) -> None:
        try:
            work(index)
        except Exception as error:  # noqa: BLE001 - the test reports what a thread raised
            failures.append(repr(error))

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures
