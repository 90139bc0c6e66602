"""Two blocks that quiet the libraries for a while and put their state back after: transformers'
sequence-length warning on one tokenizer, and diffusers' and transformers' own progress bars."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from clipcond.progress_bars import library_progress_bars
from clipcond.tokenizer_warnings import without_length_warning

MARK = "sequence-length-is-longer-than-the-specified-maximum"


@pytest.mark.parametrize("before", [None, False, True])
def test_the_length_warning_mark_is_set_inside_and_put_back_after(before) -> None:
    shown = {"other": 1} if before is None else {"other": 1, MARK: before}
    tokenizer = SimpleNamespace(deprecation_warnings=shown)
    with pytest.raises(KeyError), without_length_warning(tokenizer):
        assert shown[MARK] is True
        raise KeyError("a failure inside")
    assert shown == ({"other": 1} if before is None else {"other": 1, MARK: before})


def test_a_tokenizer_without_the_marks_is_left_alone() -> None:
    tokenizer = SimpleNamespace()
    with without_length_warning(tokenizer):
        pass
    assert vars(tokenizer) == {}


def test_a_long_text_tokenized_inside_gives_no_warning_and_after_it_does() -> None:
    from clipcond.tokenization import clip_tokenizer

    tokenizer = clip_tokenizer()
    long_text = "a red circle " * 40
    with without_length_warning(tokenizer):
        tokenizer.tokenize(long_text)
        tokenizer(long_text)
    assert MARK not in tokenizer.deprecation_warnings
    tokenizer(long_text)
    assert tokenizer.deprecation_warnings.get(MARK) is True  # transformers showed it now


def _bars() -> tuple[bool, bool]:
    return diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("before", [(True, True), (False, True), (True, False)])
def test_progress_bars_are_off_inside_and_as_they_were_after(before) -> None:
    saved = _bars()
    try:
        for library, enabled in zip((diffusers_logging, transformers_logging), before):
            library.enable_progress_bar() if enabled else library.disable_progress_bar()
        with pytest.raises(KeyError), library_progress_bars(enabled=False):
            assert _bars() == (False, False)
            raise KeyError("a failure inside")
        assert _bars() == before
        with library_progress_bars(enabled=True):
            assert _bars() == before
        assert _bars() == before
    finally:
        for library, enabled in zip((diffusers_logging, transformers_logging), saved):
            library.enable_progress_bar() if enabled else library.disable_progress_bar()
