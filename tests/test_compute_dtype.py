"""`compute_dtype` computes an encoder in another dtype without changing the model a pipeline
shares: every parameter and buffer of the pipeline's encoders is the same tensor object, with
the same dtype, device, storage, version and bytes, after the conditioner is built and after
each encode. So the pipeline runs the conditioner's embeddings, and its own text path gives
the image it gave before.

Regression: `compute_dtype` cast the shared encoders to float32 in place (twice their bytes);
diffusers then cast given `prompt_embeds` to `text_encoder.dtype`, and SD, SDXL and PixArt in
bfloat16 crashed ("mat1 and mat2 must have the same dtype").
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tiny_pipelines
import torch
from accelerate import cpu_offload
from transformers import AutoTokenizer, CLIPTextModel

from clipcond import TextConditioner
from clipcond.fingerprint import WeightsWatch
from clipcond.tokenization import clip_tokenizer

PROMPT = "a red circle to the left of a blue square"
ENCODER_SLOTS = ("text_encoder", "text_encoder_2", "text_encoder_3")
FAMILIES = ("sd", "sdxl", "sd3", "flux", "pixart")


def build(family: str, t5_tokenizer_path):
    builders = {
        "sd": tiny_pipelines.build_sd,
        "sdxl": tiny_pipelines.build_sdxl,
        "sd3": lambda: tiny_pipelines.build_sd3(t5_tokenizer_path),
        "flux": lambda: tiny_pipelines.build_flux(t5_tokenizer_path),
        "pixart": lambda: tiny_pipelines.build_pixart(t5_tokenizer_path),
    }
    pipe = builders[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encoders_of(pipe) -> list[torch.nn.Module]:
    return [getattr(pipe, slot) for slot in ENCODER_SLOTS if getattr(pipe, slot, None) is not None]


def snapshot(modules) -> list[tuple]:
    """Per parameter and buffer: the object, its dtype, device, storage, version and bytes."""
    return [
        (name, tensor, tensor.dtype, tensor.device, tensor.data_ptr(), tensor._version, tensor.detach().clone())
        for module in modules
        for name, tensor in (*module.named_parameters(), *module.named_buffers())
    ]


def assert_untouched(modules, before: list[tuple]) -> None:
    after = snapshot(modules)
    assert [entry[0] for entry in after] == [entry[0] for entry in before]
    for (name, tensor, *marks, values), (_, was, *was_marks, was_values) in zip(after, before):
        assert tensor is was, name
        assert marks == was_marks, name
        assert torch.equal(values, was_values), name


def latents(pipe, family: str, **kwargs) -> np.ndarray:
    extra = {"use_resolution_binning": False} if family == "pixart" else {}
    generator = torch.Generator().manual_seed(0)
    images = pipe(**kwargs, num_inference_steps=2, output_type="latent", generator=generator, **extra).images
    return images.float().numpy()


def rounded_kwargs(kwargs: dict, dtype: torch.dtype) -> dict:
    return {key: value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value
            for key, value in kwargs.items()}  # fmt: skip


def assert_same_kwargs(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if torch.is_tensor(value):
            assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key
        else:
            assert value == theirs[key], key


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bfloat16_pipeline_runs_the_embeddings_of_a_float32_run_and_keeps_its_encoders(
    family, t5_tokenizer_path
) -> None:
    pipe = build(family, t5_tokenizer_path).to(torch.bfloat16)
    own_before = latents(pipe, family, prompt=PROMPT)
    encoders = encoders_of(pipe)
    before = snapshot(encoders)
    watch = WeightsWatch(encoders)
    state = watch.state()

    cond = TextConditioner.from_pipeline(pipe, compute_dtype=torch.float32, cache_size=0)
    assert_untouched(encoders, before)
    kwargs = cond.pipeline_kwargs(PROMPT)
    assert_untouched(encoders, before)
    assert watch.state() == state  # no weight seen written: cached records stay valid

    widened = copy.deepcopy(pipe)
    for encoder in encoders_of(widened):
        encoder.float()
    expected = rounded_kwargs(
        TextConditioner.from_pipeline(widened, cache_size=0).pipeline_kwargs(PROMPT), torch.bfloat16
    )
    assert_same_kwargs(kwargs, expected)

    ours = latents(pipe, family, **kwargs)
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours, latents(pipe, family, **expected))
    cond.encode("a second prompt")
    np.testing.assert_array_equal(latents(pipe, family, prompt=PROMPT), own_before)
    assert_untouched(encoders, before)


def test_pixart_in_float16_with_an_overflowing_t5_gets_finite_embeddings_and_a_finite_image(
    t5_tokenizer_path,
) -> None:
    """The documented case: a float16 T5 overflows into NaN; computed in float32 it does not,
    and the float16 pipeline sharing it still runs."""
    pipe = build("pixart", t5_tokenizer_path)
    pipe.text_encoder = tiny_pipelines.overflowing_t5(pipe.text_encoder.config.vocab_size)
    pipe = pipe.to(torch.float16)
    before = snapshot([pipe.text_encoder])
    kwargs = TextConditioner.from_pipeline(pipe, compute_dtype=torch.float32, cache_size=0).pipeline_kwargs(PROMPT)
    assert_untouched([pipe.text_encoder], before)
    widened = copy.deepcopy(pipe)
    widened.text_encoder.float()
    expected = rounded_kwargs(
        TextConditioner.from_pipeline(widened, cache_size=0).pipeline_kwargs(PROMPT), torch.float16
    )
    assert torch.isfinite(kwargs["prompt_embeds"]).all()
    assert torch.equal(kwargs["prompt_embeds"], expected["prompt_embeds"])
    ours = latents(pipe, "pixart", **kwargs)
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours, latents(pipe, "pixart", **expected))


def test_under_model_offload_each_encode_restores_the_encoders_and_the_pipeline_runs(t5_tokenizer_path) -> None:
    """diffusers' `enable_model_cpu_offload` (on the CPU, the only device here): the hook that
    places the encoder runs around the copies, and the encoder is left as it was."""
    plain = build("sdxl", t5_tokenizer_path).to(torch.bfloat16)
    expected = TextConditioner.from_pipeline(plain, compute_dtype=torch.float32, cache_size=0).pipeline_kwargs(PROMPT)
    pipe = copy.deepcopy(plain)
    pipe.enable_model_cpu_offload(device="cpu")
    encoders = encoders_of(pipe)
    before = snapshot(encoders)
    cond = TextConditioner.from_pipeline(pipe, compute_dtype=torch.float32, cache_size=0)
    for _ in range(2):
        kwargs = cond.pipeline_kwargs(PROMPT)
        assert_untouched(encoders, before)
        assert_same_kwargs(kwargs, expected)
    np.testing.assert_array_equal(latents(pipe, "sdxl", **kwargs), latents(plain, "sdxl", **expected))
    np.testing.assert_array_equal(latents(pipe, "sdxl", prompt=PROMPT), latents(plain, "sdxl", prompt=PROMPT))


def test_under_sequential_offload_the_hooks_load_the_weights_in_the_compute_dtype(tiny_clip_text_path) -> None:
    """Weights on the meta device (accelerate's `cpu_offload`, as `enable_sequential_cpu_offload`
    leaves them): the hooks load their kept values in the copies' dtype, and after the encode the
    model holds its own meta tensors again, in bfloat16."""
    half = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval().to(torch.bfloat16)
    expected = TextConditioner("sd", clip=[(half, clip_tokenizer())], cache_size=0, compute_dtype=torch.float32)
    expected = expected.encode(PROMPT).tokens
    offloaded = cpu_offload(copy.deepcopy(half), execution_device=torch.device("cpu"))
    assert {weight.device.type for weight in offloaded.parameters()} == {"meta"}
    before = snapshot([offloaded])
    cond = TextConditioner("sd", clip=[(offloaded, clip_tokenizer())], cache_size=0, compute_dtype=torch.float32)
    for _ in range(2):
        tokens = cond.encode(PROMPT).tokens
        assert tokens.dtype == torch.bfloat16 and torch.equal(tokens, expected)
        after = snapshot([offloaded])
        assert [(name, tensor, dtype) for name, tensor, dtype, *_ in after] == [entry[:3] for entry in before]
    plain = TextConditioner("sd", clip=[(offloaded, clip_tokenizer())], cache_size=0).encode(PROMPT).tokens
    reference = TextConditioner("sd", clip=[(half, clip_tokenizer())], cache_size=0).encode(PROMPT).tokens
    assert torch.equal(plain, reference)  # the model's own dtype again without compute_dtype


def test_a_trained_encoder_gets_the_gradients_of_a_float32_run_in_its_own_dtype(tiny_clip_text_path) -> None:
    half = CLIPTextModel.from_pretrained(tiny_clip_text_path).to(torch.bfloat16).train()
    widened = copy.deepcopy(half).float().train()
    cond = TextConditioner("sd", clip=[(half, clip_tokenizer())], cache_size=0, compute_dtype=torch.float32)
    cond.encode(PROMPT).tokens.float().sum().backward()
    TextConditioner("sd", clip=[(widened, clip_tokenizer())], cache_size=0).encode(PROMPT).tokens.sum().backward()
    grads = dict(widened.named_parameters())
    for name, weight in half.named_parameters():
        assert weight.dtype == weight.grad.dtype == torch.bfloat16, name
        assert torch.equal(weight.grad, grads[name].grad.to(torch.bfloat16)), name


def test_a_t5_with_tied_embeddings_gets_one_copy_and_keeps_them_tied(tiny_t5_encoder_path) -> None:
    from transformers import T5EncoderModel

    half = T5EncoderModel.from_pretrained(tiny_t5_encoder_path).eval().to(torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_encoder_path)
    assert half.shared.weight is half.encoder.embed_tokens.weight
    widened = copy.deepcopy(half).float()
    expected = TextConditioner("custom", t5=(widened, tokenizer), cache_size=0).encode(PROMPT).tokens
    before = snapshot([half])
    tokens = TextConditioner("custom", t5=(half, tokenizer), cache_size=0, compute_dtype=torch.float32)
    tokens = tokens.encode(PROMPT).tokens
    assert torch.equal(tokens, expected.to(torch.bfloat16))
    assert_untouched([half], before)
    assert half.shared.weight is half.encoder.embed_tokens.weight


def test_a_disk_cache_shared_with_a_plain_conditioner_keeps_their_records_apart(tmp_path) -> None:
    half = tiny_pipelines.clip_text_model(3).to(torch.bfloat16)
    plain = TextConditioner("sd", clip=[(half, clip_tokenizer())], cache_dir=str(tmp_path)).encode(PROMPT).tokens
    computed = TextConditioner("sd", clip=[(half, clip_tokenizer())], cache_size=0, compute_dtype=torch.float32)
    expected = computed.encode(PROMPT).tokens
    assert not torch.equal(expected, plain)
    shared = TextConditioner(
        "sd", clip=[(half, clip_tokenizer())], cache_dir=str(tmp_path), compute_dtype=torch.float32
    )
    assert torch.equal(shared.encode(PROMPT).tokens, expected)


def test_threads_encoding_with_one_model_get_the_serial_results_and_leave_its_weights_alone() -> None:
    """Threads sharing a bfloat16 CLIP with a projection through two conditioners (tokens and the
    pooled state, read where it enters the projection) encode at once, each forward slowed so
    that they overlap: every record equals the serial run's, and the weights end as the tensors
    they were (`weights_in` holds one lock while weights are swapped)."""
    import time

    from thread_runs import run_in_threads

    model = tiny_pipelines.clip_text_model(3, with_projection=True).to(torch.bfloat16)
    state = model.state_dict(keep_vars=True)
    before = {name: (tensor, tensor.data.clone(), tensor.dtype) for name, tensor in state.items()}
    conditioners = [
        TextConditioner("custom", clip=[(model, clip_tokenizer())], cache_size=0, compute_dtype=torch.float32)
        for _ in range(2)
    ]
    prompts = [f"a red fox number {index}" for index in range(6)]
    serial = {prompt: conditioners[0].encode_records([prompt])[0] for prompt in prompts}
    assert serial[prompts[0]].pooled is not None
    handle = model.register_forward_pre_hook(lambda module, args: time.sleep(0.02))
    results = {}

    def encode(worker: int) -> None:
        for prompt in prompts[worker::3]:
            results[prompt] = conditioners[worker % 2].encode_records([prompt])[0]

    errors = run_in_threads(encode, 3)
    handle.remove()
    assert errors == []
    for prompt in prompts:
        got, expected = results[prompt].tensors(), serial[prompt].tensors()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), prompt
    for name, tensor in model.state_dict(keep_vars=True).items():
        original, values, dtype = before[name]
        assert tensor is original and tensor.dtype == dtype and torch.equal(tensor.data, values), name
