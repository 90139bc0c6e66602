"""`PromptEmbeds` (clipcond.embeds) method by method, each against tensors built by hand: the
shape refusals whole, the cast that keeps the mask's integers, repeat / split / select in
prompt order, and SDXL's zeroed negative. `cat` is tested in test_prompt_embeds_cat.py."""

from __future__ import annotations

import pytest
import torch

from clipcond.embeds import PromptEmbeds


def _embeds(batch: int = 3, with_pooled: bool = True, with_mask: bool = True) -> PromptEmbeds:
    tokens = torch.arange(batch * 2 * 4, dtype=torch.float32).reshape(batch, 2, 4)
    pooled = torch.arange(batch * 5, dtype=torch.float32).reshape(batch, 5) if with_pooled else None
    mask = torch.tensor([[1, index % 2] for index in range(batch)]) if with_mask else None
    return PromptEmbeds(tokens, pooled, mask)


def _rows(embeds: PromptEmbeds) -> list[tuple]:
    """Each prompt as (tokens, pooled, mask) lists, to compare whole."""
    return [
        (
            embeds.tokens[i].tolist(),
            None if embeds.pooled is None else embeds.pooled[i].tolist(),
            None if embeds.mask is None else embeds.mask[i].tolist(),
        )
        for i in range(embeds.batch_size)
    ]


@pytest.mark.parametrize(
    ("tokens", "pooled", "mask", "message"),
    [
        ((2, 4), None, None, "`tokens` must be (batch, seq, width), got shape (2, 4)"),
        ((2, 3, 4), (2,), None, "`pooled` must be (2, width), got shape (2,)"),
        ((2, 3, 4), (3, 5), None, "`pooled` must be (2, width), got shape (3, 5)"),
        ((2, 3, 4), None, (2, 4), "`mask` must be (2, 3), got shape (2, 4)"),
        ((2, 3, 4), None, (3, 3), "`mask` must be (2, 3), got shape (3, 3)"),
    ],
)
def test_shapes_that_do_not_fit_are_refused_whole(tokens, pooled, mask, message) -> None:
    with pytest.raises(ValueError) as raised:
        PromptEmbeds(
            torch.zeros(tokens),
            None if pooled is None else torch.zeros(pooled),
            None if mask is None else torch.zeros(mask, dtype=torch.long),
        )
    assert str(raised.value) == message


def test_a_cast_keeps_the_masks_integers_and_the_missing_parts_missing() -> None:
    cast = _embeds().to(dtype=torch.float16)
    assert (cast.tokens.dtype, cast.pooled.dtype, cast.mask.dtype) == (torch.float16, torch.float16, torch.int64)
    assert torch.equal(cast.tokens, _embeds().tokens.half()) and torch.equal(cast.mask, _embeds().mask)
    bare = _embeds(with_pooled=False, with_mask=False).to("cpu", torch.bfloat16)
    assert bare.pooled is None and bare.mask is None and bare.tokens.dtype == torch.bfloat16


@pytest.mark.parametrize("with_parts", [True, False])
def test_repeat_split_and_select_keep_prompt_order(with_parts) -> None:
    embeds = _embeds(with_pooled=with_parts, with_mask=with_parts)
    a, b, c = _rows(embeds)
    assert embeds.batch_size == 3
    assert _rows(embeds.repeat(2)) == [a, a, b, b, c, c]
    first, rest = embeds.split(1)
    assert _rows(first) == [a] and _rows(rest) == [b, c]
    whole, none = embeds.split(3)
    assert _rows(whole) == [a, b, c] and none is None
    assert _rows(embeds.select(torch.tensor([2, 0, 2]))) == [c, a, c]


def test_zeros_like_zeroes_tokens_and_pooled_and_keeps_the_mask() -> None:
    embeds = _embeds()
    zeros = embeds.zeros_like()
    assert torch.equal(zeros.tokens, torch.zeros(3, 2, 4)) and torch.equal(zeros.pooled, torch.zeros(3, 5))
    assert zeros.mask is embeds.mask
    assert _embeds(with_pooled=False).zeros_like().pooled is None


def test_a_move_takes_every_tensor_to_the_device() -> None:
    """The meta device stands in for a second device (no CUDA here)."""
    moved = _embeds().to("meta")
    assert {moved.tokens.device.type, moved.pooled.device.type, moved.mask.device.type} == {"meta"}
    assert moved.mask.dtype == torch.int64 and moved.tokens.dtype == torch.float32


@pytest.mark.parametrize("with_parts", [True, False])
def test_cat_of_one_part_or_several_joins_them_in_order(with_parts) -> None:
    embeds = _embeds(with_pooled=with_parts, with_mask=with_parts)
    a, b, c = _rows(embeds)
    assert _rows(PromptEmbeds.cat([embeds])) == [a, b, c]
    first, rest = embeds.split(1)
    assert _rows(PromptEmbeds.cat([rest, first, first])) == [b, c, a, a]


def test_cat_refusals_are_whole() -> None:
    with pytest.raises(ValueError) as raised:
        PromptEmbeds.cat([])
    assert str(raised.value) == "`parts` must hold at least one PromptEmbeds, got none"
    with_mask, without = _embeds(), _embeds(with_mask=False)
    with pytest.raises(ValueError) as raised:
        PromptEmbeds.cat([with_mask, without, with_mask])
    assert (
        str(raised.value) == "`parts` must be all with or all without `mask`: parts [1] have none, the other 2 have one"
    )
