"""Text encoders loaded through transformers' quantization, on the CPU: torchao int8
weight-only, bitsandbytes 8-bit and 4-bit, GGUF (dequantized on load). The conditioner encodes
with them (weights, long prompts, `from_pipeline`), the cache sees a quantized weight change
(`clipcond.fingerprint.stored_tensors`), and a saved quantized folder encodes the same.

Also the float16 T5 overflow (diffusers #8604): the error names the encoder and its dtype, and
`compute_dtype` is the fix, except for quantized weights, which it refuses (from what the weights
are: a GGUF model dequantized on load is run, bitsandbytes layers put in by hand are refused).
`TextConditioner.to(dtype)` refuses a bitsandbytes encoder before moving any.
"""

from __future__ import annotations

import copy
import importlib
import os

import numpy as np
import pytest
import tiny_pipelines
import torch
from forward_counter import ForwardCounter
from transformers import AutoTokenizer, CLIPTextModel, T5Config, T5EncoderModel

from clipcond import TextConditioner
from clipcond.encoders import TextEncoder
from clipcond.fingerprint import WeightsWatch, stored_tensors, weights_hash
from clipcond.window_encoding import NonFiniteEncoding

PROMPT = "a red circle to the left of a blue square"
WEIGHTED = "a (red:1.4) circle to the left of a [blue] square"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


# `.ci/run` installs the backends after the main test run and runs this file again with this set:
# a missing backend then fails the run instead of skipping its tests.
BACKENDS_REQUIRED = os.environ.get("CLIPCOND_REQUIRE_QUANTIZATION") == "1"


def quantization_backend(name: str):
    """Import the quantization library `name`; skip the test where it is not installed, unless
    CLIPCOND_REQUIRE_QUANTIZATION=1 (then the ImportError fails it)."""
    if BACKENDS_REQUIRED:
        return importlib.import_module(name)
    return pytest.importorskip(name)


