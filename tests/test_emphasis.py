"""Emphasis modes against reference formulas written here, on every family's tiny pipeline, and
the compel mode against compel itself (SD and SDXL, the families compel supports).

The reference takes the unweighted token states from the plain prompt that tokenizes to the
same ids ("a red circle" for "a (red:1.3) circle": A1111 tokenizes each fragment alone, and BPE
splits at the spaces anyway), the empty prompt's states from "", and the per-token weights
from the tokenizer, then applies each mode's formula per encoder.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from comfy_reference import comfy_batches, comfy_encode
from forward_counter import ForwardCounter
from tiny_pipelines import clip_text_model

from clipcond import TextConditioner, clip_tokenizer
from clipcond.emphasis import multiply_keeping_window_means
from clipcond.emphasis_modes import EMPHASIS_MODES
from clipcond.prompts import parse_prompt

FAMILIES = ["sd", "sdxl", "sd3", "flux", "pixart"]
WEIGHTED = [("a ", 1.0), ("red", 1.3), (" circle and a ", 1.0), ("blue", 1.1 * 1.1), (" square", 1.0)]
PROMPT = "a (red:1.3) circle and a ((blue)) square"
PLAIN = "a red circle and a blue square"


@pytest.fixture
def pipes(request):
    return {name: request.getfixturevalue(f"{name}_pipe") for name in FAMILIES}


def _token_weights(tokenizer, pieces, length: int, special_start: bool, strip: bool) -> torch.Tensor:
    """(length,) weights per position: BOS (CLIP), each piece's tokens at its weight, EOS, pad 1.0."""
    weights = [1.0] if special_start else []
    for text, weight in pieces:
        ids = tokenizer(text.strip() if strip else text, add_special_tokens=False).input_ids
        weights += [weight] * len(ids)
    weights += [1.0] * (length - len(weights))
    return torch.tensor(weights[:length])


def _segments(cond: TextConditioner):
    """(positions, channels, weights) per encoder: the slices of the output each encoder fills."""
    parts = []
    recipe = cond.recipe
    position = 0
    if cond.clip and recipe.combine != "clip_pooled_t5_tokens":
        length = cond.clip[0].window_length
        weights = _token_weights(cond.clip[0].tokenizer, WEIGHTED, length, True, False)
        channel = 0
        for encoder in cond.clip:
            parts.append((slice(0, length), slice(channel, channel + encoder.width), weights))
            channel += encoder.width
        position = length
    if cond.t5 is not None:
        length = recipe.t5_max_length
        pieces = [(text.lower(), w) for text, w in WEIGHTED] if recipe.caption_cleaning != "none" else WEIGHTED
        weights = _token_weights(cond.t5.tokenizer, pieces, length, False, True)
        parts.append((slice(position, position + length), slice(0, cond.t5.width), weights))
    return parts


def _reference(mode: str, plain: torch.Tensor, empty: torch.Tensor, segments) -> torch.Tensor:
    out = plain.clone()
    for positions, channels, weights in segments:
        z, e, w = plain[positions, channels], empty[positions, channels], weights[:, None]
        if mode == "multiply":
            out[positions, channels] = z * w
        elif mode == "a1111":  # multiply, then restore the window's mean over positions and channels
            out[positions, channels] = z * w * (z.mean() / (z * w).mean())
        else:  # comfy, and compel with up-weights only: away from the empty prompt's states
            out[positions, channels] = torch.where(w == 1, z, e + (z - e) * w)
    return out


