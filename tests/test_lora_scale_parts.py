"""A call's LoRA scale on its own: the values `check_lora_scale` takes and refuses (whole
messages), and `lora_scaled` on small models with peft's LoRA layers injected, whose output
inside the block is the base layer plus the scaled low-rank product computed here, and after it
the model's as before (an error inside the block and a scale of 0 included)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from clipcond.lora_scale import check_lora_scale, lora_scaled


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.5, 0.5),
        (0, 0.0),
        (2, 2.0),
        (-1.25, -1.25),
        (np.float32(0.25), 0.25),
        (np.int64(3), 3.0),
        (torch.tensor(1.5), 1.5),
        (torch.tensor(4), 4.0),
    ],
)
def test_a_real_number_is_taken_as_a_python_float(value, expected) -> None:
    for optional in (True, False):
        taken = check_lora_scale(value, optional=optional)
        assert type(taken) is float and taken == expected


def test_none_is_taken_only_where_optional() -> None:
    assert check_lora_scale(None) is None
    assert check_lora_scale(None, optional=True) is None
    with pytest.raises(TypeError) as raised:
        check_lora_scale(None, optional=False)
    assert str(raised.value) == "`lora_scale` must be a number (the LoRA's weight, 1.0 as trained), got None"


@pytest.mark.parametrize("value", [True, False, "0.5", [0.5], torch.tensor([0.5, 1.0]), 1j])
def test_what_is_not_a_real_number_is_a_type_error(value) -> None:
    with pytest.raises(TypeError) as raised:
        check_lora_scale(value)
    assert str(raised.value) == f"`lora_scale` must be a number (the LoRA's weight, 1.0 as trained), got {value!r}"


@pytest.mark.parametrize(
    "value, shown",
    [
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (np.float64("nan"), "nan"),
        (torch.tensor(math.inf), "inf"),
    ],
)
def test_a_scale_that_is_not_finite_is_a_value_error(value, shown) -> None:
    with pytest.raises(ValueError) as raised:
        check_lora_scale(value)
    assert str(raised.value) == f"`lora_scale` must be finite, got {shown}"


RANK, ALPHA = 2, 4  # peft's own scale of the layer: ALPHA / RANK = 2


def lora_model(seed: int) -> torch.nn.Module:
    """Two linear layers, a LoRA (its B not zero) on the first only."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["0"]), model)
    with torch.no_grad():
        model[0].lora_B["default"].weight.normal_()
    return model


def expected_output(model: torch.nn.Module, inputs: torch.Tensor, scale: float) -> torch.Tensor:
    """The model's output with its LoRA's product multiplied by `scale` (and peft's ALPHA / RANK)."""
    layer = model[0]
    low_rank = inputs @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    return model[1](layer.base_layer(inputs) + scale * (ALPHA / RANK) * low_rank)


INPUTS = torch.linspace(-1, 1, 6).reshape(2, 3)


@pytest.mark.parametrize("scale", [0.5, 3.0, -1.0, 0.0])
def test_inside_the_block_every_models_lora_runs_at_the_scale_and_after_it_as_before(scale) -> None:
    models = [lora_model(0), lora_model(1)]
    with torch.no_grad():
        before = [model(INPUTS) for model in models]
        for model, output in zip(models, before):
            assert torch.allclose(output, expected_output(model, INPUTS, 1.0), atol=1e-6)
        with lora_scaled(models, scale):
            for model in models:
                assert torch.allclose(model(INPUTS), expected_output(model, INPUTS, scale), atol=1e-6)
                assert model[0].scaling == {"default": scale * ALPHA / RANK}
        for model, output in zip(models, before):
            assert torch.equal(model(INPUTS), output)
            assert model[0].scaling == {"default": ALPHA / RANK}


@pytest.mark.parametrize("scale", [0.5, 0.0])
def test_an_error_inside_the_block_leaves_the_models_as_before(scale) -> None:
    models = [lora_model(2), lora_model(3)]
    with torch.no_grad():
        before = [model(INPUTS) for model in models]
        with pytest.raises(RuntimeError, match="^inside$"), lora_scaled(models, scale):
            raise RuntimeError("inside")
        for model, output in zip(models, before):
            assert torch.equal(model(INPUTS), output)
            assert model[0].scaling == {"default": ALPHA / RANK}


@pytest.mark.parametrize("models, scale", [([], 0.5), ("one", None)])
def test_no_scale_or_no_model_changes_nothing_and_imports_nothing(models, scale, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers.utils", None)  # an import of it would raise
    models = [lora_model(4)] if models == "one" else models
    with torch.no_grad():
        before = [model(INPUTS) for model in models]
        with lora_scaled(models, scale):
            for model, output in zip(models, before):
                assert torch.equal(model(INPUTS), output)
    for model in models:
        assert model[0].scaling == {"default": ALPHA / RANK}
