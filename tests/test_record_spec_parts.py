"""`RecordSpec` on its own: a tensor spec's text and fit, what a spec finds wrong with a set of
tensors (in the order it looks), the checks of records handed to `assemble`, and the spec
`expected_record` gives for encoders described by stand-ins. Each message is written out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clipcond.recipes import Recipe
from clipcond.record_spec import RecordSpec, TensorSpec, check_record, check_records, expected_record
from clipcond.records import EncodedPrompt

WINDOWS = TensorSpec((None, 77, 32), torch.float32)
POOLED = TensorSpec((32,), torch.float16)
SPEC = RecordSpec({"clip_tokens": WINDOWS, "pooled": POOLED})
SPEC_TEXT = "clip_tokens (windows, 77, 32) torch.float32, pooled (32) torch.float16"


def test_a_tensor_spec_as_text() -> None:
    assert WINDOWS.describe() == "(windows, 77, 32)"
    assert POOLED.describe() == "(32)"  # the sizes joined, no tuple comma
    assert TensorSpec((), torch.int64).describe() == "()"
    assert TensorSpec((2, None, None), torch.int64).describe() == "(2, windows, windows)"
    assert SPEC.describe() == SPEC_TEXT


@pytest.mark.parametrize(
    "shape, fits",
    [
        ((1, 77, 32), True),
        ((5, 77, 32), True),
        ((0, 77, 32), False),  # a windows axis holds one window at least
        ((1, 76, 32), False),
        ((1, 77, 33), False),
        ((77, 32), False),
        ((1, 1, 77, 32), False),
    ],
)
def test_a_shape_fits_with_any_size_of_at_least_one_on_the_windows_axis(shape, fits) -> None:
    assert WINDOWS.fits(shape) is fits
    assert WINDOWS.fits(torch.Size(shape)) is fits


def good() -> dict[str, torch.Tensor]:
    return {"clip_tokens": torch.zeros(2, 77, 32), "pooled": torch.zeros(32, dtype=torch.float16)}


@pytest.mark.parametrize(
    "change, problem",
    [
        (dict(pooled=None), "missing tensors ['pooled']"),
        (dict(pooled=None, clip_tokens=None), "missing tensors ['clip_tokens', 'pooled']"),
        (dict(t5_tokens=torch.zeros(3)), "unexpected tensors ['t5_tokens']"),
        (dict(t5_mask=torch.zeros(3), t5_tokens=torch.zeros(3)), "unexpected tensors ['t5_mask', 't5_tokens']"),
        (dict(clip_tokens=torch.zeros(2, 77, 16)), "`clip_tokens` has shape (2, 77, 16), expected (windows, 77, 32)"),
        (dict(pooled=torch.zeros(32)), "`pooled` is torch.float32, expected torch.float16"),
        (dict(clip_tokens=torch.full((1, 77, 32), float("nan"))), "`clip_tokens` holds NaN or infinite values"),
        (dict(pooled=torch.full((32,), float("-inf"), dtype=torch.float16)), "`pooled` holds NaN or infinite values"),
        # missing before extra, shape before dtype, in the spec's order
        (dict(pooled=None, t5_tokens=torch.zeros(3)), "missing tensors ['pooled']"),
        (
            dict(clip_tokens=torch.zeros(2, 77, 16, dtype=torch.int64)),
            "`clip_tokens` has shape (2, 77, 16), expected (windows, 77, 32)",
        ),
        (
            dict(clip_tokens=torch.zeros(1, 77, 32, dtype=torch.float16), pooled=torch.zeros(31, dtype=torch.float16)),
            "`clip_tokens` is torch.float16, expected torch.float32",
        ),
    ],
)
def test_what_a_spec_finds_wrong(change, problem) -> None:
    tensors = {name: tensor for name, tensor in {**good(), **change}.items() if tensor is not None}
    assert SPEC.problem(tensors) == problem


def test_tensors_that_fit_have_no_problem_and_values_are_read_only_when_asked() -> None:
    assert SPEC.problem(good()) is None
    assert SPEC.problem({**good(), "clip_tokens": torch.full((1, 77, 32), float("inf"))}, finite=False) is None
    integers = RecordSpec({"t5_mask": TensorSpec((4,), torch.int64)})
    assert integers.problem({"t5_mask": torch.tensor([1, 1, 0, 0])}) is None  # integers need no finiteness check
    assert RecordSpec({}).problem({}) is None


def record(**tensors) -> EncodedPrompt:
    return EncodedPrompt(**{**good(), **tensors})


def test_records_that_fit_are_given_back_as_a_list() -> None:
    records = (record(), record(clip_tokens=torch.full((3, 77, 32), float("nan"))))  # values are not read
    checked = check_records(records, SPEC)
    assert isinstance(checked, list) and len(checked) == 2
    assert checked[0] is records[0] and checked[1] is records[1]
    assert check_record(records[0], SPEC, "x") is records[0]
    assert check_records([], SPEC) == []


@pytest.mark.parametrize(
    "records, name",
    [
        (record(), "EncodedPrompt"),
        (torch.zeros(3), "Tensor"),
        ("prompt", "str"),
        ({"a": 1}, "dict"),
        (None, "NoneType"),
        (7, "int"),
    ],
)
def test_what_is_no_list_of_records_is_a_type_error_naming_the_argument(records, name) -> None:
    with pytest.raises(TypeError) as raised:
        check_records(records, SPEC)
    assert str(raised.value) == f"`records` must be a list of EncodedPrompt, got {name}"
    with pytest.raises(TypeError) as raised:
        check_records(records, SPEC, argument="negative_records")
    assert str(raised.value) == f"`negative_records` must be a list of EncodedPrompt, got {name}"


def test_each_record_is_checked_under_its_index() -> None:
    with pytest.raises(TypeError) as raised:
        check_records([record(), {"pooled": 1}], SPEC, argument="negative_records")
    assert str(raised.value) == "`negative_records[1]` must be an EncodedPrompt, got dict"
    with pytest.raises(TypeError) as raised:
        check_records([record(), record(), record(pooled=[0.0] * 32)], SPEC)
    assert str(raised.value) == "`records[2].pooled` must be a tensor, got list"
    with pytest.raises(ValueError) as raised:
        check_records([record(pooled=torch.zeros(16, dtype=torch.float16))], SPEC)
    assert str(raised.value) == (
        "`records[0]` is not a record of this conditioner: `pooled` has shape (16,), expected (32) "
        f"(its `record_spec`: {SPEC_TEXT})"
    )
    with pytest.raises(ValueError) as raised:
        check_records([EncodedPrompt(clip_tokens=torch.zeros(1, 77, 32))], SPEC)
    assert str(raised.value) == (
        f"`records[0]` is not a record of this conditioner: missing tensors ['pooled'] (its `record_spec`: {SPEC_TEXT})"
    )


def encoder(width: int, dtype=torch.float32, pooled_dtype=None, window_length: int = 77) -> SimpleNamespace:
    return SimpleNamespace(
        width=width, dtype=dtype, window_length=window_length, pooled_state_dtype=pooled_dtype or dtype
    )


def specs(spec: RecordSpec) -> dict[str, tuple]:
    return {name: (tensor.shape, tensor.dtype) for name, tensor in spec.tensors.items()}


def test_the_spec_of_one_clip_pooled_last() -> None:
    spec = expected_record([encoder(32, pooled_dtype=torch.float64)], None, Recipe(name="sd", pooled="last"))
    assert specs(spec) == {"clip_tokens": ((None, 77, 32), torch.float32), "pooled": ((32,), torch.float64)}
    assert list(spec.tensors) == ["clip_tokens", "pooled"]


def test_the_spec_of_two_clips_joined_on_channels() -> None:
    clips = [encoder(32, torch.float16, window_length=20), encoder(48, torch.bfloat16, window_length=77)]
    # the token states joined with torch.cat (float16 with bfloat16 promotes to float32), the pooled the last CLIP's
    assert specs(expected_record(clips, None, Recipe(name="sdxl", pooled="last"))) == {
        "clip_tokens": ((None, 20, 80), torch.float32),
        "pooled": ((48,), torch.bfloat16),
    }
    three = [encoder(8, torch.float16), encoder(8, torch.float16), encoder(8, torch.float32)]
    assert specs(expected_record(three, None, Recipe(name="c"))) == {"clip_tokens": ((None, 77, 24), torch.float32)}
    assert specs(expected_record(three[:2], None, Recipe(name="c"))) == {"clip_tokens": ((None, 77, 16), torch.float16)}


def test_the_spec_of_pooled_vectors_joined() -> None:
    clips = [
        encoder(32, torch.float16, pooled_dtype=torch.float16),
        encoder(48, torch.float16, pooled_dtype=torch.float32),
    ]
    assert specs(expected_record(clips, None, Recipe(name="sd3", pooled="concat"))) == {
        "clip_tokens": ((None, 77, 80), torch.float16),
        "pooled": ((80,), torch.float32),
    }
    same = [encoder(4, pooled_dtype=torch.float16), encoder(4, pooled_dtype=torch.float16)]
    assert specs(expected_record(same, None, Recipe(name="sd3", pooled="concat")))["pooled"] == ((8,), torch.float16)


def test_the_spec_of_a_clip_read_for_its_pooled_vector_only_and_a_t5() -> None:
    t5 = encoder(64, torch.bfloat16)
    recipe = Recipe(name="flux", combine="clip_pooled_t5_tokens", pooled="last", t5_max_length=12)
    assert specs(expected_record([encoder(32)], t5, recipe)) == {
        "pooled": ((32,), torch.float32),
        "t5_tokens": ((12, 64), torch.bfloat16),
        "t5_mask": ((12,), torch.int64),
    }


def test_the_spec_of_a_t5_alone_and_of_no_encoder() -> None:
    t5 = encoder(16, torch.float16)
    assert specs(expected_record([], t5, Recipe(name="pixart", t5_max_length=120))) == {
        "t5_tokens": ((120, 16), torch.float16),
        "t5_mask": ((120,), torch.int64),
    }
    assert specs(expected_record([], None, Recipe(name="none"))) == {}