def torchao_int8():
    """transformers' config for torchao int8 weight-only quantization."""
    quantization_backend("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=Int8WeightOnlyConfig())


def first_attention_query(model: T5EncoderModel) -> torch.Tensor:
    return model.encoder.block[0].layer[0].SelfAttention.q.weight


@pytest.fixture(scope="module")
def t5_tokenizer(tiny_t5_encoder_path):
    return AutoTokenizer.from_pretrained(tiny_t5_encoder_path)


@pytest.fixture(scope="module")
def float_t5(tiny_t5_encoder_path):
    return T5EncoderModel.from_pretrained(tiny_t5_encoder_path).eval()


def load_int8_t5(folder) -> T5EncoderModel:
    return T5EncoderModel.from_pretrained(folder, quantization_config=torchao_int8(), device_map="cpu").eval()


def t5_conditioner(model, tokenizer, **kwargs) -> TextConditioner:
    return TextConditioner("custom", t5=(model, tokenizer), **kwargs)


# ------------------------------------------------------------------ torchao int8 weight-only


def test_int8_t5_encodes_close_to_float(tiny_t5_encoder_path, float_t5, t5_tokenizer) -> None:
    int8 = load_int8_t5(tiny_t5_encoder_path)
    assert type(first_attention_query(int8)).__name__ == "Int8Tensor"
    for prompt in (PROMPT, WEIGHTED, ["", PROMPT]):
        ours = t5_conditioner(int8, t5_tokenizer, cache_size=0).encode(prompt).tokens
        reference = t5_conditioner(float_t5, t5_tokenizer, cache_size=0).encode(prompt).tokens
        assert ours.dtype == reference.dtype == torch.float32
        assert not torch.equal(ours, reference)  # the int8 weights are used
        assert cosine(ours, reference) > 0.999


@pytest.mark.parametrize("emphasis", ["multiply", "a1111", "comfy", "compel"])
def test_int8_t5_weights_move_the_states_as_in_float(tiny_t5_encoder_path, float_t5, t5_tokenizer, emphasis) -> None:
    int8 = load_int8_t5(tiny_t5_encoder_path)
    conditioners = [t5_conditioner(m, t5_tokenizer, cache_size=0, emphasis=emphasis) for m in (int8, float_t5)]
    # what the weights change, int8 against float
    changes = [c.encode(WEIGHTED).tokens - c.encode(PROMPT).tokens for c in conditioners]
    assert changes[0].abs().max() > 0.01
    assert cosine(changes[0], changes[1]) > 0.99


def test_int8_clip_long_prompt_is_windows_close_to_float(tiny_clip_text_path) -> None:
    tokenizer = tiny_pipelines.clip_tokenizer()
    int8 = CLIPTextModel.from_pretrained(tiny_clip_text_path, quantization_config=torchao_int8(), device_map="cpu")
    float_clip = CLIPTextModel.from_pretrained(tiny_clip_text_path)
    long_prompt = ", ".join(["a (red:1.2) circle to the left of a blue square"] * 20)  # ~220 tokens
    ours = TextConditioner("sd", clip=[(int8, tokenizer)], cache_size=0).encode(long_prompt).tokens
    reference = TextConditioner("sd", clip=[(float_clip, tokenizer)], cache_size=0).encode(long_prompt).tokens
    assert ours.shape == reference.shape == (1, 3 * 77, 32)
    assert not torch.equal(ours, reference)
    assert cosine(ours, reference) > 0.999


def test_int8_pipeline_encoder_through_from_pipeline(pixart_pipe, tmp_path) -> None:
    pipe = copy.deepcopy(pixart_pipe)
    pipe.text_encoder.save_pretrained(tmp_path)
    pipe.text_encoder = load_int8_t5(tmp_path)
    ours = TextConditioner.from_pipeline(pipe).pipeline_kwargs(WEIGHTED, negative_prompt="blurry")
    reference = TextConditioner.from_pipeline(pixart_pipe).pipeline_kwargs(WEIGHTED, negative_prompt="blurry")
    assert ours.keys() == reference.keys()
    for name in ("prompt_embeds", "negative_prompt_embeds"):
        assert cosine(ours[name], reference[name]) > 0.999
    assert torch.equal(ours["prompt_attention_mask"], reference["prompt_attention_mask"])


def test_int8_folder_round_trip_encodes_the_same(tiny_t5_encoder_path, t5_tokenizer, tmp_path) -> None:
    int8 = load_int8_t5(tiny_t5_encoder_path)
    int8.save_pretrained(tmp_path)  # the quantization config goes into config.json
    reloaded = T5EncoderModel.from_pretrained(tmp_path, device_map="cpu").eval()
    assert type(first_attention_query(reloaded)).__name__ == "Int8Tensor"
    before = t5_conditioner(int8, t5_tokenizer, cache_size=0).encode([PROMPT, WEIGHTED]).tokens
    after = t5_conditioner(reloaded, t5_tokenizer, cache_size=0).encode([PROMPT, WEIGHTED]).tokens
    assert torch.equal(before, after)
    assert weights_hash([int8]) == weights_hash([reloaded])


# ------------------------------------------------------------------ fingerprint and cache


def test_stored_tensors_of_a_quantized_weight_are_its_inner_tensors(tiny_t5_encoder_path) -> None:
    weight = first_attention_query(load_int8_t5(tiny_t5_encoder_path))
    parts = dict(stored_tensors("q", weight))
    assert set(parts) == {"q.qdata", "q.scale", "q.zero_point"}
    assert parts["q.qdata"].dtype == torch.int8 and type(parts["q.qdata"]) is torch.Tensor


@pytest.mark.parametrize("inner", ["qdata", "scale"])
def test_a_write_into_a_quantized_weight_changes_hash_and_state(tiny_t5_encoder_path, inner) -> None:
    model = load_int8_t5(tiny_t5_encoder_path)
    watch = WeightsWatch([model])
    state, digest = watch.state(), watch.content_hash()
    assert watch.state() == state  # nothing written: the same token
    with torch.no_grad():
        getattr(first_attention_query(model), inner)[0, 0] += 1
    assert watch.state() != state
    assert watch.content_hash() != digest


def test_int8_cache_hits_then_misses_after_a_quantized_write(tiny_t5_encoder_path, t5_tokenizer, tmp_path) -> None:
    model = load_int8_t5(tiny_t5_encoder_path)
    conditioner = t5_conditioner(model, t5_tokenizer, cache_dir=str(tmp_path))
    counter = ForwardCounter(model)
    first = conditioner.encode(PROMPT).tokens
    assert torch.equal(conditioner.encode(PROMPT).tokens, first)
    assert counter.calls == 1  # the second encode is a memory hit
    fresh = t5_conditioner(load_int8_t5(tiny_t5_encoder_path), t5_tokenizer, cache_dir=str(tmp_path))
    fresh_counter = ForwardCounter(fresh.t5.model)
    assert torch.equal(fresh.encode(PROMPT).tokens, first)
    assert fresh_counter.calls == 0  # a disk hit: the same quantized weights hash the same in a new model
    with torch.no_grad():
        first_attention_query(model).qdata.mul_(-1)
    changed = conditioner.encode(PROMPT).tokens
    assert counter.calls == 2
    assert not torch.equal(changed, first)


def test_non_finite_scale_of_a_quantized_weight_is_named(tiny_t5_encoder_path, t5_tokenizer) -> None:
    model = load_int8_t5(tiny_t5_encoder_path)
    with torch.no_grad():
        first_attention_query(model).scale.fill_(float("nan"))
    with pytest.raises(NonFiniteEncoding, match=r"T5 encoder T5EncoderModel \(torch.float32\) .* weights hold NaN"):
        t5_conditioner(model, t5_tokenizer, cache_size=0).encode(PROMPT)


# ------------------------------------------------------------------ bitsandbytes


def bitsandbytes_config(bits: int):
    """transformers' config for bitsandbytes 8-bit or 4-bit quantization."""
    quantization_backend("bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else BitsAndBytesConfig(load_in_4bit=True)


def save_t5_for_bitsandbytes(folder, tokenizer) -> None:
    """A seeded float32 T5 saved to `folder`, wide enough for bitsandbytes' CPU kernels (4-bit
    quantizes rows in blocks of 64: every input width is 64 or more)."""
    torch.manual_seed(13)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4)
    T5EncoderModel(config).save_pretrained(folder)


def load_bitsandbytes_t5(folder, bits: int) -> T5EncoderModel:
    return T5EncoderModel.from_pretrained(folder, quantization_config=bitsandbytes_config(bits), device_map="cpu")


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_t5_encodes_and_caches(t5_tokenizer, tmp_path, bits) -> None:
    save_t5_for_bitsandbytes(tmp_path, t5_tokenizer)
    float_t5 = T5EncoderModel.from_pretrained(tmp_path).eval()
    model = load_bitsandbytes_t5(tmp_path, bits)
    conditioner = t5_conditioner(model, t5_tokenizer)
    if bits == 4:
        # bitsandbytes' CPU path repacks 4-bit weights on the first forward: a real change of
        # the stored tensors, seen once. (The 8-bit scale moves from the weight to its layer on
        # the first forward too; that one is the same tensor, and must not count as a change.)
        conditioner.encode("warm up")
    counter = ForwardCounter(model)
    ours = conditioner.encode(WEIGHTED).tokens
    reference = t5_conditioner(float_t5, t5_tokenizer, cache_size=0).encode(WEIGHTED).tokens
    assert not torch.equal(ours, reference)
    assert cosine(ours, reference) > (0.999 if bits == 8 else 0.98)
    # bitsandbytes builds new state-dict tensors on every call; the watch must not see a change
    assert torch.equal(conditioner.encode(WEIGHTED).tokens, ours)
    assert counter.calls == 1
    weight = first_attention_query(model)
    with torch.no_grad():
        weight.copy_(weight.flip(0))  # the stored weights written in place (int8, or packed 4-bit)
    assert not torch.equal(conditioner.encode(WEIGHTED).tokens, ours)
    assert counter.calls == 2


@pytest.mark.parametrize("after_a_forward", [False, True])
def test_non_finite_bitsandbytes_8bit_scale_is_named(t5_tokenizer, tmp_path, after_a_forward) -> None:
    """The 8-bit scale `SCB` is no parameter: on the weight until the first forward, on the layer
    after. A NaN in it is a NaN in the weights, wherever it is (as a torchao scale's is)."""
    save_t5_for_bitsandbytes(tmp_path, t5_tokenizer)
    model = load_bitsandbytes_t5(tmp_path, 8)
    conditioner = t5_conditioner(model, t5_tokenizer, cache_size=0)
    if after_a_forward:
        conditioner.encode("warm up")
    layer = model.encoder.block[0].layer[0].SelfAttention.q
    scale = layer.state.SCB if after_a_forward else layer.weight.SCB
    with torch.no_grad():
        scale.fill_(float("nan"))
    with pytest.raises(
        NonFiniteEncoding, match=r"T5 encoder T5EncoderModel \(torch.float32\) .*: its weights hold NaN"
    ):
        conditioner.encode(PROMPT)


def bitsandbytes_layers_by_hand(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """`model` with each `nn.Linear` replaced by a bitsandbytes layer holding its weights
    (`Int8Params` or `Params4bit`, quantized as it is put on the CPU), without transformers."""
    bnb = quantization_backend("bitsandbytes")
    for module in list(model.modules()):
        for name, linear in list(module.named_children()):
            if not isinstance(linear, torch.nn.Linear):
                continue
            shape = (linear.in_features, linear.out_features)
            if bits == 8:
                layer = bnb.nn.Linear8bitLt(*shape, bias=linear.bias is not None, has_fp16_weights=False)
                layer.weight = bnb.nn.Int8Params(
                    linear.weight.data.float(), requires_grad=False, has_fp16_weights=False
                )
            else:
                layer = bnb.nn.Linear4bit(*shape, bias=linear.bias is not None, compute_dtype=linear.weight.dtype)
                layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False)
            if linear.bias is not None:
                layer.bias = linear.bias
            setattr(module, name, layer.to("cpu"))
    return model


@pytest.mark.parametrize("bits", [8, 4])
def test_compute_dtype_on_bitsandbytes_layers_put_in_by_hand_is_refused(bits) -> None:
    """No `hf_quantizer` says so, and the packed data are plain integer tensors: the
    bitsandbytes parameter classes do (a cast would leave those layers as they are and run the
    rest in float32)."""
    clip = tiny_pipelines.clip_text_model(1, hidden_size=64, intermediate_size=128).to(torch.bfloat16)
    model = bitsandbytes_layers_by_hand(clip, bits)
    assert getattr(model, "hf_quantizer", None) is None
    kind = "Int8Params" if bits == 8 else "Params4bit"
    with pytest.raises(ValueError, match=rf"`compute_dtype` \(torch.float32\) .* quantized \({kind}\)"):
        TextConditioner("sd", clip=[(model, tiny_pipelines.clip_tokenizer())], compute_dtype=torch.float32)


def sdxl_with_8bit_clip_g(sdxl_pipe, folder, dtype: torch.dtype | None = None):
    """A copy of the tiny SDXL whose `text_encoder_2` transformers loads in bitsandbytes 8-bit
    (its other floating weights in `dtype`)."""
    from transformers import CLIPTextModelWithProjection

    pipe = copy.deepcopy(sdxl_pipe)
    pipe.text_encoder_2.save_pretrained(folder)
    pipe.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        folder, quantization_config=bitsandbytes_config(8), device_map="cpu", torch_dtype=dtype
    ).eval()
    return pipe


