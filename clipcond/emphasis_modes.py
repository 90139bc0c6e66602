"""The names of the emphasis modes (`clipcond.emphasis` applies them) and their check.

Kept apart from the tensor code so that the command line can offer the modes without importing
torch.
"""

from __future__ import annotations

EMPHASIS_MODES: tuple[str, ...] = ("multiply", "a1111", "comfy", "compel")
# the modes that move weighted tokens away from the empty prompt's states
MODES_FROM_EMPTY: tuple[str, ...] = ("comfy", "compel")
DEFAULT_EMPHASIS = "multiply"


def check_emphasis(emphasis: object, argument: str = "emphasis") -> str:
    """`emphasis` if it names a mode; a ValueError naming the argument and the modes otherwise."""
    if not isinstance(emphasis, str) or emphasis not in EMPHASIS_MODES:
        raise ValueError(f"`{argument}` must be one of {EMPHASIS_MODES}, got {emphasis!r}")
    return emphasis