@pytest.mark.parametrize("mode", EMPHASIS_MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_mode_matches_its_formula_on_every_family(family: str, mode: str, pipes) -> None:
    pipe = pipes[family]
    cond = TextConditioner.from_pipeline(pipe, emphasis=mode, cache_size=0)
    plain = TextConditioner.from_pipeline(pipe, cache_size=0)
    with torch.no_grad():
        got = cond.encode(PROMPT).tokens[0]
        expected = _reference(mode, plain.encode(PLAIN).tokens[0], plain.encode("").tokens[0], _segments(cond))
        # the weights moved something, so the formula is tested, not an identity
        assert not torch.allclose(expected, plain.encode(PLAIN).tokens[0], atol=1e-4)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # no weights: exactly the plain result in every mode
        assert torch.equal(cond.encode(PLAIN).tokens, plain.encode(PLAIN).tokens)
        # the pooled vector is never weighted (and the empty prompt's window, encoded alone,
        # does not share the prompt's batch)
        if plain.encode(PLAIN).pooled is not None:
            assert torch.equal(cond.encode(PROMPT).pooled, plain.encode(PLAIN).pooled)


def test_a1111_keeps_each_window_mean_of_a_long_prompt(sd_pipe) -> None:
    """Two windows: each keeps its own unweighted mean (A1111 processes a prompt chunk by chunk)."""
    words = " ".join(["red circle"] * 45)  # 90 tokens: two windows
    cond = TextConditioner.from_pipeline(sd_pipe, emphasis="a1111", cache_size=0)
    plain = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    with torch.no_grad():
        got = cond.encode(f"({words}:1.4)").tokens[0].reshape(2, 77, -1)
        z = plain.encode(words).tokens[0].reshape(2, 77, -1)
    tokenizer = sd_pipe.tokenizer
    for window, weights in enumerate(_long_weights(tokenizer, words, 1.4)):
        w = weights[:, None]
        expected = z[window] * w * (z[window].mean() / (z[window] * w).mean())
        torch.testing.assert_close(got[window], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[window].mean(), z[window].mean(), rtol=1e-5, atol=1e-6)


def _long_weights(tokenizer, words: str, weight: float) -> list[torch.Tensor]:
    ids = tokenizer(words, add_special_tokens=False).input_ids
    first = 75
    while not tokenizer.convert_ids_to_tokens(ids[first - 1]).endswith("</w>"):
        first -= 1  # the window split falls at a word end
    rows = []
    for content in (ids[:first], ids[first:]):
        rows.append(torch.tensor([1.0] + [weight] * len(content) + [1.0] * (76 - len(content))))
    return rows


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_compel_mode_equals_compel_itself(family: str, pipes) -> None:
    """compel's own EmbeddingsProvider, fed the same fragments and weights (up and down)."""
    from compel.embeddings_provider import DownweightMode, EmbeddingsProvider, ReturnedEmbeddingsType

    pipe = pipes[family]
    fragments = ["a ", "red", " circle and a ", "blue", " square on a ", "green", " mat"]
    weights = [1.0, 1.3, 1.0, 0.5, 1.0, 0.0, 1.0]
    prompt = "a (red:1.3) circle and a (blue:0.5) square on a (green:0) mat"
    layer = (
        ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
        if family == "sd"
        else ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    )
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if family == "sdxl":
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    with torch.no_grad():
        theirs = torch.cat(
            [
                EmbeddingsProvider(
                    tokenizer=tokenizer,
                    text_encoder=encoder,
                    returned_embeddings_type=layer,
                    downweight_mode=DownweightMode.MASK,
                    truncate=True,
                ).get_embeddings_for_weighted_prompt_fragments([fragments], [weights])
                for tokenizer, encoder in encoders
            ],
            dim=-1,
        )
        ours = TextConditioner.from_pipeline(pipe, emphasis="compel", cache_size=0).encode(prompt).tokens
        multiplied = TextConditioner.from_pipeline(pipe, cache_size=0).encode(prompt).tokens
    assert theirs.shape == ours.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(multiplied, theirs, atol=1e-3)  # a different formula, so this bites


LONG_FILL = "a small red circle next to a large blue square, "
# (fragment, weight) prompts of one and two windows: a down-weight in the first window, in the
# second only, one per window, and prompts after the batch's first that need the blend
WEIGHTED_BATCH = [
    [(LONG_FILL * 2, 1.0), ("green triangle", 0.5), (", " + LONG_FILL * 6, 1.0)],
    [("a ", 1.0), ("red", 1.3), (" circle and a ", 1.0), ("blue", 0.5), (" square", 1.0)],
    [(LONG_FILL, 1.0), ("huge", 1.2), (" " + LONG_FILL * 7, 1.0), ("yellow star", 0.2), (" on a mat", 1.0)],
    [("purple", 0.0), (" " + LONG_FILL * 8, 1.0), ("orange hexagon", 0.7), (" done", 1.0)],
]


def _compel_rows(pipe, batch: list[list[tuple[str, float]]]) -> list[torch.Tensor]:
    """compel's embeddings of each (fragment, weight) prompt of `batch`, one by one: (windows *
    77, width), long text split at word boundaries (the split docs/conditioning.md names as equal)."""
    from compel.embeddings_provider import DownweightMode, EmbeddingsProvider, ReturnedEmbeddingsType, SplitLongTextMode

    provider = EmbeddingsProvider(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        returned_embeddings_type=ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED,
        downweight_mode=DownweightMode.MASK,
        truncate=False,
        split_long_text_mode=SplitLongTextMode.WORDS,
    )
    with torch.no_grad():
        return [
            provider.get_embeddings_for_weighted_prompt_fragments([[t for t, _ in pieces]], [[w for _, w in pieces]])[0]
            for pieces in batch
        ]


def _ours_in_compel_mode(pipe, batch: list[list[tuple[str, float]]]) -> torch.Tensor:
    """Our compel mode's tokens of `batch` written in A1111's syntax, one batch: (prompts, seq, width)."""
    as_a1111 = ["".join(text if w == 1.0 else f"({text}:{w})" for text, w in pieces) for pieces in batch]
    with torch.no_grad():
        return TextConditioner.from_pipeline(pipe, emphasis="compel", cache_size=0).encode(as_a1111).tokens


def test_compel_mode_equals_compel_on_a_batch_of_weighted_long_prompts(sd_pipe) -> None:
    """A batch of weighted prompts of one and two windows, prompt by prompt, against compel with
    its word-boundary split of long text; found by mutation testing of window_encoding._compel,
    which the one-prompt test above let through."""
    ours = _ours_in_compel_mode(sd_pipe, WEIGHTED_BATCH)
    for index, theirs in enumerate(_compel_rows(sd_pipe, WEIGHTED_BATCH)):
        assert theirs.shape[0] == (1 if index == 1 else 2) * 77  # the windows each case means
        torch.testing.assert_close(ours[index, : theirs.shape[0]], theirs, rtol=1e-5, atol=1e-5)


_RANDOM_WORDS = "a red circle blue square cat photo of the astronaut riding horse , . ! and big small on mat".split()
_RANDOM_WEIGHTS = [0.0, 0.2, 0.5, 0.9, 1.1, 1.21, 1.3, 1.5, 2.0]


def _random_weighted_prompt(rng: random.Random) -> list[tuple[str, float]]:
    """(fragment, weight) pairs of up to 14 parts, up to about three windows: weighted words, and
    plain runs with or without spaces and commas at their ends. A weighted part never touches
    another, and plain runs are joined, so the A1111 text splits where the pairs do."""
    pieces: list[tuple[str, float]] = []
    for _ in range(rng.randint(1, 14)):
        words = " ".join(rng.choice(_RANDOM_WORDS) for _ in range(rng.randint(1, 30)))
        if rng.random() < 0.5:
            edges = [rng.choice(["", " ", ", "]) for _ in range(2)]
            text, weight = edges[0] + words + edges[1], 1.0
        else:
            text, weight = " ".join(words.split()[:3]), rng.choice(_RANDOM_WEIGHTS)
        if pieces and weight == 1.0 and pieces[-1][1] == 1.0:
            pieces[-1] = (pieces[-1][0] + text, 1.0)
        elif pieces and weight != 1.0 and pieces[-1][1] != 1.0:
            pieces += [(" ", 1.0), (text, weight)]
        else:
            pieces.append((text, weight))
    return pieces


def test_compel_mode_equals_compel_on_random_weighted_prompts(sd_pipe) -> None:
    """24 seeded random weighted prompts of one window and more (zero, down and up weights,
    spaces and commas at the fragments' ends), one batch, against compel prompt by prompt."""
    rng = random.Random(0)
    batch = [_random_weighted_prompt(rng) for _ in range(24)]
    ours = _ours_in_compel_mode(sd_pipe, batch)
    windows = set()
    for index, theirs in enumerate(_compel_rows(sd_pipe, batch)):
        windows.add(theirs.shape[0] // 77)
        torch.testing.assert_close(ours[index, : theirs.shape[0]], theirs, rtol=1e-5, atol=1e-5)
    assert {1, 2} <= windows  # the seed's batch has prompts of one window and of more


def test_emphasis_is_validated_and_part_of_the_cache_key(sd_pipe, tmp_path) -> None:
    with pytest.raises(ValueError, match="`emphasis` must be one of"):
        TextConditioner.from_pipeline(sd_pipe, emphasis="loud")
    shared = str(tmp_path / "cache")
    first = TextConditioner.from_pipeline(sd_pipe, cache_dir=shared).encode(PROMPT).tokens
    other = TextConditioner.from_pipeline(sd_pipe, cache_dir=shared, emphasis="comfy").encode(PROMPT).tokens
    assert not torch.allclose(first, other)
    assert torch.equal(
        other, TextConditioner.from_pipeline(sd_pipe, emphasis="comfy", cache_size=0).encode(PROMPT).tokens
    )


def test_the_pipeline_and_yaml_carry_the_mode(sd_pipe, tmp_path, tiny_clip_text_path) -> None:
    import yaml

    from clipcond import CLIPConditionedPipeline

    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe, emphasis="a1111")
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.emphasis == "a1111" and loaded.conditioner.recipe.emphasis == "a1111"
    with torch.no_grad():
        reference = TextConditioner.from_pipeline(sd_pipe, emphasis="a1111", cache_size=0).encode(PROMPT).tokens
        torch.testing.assert_close(loaded.conditioner.encode(PROMPT).tokens, reference, rtol=0, atol=0)
    with pytest.raises(ValueError, match="`emphasis` must be one of"):
        CLIPConditionedPipeline.from_pipe(sd_pipe, emphasis="loud")
    path = tmp_path / "cond.yaml"
    path.write_text(yaml.safe_dump({"recipe": "sd", "clip": [{"path": str(tiny_clip_text_path)}], "emphasis": "comfy"}))
    assert TextConditioner.from_config(path).recipe.emphasis == "comfy"
    path.write_text(yaml.safe_dump({"recipe": "sd", "clip": [{"path": str(tiny_clip_text_path)}], "emphasis": "x"}))
    with pytest.raises(ValueError, match="emphasis"):
        TextConditioner.from_config(path)


def test_a1111_leaves_a_window_whose_weighted_mean_is_zero_multiplied_not_infinite() -> None:

    states = torch.tensor([[[1.0], [-2.0]], [[1.0], [3.0]]])  # (windows 2, length 2, width 1)
    weights = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    result = multiply_keeping_window_means(states, weights)
    assert torch.equal(result[0], torch.tensor([[2.0], [-2.0]]))  # mean 0 after weighting: no rescale
    torch.testing.assert_close(result[1], torch.tensor([[2.0], [3.0]]) * (2.0 / 2.5))  # the mean kept
    assert torch.equal(multiply_keeping_window_means(states, torch.ones(2, 2)), states)


def test_a_window_of_mean_zero_has_the_gradient_of_the_multiplication() -> None:
    """Where the weighted mean is 0 (an untrained encoder's states) the window is left
    multiplied, and so is its gradient: the weights, not the 0/0 of the division's backward."""
    states = torch.tensor([[[1.0], [-1.0]], [[1.0], [3.0]]], requires_grad=True)  # the first window's mean is 0
    weights = torch.tensor([[2.0, 2.0], [2.0, 1.0]])
    result = multiply_keeping_window_means(states, weights)
    result.sum().backward()
    assert torch.equal(result[0], torch.tensor([[2.0], [-2.0]]))
    assert torch.equal(states.grad[0], torch.tensor([[2.0], [2.0]]))
    # the second window is rescaled to its mean (2 / 2.5): its gradient is finite and flows
    assert torch.isfinite(states.grad).all() and not torch.equal(states.grad[1], torch.tensor([[2.0], [1.0]]))


@pytest.mark.parametrize("mode", ["comfy", "compel", "a1111"])
def test_an_encoder_being_trained_gets_its_gradient_through_the_weighting(mode: str, sd_pipe) -> None:
    """Training an encoder (train mode, trainable weights) under a weighted prompt: every output
    of comfy's and compel's ``empty + (states - empty) * w`` moves with the final layer norm's
    bias at slope 1, through the prompt's states and the empty prompt's alike (the empty states
    keep their graph, not the memo's detached copy); A1111's rescale gives finite gradients on
    this untrained encoder, whose windows have mean 0."""
    model = copy.deepcopy(sd_pipe.text_encoder).train()
    cond = TextConditioner("sd", clip=[(model, sd_pipe.tokenizer)], emphasis=mode)
    tokens = cond.encode("a (red:1.5) circle").tokens
    tokens.sum().backward()
    (bias,) = [parameter for name, parameter in model.named_parameters() if name.endswith("final_layer_norm.bias")]
    assert torch.isfinite(bias.grad).all(), bias.grad
    if mode != "a1111":
        assert torch.equal(bias.grad, torch.full_like(bias, tokens.shape[1]))


@pytest.mark.parametrize("mode", ["comfy", "compel"])
def test_the_empty_prompt_is_encoded_once_per_weights_state(mode: str, sd_pipe) -> None:
    # Uncached, so that every call runs the encoder on its prompts: the empty window must not
    # ride along each time, yet a weights change must bring a fresh one. The encoder is this
    # test's copy: the session's pipeline keeps its weights.
    model = copy.deepcopy(sd_pipe.text_encoder)
    cond = TextConditioner("sd", clip=[(model, sd_pipe.tokenizer)], cache_size=0, emphasis=mode)
    counter = ForwardCounter(model)
    first = cond.encode(PROMPT).tokens
    assert counter.calls == 2  # the prompt's window, then the empty prompt's alone
    assert torch.equal(cond.encode(PROMPT).tokens, first)
    assert counter.calls == 3  # the prompt's window only

    with torch.no_grad():
        next(p for name, p in cond.clip[0].model.named_parameters() if name.endswith("layers.0.mlp.fc1.weight")).mul_(
            1.5
        )
    moved = cond.encode(PROMPT).tokens
    assert counter.calls == 5  # prompt and empty again: the old empty states are stale
    fresh = TextConditioner("sd", clip=[(model, sd_pipe.tokenizer)], cache_size=0, emphasis=mode)
    assert torch.equal(moved, fresh.encode(PROMPT).tokens)


def test_each_of_sdxls_encoders_reads_its_own_empty_prompt_from_the_memo(sdxl_pipe) -> None:
    """comfy weights on SDXL's two CLIPs: the memo keeps one empty prompt per encoder, so the
    states equal those made without it (encoders being trained compute it on each call)."""
    cond = TextConditioner.from_pipeline(sdxl_pipe, emphasis="comfy", cache_size=0)
    from_memo = cond.encode(PROMPT).tokens
    for encoder in cond.clip:  # copies in train mode: no memo
        encoder.model = copy.deepcopy(encoder.model).train()
    assert torch.equal(cond.encode(PROMPT).tokens.detach(), from_memo)


@pytest.mark.parametrize("mode", ["comfy", "compel"])
def test_a_tokenizer_changed_in_place_brings_a_fresh_empty_prompt(mode: str, sd_pipe) -> None:
    """The empty prompt's states are kept per tokenizer state: another pad token (other ids at
    the empty prompt's padding) encodes it again, and the result is a fresh conditioner's."""
    tokenizer = clip_tokenizer()  # this test's own: changed below
    cond = TextConditioner("sd", clip=[(sd_pipe.text_encoder, tokenizer)], cache_size=0, emphasis=mode)
    counter = ForwardCounter(cond.clip[0].model)
    cond.encode(PROMPT)
    tokenizer.pad_token = "!"
    changed = cond.encode(PROMPT).tokens
    assert counter.calls == 4  # the prompt and the empty prompt, twice
    fresh = TextConditioner("sd", clip=[(sd_pipe.text_encoder, tokenizer)], cache_size=0, emphasis=mode)
    assert torch.equal(changed, fresh.encode(PROMPT).tokens)


def test_comfy_emphasis_and_windows_equal_comfyui_on_a_long_weighted_prompt(sd_pipe) -> None:
    """`emphasis="comfy"` with `window_split="comfy"` gives ComfyUI's token states on a prompt of
    three windows whose edges fall inside glued ``ultra,`` words (`tests/comfy_reference.py`);
    with the default windows the same prompt differs."""
    from comfy_reference import comfy_batches, comfy_encode

    from clipcond.prompts import parse_prompt

    prompt = ", ".join(["masterpiece (red fox:1.2) ultra, detailed"] * 14 + ["(snow forest:0.8) 8k, ultra,"] * 14)
    reference = comfy_encode(
        sd_pipe.text_encoder, sd_pipe.tokenizer, comfy_batches(sd_pipe.tokenizer, parse_prompt(prompt))
    )
    assert reference.shape[1] == 3 * 77
    comfy = TextConditioner.from_pipeline(sd_pipe, emphasis="comfy", window_split="comfy", cache_size=0)
    with torch.no_grad():
        got = comfy.encode(prompt).tokens
        default_windows = TextConditioner.from_pipeline(sd_pipe, emphasis="comfy", cache_size=0).encode(prompt).tokens
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    assert default_windows.shape != reference.shape or not torch.allclose(default_windows, reference, atol=1e-3)


LONG = 248  # Long-CLIP's positions


def _sd_with_long_clip(sd_pipe):
    """sd_pipe's class over its components with a 248-position CLIP (a Long-CLIP) and tokenizer."""
    components = dict(sd_pipe.components)
    width = components["text_encoder"].config.hidden_size
    components["text_encoder"] = clip_text_model(
        7, max_position_embeddings=LONG, hidden_size=width, projection_dim=width
    )
    components["tokenizer"] = clip_tokenizer(model_max_length=LONG)
    return type(sd_pipe)(**components)


def test_a_long_clip_moves_weighted_tokens_away_from_its_own_248_position_empty_prompt(sd_pipe):
    """ComfyUI's formula e + (z - e) * w on a 248-position CLIP, z and e from diffusers'
    `encode_prompt` (prompt and ""): the empty prompt's window has the encoder's length, not 77
    (found by mutation testing: `_encode_clip_50`, the empty window built at clip_windows' default 77)."""
    pipe = _sd_with_long_clip(sd_pipe)
    cond = TextConditioner.from_pipeline(pipe, cache_size=0, emphasis="comfy")
    assert cond.clip[0].window_length == LONG
    tokenizer = pipe.tokenizer
    weights = [1.0]
    for text, weight in [("a", 1.0), ("red", 1.3), ("circle and a", 1.0), ("blue", 1.21), ("square", 1.0)]:
        weights += [weight] * len(tokenizer(text, add_special_tokens=False).input_ids)
    w = torch.tensor(weights + [1.0] * (LONG - len(weights)))[:, None]
    with torch.no_grad():
        z = pipe.encode_prompt("a red circle and a blue square", "cpu", 1, False)[0][0]
        e = pipe.encode_prompt("", "cpu", 1, False)[0][0]
        got = cond.encode("a (red:1.3) circle and a ((blue)) square").tokens[0]
    assert got.shape == (LONG, z.shape[-1])
    torch.testing.assert_close(got, torch.where(w == 1, z, e + (z - e) * w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("emphasis", ["comfy", "compel"])
def test_flux_clip_runs_once_for_its_pooled_vector_whatever_the_emphasis(flux_pipe, emphasis):
    """Flux reads only the CLIP's pooled vector, which emphasis never changes: a weighted prompt
    costs one CLIP forward (no empty-prompt window, no compel masked batch) and gives the plain
    prompt's pooled vector (found by mutation testing: `_encode_clip_43`, run_clip's want_tokens
    left at its default True, ran the CLIP for token states thrown away)."""
    cond = TextConditioner.from_pipeline(flux_pipe, cache_size=0, emphasis=emphasis)
    plain = TextConditioner.from_pipeline(flux_pipe, cache_size=0)
    counter = ForwardCounter(cond.clip[0].model)
    with torch.no_grad():
        got = cond.encode("a (red:1.3) circle and a (blue:0.5) square").pooled
        assert counter.calls == 1
        expected = plain.encode("a red circle and a blue square").pooled
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("prompt", ["a (red:2) circle", "a (red:2) circle and a (blue:0.5) square"])
def test_comfy_moves_a_token_weighted_exactly_2_away_from_the_empty_prompt_as_comfyui(sd_pipe, prompt) -> None:
    """`(red:2)` is as common a weight as any: ComfyUI moves its tokens to e + (z - e) * 2
    (`tests/comfy_reference.py`, its `weight != 1.0` rule), like any other weight but 1
    (found by mutation testing: `x_away_from_empty__mutmut_16`, the unweighted test `weights == 2.0`,
    left a weight of exactly 2 unapplied)."""
    reference = comfy_encode(
        sd_pipe.text_encoder, sd_pipe.tokenizer, comfy_batches(sd_pipe.tokenizer, parse_prompt(prompt))
    )
    cond = TextConditioner.from_pipeline(sd_pipe, emphasis="comfy", cache_size=0)
    plain = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    with torch.no_grad():
        got = cond.encode(prompt).tokens
        unweighted = plain.encode(prompt.replace("(", "").replace(")", "").replace(":2", "").replace(":0.5", "")).tokens
    assert not torch.allclose(reference, unweighted, atol=1e-4)  # the weight moved something
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_compel_blend_equals_compels_own_blend_in_the_states_dtype(dtype) -> None:
    """compel's `EmbeddingsProvider.apply_embedding_weights` (normalize=True) makes its blend
    weights in the embeddings' dtype: the same bits in half precision too (found by mutation
    testing: `x_compel_blend__mutmut_6`, `_9`, the weights left in float32, survive every
    float32 test)."""
    from compel.embeddings_provider import EmbeddingsProvider

    from clipcond.emphasis import compel_blend, compel_blend_weight

    generator = torch.Generator().manual_seed(0)
    versions = [torch.randn(1, 77, 32, generator=generator).to(dtype) for _ in range(3)]  # one window each
    blend_weights = [1.0, compel_blend_weight(0.5), compel_blend_weight(0.2)]
    # compel: (1, versions, 77, width) -> (1, 77, width)
    theirs = EmbeddingsProvider.apply_embedding_weights(torch.cat(versions)[None], blend_weights, normalize=True)
    ours = compel_blend(versions, blend_weights)
    assert ours.dtype == dtype
    assert torch.equal(ours, theirs)
