"""`clipcond.encoders` on its own, with tiny models and stand-ins: what counts as a CLIP or a
T5, the refusals of a wrong model, tokenizer or compute dtype (whole messages), what counts as
quantized (the weights' classes, transformers' quantizer objects), the weight copies of a
compute dtype (one per shared weight), the final layer norm of both CLIP classes, and the
pooled projection (dtype, offloaded weights, a projection without weights)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import tiny_pipelines
import torch
from torch import nn
from transformers import AutoTokenizer
from transformers.utils.quantization_config import QuantizationMethod

from clipcond.encoders import (
    TextEncoder,
    clip_final_layer_norm,
    dtype_to_cast,
    encoder_kind,
    run_clip,
    weights_in,
    weights_quantization,
)


@pytest.fixture(scope="module")
def clip_tokenizer(tiny_clip_text_path):
    return AutoTokenizer.from_pretrained(tiny_clip_text_path)


# ------------------------------------------------------------------ kinds and refusals


def test_the_kind_is_read_from_the_config_and_anything_else_is_named() -> None:
    assert encoder_kind(tiny_pipelines.clip_text_model(0)) == "clip"
    assert encoder_kind(tiny_pipelines.clip_text_model(0, with_projection=True)) == "clip"
    with pytest.raises(TypeError) as no_config:
        encoder_kind(nn.Linear(2, 2))
    assert str(no_config.value) == (
        "text encoder must be a transformers CLIP text model or T5 encoder, got Linear (config.model_type=None)"
    )
    untyped = nn.Linear(2, 2)
    untyped.config = SimpleNamespace(hidden_size=2)  # a config without a model_type
    with pytest.raises(TypeError, match=re.escape("got Linear (config.model_type=None)")):
        encoder_kind(untyped)
    untyped.config.model_type = "bert"
    with pytest.raises(TypeError, match=re.escape("got Linear (config.model_type='bert')")):
        encoder_kind(untyped)


def test_a_model_or_tokenizer_of_the_wrong_kind_is_named(clip_tokenizer) -> None:
    model = tiny_pipelines.clip_text_model(0)
    with pytest.raises(TypeError) as not_a_module:
        TextEncoder("openai/clip-vit-large-patch14", clip_tokenizer)
    assert str(not_a_module.value) == "`model` must be a torch.nn.Module, got str"
    for tokenizer, name in [(None, "NoneType"), (77, "int")]:
        with pytest.raises(TypeError) as wrong:
            TextEncoder(model, tokenizer)
        assert str(wrong.value) == f"`tokenizer` must be a transformers tokenizer, got {name}"


class PackedParameter(nn.Parameter):
    """A parameter class of its own, as bitsandbytes' `Int8Params`."""


class PackedTensor(torch.Tensor):
    """A tensor subclass as a parameter's data, as torchao's quantized weights."""


def _with_first_weight(model: nn.Module, make: type) -> nn.Module:
    layer = (
        model.text_model.embeddings.token_embedding
        if hasattr(model, "text_model")
        else model.embeddings.token_embedding
    )
    weight = layer.weight.detach()
    layer.weight = make(weight) if make is PackedParameter else nn.Parameter(weight.as_subclass(PackedTensor))
    return model


def test_what_counts_as_quantized_is_read_from_the_weights() -> None:
    assert weights_quantization(tiny_pipelines.clip_text_model(0)) is None
    assert (
        weights_quantization(_with_first_weight(tiny_pipelines.clip_text_model(0), PackedParameter))
        == "PackedParameter"
    )
    assert weights_quantization(_with_first_weight(tiny_pipelines.clip_text_model(0), PackedTensor)) == "PackedTensor"
    packed = nn.Linear(2, 2)
    packed.weight = nn.Parameter(torch.zeros(2, 2, dtype=torch.int8), requires_grad=False)
    assert weights_quantization(packed) == "torch.int8 weights"


class StandInQuantizer:
    """transformers' quantizer object of a loaded model (`model.hf_quantizer`)."""

    def __init__(self, **config) -> None:
        self.quantization_config = SimpleNamespace(**config)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"quant_method": "awq"}, "StandInQuantizer"),  # weights in buffers of its own modules
        ({"quant_method": "gguf"}, None),  # dequantized on load: the weights say
        ({"quant_method": "fp8", "dequantize": True}, None),
        ({"quant_method": "fp8", "dequantize": "yes"}, "StandInQuantizer"),  # only True dequantizes
        ({}, "StandInQuantizer"),
    ],
    ids=["awq", "gguf", "dequantized", "dequantize_not_true", "no_method"],
)
def test_transformers_quantizer_counts_unless_it_may_leave_plain_weights(config, expected) -> None:
    model = tiny_pipelines.clip_text_model(0)
    model.hf_quantizer = StandInQuantizer(**config)
    assert weights_quantization(model) == expected
    no_config = tiny_pipelines.clip_text_model(0)
    no_config.hf_quantizer = object()
    assert weights_quantization(no_config) == "object"


