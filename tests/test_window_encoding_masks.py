"""Encoders that read an attention mask (PixArt's and Sana's T5) under bounded batches and
compel's masked versions: the padding stays masked (found by mutation testing of
window_encoding.py). One tiny PixArt pipeline, then the same at unit level with a recording
encoder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clipcond import TextConditioner
from clipcond.chunking import TokenWindows
from clipcond.window_encoding import _checked_in_batches, _weighted_states

PROMPTS = ["a red circle", "a small blue square next to a big green triangle on a white table", "dots"]


@pytest.mark.parametrize("emphasis", ["multiply", "compel"])
def test_masked_sequences_in_bounded_batches_equal_one_batch(pixart_pipe, emphasis):
    """PixArt's T5 reads its attention mask: prompts of different lengths encoded one sequence
    per call give what one call gives."""
    with torch.no_grad():
        whole = TextConditioner.from_pipeline(pixart_pipe, cache_size=0, emphasis=emphasis)
        bounded = TextConditioner.from_pipeline(pixart_pipe, cache_size=0, emphasis=emphasis, max_batch_windows=1)
        prompts = PROMPTS if emphasis == "multiply" else ["a (red:0.6) circle", *PROMPTS[1:]]
        expected, got = whole.encode(prompts), bounded.encode(prompts)
    assert expected.mask is not None and not bool(expected.mask.all())  # some padding
    torch.testing.assert_close(got.tokens, expected.tokens, rtol=0, atol=1e-6)


# the same at unit level, without a pipeline: the masks the encoder is called with are recorded


def _recording_run(calls):
    def run(ids, mask):
        calls.append(None if mask is None else mask.clone())
        return ids.float()[..., None] / 10 + 1, None  # (rows, length, 1) states, no pooled

    return run


def test_each_bounded_batch_gets_its_rows_of_the_mask():
    calls = []
    ids = torch.arange(15).reshape(5, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
    states, pooled = _checked_in_batches(_recording_run(calls), None, 2)(ids, mask)
    assert [None if m is None else m.tolist() for m in calls] == [
        mask[0:2].tolist(),
        mask[2:4].tolist(),
        mask[4:].tolist(),
    ]
    assert torch.equal(states, ids.float()[..., None] / 10 + 1) and pooled is None


def test_compel_s_masked_versions_keep_the_padding_masked_for_an_encoder_that_reads_its_mask():
    """compel's down-weighted fragment is masked out in one more encoder call; for an encoder
    that reads the attention mask (T5 in PixArt, Sana) the padding stays masked in that call
    too."""
    prompt = TokenWindows(
        ids=torch.tensor([[5, 6, 7, 8, 0, 0]]),
        weights=torch.tensor([[1.0, 0.5, 1.0, 1.0, 1.0, 1.0]]),
        mask=torch.tensor([[1, 1, 1, 1, 0, 0]]),
        fragments=torch.tensor([[-1, 0, 1, -1, -1, -1]]),
    )
    calls = []
    encoder = SimpleNamespace(device=torch.device("cpu"))
    _weighted_states(_recording_run(calls), [prompt], lambda: torch.zeros(6, 1), encoder, True, "compel")
    assert len(calls) == 2
    assert calls[0].tolist() == [[1, 1, 1, 1, 0, 0]]
    assert calls[1].tolist() == [[1, 0, 1, 1, 0, 0]]  # the fragment masked out, the padding still masked


@pytest.fixture
def masked_sd(sd_pipe):
    """`sd_pipe` with a copy of its CLIP whose config says `use_attention_mask` (diffusers'
    `encode_prompt` then passes the padding mask)."""
    import copy

    pipe = copy.copy(sd_pipe)  # shallow: only the text encoder is replaced
    pipe.text_encoder = copy.deepcopy(sd_pipe.text_encoder)
    pipe.text_encoder.config.use_attention_mask = True
    return pipe


def _diffusers_states(pipe, prompt: str) -> torch.Tensor:
    """(77, width): diffusers' `encode_prompt` of one prompt, without guidance."""
    return pipe.encode_prompt(prompt, "cpu", 1, False)[0][0]


def test_a_clip_that_reads_its_mask_equals_diffusers_encode_prompt(masked_sd):
    """The prompt's windows pass the mask (found by mutation testing: no test had such a CLIP)."""
    cond = TextConditioner.from_pipeline(masked_sd, cache_size=0)
    prompt = "a red circle and a blue square"
    with torch.no_grad():
        expected = _diffusers_states(masked_sd, prompt)
        unmasked = masked_sd.text_encoder(
            masked_sd.tokenizer(prompt, padding="max_length", return_tensors="pt").input_ids
        )
        torch.testing.assert_close(cond.encode(prompt).tokens[0], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, unmasked[0][0], atol=1e-4)  # the mask changes the padding's states


def test_comfy_moves_away_from_the_masked_empty_prompt(masked_sd):
    """ComfyUI's formula, e + (z - e) * w per weighted token, with z and e (the empty prompt's
    states) from diffusers' masked `encode_prompt`: the empty prompt's window passes the mask too."""
    cond = TextConditioner.from_pipeline(masked_sd, cache_size=0, emphasis="comfy")
    tokenizer = masked_sd.tokenizer
    weights = [1.0]
    for text, weight in [("a", 1.0), ("red", 1.3), ("circle and a", 1.0), ("blue", 1.21), ("square", 1.0)]:
        weights += [weight] * len(tokenizer(text, add_special_tokens=False).input_ids)
    w = torch.tensor(weights + [1.0] * (77 - len(weights)))[:, None]
    with torch.no_grad():
        z, e = _diffusers_states(masked_sd, "a red circle and a blue square"), _diffusers_states(masked_sd, "")
        got = cond.encode("a (red:1.3) circle and a ((blue)) square").tokens[0]
    torch.testing.assert_close(got, torch.where(w == 1, z, e + (z - e) * w), rtol=1e-5, atol=1e-5)
