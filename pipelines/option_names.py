"""Reading a name a command-line option gives (an A1111 sampler, schedule type or upscaler) as
the name it spells, case and runs of spaces aside, and refusing one that names nothing with the
list of names."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def spelled_name(value: object, names: tuple[str, ...], what: str, listed: str) -> str:
    """`value` as the name of `names` it spells, case and runs of spaces aside
    (``"euler  a"`` -> ``"Euler a"``).

    Raises:
        TypeError: `value` is not a string (a `what` name should be).
        ValueError: it spells none of `names`, listing them after `listed`.
    """
    if not isinstance(value, str):
        raise TypeError(f"a {what} name must be a string, got {type(value).__name__}")
    spelled = " ".join(value.split()).casefold()
    for name in names:
        if name.casefold() == spelled:
            return name
    raise ValueError(f"no {what} is named {value!r:.80}: {listed} are {', '.join(names)}")


def named_by(read: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse `type` reading a value with `read` (`samplers.sampler_name`,
    `hires_fix.upscaler_name`, ...): its ValueError becomes argparse's error for the option."""

    def argument(value: str) -> str:
        try:
            return read(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    return argument