def floating_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {parameter.dtype for parameter in model.parameters() if parameter.is_floating_point()}


def test_to_a_dtype_with_a_bitsandbytes_encoder_is_refused_before_anything_moves(sdxl_pipe, tmp_path) -> None:
    pipe = sdxl_with_8bit_clip_g(sdxl_pipe, tmp_path)
    with pytest.raises(ValueError, match="cannot cast a bitsandbytes model"):
        pipe.text_encoder_2.to(torch.bfloat16)  # transformers' own refusal
    conditioner = TextConditioner.from_pipeline(pipe, cache_size=0)
    before = conditioner.encode(PROMPT)
    with pytest.raises(
        ValueError,
        match=r"`dtype` \(torch.bfloat16\) cannot be given to clip\[1\] \(CLIPTextModelWithProjection\): it is "
        r"quantized with bitsandbytes.* Nothing has moved",
    ):
        conditioner.to(torch.bfloat16)
    assert floating_dtypes(pipe.text_encoder) == floating_dtypes(pipe.text_encoder_2) == {torch.float32}
    after = conditioner.encode(PROMPT)
    assert torch.equal(after.tokens, before.tokens)
    assert torch.equal(after.pooled, before.pooled)
    # a device alone moves it, as `DiffusionPipeline.to("cpu")` does (a `dtype=None` was refused too)
    assert torch.equal(conditioner.to("cpu").encode(PROMPT).tokens, before.tokens)


