"""Silencing transformers' sequence-length warning where clipcond tokenizes a whole prompt that
it will cut into windows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# transformers' mark, in `tokenizer.deprecation_warnings`, that its too-long warning was shown
_LENGTH_WARNING_SHOWN = "sequence-length-is-longer-than-the-specified-maximum"


@contextlib.contextmanager
def without_length_warning(tokenizer: Any) -> Iterator[None]:
    """Inside the block, `tokenizer` does not log transformers' "Token indices sequence length is
    longer than the specified maximum sequence length for this model (87 > 77). Running this
    sequence through the model will result in indexing errors".

    transformers logs it (once per tokenizer) when a text tokenized without `max_length` is
    longer than `model_max_length`. clipcond windows long prompts, so for its whole-prompt
    tokenizations it is false: diffusers' textual-inversion hook `maybe_convert_prompt` runs
    `tokenizer.tokenize(prompt)`, which cannot be given `verbose=False`. The block sets the mark
    transformers keeps for "already shown" and puts the old state back after, so a long text
    the user tokenizes later still gets the warning.
    """
    shown = getattr(tokenizer, "deprecation_warnings", None)
    if shown is None:
        yield
        return
    before = shown.get(_LENGTH_WARNING_SHOWN, None)
    shown[_LENGTH_WARNING_SHOWN] = True
    try:
        yield
    finally:
        if before is None:
            shown.pop(_LENGTH_WARNING_SHOWN, None)
        else:
            shown[_LENGTH_WARNING_SHOWN] = before
