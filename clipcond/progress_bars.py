"""The progress bars diffusers and transformers draw on their own ("Loading pipeline components",
"Loading weights"), turned off for a block when a command is asked for none (``--no-progress``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


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


__all__ = ["library_progress_bars"]