def test_to_the_dtype_a_bitsandbytes_encoder_has_casts_the_others_as_diffusers_does(sdxl_pipe, tmp_path) -> None:
    """Loaded in bfloat16, the 8-bit CLIP needs no cast: `to(torch.bfloat16)` casts the other
    one, and encodes what the pipeline encodes after its own `to(torch.bfloat16)` (which skips
    the 8-bit module with a warning)."""
    ours = sdxl_with_8bit_clip_g(sdxl_pipe, tmp_path / "ours", torch.bfloat16)
    theirs = sdxl_with_8bit_clip_g(sdxl_pipe, tmp_path / "theirs", torch.bfloat16)
    conditioner = TextConditioner.from_pipeline(ours, cache_size=0).to(torch.bfloat16)
    theirs.to(torch.bfloat16)
    assert floating_dtypes(ours.text_encoder) == {torch.bfloat16}
    embeds = conditioner.encode(PROMPT)
    tokens, _, pooled, _ = theirs.encode_prompt(
        PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    assert embeds.tokens.dtype == embeds.pooled.dtype == torch.bfloat16
    assert torch.equal(embeds.tokens, tokens)
    assert torch.equal(embeds.pooled, pooled)


# ------------------------------------------------------------------ GGUF


def write_gguf_t5(folder, tokenizer) -> tuple[T5Config, T5EncoderModel]:
    """A seeded float32 T5 written to ``folder/t5.gguf`` with its linear weights in Q8_0: its
    config and the float32 model."""
    gguf = quantization_backend("gguf")
    torch.manual_seed(5)
    # GGUF Q8_0 quantizes rows in blocks of 32: widths are multiples of 32. transformers reads
    # GGUF T5 as gated (T5 v1.1, Flux/SD3's T5-XXL) and takes the activation from `config`.
    config = T5Config(
        vocab_size=len(tokenizer), d_model=64, d_ff=64, d_kv=16, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
    )  # fmt: skip
    original = T5EncoderModel(config).eval()
    writer = gguf.GGUFWriter(str(folder / "t5.gguf"), "t5encoder")
    writer.add_context_length(512)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_block_count(config.num_layers)
    writer.add_head_count(config.num_heads)
    writer.add_key_length(config.d_kv)
    writer.add_value_length(config.d_kv)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_relative_attn_buckets_count(config.relative_attention_num_buckets)
    writer.add_vocab_size(config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, config.num_layers)
    for name, tensor in original.state_dict().items():
        if name == "encoder.embed_tokens.weight":  # tied to `shared`
            continue
        data = tensor.numpy().astype(np.float32)
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        if name.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "wi_0.weight", "wi_1.weight", "wo.weight")):
            quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return config, original


