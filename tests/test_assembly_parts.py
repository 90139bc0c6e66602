"""Assembly on its own: records made by hand joined as each recipe says, their windows padded
with the empty prompt's, zero T5 tokens standing in for a missing T5, the projection, the
pooled vectors projected over each group of rows, and the dtypes of each output. Every
expected tensor is built here with plain torch. Exactness against diffusers' `encode_prompt`
is tests/test_exactness.py's."""

from __future__ import annotations

import pytest
import torch

from clipcond.assembly import assemble, pooled_vectors
from clipcond.projection import TextProjection
from clipcond.recipes import Recipe
from clipcond.records import EncodedPrompt

LENGTH, CLIP_WIDTH, T5_LENGTH, T5_WIDTH = 2, 3, 4, 5
FLOAT32 = (torch.float32, torch.float32, torch.float32)
CPU = torch.device("cpu")


def clip_windows(windows: int, start: float) -> torch.Tensor:
    return torch.arange(windows * LENGTH * CLIP_WIDTH, dtype=torch.float32).reshape(windows, LENGTH, CLIP_WIDTH) + start


EMPTY = torch.full((1, LENGTH, CLIP_WIDTH), -1.0)


class EmptyWindow:
    """The empty prompt's window, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return EMPTY


def t5_record_parts(start: float, real: int) -> dict[str, torch.Tensor]:
    tokens = torch.arange(T5_LENGTH * T5_WIDTH, dtype=torch.float32).reshape(T5_LENGTH, T5_WIDTH) + start
    mask = torch.tensor([1] * real + [0] * (T5_LENGTH - real))
    return dict(t5_tokens=tokens, t5_mask=mask)


def test_windows_are_joined_and_padded_with_the_empty_prompts_window_fetched_once() -> None:
    records = [
        EncodedPrompt(clip_tokens=clip_windows(1, 0)),
        EncodedPrompt(clip_tokens=clip_windows(3, 100)),
        EncodedPrompt(clip_tokens=clip_windows(2, 50)),
    ]
    empty = EmptyWindow()
    embeds = assemble(records, Recipe(name="c"), empty, dtypes=FLOAT32, device=CPU)
    expected = torch.stack(
        [
            torch.cat([clip_windows(1, 0), EMPTY, EMPTY]).reshape(-1, CLIP_WIDTH),
            clip_windows(3, 100).reshape(-1, CLIP_WIDTH),
            torch.cat([clip_windows(2, 50), EMPTY]).reshape(-1, CLIP_WIDTH),
        ]
    )
    assert torch.equal(embeds.tokens, expected) and embeds.tokens.shape == (3, 3 * LENGTH, CLIP_WIDTH)
    assert empty.calls == 1 and embeds.pooled is None and embeds.mask is None


def test_windows_of_one_count_need_no_empty_window() -> None:
    empty = EmptyWindow()
    records = [EncodedPrompt(clip_tokens=clip_windows(2, 0)), EncodedPrompt(clip_tokens=clip_windows(2, 9))]
    embeds = assemble(records, Recipe(name="c"), empty, dtypes=FLOAT32, device=CPU)
    assert empty.calls == 0 and torch.equal(embeds.tokens[1], clip_windows(2, 9).reshape(-1, CLIP_WIDTH))


def test_without_a_projection_the_clip_tokens_are_cast_then_the_tokens() -> None:
    records = [EncodedPrompt(clip_tokens=clip_windows(1, 0.25) / 3)]
    embeds = assemble(
        records, Recipe(name="c"), EmptyWindow(), dtypes=(torch.float16, torch.float64, torch.float32), device=CPU
    )
    # through float16 first: the values are float16's, held in float64
    assert embeds.tokens.dtype == torch.float64
    assert torch.equal(embeds.tokens, (clip_windows(1, 0.25) / 3).half().double().reshape(1, -1, CLIP_WIDTH))


def test_a_projection_maps_the_tokens_and_keeps_its_own_dtype() -> None:
    torch.manual_seed(0)
    projection = TextProjection(projection_dim=7, clip_width=CLIP_WIDTH, t5_width=T5_WIDTH).double()
    records = [EncodedPrompt(clip_tokens=clip_windows(1, 0).double())]
    embeds = assemble(
        records, Recipe(name="c"), EmptyWindow(), projection=projection, dtypes=(torch.float16,) * 3, device=CPU
    )
    assert embeds.tokens.dtype == torch.float64
    assert torch.equal(embeds.tokens, projection["clip"](clip_windows(1, 0).double().reshape(1, -1, CLIP_WIDTH)))


@pytest.mark.parametrize("return_mask", [False, True])
def test_t5_tokens_with_clips_pooled_vector(return_mask) -> None:
    records = [
        EncodedPrompt(pooled=torch.tensor([1.0, 2.0]), **t5_record_parts(0, 2)),
        EncodedPrompt(pooled=torch.tensor([3.0, 4.0]), **t5_record_parts(50, 4)),
    ]
    recipe = Recipe(name="f", combine="clip_pooled_t5_tokens", pooled="last", return_mask=return_mask)
    embeds = assemble(records, recipe, EmptyWindow(), dtypes=(torch.float32, torch.float64, torch.float16), device=CPU)
    assert torch.equal(
        embeds.tokens, torch.stack([t5_record_parts(0, 2)["t5_tokens"], t5_record_parts(50, 4)["t5_tokens"]]).double()
    )
    assert embeds.pooled.dtype == torch.float16 and torch.equal(
        embeds.pooled, torch.tensor([[1.0, 2.0], [3.0, 4.0]]).half()
    )
    if return_mask:
        assert torch.equal(embeds.mask, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))
    else:
        assert embeds.mask is None


def test_t5_tokens_through_the_projection() -> None:
    torch.manual_seed(1)
    projection = TextProjection(projection_dim=6, t5_width=T5_WIDTH)
    records = [EncodedPrompt(**t5_record_parts(0, 3))]
    recipe = Recipe(name="f", combine="clip_pooled_t5_tokens", pooled="none")
    embeds = assemble(records, recipe, EmptyWindow(), projection=projection, dtypes=FLOAT32, device=CPU)
    assert torch.equal(embeds.tokens, projection["t5"](t5_record_parts(0, 3)["t5_tokens"][None]))


@pytest.mark.parametrize("pad", [False, True])
def test_a_sequence_of_clip_windows_then_t5_tokens_with_its_mask(pad) -> None:
    records = [
        EncodedPrompt(clip_tokens=clip_windows(1, 0), **t5_record_parts(0, 1)),
        EncodedPrompt(clip_tokens=clip_windows(2, 10), **t5_record_parts(7, 3)),
    ]
    recipe = Recipe(name="s", combine="concat_sequence", pooled="none", return_mask=True, pad_clip_to_t5_width=pad)
    if not pad:
        with pytest.raises(RuntimeError):  # widths 3 and 5 cannot share one sequence unpadded
            assemble(records, recipe, EmptyWindow(), dtypes=FLOAT32, device=CPU)
        return
    embeds = assemble(records, recipe, EmptyWindow(), dtypes=FLOAT32, device=CPU)
    clip = torch.stack(
        [torch.cat([clip_windows(1, 0), EMPTY]).reshape(-1, CLIP_WIDTH), clip_windows(2, 10).reshape(-1, CLIP_WIDTH)]
    )
    clip = torch.cat([clip, torch.zeros(2, 2 * LENGTH, T5_WIDTH - CLIP_WIDTH)], dim=-1)  # zeros on the right
    t5 = torch.stack([t5_record_parts(0, 1)["t5_tokens"], t5_record_parts(7, 3)["t5_tokens"]])
    assert torch.equal(embeds.tokens, torch.cat([clip, t5], dim=1))
    assert torch.equal(embeds.mask, torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]]))


def test_a_sequence_through_the_projection_and_without_a_mask_asked() -> None:
    torch.manual_seed(2)
    projection = TextProjection(projection_dim=4, clip_width=CLIP_WIDTH, t5_width=T5_WIDTH)
    records = [EncodedPrompt(clip_tokens=clip_windows(1, 0), **t5_record_parts(0, 2))]
    recipe = Recipe(name="s", combine="concat_sequence", pooled="none", pad_clip_to_t5_width=True)
    embeds = assemble(records, recipe, EmptyWindow(), projection=projection, dtypes=FLOAT32, device=CPU)
    expected = torch.cat(
        [
            projection["clip"](clip_windows(1, 0).reshape(1, -1, CLIP_WIDTH)),
            projection["t5"](t5_record_parts(0, 2)["t5_tokens"][None]),
        ],
        dim=1,
    )
    assert torch.equal(embeds.tokens, expected) and embeds.mask is None


def test_zero_t5_tokens_stand_in_for_a_missing_t5() -> None:
    records = [EncodedPrompt(clip_tokens=clip_windows(1, 0)), EncodedPrompt(clip_tokens=clip_windows(1, 5))]
    recipe = Recipe(name="s", combine="concat_sequence", pooled="none", return_mask=True, pad_clip_to_t5_width=True)
    embeds = assemble(
        records,
        recipe,
        EmptyWindow(),
        t5_zeros=(3, T5_WIDTH),
        dtypes=(torch.float16, torch.float32, torch.float32),
        device=CPU,
    )
    assert embeds.tokens.shape == (2, LENGTH + 3, T5_WIDTH) and torch.equal(
        embeds.tokens[:, LENGTH:], torch.zeros(2, 3, T5_WIDTH)
    )
    assert torch.equal(embeds.mask, torch.ones(2, LENGTH + 3, dtype=torch.long))
    # the zeros alone, on a T5-tokens recipe, in the CLIP dtype before the cast to the tokens'
    alone = assemble(
        [EncodedPrompt(pooled=torch.ones(2))],
        Recipe(name="f", combine="clip_pooled_t5_tokens", pooled="last", return_mask=True),
        EmptyWindow(),
        t5_zeros=(3, T5_WIDTH),
        dtypes=(torch.float16, torch.float16, torch.float32),
        device=CPU,
    )
    assert alone.tokens.dtype == torch.float16 and torch.equal(
        alone.tokens, torch.zeros(1, 3, T5_WIDTH, dtype=torch.float16)
    )
    assert torch.equal(alone.mask, torch.ones(1, 3, dtype=torch.long)) and alone.mask.dtype == torch.long


def test_records_own_t5_tokens_go_before_zeros() -> None:
    records = [EncodedPrompt(pooled=torch.ones(2), **t5_record_parts(0, 2))]
    recipe = Recipe(name="f", combine="clip_pooled_t5_tokens", pooled="last")
    embeds = assemble(records, recipe, EmptyWindow(), t5_zeros=(3, T5_WIDTH), dtypes=FLOAT32, device=CPU)
    assert torch.equal(embeds.tokens, t5_record_parts(0, 2)["t5_tokens"][None])


class RowCounting:
    """A text projection that doubles its input and adds its row count (so each group's call shows)."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        self.rows.append(states.shape[0])
        return states * 2 + states.shape[0]


def test_pooled_vectors_are_projected_part_by_part_over_each_group() -> None:
    pooled = torch.arange(4 * 5, dtype=torch.float32).reshape(4, 5)  # widths 2 (kept) and 3 (projected)
    records = [EncodedPrompt(pooled=row) for row in pooled]
    project = RowCounting()
    got = pooled_vectors(records, [(2, None), (3, project)], groups=[3, 1])
    expected = torch.cat([pooled[:, :2], torch.cat([pooled[:3, 2:] * 2 + 3, pooled[3:, 2:] * 2 + 1])], dim=-1)
    assert torch.equal(got, expected) and project.rows == [3, 1]
    project.rows.clear()
    assert torch.equal(
        pooled_vectors(records, [(2, None), (3, project)]), torch.cat([pooled[:, :2], pooled[:, 2:] * 2 + 4], dim=-1)
    )
    assert project.rows == [4]  # no groups: the whole batch at once
    assert torch.equal(pooled_vectors(records, [(2, None), (3, None)]), pooled)  # nothing to project
    assert torch.equal(pooled_vectors(records, []), pooled)


@pytest.mark.parametrize("widths, groups", [([2, 2], [4]), ([2, 3], [2, 1]), ([5, 1], [4])])
def test_pooled_states_that_do_not_split_are_refused(widths, groups) -> None:
    records = [EncodedPrompt(pooled=torch.zeros(5)) for _ in range(4)]
    with pytest.raises(ValueError) as raised:
        pooled_vectors(records, [(widths[0], None), (widths[1], RowCounting())], groups=groups)
    assert (
        str(raised.value)
        == f"pooled states of shape (4, 5) do not split into parts of widths {widths} and groups of rows {groups}"
    )


def test_assemble_projects_the_pooled_vectors_over_the_groups_it_is_given() -> None:
    records = [
        EncodedPrompt(clip_tokens=clip_windows(1, 0), pooled=torch.full((3,), float(index))) for index in range(3)
    ]
    project = RowCounting()
    embeds = assemble(
        records,
        Recipe(name="c", pooled="last"),
        EmptyWindow(),
        pooled_parts=[(3, project)],
        groups=[2, 1],
        dtypes=(torch.float32, torch.float32, torch.float64),
        device=CPU,
    )
    assert project.rows == [2, 1] and embeds.pooled.dtype == torch.float64
    assert torch.equal(embeds.pooled, torch.tensor([[2.0] * 3, [4.0] * 3, [5.0] * 3], dtype=torch.float64))
    none = assemble(
        records, Recipe(name="c", pooled="none"), EmptyWindow(), pooled_parts=[(3, project)], dtypes=FLOAT32, device=CPU
    )
    assert none.pooled is None and project.rows == [2, 1]  # not computed


META = torch.device("meta")  # a second device on a machine without an accelerator


def test_the_outputs_are_on_the_device_of_the_first_token_part() -> None:
    """CLIP on one device, T5 and the pooled states on another (encoders offloaded apart):
    the T5 tokens, both masks and the pooled vector follow the CLIP tokens."""
    records = [
        EncodedPrompt(clip_tokens=clip_windows(1, 0).to(META), pooled=torch.ones(3), **t5_record_parts(0, 2)),
        EncodedPrompt(clip_tokens=clip_windows(1, 0).to(META), pooled=torch.ones(3), **t5_record_parts(0, 3)),
    ]
    recipe = Recipe(name="s", combine="concat_sequence", pooled="last", return_mask=True, pad_clip_to_t5_width=True)
    embeds = assemble(records, recipe, EmptyWindow(), dtypes=FLOAT32, device=CPU)
    assert embeds.tokens.device == META and embeds.tokens.shape == (2, LENGTH + T5_LENGTH, T5_WIDTH)
    assert (
        embeds.mask.device == META and embeds.mask.dtype == torch.long and embeds.mask.shape == (2, LENGTH + T5_LENGTH)
    )
    assert embeds.pooled.device == META


def test_zero_t5_tokens_are_made_on_the_device_and_in_the_dtype_given() -> None:
    records = [EncodedPrompt(pooled=torch.ones(2, device=META))]
    recipe = Recipe(name="f", combine="clip_pooled_t5_tokens", pooled="last", return_mask=True)
    embeds = assemble(records, recipe, EmptyWindow(), t5_zeros=(3, T5_WIDTH), dtypes=FLOAT32, device=META)
    assert embeds.tokens.device == META and embeds.mask.device == META
    # through a projection in float64: the zeros must be in the CLIP dtype, float64 here
    projection = TextProjection(projection_dim=4, clip_width=CLIP_WIDTH, t5_width=T5_WIDTH).double()
    sequence = Recipe(name="s", combine="concat_sequence", pooled="none", return_mask=True)
    records = [EncodedPrompt(clip_tokens=clip_windows(1, 0).double())]
    embeds = assemble(
        records,
        sequence,
        EmptyWindow(),
        projection=projection,
        t5_zeros=(3, T5_WIDTH),
        dtypes=(torch.float64,) * 3,
        device=CPU,
    )
    assert embeds.tokens.dtype == torch.float64 and embeds.tokens.shape == (1, LENGTH + 3, 4)
    assert torch.equal(embeds.tokens[0, LENGTH:], projection["t5"](torch.zeros(3, T5_WIDTH, dtype=torch.float64)))


def test_the_mask_follows_tokens_a_projection_moved() -> None:
    """A projection under an offload hook gives its output on the execution device."""
    records = [EncodedPrompt(**t5_record_parts(0, 2))]
    recipe = Recipe(name="f", combine="clip_pooled_t5_tokens", pooled="none", return_mask=True)
    moving = {"t5": lambda tokens: tokens.to(META)}
    embeds = assemble(records, recipe, EmptyWindow(), projection=moving, dtypes=FLOAT32, device=CPU)
    assert embeds.tokens.device == META and embeds.mask.device == META


def test_projected_pooled_columns_follow_the_first_parts_device() -> None:
    records = [EncodedPrompt(pooled=torch.arange(5.0)) for _ in range(2)]
    got = pooled_vectors(records, [(2, lambda states: states.to(META)), (3, None)])
    assert got.device == META and got.shape == (2, 5)


def test_a_sequence_of_clip_windows_alone_and_channels_without_a_mask() -> None:
    records = [EncodedPrompt(clip_tokens=clip_windows(1, 0)), EncodedPrompt(clip_tokens=clip_windows(2, 3))]
    sequence = Recipe(name="s", combine="concat_sequence", pooled="none", return_mask=True, pad_clip_to_t5_width=True)
    embeds = assemble(records, sequence, EmptyWindow(), dtypes=FLOAT32, device=CPU)
    assert torch.equal(embeds.tokens[1], clip_windows(2, 3).reshape(-1, CLIP_WIDTH))  # no padding without a T5
    assert torch.equal(embeds.mask, torch.ones(2, 2 * LENGTH, dtype=torch.long)) and embeds.mask.dtype == torch.long
    channels = assemble(records, Recipe(name="c", return_mask=True), EmptyWindow(), dtypes=FLOAT32, device=CPU)
    assert channels.mask is None  # no mask to return: every CLIP token is read


def test_t5_tokens_with_clips_pooled_vector_read_no_clip_tokens() -> None:
    records = [EncodedPrompt(clip_tokens=clip_windows(1, 0), pooled=torch.ones(2), **t5_record_parts(0, 2))]
    recipe = Recipe(name="f", combine="clip_pooled_t5_tokens", pooled="last", return_mask=True)
    embeds = assemble(records, recipe, EmptyWindow(), dtypes=FLOAT32, device=CPU)
    assert torch.equal(embeds.tokens, t5_record_parts(0, 2)["t5_tokens"][None])
    assert torch.equal(embeds.mask, torch.tensor([[1, 1, 0, 0]]))
