"""What a family does to a prompt's text before tokenizing it (PixArt's `clean_caption`).

PixArt's pipelines (`PixArtAlphaPipeline`, `PixArtSigmaPipeline`) pass every prompt through
`_text_preprocessing(text, clean_caption)`: with `clean_caption=False` the text is lower-cased
and stripped; with `clean_caption=True` (their `__call__`'s default) it goes twice through
`_clean_caption` (DeepFloyd IF's caption cleaner: URLs, HTML, @names, #ids, sizes like
1920x1080, most punctuation, "free shipping" and the like removed), which needs beautifulsoup4
and ftfy; without them diffusers warns and falls back to the lower-casing. clipcond calls
diffusers' own method, so the text is PixArt's to the character, and takes the same fallback
once, when a conditioner is built.

Modes (`Recipe.caption_cleaning`):
    "none": the text as it is (every other family).
    "lowercase": lower-cased, and stripped (PixArt with `clean_caption=False`).
    "clean_caption": PixArt's `clean_caption=True`.
"""

from __future__ import annotations

import importlib.util
import logging

CAPTION_CLEANING: tuple[str, ...] = ("none", "lowercase", "clean_caption")

# what PixArt's clean_caption imports, by distribution and import name
_CLEAN_CAPTION_NEEDS = (("beautifulsoup4", "bs4"), ("ftfy", "ftfy"))

logger = logging.getLogger(__name__)


def check_caption_cleaning(mode: object) -> str:
    """`mode` if it is one of `CAPTION_CLEANING`.

    Raises:
        ValueError: it is not.
    """
    if mode not in CAPTION_CLEANING:
        raise ValueError(f"`caption_cleaning` must be one of {CAPTION_CLEANING}, got {mode!r}")
    return mode  # type: ignore[return-value]


def cleaning_for(default: str, clean_caption: bool | None) -> str:
    """The mode a conditioner uses: its recipe's `default`, or PixArt's `clean_caption`
    switch, with diffusers' fallback to "lowercase" (and a warning naming what is missing)
    when beautifulsoup4 or ftfy is not installed.

    Args:
        default: the recipe's mode.
        clean_caption: None: the recipe's; True or False: as PixArt's `__call__` argument.

    Raises:
        TypeError: `clean_caption` is not None or a bool.
        ValueError: `clean_caption` given for a recipe that does not clean captions.
    """
    if clean_caption is not None and not isinstance(clean_caption, bool):
        raise TypeError(f"`clean_caption` must be None or a bool, got {clean_caption!r}")
    mode = default
    if clean_caption is not None:
        if default == "none":
            raise ValueError(
                "`clean_caption` is PixArt's (its prompts are lower-cased or cleaned before tokenizing); this "
                "recipe reads prompts as they are"
            )
        mode = "clean_caption" if clean_caption else "lowercase"
    if mode == "clean_caption":
        missing = [name for name, module in _CLEAN_CAPTION_NEEDS if importlib.util.find_spec(module) is None]
        if missing:
            logger.warning(
                "clean_caption needs %s, not installed; prompts are lower-cased and stripped instead, as "
                "diffusers' PixArt pipelines do then (pip install %s)",
                " and ".join(missing),
                " ".join(missing),
            )
            mode = "lowercase"
    return mode


class CaptionCleaner:
    """A text -> text function for one mode (diffusers' PixArt code imported on first use)."""

    def __init__(self, mode: str) -> None:
        self.mode = check_caption_cleaning(mode)
        self._pixart = None

    def __call__(self, text: str) -> str:
        if self.mode == "none":
            return text
        if self.mode == "lowercase":
            return text.lower().strip()
        if self._pixart is None:
            from diffusers import PixArtAlphaPipeline

            # `_text_preprocessing` reads no state of the pipeline: an instance without components
            self._pixart = PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)
        return self._pixart._text_preprocessing(text, clean_caption=True)[0]


__all__ = ["CAPTION_CLEANING", "CaptionCleaner", "check_caption_cleaning", "cleaning_for"]
