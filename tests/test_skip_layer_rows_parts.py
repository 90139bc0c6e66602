"""`SkipLayerRows` on a stand-in transformer that records what each call receives: which
transformers it applies to, the prompt rows a guided call leaves for the next skip-layer call,
what that call then reads, the calls it leaves alone, and how the hook goes. The tiny SD3
against diffusers' per-step reference is in tests/test_prompt_editing_schedulers.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from clipcond.skip_layer_rows import SkipLayerRows


class RecordingTransformer(nn.Module):
    """Takes SD3's keyword arguments and records them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def forward(self, hidden_states=None, encoder_hidden_states=None, pooled_projections=None, skip_layers=None):
        self.seen.append(
            dict(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                pooled_projections=pooled_projections,
                skip_layers=skip_layers,
            )
        )
        return hidden_states


class NoSkipTransformer(nn.Module):
    def forward(self, hidden_states=None, encoder_hidden_states=None, pooled_projections=None):
        return hidden_states


def stand_in_pipe() -> SimpleNamespace:
    return SimpleNamespace(transformer=RecordingTransformer(), scheduler=SimpleNamespace(timesteps=torch.arange(3)))


TOKENS = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)  # 2 negatives, then 2 prompts
POOLED = torch.arange(4 * 5, dtype=torch.float32).reshape(4, 5)
LATENTS = torch.zeros(2, 1)
STALE_TOKENS, STALE_POOLED = torch.full((2, 3, 2), -1.0), torch.full((2, 5), -1.0)


def guided(pipe, tokens=TOKENS, pooled=POOLED) -> None:
    pipe.transformer(hidden_states=torch.zeros(len(tokens), 1), encoder_hidden_states=tokens, pooled_projections=pooled)


def skip_pass(pipe, latents=LATENTS) -> dict:
    pipe.transformer(
        hidden_states=latents, encoder_hidden_states=STALE_TOKENS, pooled_projections=STALE_POOLED, skip_layers=[0]
    )
    return pipe.transformer.seen[-1]


def test_it_applies_to_a_transformer_whose_class_forward_takes_skip_layers() -> None:
    assert SkipLayerRows.applies(stand_in_pipe()) is True
    wrapped = stand_in_pipe()
    wrapped.transformer.forward = lambda *args, **kwargs: None  # as accelerate's offload hooks wrap it
    assert SkipLayerRows.applies(wrapped) is True
    assert SkipLayerRows.applies(SimpleNamespace(transformer=NoSkipTransformer())) is False
    assert SkipLayerRows.applies(SimpleNamespace(unet=RecordingTransformer())) is False
    assert (
        SkipLayerRows.applies(SimpleNamespace(transformer=SimpleNamespace(forward=RecordingTransformer.forward)))
        is False
    )


def test_the_skip_layer_pass_reads_the_prompt_half_of_the_guided_pass_before_it() -> None:
    pipe = stand_in_pipe()
    rows = SkipLayerRows(pipe)
    guided(pipe)
    assert torch.equal(rows.prompt_rows[0], TOKENS[2:]) and torch.equal(rows.prompt_rows[1], POOLED[2:])
    assert pipe.transformer.seen[-1]["encoder_hidden_states"] is TOKENS  # the guided pass itself untouched
    seen = skip_pass(pipe)
    assert torch.equal(seen["encoder_hidden_states"], TOKENS[2:])
    assert torch.equal(seen["pooled_projections"], POOLED[2:])
    assert seen["hidden_states"] is LATENTS and seen["skip_layers"] == [0]
    # the next step's guided pass gives the next skip-layer pass its rows
    guided(pipe, TOKENS * 10, POOLED * 10)
    seen = skip_pass(pipe)
    assert torch.equal(seen["encoder_hidden_states"], TOKENS[2:] * 10)
    assert torch.equal(seen["pooled_projections"], POOLED[2:] * 10)


def test_without_pooled_vectors_the_skip_layer_pass_keeps_its_own() -> None:
    pipe = stand_in_pipe()
    rows = SkipLayerRows(pipe)
    guided(pipe, pooled=None)
    assert rows.prompt_rows[1] is None
    seen = skip_pass(pipe)
    assert torch.equal(seen["encoder_hidden_states"], TOKENS[2:]) and seen["pooled_projections"] is STALE_POOLED


def test_the_calls_it_leaves_alone() -> None:
    pipe = stand_in_pipe()
    rows = SkipLayerRows(pipe)
    assert skip_pass(pipe)["encoder_hidden_states"] is STALE_TOKENS  # no guided pass before it
    guided(pipe, TOKENS[:3], POOLED[:3])  # an odd batch is no negatives-then-prompts pair
    assert rows.prompt_rows is None
    assert skip_pass(pipe)["encoder_hidden_states"] is STALE_TOKENS
    guided(pipe)
    assert skip_pass(pipe, torch.zeros(3, 1))["encoder_hidden_states"] is STALE_TOKENS  # other rows
    pipe.transformer(encoder_hidden_states=STALE_TOKENS, pooled_projections=STALE_POOLED, skip_layers=[0])
    assert pipe.transformer.seen[-1]["encoder_hidden_states"] is STALE_TOKENS  # no latents
    pipe.transformer(hidden_states=torch.zeros(4, 1), pooled_projections=POOLED)  # a guided pass without tokens
    assert rows.prompt_rows is None
    assert skip_pass(pipe)["encoder_hidden_states"] is STALE_TOKENS


def test_the_hook_is_removed_by_remove_or_by_a_new_schedule_before_it_acts() -> None:
    pipe = stand_in_pipe()
    rows = SkipLayerRows(pipe)
    assert len(pipe.transformer._forward_pre_hooks) == 1
    rows.remove()
    assert len(pipe.transformer._forward_pre_hooks) == 0

    pipe = stand_in_pipe()
    rows = SkipLayerRows(pipe)
    guided(pipe)
    pipe.scheduler.timesteps = torch.arange(3)  # set anew by another call: equal, but not the same
    seen = skip_pass(pipe)
    assert seen["encoder_hidden_states"] is STALE_TOKENS and seen["pooled_projections"] is STALE_POOLED
    assert len(pipe.transformer._forward_pre_hooks) == 0
    pipe.scheduler = SimpleNamespace()  # no schedule at all: the hook, were it there, would go too
    rows = SkipLayerRows.__new__(SkipLayerRows)
    rows.pipe, rows.timesteps, rows.prompt_rows = pipe, torch.arange(3), None
    rows.handle = pipe.transformer.register_forward_pre_hook(rows._hook, with_kwargs=True)
    guided(pipe)
    assert rows.prompt_rows is None and len(pipe.transformer._forward_pre_hooks) == 0
