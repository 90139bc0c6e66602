"""The names of the emphasis modes and the window-split rules with their checks, and a
package's lazily imported public names (PEP 562), with what is expected written out here."""

from __future__ import annotations

import sys
import types

import pytest

from clipcond.emphasis_modes import DEFAULT_EMPHASIS, EMPHASIS_MODES, MODES_FROM_EMPTY, check_emphasis
from clipcond.lazy_exports import lazy_exports
from clipcond.window_splits import DEFAULT_WINDOW_SPLIT, WINDOW_SPLITS, check_window_split


@pytest.mark.parametrize(
    ("names", "check", "argument", "expected"),
    [
        (EMPHASIS_MODES, check_emphasis, "emphasis", ("multiply", "a1111", "comfy", "compel")),
        (WINDOW_SPLITS, check_window_split, "window_split", ("word", "a1111", "comfy", "truncate")),
    ],
    ids=["emphasis", "window_split"],
)
def test_the_names_of_a_choice_and_their_check(names, check, argument, expected) -> None:
    assert names == expected
    for name in names:
        assert check(name) == name
    for wrong, given in (("A1111", {}), (None, {"argument": "--option"})):
        with pytest.raises(ValueError) as raised:
            check(wrong, **given)
        assert str(raised.value) == f"`{given.get('argument', argument)}` must be one of {expected}, got {wrong!r}"


def test_the_defaults_and_the_modes_read_from_the_empty_prompt() -> None:
    assert (DEFAULT_EMPHASIS, DEFAULT_WINDOW_SPLIT) == ("multiply", "word")
    assert MODES_FROM_EMPTY == ("comfy", "compel")


@pytest.fixture
def package(monkeypatch) -> types.ModuleType:
    """A package `lazypkg` exporting `dumps` from `json` and `sqrt` from `math` lazily."""
    module = types.ModuleType("lazypkg")
    module.own = 1
    monkeypatch.setitem(sys.modules, "lazypkg", module)
    module.__getattr__, module.__dir__ = lazy_exports("lazypkg", {"dumps": "json", "sqrt": "math"})
    return module


def test_an_exported_name_is_its_modules_attribute(package) -> None:
    import json
    import math

    assert package.dumps is json.dumps and package.sqrt is math.sqrt


def test_an_unknown_name_is_an_attribute_error_as_for_a_plain_module(package) -> None:
    with pytest.raises(AttributeError) as raised:
        _ = package.loads
    assert str(raised.value) == "module 'lazypkg' has no attribute 'loads'"


def test_dir_lists_the_packages_names_and_the_exports_sorted(package) -> None:
    names = dir(package)
    assert names == sorted(names) and {"dumps", "sqrt", "own", "__name__"} <= set(names)
    assert "loads" not in names
