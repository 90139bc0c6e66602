"""What a family does to a prompt's text before tokenizing it, each part on its own: the modes
a recipe may name, the mode a conditioner picks from a recipe and PixArt's `clean_caption`
switch (with diffusers' fallback when beautifulsoup4 or ftfy is missing), and the text each
mode gives. Expected values are written out here; PixArt's own `encode_prompt` is the peer in
tests/test_exactness.py."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from clipcond import caption_cleaning
from clipcond.caption_cleaning import CAPTION_CLEANING, CaptionCleaner, check_caption_cleaning, cleaning_for

LOGGER = "clipcond.caption_cleaning"


def test_the_modes_are_none_lowercase_and_clean_caption() -> None:
    assert CAPTION_CLEANING == ("none", "lowercase", "clean_caption")
    for mode in CAPTION_CLEANING:
        assert check_caption_cleaning(mode) == mode


@pytest.mark.parametrize("mode", [None, "Lowercase", "clean", ""])
def test_a_mode_not_in_the_list_is_refused_naming_the_list(mode) -> None:
    expected = f"`caption_cleaning` must be one of ('none', 'lowercase', 'clean_caption'), got {mode!r}"
    with pytest.raises(ValueError) as raised:
        check_caption_cleaning(mode)
    assert str(raised.value) == expected
    with pytest.raises(ValueError) as raised:
        CaptionCleaner(mode)
    assert str(raised.value) == expected


@pytest.fixture
def everything_installed(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        caption_cleaning.importlib.util,
        "find_spec",
        lambda name: object() if name in ("bs4", "ftfy") else real_find_spec(name),
    )


@pytest.mark.parametrize("default", CAPTION_CLEANING)
def test_without_the_switch_the_recipes_mode_is_kept(default, everything_installed, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cleaning_for(default, None) == default
    assert caplog.records == []


@pytest.mark.parametrize("default", ["lowercase", "clean_caption"])
def test_the_switch_picks_clean_caption_or_lowercase(default, everything_installed) -> None:
    assert cleaning_for(default, True) == "clean_caption"
    assert cleaning_for(default, False) == "lowercase"


@pytest.mark.parametrize("switch", [True, False])
def test_the_switch_on_a_recipe_that_reads_prompts_as_they_are_is_refused(switch) -> None:
    with pytest.raises(ValueError) as raised:
        cleaning_for("none", switch)
    assert str(raised.value) == (
        "`clean_caption` is PixArt's (its prompts are lower-cased or cleaned before tokenizing); this "
        "recipe reads prompts as they are"
    )


@pytest.mark.parametrize("switch", [1, 0, "yes", "false"])
def test_a_switch_that_is_not_a_bool_is_refused_first(switch) -> None:
    for default in CAPTION_CLEANING:
        with pytest.raises(TypeError) as raised:
            cleaning_for(default, switch)
        assert str(raised.value) == f"`clean_caption` must be None or a bool, got {switch!r}"


@pytest.mark.parametrize(
    "missing, names, command",
    [
        (("bs4",), "beautifulsoup4", "beautifulsoup4"),
        (("ftfy",), "ftfy", "ftfy"),
        (("bs4", "ftfy"), "beautifulsoup4 and ftfy", "beautifulsoup4 ftfy"),
    ],
)
def test_clean_caption_without_its_imports_falls_back_to_lowercase_with_one_warning(
    missing, names, command, monkeypatch, caplog
) -> None:
    real_find_spec = importlib.util.find_spec
    asked = []

    def find_spec(name):
        asked.append(name)
        return None if name in missing else object() if name in ("bs4", "ftfy") else real_find_spec(name)

    monkeypatch.setattr(caption_cleaning.importlib.util, "find_spec", find_spec)
    for default, switch in (("clean_caption", None), ("lowercase", True), ("clean_caption", True)):
        caplog.clear()
        asked.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert cleaning_for(default, switch) == "lowercase"
        assert asked == ["bs4", "ftfy"]
        assert [record.getMessage() for record in caplog.records] == [
            f"clean_caption needs {names}, not installed; prompts are lower-cased and stripped instead, as "
            f"diffusers' PixArt pipelines do then (pip install {command})"
        ]
        assert caplog.records[0].levelno == logging.WARNING
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cleaning_for("clean_caption", False) == "lowercase"  # lower-casing needs neither
    assert caplog.records == []


def test_none_gives_the_text_itself() -> None:
    text = "  A Red CAT https://example.com  "
    assert CaptionCleaner("none")(text) is text


def test_lowercase_lowers_and_strips_only() -> None:
    assert CaptionCleaner("lowercase")("  A Red CAT, 1920x1080 @bob\n") == "a red cat, 1920x1080 @bob"


def test_clean_caption_is_pixarts_cleaner_made_once() -> None:
    pytest.importorskip("bs4", reason="PixArt's clean_caption needs beautifulsoup4 (in [dev])")
    cleaner = CaptionCleaner("clean_caption")
    assert cleaner._pixart is None  # diffusers' PixArt code is imported on first use only
    assert cleaner("  A Red CAT  ") == "a red cat"
    made = cleaner._pixart
    assert cleaner("Visit https://example.com/x.png now") == "visit now"
    assert cleaner("<b>Bold</b> @bob #123 free shipping 1920x1080") == "bold"
    assert cleaner._pixart is made
