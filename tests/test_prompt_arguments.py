"""`clipcond/prompt_arguments.py` called directly: the prompt-list checks and the per-encoder
refusal name the argument and say what it takes, in full (found unguarded by mutation testing)."""

from __future__ import annotations

import pytest

from clipcond.prompt_arguments import as_prompt_list, check_readers, negative_prompt_list


def test_a_prompt_of_another_kind_is_named_with_its_type() -> None:
    with pytest.raises(TypeError) as refusal:
        as_prompt_list(5, "prompt_2")
    assert str(refusal.value) == "`prompt_2` must be a string or a list of strings, got int"
    with pytest.raises(TypeError, match=r"^`prompt` must be a string"):  # the argument named by default
        as_prompt_list(None)


@pytest.mark.parametrize(
    "negative, message",
    [
        ([], "`negative_prompt` must be a string or a non-empty list of strings, got an empty list"),
        (["dark", 3], "`negative_prompt` must contain only strings, but item 1 is int: 3"),
        (7, "`negative_prompt` must be a string or a list of strings, got int"),
        (
            ["dark"],
            "`negative_prompt` has 1 entries but `prompt` has 2; give one negative prompt per prompt, or a "
            "single string for all",
        ),
    ],
    ids=["empty", "an_int_inside", "an_int", "too_few"],
)
def test_a_negative_prompt_list_is_refused_naming_negative_prompt(negative, message) -> None:
    with pytest.raises((TypeError, ValueError)) as refusal:
        negative_prompt_list(negative, 2)
    assert str(refusal.value) == message


def test_an_argument_no_encoder_reads_lists_every_reader_in_order() -> None:
    with pytest.raises(ValueError) as refusal:
        check_readers(("prompt", "prompt_2"), {"prompt_3": "a cat"}, "sdxl")
    assert str(refusal.value) == (
        "`prompt_3` has no encoder to read it: recipe 'sdxl' with these encoders reads `prompt` (encoder 1), "
        "`prompt_2` (encoder 2); leave `prompt_3` out, or use a family whose pipelines take it (prompt_2: SDXL, "
        "SD3, Flux; prompt_3: SD3 with its T5)"
    )
