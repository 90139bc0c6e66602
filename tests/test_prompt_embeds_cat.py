"""`PromptEmbeds.cat` of parts that disagree on having a pooled vector or a mask is a ValueError
naming the attribute (it was torch's "expected Tensor as element 1", or, with the first part
without one, the others' were dropped silently)."""

from __future__ import annotations

import pytest
import torch

from clipcond import PromptEmbeds


def _embeds(pooled: bool, mask: bool) -> PromptEmbeds:
    return PromptEmbeds(
        torch.ones(2, 3, 4),
        torch.ones(2, 5) if pooled else None,
        torch.ones(2, 3, dtype=torch.int64) if mask else None,
    )


@pytest.mark.parametrize("name", ["pooled", "mask"])
@pytest.mark.parametrize("first_has_it", [True, False])
def test_parts_that_disagree_are_a_value_error_naming_the_attribute(name, first_has_it) -> None:
    with_it, without = _embeds(**{"pooled": False, "mask": False, name: True}), _embeds(pooled=False, mask=False)
    parts = [with_it, without] if first_has_it else [without, with_it]
    with pytest.raises(ValueError, match=rf"all with or all without `{name}`: parts \[{1 if first_has_it else 0}\]"):
        PromptEmbeds.cat(parts)


def test_no_parts_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="`parts` must hold at least one"):
        PromptEmbeds.cat([])


def test_parts_that_agree_are_joined_as_torch_cat_joins_them() -> None:
    a, b = _embeds(pooled=True, mask=True), _embeds(pooled=True, mask=True)
    b = PromptEmbeds(b.tokens * 2, b.pooled * 3, b.mask * 0)
    joined = PromptEmbeds.cat([a, b])
    assert torch.equal(joined.tokens, torch.cat([a.tokens, b.tokens]))
    assert torch.equal(joined.pooled, torch.cat([a.pooled, b.pooled]))
    assert torch.equal(joined.mask, torch.cat([a.mask, b.mask]))
