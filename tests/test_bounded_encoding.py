"""Large inputs encode in bounded batches with the one-batch result; non-finite encoder output
is an error naming the encoder, never embeddings handed on."""

from __future__ import annotations

import copy

import pytest
import torch

from clipcond import TextConditioner
from clipcond.conditioner_config import ConditionerConfig, EncoderSource
from clipcond.window_encoding import NonFiniteEncoding

LONG = " ".join(f"word{index}" for index in range(200))  # three CLIP windows
PROMPTS = ["a red circle", LONG, "a (blue:1.4) square BREAK on the left", "", "two [green] triangles"]


def rows_per_call(model: torch.nn.Module) -> list[int]:
    """The batch size of every forward call of `model`, recorded as they happen."""
    seen: list[int] = []

    def record(module, args, kwargs):
        seen.append((args[0] if args else kwargs["input_ids"]).shape[0])

    model.register_forward_pre_hook(record, with_kwargs=True)
    return seen


@pytest.mark.parametrize("emphasis", ["multiply", "compel"])
def test_sdxl_windows_in_batches_of_at_most_max_batch_windows(sdxl_pipe, emphasis) -> None:
    """Both CLIPs of SDXL see at most 2 windows per call (compel's masked re-encode too), and
    the embeddings equal those of one batch."""
    whole = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0, emphasis=emphasis, max_batch_windows=None)
    expected = whole.encode(PROMPTS + ["a (red:0.5) circle"])
    pipe = copy.deepcopy(sdxl_pipe)
    seen = rows_per_call(pipe.text_encoder), rows_per_call(pipe.text_encoder_2)
    bounded = TextConditioner.from_pipeline(pipe, cache_size=0, emphasis=emphasis, max_batch_windows=2)
    got = bounded.encode(PROMPTS + ["a (red:0.5) circle"])
    for calls in seen:
        assert max(calls) <= 2 and sum(calls) >= 9  # 1 + 3 + 2 + 1 + 1 + 1 windows at least
    torch.testing.assert_close(got.tokens, expected.tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.pooled, expected.pooled, rtol=0, atol=1e-6)


def test_sd3_t5_sequences_are_batched_too(sd3_pipe) -> None:
    expected = TextConditioner.from_pipeline(sd3_pipe, cache_size=0, max_batch_windows=None).encode(PROMPTS)
    pipe = copy.deepcopy(sd3_pipe)
    seen = rows_per_call(pipe.text_encoder_3)
    got = TextConditioner.from_pipeline(pipe, cache_size=0, max_batch_windows=3).encode(PROMPTS)
    # five prompts, one T5 sequence each; then the empty prompt, whose CLIP window pads the
    # prompts of fewer windows
    assert seen == [3, 2, 1]
    torch.testing.assert_close(got.tokens, expected.tokens, rtol=0, atol=1e-6)


def test_up_to_the_limit_one_call(sd_pipe) -> None:
    pipe = copy.deepcopy(sd_pipe)
    seen = rows_per_call(pipe.text_encoder)
    TextConditioner.from_pipeline(pipe, cache_size=0).encode(PROMPTS)  # default limit: 256 windows
    assert seen == [15, 1]  # every window of the five prompts, then the padding window


@pytest.mark.parametrize("value, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_max_batch_windows_is_checked(sd_pipe, value, error) -> None:
    with pytest.raises(error, match="`max_batch_windows`"):
        TextConditioner.from_pipeline(sd_pipe, max_batch_windows=value)


def test_config_key(tiny_clip_text_path) -> None:
    config = ConditionerConfig(clip=[EncoderSource(path=str(tiny_clip_text_path))], max_batch_windows=1)
    assert TextConditioner.from_config(config).max_batch_windows == 1
    with pytest.raises(ValueError, match="`max_batch_windows` must be >= 1"):
        ConditionerConfig(clip=[EncoderSource(path=str(tiny_clip_text_path))], max_batch_windows=0)


# ------------------------------------------------------------------ non-finite output


def test_nan_weights_are_named(sd_pipe) -> None:
    pipe = copy.deepcopy(sd_pipe)
    with torch.no_grad():
        weight = next(p for name, p in pipe.text_encoder.named_parameters() if name.endswith("layers.0.mlp.fc1.weight"))
        weight[0, 0] = float("nan")
    cond = TextConditioner.from_pipeline(pipe, cache_size=0)
    with pytest.raises(NonFiniteEncoding, match=r"CLIP encoder CLIPTextModel \(torch.float32\) .* weights hold NaN"):
        cond.encode("a red circle")


def test_infinite_states_from_finite_weights_are_named(sd3_pipe) -> None:
    pipe = copy.deepcopy(sd3_pipe)

    def overflow(module, args, output):
        output.last_hidden_state.fill_(float("inf"))

    pipe.text_encoder_3.register_forward_hook(overflow)
    cond = TextConditioner.from_pipeline(pipe, cache_size=0)
    with pytest.raises(NonFiniteEncoding, match=r"T5 encoder T5EncoderModel \(torch.float32\) .* weights are finite"):
        cond.encode("a red circle")
