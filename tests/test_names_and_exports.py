"""The emphasis modes' names and check, and a package's lazily imported public names (PEP 562),
each on its own with what is expected written out here."""

from __future__ import annotations

import sys
import types

import pytest

from clipcond.emphasis_modes import DEFAULT_EMPHASIS, EMPHASIS_MODES, MODES_FROM_EMPTY, check_emphasis
from clipcond.lazy_exports import lazy_exports


def test_the_emphasis_modes_and_their_check() -> None:
    assert EMPHASIS_MODES == ("multiply", "a1111", "comfy", "compel") and DEFAULT_EMPHASIS == "multiply"
    assert MODES_FROM_EMPTY == ("comfy", "compel")
    for mode in EMPHASIS_MODES:
        assert check_emphasis(mode) == mode
    with pytest.raises(ValueError) as raised:
        check_emphasis("Compel")
    assert str(raised.value) == "`emphasis` must be one of ('multiply', 'a1111', 'comfy', 'compel'), got 'Compel'"
    with pytest.raises(ValueError) as raised:
        check_emphasis(None, argument="--emphasis")
    assert str(raised.value) == "`--emphasis` must be one of ('multiply', 'a1111', 'comfy', 'compel'), got None"


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
