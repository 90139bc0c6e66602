"""Attention head counts of converted CLIP towers on their own, against the head counts of
OpenAI's models and open_clip 3.3.0's shipped configs (the table in the module's docstring,
written out here), and each refusal whole."""

from __future__ import annotations

import numpy as np
import pytest

from clipcond.models.attention_heads import given_heads, text_heads_for_width, vision_heads_for_width

# (vision width, heads) of open_clip's ViT-S, ViT-M, ViT-B, ViT-B-plus, ViT-L, ViT-H, ViT-g, ViT-bigG, ViT-e
SHIPPED_VISION = [(384, 6), (512, 8), (768, 12), (896, 14), (1024, 16), (1280, 16), (1408, 16), (1664, 16), (1792, 16)]


@pytest.mark.parametrize("width, heads", SHIPPED_VISION)
def test_the_vision_heads_of_every_shipped_tower(width, heads) -> None:
    assert vision_heads_for_width(width) == heads


@pytest.mark.parametrize("width, heads", [(64, 1), (256, 4), (512, 8), (768, 12), (1024, 16), (1280, 20)])
def test_the_text_heads_are_the_width_over_64(width, heads) -> None:
    assert text_heads_for_width(width) == heads


def test_widths_the_rules_do_not_cover_are_refused_whole() -> None:
    for call, message in [
        (
            lambda: vision_heads_for_width(1000),
            "vision width 1000 is not a multiple of 64, so OpenAI's heads = width // 64 rule does not apply; pass "
            "vision_heads (--vision-heads)",
        ),
        (
            lambda: vision_heads_for_width(1032),
            "vision width 1032 is not a multiple of 16, so open_clip's 16-head rule for wide towers does not apply; "
            "pass vision_heads (--vision-heads)",
        ),
        (
            lambda: text_heads_for_width(100),
            "text width 100 is not a multiple of 64, so OpenAI's heads = width // 64 rule does not apply; pass "
            "text_heads (--text-heads)",
        ),
    ]:
        with pytest.raises(ValueError) as raised:
            call()
        assert str(raised.value) == message
    assert vision_heads_for_width(1040) == 16  # a multiple of 16 from 1024 up, not of 64
    assert vision_heads_for_width(960) == 15  # below 1024: width // 64


def test_given_heads_are_taken_when_they_divide_the_width() -> None:
    assert given_heads(None, 512, "text") is None
    assert given_heads(8, 512, "text") == 8
    taken = given_heads(np.int64(12), 768, "vision")
    assert taken == 12 and type(taken) is int
    assert given_heads(1, 7, "text") == 1 and given_heads(7, 7, "text") == 7


@pytest.mark.parametrize("heads", [True, 8.0, "8", np.float64(8)])
def test_given_heads_that_are_no_int_are_a_type_error(heads) -> None:
    with pytest.raises(TypeError) as raised:
        given_heads(heads, 512, "vision")
    assert str(raised.value) == f"vision_heads must be an int (attention heads of the vision tower), got {heads!r}"


@pytest.mark.parametrize("heads", [0, -8, 7, 1024])
def test_given_heads_that_do_not_divide_the_width_are_refused(heads) -> None:
    with pytest.raises(ValueError) as raised:
        given_heads(heads, 512, "text")
    assert str(raised.value) == f"text_heads (--text-heads) {heads} does not divide the text width 512"