def test_a_compute_dtype_on_quantized_weights_is_refused_unless_it_is_theirs(clip_tokenizer) -> None:
    model = _with_first_weight(tiny_pipelines.clip_text_model(0), PackedParameter)
    with pytest.raises(ValueError) as refused:
        TextEncoder(model, clip_tokenizer, compute_dtype=torch.bfloat16)
    assert str(refused.value) == (
        "`compute_dtype` (torch.bfloat16) runs CLIPTextModel on a copy of its weights cast to it, but the model is "
        "quantized (PackedParameter) and cannot be cast; load it with `torch_dtype=torch.bfloat16` instead"
    )
    assert TextEncoder(model, clip_tokenizer, compute_dtype=torch.float32).computes_in == torch.float32


def test_the_dtype_to_cast_and_the_quantized_models_transformers_will_not_cast() -> None:
    model = tiny_pipelines.clip_text_model(0)
    assert dtype_to_cast(model, None, "clip[0]") is None
    assert dtype_to_cast(model, torch.float32, "clip[0]") is None  # nothing to cast
    assert dtype_to_cast(model, torch.float16, "clip[0]") == torch.float16
    for method, named in [(QuantizationMethod.BITS_AND_BYTES, "bitsandbytes"), ("gptq", "gptq")]:
        model.quantization_method = method
        with pytest.raises(ValueError) as refused:
            dtype_to_cast(model, torch.float16, "clip[1]")
        assert str(refused.value) == (
            f"`dtype` (torch.float16) cannot be given to clip[1] (CLIPTextModel): it is quantized with {named}, "
            "and transformers does not cast such a model; load it with `torch_dtype=torch.float16` instead, or "
            "cast the other encoders yourself. Nothing has moved"
        )
    model.quantization_method = QuantizationMethod.TORCHAO  # transformers casts these
    assert dtype_to_cast(model, torch.float16, "clip[1]") == torch.float16


# ------------------------------------------------------------------ the compute dtype's copies


class _SharedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 3), nn.Linear(3, 3)
        self.second.weight = self.first.weight  # tied, as T5's embeddings


class _CountingCasts(torch.overrides.TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.casts = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.casts += func is torch.Tensor.to
        return func(*args, **(kwargs or {}))


def test_a_shared_weight_gets_one_copy_with_and_without_grad() -> None:
    module = _SharedWeight()
    with torch.no_grad(), _CountingCasts() as counting, weights_in(module, torch.float64):
        assert module.first.weight.dtype == module.second.weight.dtype == torch.float64
    assert counting.casts == 3  # the tied weight and the two biases
    with weights_in(module, torch.float64):
        assert module.first.weight is module.second.weight
        assert module.first.weight.dtype == torch.float64 and module.first.weight.requires_grad
    assert module.first.weight is module.second.weight and module.first.weight.dtype == torch.float32


# ------------------------------------------------------------------ CLIP's parts


def test_the_final_layer_norm_of_both_clip_classes() -> None:
    plain = tiny_pipelines.clip_text_model(0)
    projected = tiny_pipelines.clip_text_model(0, with_projection=True)
    assert clip_final_layer_norm(plain) is plain.final_layer_norm
    assert clip_final_layer_norm(projected) is projected.text_model.final_layer_norm


def test_run_clip_gives_the_tokens_unless_told_otherwise(clip_tokenizer) -> None:
    encoder = TextEncoder(tiny_pipelines.clip_text_model(0), clip_tokenizer)
    ids = clip_tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    tokens, pooled = run_clip(encoder, ids, None, 1, True)
    with torch.no_grad():
        expected = encoder.model(ids)
    assert torch.equal(tokens, expected.last_hidden_state) and torch.equal(pooled, expected.pooler_output)
    assert run_clip(encoder, ids, None, 1, True, want_tokens=False)[0] is None


def test_pooled_states_are_projected_in_the_dtype_the_model_computes_in(clip_tokenizer) -> None:
    model = tiny_pipelines.clip_text_model(0, with_projection=True).to(torch.bfloat16)
    encoder = TextEncoder(model, clip_tokenizer)
    states = torch.randn(2, model.config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.text_projection(states.to(torch.bfloat16))
    assert torch.equal(encoder.project_pooled(states), expected)


def test_offloaded_projection_weights_are_placed_by_their_hook(clip_tokenizer) -> None:
    from accelerate import cpu_offload

    model = tiny_pipelines.clip_text_model(0, with_projection=True)
    states = torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.text_projection(states)
    cpu_offload(model, execution_device="cpu")  # the weights wait on the meta device
    assert model.text_projection.weight.device.type == "meta"
    assert torch.equal(TextEncoder(model, clip_tokenizer).project_pooled(states), expected)


def test_a_projection_without_weights_projects_where_the_states_are(clip_tokenizer) -> None:
    model = tiny_pipelines.clip_text_model(0, with_projection=True)
    model.text_projection = nn.Identity()
    states = torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(TextEncoder(model, clip_tokenizer).project_pooled(states), states)