def test_gguf_t5_is_dequantized_on_load_and_encodes_close(t5_tokenizer, tmp_path) -> None:
    config, original = write_gguf_t5(tmp_path, t5_tokenizer)
    loaded = T5EncoderModel.from_pretrained(tmp_path, gguf_file="t5.gguf", config=config).eval()
    assert first_attention_query(loaded).dtype == torch.float32  # dequantized: plain float weights
    ours = t5_conditioner(loaded, t5_tokenizer, cache_size=0).encode([PROMPT, WEIGHTED]).tokens
    reference = t5_conditioner(original, t5_tokenizer, cache_size=0).encode([PROMPT, WEIGHTED]).tokens
    assert not torch.equal(ours, reference)
    assert cosine(ours, reference) > 0.999


def test_compute_dtype_runs_a_gguf_t5_dequantized_on_load(t5_tokenizer, tmp_path) -> None:
    """transformers keeps its GGUF quantizer on the model, but the weights it leaves are plain
    bfloat16 tensors: `compute_dtype=torch.float32` (the fix for a float16 T5's overflow) runs
    on float32 copies of them, as transformers' own `to(torch.float32)` of the model would."""
    config, _ = write_gguf_t5(tmp_path, t5_tokenizer)

    def load() -> T5EncoderModel:
        return T5EncoderModel.from_pretrained(tmp_path, gguf_file="t5.gguf", config=config, torch_dtype=torch.bfloat16)

    model = load().eval()
    assert type(model.hf_quantizer).__name__ == "GgufHfQuantizer"
    assert {(type(p), type(p.data), p.dtype) for p in model.parameters()} == {
        (torch.nn.Parameter, torch.Tensor, torch.bfloat16)
    }
    tokens = t5_conditioner(model, t5_tokenizer, cache_size=0, compute_dtype=torch.float32).encode(PROMPT).tokens
    cast = load().to(torch.float32).eval()
    reference = t5_conditioner(cast, t5_tokenizer, cache_size=0).encode(PROMPT).tokens
    assert tokens.dtype == torch.bfloat16
    assert torch.equal(tokens, reference.to(torch.bfloat16))
    assert first_attention_query(model).dtype == torch.bfloat16  # the model itself is not cast


