"""Threads sharing a conditioner (a server encoding several requests at once, or a request
beside the pipeline's own text path): each call gets what a serial run gives. Most tests run
with the interpreter switching threads about every microsecond (conftest's
`frequent_thread_switches`), so that a race shows within a few dozen calls."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest
import torch
from thread_runs import run_in_threads
from transformers import CLIPTextModel

from clipcond import TextConditioner
from clipcond.tokenization import clip_tokenizer

PROMPTS = [f"a (photo:1.{i % 9}) of {i} red cats" if i % 3 else f"prompt {i}, " * (i % 30 + 1) for i in range(12)]


def _in_threads(serve: Callable[[random.Random], None], count: int = 6) -> list[str]:
    """Run `serve(rng)` in `count` threads at once, each with its own seeded `rng`; what they
    raised, as text."""
    return run_in_threads(lambda index: serve(random.Random(index)), count)


def _outputs(embeds) -> dict[str, torch.Tensor]:
    return {name: getattr(embeds, name) for name in ("tokens", "pooled") if getattr(embeds, name) is not None}


def test_threads_sharing_a_conditioner_and_its_cache_get_the_serial_records_and_every_lookup_counted(
    tiny_clip_text_path, tmp_path, frequent_thread_switches
):
    """A disk cache with an in-memory level of two entries: lookups keep evicting other threads'
    entries. No call fails, each gets the serial run's embeddings, the hits and misses add up to
    the lookups made. The race that made the cache's `put` or `get` raise KeyError is pinned
    reliably on the cache alone (test_cache_mutants.py); this runs the whole encode path."""
    model = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval()

    def conditioner(**kwargs) -> TextConditioner:
        return TextConditioner("sd", clip=[(model, clip_tokenizer())], **kwargs)

    serial = conditioner(cache_size=0)
    expected = {prompt: serial.encode(prompt).tokens for prompt in PROMPTS}
    counting = conditioner(cache_size=2, cache_dir=str(tmp_path / "counting"))
    counting.encode(PROMPTS[0])
    lookups_per_call = counting.cache.hits + counting.cache.misses
    cond = conditioner(cache_size=2, cache_dir=str(tmp_path / "cache"))
    calls, wrong = 40, []

    def serve(rng: random.Random) -> None:
        for _ in range(calls):
            prompt = rng.choice(PROMPTS)
            if not torch.equal(cond.encode(prompt).tokens, expected[prompt]):
                wrong.append(prompt)

    failures = _in_threads(serve)
    assert not failures and not wrong, (failures[:3], wrong[:3])
    assert cond.cache.hits + cond.cache.misses == lookups_per_call * calls * 6
    assert len(cond.cache) <= 2 and cond.cache.directory is not None
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == len(PROMPTS)


def test_threads_sharing_a_conditioner_get_the_serial_pooled_vectors(sd3_pipe, frequent_thread_switches):
    """SDXL's and SD3's pooled vectors are read where they enter the encoder's projection. Read
    there from every thread's calls, another thread's vector came out as this one's (or the
    counts did not match: IndexError) in most runs of this test (the next one forces it)."""
    pipe = sd3_pipe
    serial = TextConditioner.from_pipeline(pipe, cache_size=0)
    expected = {prompt: _outputs(serial.encode([prompt, ""])) for prompt in PROMPTS}
    cond = TextConditioner.from_pipeline(pipe, cache_size=0)
    wrong = []

    def serve(rng: random.Random) -> None:
        for _ in range(12):
            prompt = rng.choice(PROMPTS)
            got = _outputs(cond.encode([prompt, ""]))
            wrong.extend(name for name, value in expected[prompt].items() if not torch.equal(got[name], value))

    failures = _in_threads(serve)
    assert not failures and not wrong, (failures[:3], wrong[:3])


@pytest.mark.parametrize("family", ["sdxl_pipe", "sd3_pipe"])
def test_a_projection_call_from_another_thread_during_an_encode_is_not_read_as_its_pooled_vector(request, family):
    """The race above, made to happen every time: while this thread's encode is inside the
    second CLIP encoder, right after its projection ran, another thread runs that projection (as
    the pipeline's own `encode_prompt` would) on other values."""
    pipe = request.getfixturevalue(family)
    expected = TextConditioner.from_pipeline(pipe, cache_size=0).encode("a red fox").pooled
    projection = pipe.text_encoder_2.text_projection
    encoding_thread = threading.get_ident()
    foreign = torch.randn(1, projection.in_features, generator=torch.Generator().manual_seed(0))

    def project_in_another_thread(module, args, output) -> None:
        if threading.get_ident() == encoding_thread:
            other = threading.Thread(target=lambda: module(foreign))
            other.start()
            other.join()

    handle = projection.register_forward_hook(project_in_another_thread)
    try:
        got = TextConditioner.from_pipeline(pipe, cache_size=0).encode("a red fox").pooled
    finally:
        handle.remove()
    assert torch.equal(got, expected)


def _with_text_encoder_lora(sd_pipe):
    """A copy of the SD fixture's text encoder with a random peft LoRA in its attention, beside
    the fixture's tokenizer (left as it is)."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    encoder = copy.deepcopy(sd_pipe.text_encoder)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return inject_adapter_in_model(config, encoder), sd_pipe.tokenizer


def test_threads_encoding_at_their_own_lora_scales_get_the_serial_embeddings(sd_pipe, frequent_thread_switches):
    """A call's `lora_scale` multiplies the shared LoRA layers' scale for its encode. Threads at
    0.5 and at the LoRA's own scale, through two conditioners over the same model (two pipelines
    made with `from_pipe`), each get what a serial run gives; before encodes over a model took
    turns (`clipcond/model_locks.py`), almost every one of them got another thread's scale (or
    0.25, two halvings at once)."""
    clip = _with_text_encoder_lora(sd_pipe)
    serial = TextConditioner("sd", clip=[clip], cache_size=0)
    scales = [None, 0.5]
    expected = {
        (prompt, scale): serial.encode(prompt, lora_scale=scale).tokens for prompt in PROMPTS for scale in scales
    }
    assert not torch.equal(expected[PROMPTS[0], None], expected[PROMPTS[0], 0.5])
    conditioners = [TextConditioner("sd", clip=[clip], cache_size=size) for size in (0, 512)]
    wrong = []

    def serve(rng: random.Random) -> None:
        for _ in range(10):
            prompt, scale, cond = rng.choice(PROMPTS), rng.choice(scales), rng.choice(conditioners)
            if not torch.equal(cond.encode(prompt, lora_scale=scale).tokens, expected[prompt, scale]):
                wrong.append((prompt, scale))

    failures = _in_threads(serve, count=4)
    assert not failures and not wrong, (failures[:3], wrong[:3])
    assert all(layer.scaling == {"default": 1.0} for layer in clip[0].modules() if hasattr(layer, "scaling"))


def test_an_encode_waits_for_another_threads_scaled_block(sd_pipe) -> None:
    """While one thread is inside ``with cond.lora_scaled(0.5):``, another thread's encode over
    the same model (without a scale) waits for the block to end and gets the LoRA at its own
    scale, not 0.5."""
    clip = _with_text_encoder_lora(sd_pipe)
    plain = TextConditioner("sd", clip=[clip], cache_size=0).encode("a red fox").tokens
    other = TextConditioner("sd", clip=[clip], cache_size=0)
    got, done = [], threading.Event()

    def encode() -> None:
        got.append(other.encode("a red fox").tokens)
        done.set()

    cond = TextConditioner("sd", clip=[clip], cache_size=0)
    with cond.lora_scaled(0.5):
        halved = cond.encode("a red fox").tokens
        waiting = threading.Thread(target=encode)
        waiting.start()
        finished_inside = done.wait(timeout=0.5)  # an encode takes milliseconds
    waiting.join()
    assert not finished_inside
    assert torch.equal(got[0], plain) and not torch.equal(halved, plain)


def test_threads_holding_two_models_named_in_opposite_orders_never_wait_on_each_other(frequent_thread_switches):
    """`holding` takes locks in one order whatever order the models come in: two threads naming
    the same two models the other way round would otherwise each hold one lock and wait for the
    other's."""
    from clipcond.model_locks import holding

    first, second = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)

    def hold(models) -> None:
        for _ in range(2000):
            with holding(models):
                pass

    threads = [
        threading.Thread(target=hold, args=(order,), daemon=True) for order in ([first, second], [second, first])
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10  # the two take 0.05 s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "two threads wait on each other's lock"
