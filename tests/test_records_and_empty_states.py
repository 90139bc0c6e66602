"""Two small parts of the conditioner, each on its own: `EncodedPrompt`'s tensors out and back
(what the disk cache writes and reads), and the memo of the empty prompt's token states that
the "comfy" and "compel" emphasis modes read (computed once per key and slot, dropped when the
key changes, kept without a graph)."""

from __future__ import annotations

import pytest
import torch

from clipcond.empty_states import EmptyPromptStates
from clipcond.records import EncodedPrompt


def test_the_set_tensors_go_out_by_field_name_and_come_back() -> None:
    clip, mask = torch.ones(2, 77, 8), torch.tensor([1, 1, 0])
    record = EncodedPrompt(clip_tokens=clip, t5_mask=mask)
    assert record.tensors() == {"clip_tokens": clip, "t5_mask": mask}
    assert list(record.tensors()) == ["clip_tokens", "t5_mask"]
    assert EncodedPrompt.from_tensors(record.tensors()) == record
    assert EncodedPrompt().tensors() == {} and EncodedPrompt.from_tensors({}) == EncodedPrompt()


def test_a_tensor_of_no_field_is_refused_naming_all() -> None:
    with pytest.raises(ValueError) as raised:
        EncodedPrompt.from_tensors({"pooled": torch.ones(4), "zeta": torch.ones(1), "alpha": torch.ones(1)})
    assert str(raised.value) == (
        "an encoded prompt has no fields ['alpha', 'zeta']; expected some of "
        "['clip_tokens', 'pooled', 't5_mask', 't5_tokens']"
    )


def test_empty_states_are_computed_once_per_key_and_slot_and_kept_without_a_graph() -> None:
    memo, calls = EmptyPromptStates(), []
    weight = torch.ones(2, 3, requires_grad=True)

    def compute(value: float):
        def states() -> torch.Tensor:
            calls.append(value)
            return weight * value

        return states

    first = memo.get("weights-1", 0, compute(1.0))
    assert not first.requires_grad and torch.equal(first, torch.ones(2, 3))
    assert memo.get("weights-1", 0, compute(9.0)) is first  # kept: not computed again
    second_slot = memo.get("weights-1", 1, compute(2.0))
    assert torch.equal(second_slot, torch.full((2, 3), 2.0)) and calls == [1.0, 2.0]
    assert memo.get("weights-1", 0, compute(9.0)) is first  # another slot kept it
    changed = memo.get("weights-2", 0, compute(3.0))  # a new key drops every slot
    assert torch.equal(changed, torch.full((2, 3), 3.0))
    assert torch.equal(memo.get("weights-2", 1, compute(4.0)), torch.full((2, 3), 4.0))
    assert calls == [1.0, 2.0, 3.0, 4.0]
