"""SD3's CLIP-G token states reach `prompt_embeds`, so `prompt_2` shows in the CLIP rows.

SD3 joins CLIP-L's and CLIP-G's token states on channels and pads them with zeros to the T5
width (768 + 1280 -> 4096 in SD3; 32 + 48 -> 96 in the tiny SD3 of tests/tiny_pipelines.py).
The peers: diffusers' `encode_prompt`, and CLIP-G's own penultimate hidden states from
transformers. Bit for bit in float32 under no_grad, as tests/test_exactness.py.
"""

from __future__ import annotations

import pytest
import torch
from tensor_checks import differs

from clipcond import TextConditioner

PROMPTS = ["a photo of an astronaut riding a horse", "Two RED circles to the left of a blue square"]
SECOND = ["an oil painting with thick brush strokes", "a pencil sketch of a cat"]
CLIP_ROWS = 77


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _diffusers_tokens(pipe, prompt_2):
    return pipe.encode_prompt(
        prompt=PROMPTS, prompt_2=prompt_2, prompt_3=None, device="cpu", do_classifier_free_guidance=False
    )[0]


def test_prompt_2_changes_the_clip_g_channels_of_sd3_prompt_embeds(sd3_pipe):
    clip_l_width = sd3_pipe.text_encoder.config.hidden_size
    clip_g_width = sd3_pipe.text_encoder_2.config.hidden_size
    clip_l, clip_g = slice(0, clip_l_width), slice(clip_l_width, clip_l_width + clip_g_width)
    assert sd3_pipe.transformer.config.joint_attention_dim > clip_g.stop  # SD3's layout: no channel is cropped
    cond = TextConditioner.from_pipeline(sd3_pipe)
    ours = cond.encode(PROMPTS, prompt_2=SECOND).tokens
    expected, plain = _diffusers_tokens(sd3_pipe, SECOND), _diffusers_tokens(sd3_pipe, None)
    close(ours, expected)
    close(cond.encode(PROMPTS).tokens, plain)
    # CLIP-L reads `prompt` in both; CLIP-G reads `prompt_2`: its channels of the CLIP rows move.
    assert torch.equal(expected[:, :CLIP_ROWS, clip_l], plain[:, :CLIP_ROWS, clip_l])
    assert differs(expected[:, :CLIP_ROWS, clip_g], plain[:, :CLIP_ROWS, clip_g])
    assert not expected[:, :CLIP_ROWS, clip_g.stop :].any()  # zeros up to the T5 width
    # Those channels are CLIP-G's penultimate states of `prompt_2` (SD3 reads hidden_states[-2]).
    tokenizer = sd3_pipe.tokenizer_2
    ids = tokenizer(SECOND, padding="max_length", truncation=True, return_tensors="pt").input_ids
    states = sd3_pipe.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]
    close(ours[:, :CLIP_ROWS, clip_g], states)
