"""A package's public names, each imported from its module on first use (PEP 562).

`import clipcond` and `from clipcond import parse_prompt` then cost what they use: the
prompt parser needs neither torch nor transformers, and the ``clipcond`` command answers
``--help`` without loading them (tests/test_imports.py pins which entry points import what).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of the package named `package`.

    Args:
        package: the package's import name, for the error of an unknown attribute.
        exports: public name -> the module that defines it under the same name
            (``{"parse_prompt": "clipcond.prompts"}``).

    Returns:
        `(__getattr__, __dir__)` to assign at the package's top level: reading `name` imports
        `exports[name]` (once: later reads find it in `sys.modules`) and returns its attribute;
        any other missing name is an `AttributeError`, as for a plain module.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *exports})

    return __getattr__, __dir__
