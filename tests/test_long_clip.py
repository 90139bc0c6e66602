"""Long-CLIP (github.com/beichenzbc/Long-CLIP): `convert-clip` folds its two text position tables
into one 248-row table, and a `TextConditioner` on the result reads 248-token windows.

The reference below is Long-CLIP's text forward pass (`CLIP.encode_text` in its
`model/model_longclip.py`) written on the OpenAI-layout model of `reference_openai_clip.py`,
which owes nothing to transformers: token embedding plus `positional_embedding * mask1 +
positional_embedding_res * mask2` over all 248 positions (mask1 is 1 on the first 20, mask2 on
the rest), the causal transformer, `ln_final`, and the row at argmax(ids) through
`text_projection`. Both tables are random and different, so a fold that read a row from the
wrong table (or moved the boundary by one) shows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference_openai_clip import OpenAIStyleCLIP
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPModel, CLIPTextModelWithProjection

from clipcond import TextConditioner
from clipcond.chunking import clip_windows
from clipcond.cli import main
from clipcond.conditioner_config import ConditionerConfig, EncoderSource
from clipcond.models import convert_openai_state_dict
from clipcond.prompts import Fragment

CONTEXT = 248  # Long-CLIP's text context: 77 * 4 - 60
KEPT = 20  # positions that read the original table (Long-CLIP's mask1)
TEXT_WIDTH, TEXT_HEADS = 32, 2
BOS, EOS = 49406, 49407


class LongCLIPStyle(OpenAIStyleCLIP):
    """A tiny Long-CLIP in its checkpoint layout: OpenAI's keys plus `positional_embedding_res`."""

    def __init__(self) -> None:
        super().__init__(
            embed_dim=24,
            image_size=16,
            patch_size=8,
            vision_width=64,
            vision_layers=1,
            vision_heads=1,
            context_length=CONTEXT,
            vocab_size=49408,
            text_width=TEXT_WIDTH,
            text_layers=2,
            text_heads=TEXT_HEADS,
        )
        self.positional_embedding_res = nn.Parameter(0.01 * torch.randn(CONTEXT, TEXT_WIDTH))
        self.mask1 = torch.zeros(CONTEXT, 1)
        self.mask1[:KEPT] = 1
        self.mask2 = 1 - self.mask1

    def text_states(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (batch, 248), as Long-CLIP's tokenizer pads them -> (batch, 248, width) after ln_final."""
        if ids.shape[1] != CONTEXT:
            raise ValueError(f"Long-CLIP adds its whole position tables: ids must be (batch, {CONTEXT})")
        x = (
            self.token_embedding(ids)
            + self.positional_embedding * self.mask1
            + self.positional_embedding_res * self.mask2
        )
        x = self.transformer(x.transpose(0, 1), attn_mask=self.causal_mask(CONTEXT)).transpose(0, 1)
        return self.ln_final(x)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (batch, 248) -> (batch, embed_dim), pooled at the largest id (<|endoftext|>)."""
        states = self.text_states(ids)
        return states[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


def _long_clip(seed: int = 0) -> LongCLIPStyle:
    """Every weight random, LayerNorms and biases included (their init values would hide a mix-up)."""
    torch.manual_seed(seed)
    model = LongCLIPStyle()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * torch.randn_like(module.weight))
    return model.eval()


def _padded_ids(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Rows of bos, `length` random ordinary tokens, eos, then zeros, as `longclip.tokenize` pads."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), CONTEXT, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0] = BOS
        ids[row, 1 : 1 + length] = torch.randint(1, BOS, (length,), generator=generator)
        ids[row, 1 + length] = EOS
    return ids


def test_converted_text_tower_matches_long_clips_forward_pass() -> None:
    reference = _long_clip()
    state = reference.state_dict()
    assert {"positional_embedding", "positional_embedding_res"} <= set(state)  # Long-CLIP's layout

    config, weights = convert_openai_state_dict(state, text_heads=TEXT_HEADS)
    assert config.text_config.max_position_embeddings == CONTEXT
    CLIPModel(config).load_state_dict(weights, strict=True)  # the whole checkpoint has a place
    text = CLIPTextModelWithProjection(config.text_config).eval()
    text.load_state_dict({k: v for k, v in weights.items() if k.startswith(("text_model.", "text_projection."))})

    # Prompts within CLIP's 77 tokens, across the 20-position boundary only, and up to the full 248.
    ids = _padded_ids([3, 18, 19, 60, 150, CONTEXT - 2])
    with torch.no_grad():
        expected_states, expected_pooled = reference.text_states(ids), reference.encode_text(ids)
        output = text(input_ids=ids)
        torch.testing.assert_close(output.last_hidden_state, expected_states, rtol=0, atol=1e-5)
        torch.testing.assert_close(output.text_embeds, expected_pooled, rtol=0, atol=1e-5)


def test_convert_refuses_position_tables_that_cannot_be_folded() -> None:
    state = _long_clip().state_dict()
    short = {**state, "positional_embedding_res": state["positional_embedding_res"][:77]}
    with pytest.raises(ValueError, match=r"positional_embedding_res has shape \(77, 32\).*same \(context, width\)"):
        convert_openai_state_dict(short, text_heads=TEXT_HEADS)


def _long_prompt(tokenizer, minimum: int) -> str:
    """A prompt of more than `minimum` tokens (BOS and EOS not counted)."""
    words = "a small red cube left of a large blue sphere on a wooden table in soft light"
    prompt = words
    while len(tokenizer(prompt, add_special_tokens=False).input_ids) <= minimum:
        prompt = f"{prompt}, {words}"
    return prompt


def test_convert_clip_command_gives_a_conditioner_with_248_token_windows(tmp_path: Path, capsys) -> None:
    reference = _long_clip(seed=1)
    checkpoint = tmp_path / "longclip-tiny.safetensors"
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, str(checkpoint))
    folder = tmp_path / "longclip-tiny"
    heads = ["--text-heads", str(TEXT_HEADS)]
    assert main(["convert-clip", "--checkpoint", str(checkpoint), "--output", str(folder), *heads]) == 0
    out = capsys.readouterr().out
    assert f"(text context {CONTEXT} tokens)" in out
    # What the weights do not say is printed, for the user to check: heads per tower, activation.
    chosen = (
        f"text heads: {TEXT_HEADS} of width {TEXT_WIDTH // TEXT_HEADS} (--text-heads); "
        "vision heads: 1 of width 64 (default); activation: quick_gelu (default; --gelu for plain GELU)"
    )
    assert chosen in out.splitlines(), out

    # As a user loads it: the folder's text_encoder/ and tokenizer/ through a conditioner config.
    source = EncoderSource(path=str(folder), subfolder="text_encoder")
    conditioner = TextConditioner.from_config(ConditionerConfig(recipe="sd", clip=[source], cache_size=0))
    (encoder,) = conditioner.clip
    assert encoder.tokenizer.model_max_length == CONTEXT and encoder.window_length == CONTEXT

    # More than one window of 246 content tokens, fewer than two.
    prompt = _long_prompt(encoder.tokenizer, CONTEXT - 2)
    (windows,) = clip_windows(encoder.tokenizer, [[Fragment(prompt, 1.0)]], CONTEXT)
    assert tuple(windows.ids.shape) == (2, CONTEXT)
    with torch.no_grad():
        embeds = conditioner.encode(prompt)
        expected = reference.text_states(windows.ids)  # (2, 248, width): each window through Long-CLIP
    assert tuple(embeds.tokens.shape) == (1, 2 * CONTEXT, TEXT_WIDTH)
    torch.testing.assert_close(embeds.tokens[0], expected.reshape(2 * CONTEXT, TEXT_WIDTH), rtol=0, atol=1e-5)