# ------------------------------------------------------------------ float16 overflow


def test_float16_t5_overflow_names_encoder_and_dtype_and_the_fix(t5_tokenizer) -> None:
    half = tiny_pipelines.overflowing_t5(len(t5_tokenizer)).half()
    with pytest.raises(
        NonFiniteEncoding,
        match=r"T5 encoder T5EncoderModel \(torch.float16\) .* weights are finite; .*compute_dtype=torch.float32",
    ):
        t5_conditioner(half, t5_tokenizer, cache_size=0).encode(PROMPT)


def test_an_overflow_under_a_float16_compute_dtype_names_the_dtype_computed_in(t5_tokenizer) -> None:
    """float32 weights computing in float16 (`compute_dtype`) overflow as float16 weights do: the
    message says the states were computed in float16, and gives the fix."""
    model = tiny_pipelines.overflowing_t5(len(t5_tokenizer))
    with pytest.raises(
        NonFiniteEncoding,
        match=r"T5 encoder T5EncoderModel \(torch.float32, computed in torch.float16\) .*compute_dtype=torch.float32",
    ):
        t5_conditioner(model, t5_tokenizer, cache_size=0, compute_dtype=torch.float16).encode(PROMPT)


def test_float16_overflow_of_a_quantized_t5_gives_the_fix_that_works(t5_tokenizer, tmp_path) -> None:
    """`compute_dtype` is refused for quantized weights, so the message names the load-time fix
    alone; following it encodes finite states."""
    tiny_pipelines.overflowing_t5(len(t5_tokenizer)).save_pretrained(tmp_path)

    def load(dtype: torch.dtype) -> T5EncoderModel:
        model = T5EncoderModel.from_pretrained(
            tmp_path, quantization_config=torchao_int8(), torch_dtype=dtype, device_map="cpu"
        )
        return model.eval()

    with pytest.raises(
        NonFiniteEncoding,
        match=r"\(torch.float16\) .* they are quantized \(\w+\): load it with torch_dtype=torch.float32 or "
        r"torch.bfloat16$",
    ) as raised:
        t5_conditioner(load(torch.float16), t5_tokenizer, cache_size=0).encode(PROMPT)
    assert "compute_dtype" not in str(raised.value)
    with pytest.raises(ValueError, match="quantized"):  # what the message must not suggest
        t5_conditioner(load(torch.float16), t5_tokenizer, compute_dtype=torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        tokens = t5_conditioner(load(dtype), t5_tokenizer, cache_size=0).encode(PROMPT).tokens
        assert torch.isfinite(tokens).all()


@pytest.mark.parametrize("per_encoder", [False, True])
def test_compute_dtype_float32_fixes_the_float16_overflow(t5_tokenizer, tmp_path, per_encoder) -> None:
    # float32 from the float16 weights: the states `compute_dtype` must give, before the cast back
    rounded = tiny_pipelines.overflowing_t5(len(t5_tokenizer)).half().float()
    reference = t5_conditioner(rounded, t5_tokenizer, cache_size=0).encode(PROMPT).tokens
    assert torch.isfinite(reference).all()
    half = tiny_pipelines.overflowing_t5(len(t5_tokenizer)).half()
    if per_encoder:
        encoder = TextEncoder(half, t5_tokenizer, compute_dtype=torch.float32)
        conditioner = TextConditioner("custom", t5=encoder, cache_dir=str(tmp_path))
    else:
        conditioner = t5_conditioner(half, t5_tokenizer, compute_dtype=torch.float32, cache_dir=str(tmp_path))
    tokens = conditioner.encode(PROMPT).tokens
    assert conditioner.dtype == tokens.dtype == torch.float16  # states cast back to the conditioner's dtype
    assert first_attention_query(half).dtype == torch.float16  # computed on a float32 copy; the model stays
    assert torch.equal(tokens, reference.half())
    # the records are float16 too: a second conditioner reads them from the disk cache
    again = t5_conditioner(half, t5_tokenizer, compute_dtype=torch.float32, cache_dir=str(tmp_path))
    counter = ForwardCounter(half)
    assert torch.equal(again.encode(PROMPT).tokens, tokens)
    assert counter.calls == 0


def test_compute_dtype_on_a_quantized_encoder_is_refused_before_casting(tiny_t5_encoder_path, t5_tokenizer) -> None:
    model = load_int8_t5(tiny_t5_encoder_path)
    with pytest.raises(ValueError, match=r"`compute_dtype` \(torch.bfloat16\) .* quantized .*torch_dtype"):
        t5_conditioner(model, t5_tokenizer, compute_dtype=torch.bfloat16)
    assert model.shared.weight.dtype == torch.float32


def test_compute_dtype_on_a_model_quantized_in_place_is_refused(t5_tokenizer) -> None:
    """torchao's `quantize_` on a built model leaves no `hf_quantizer`: its tensor subclass says so."""
    quantization_backend("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = tiny_pipelines.clip_text_model(1).to(torch.bfloat16)
    quantize_(model, Int8WeightOnlyConfig())
    assert getattr(model, "hf_quantizer", None) is None
    with pytest.raises(ValueError, match=r"`compute_dtype` \(torch.float32\) .* quantized \(\w+Tensor\)"):
        TextConditioner("sd", clip=[(model, tiny_pipelines.clip_tokenizer())], compute_dtype=torch.float32)


@pytest.mark.parametrize("value", ["float32", torch.int8, 32])
def test_compute_dtype_must_be_a_floating_dtype(float_t5, t5_tokenizer, value) -> None:
    with pytest.raises(TypeError, match="`compute_dtype` must be a floating torch.dtype"):
        t5_conditioner(float_t5, t5_tokenizer, compute_dtype=value)
    with pytest.raises(TypeError, match="`compute_dtype` must be a floating torch.dtype"):
        TextEncoder(float_t5, t5_tokenizer, compute_dtype=value)
