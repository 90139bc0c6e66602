"""TextConditioner beyond plain prompts: long prompts, weights, cache, custom recipe, bad input."""

from __future__ import annotations

import copy
import logging

import pytest
import tiny_pipelines
import torch
import torch.nn.functional as F
from forward_counter import ForwardCounter
from transformers import CLIPTextModel, T5EncoderModel

from clipcond import TextConditioner
from clipcond.chunking import clip_windows
from clipcond.encoders import clip_final_layer_norm
from clipcond.prompts import Fragment
from clipcond.tokenization import clip_tokenizer

LONG_PROMPT = (
    "a large red circle to the left of a small blue square, above two green triangles and a yellow star, "
    "on a white background with soft shadows, drawn in a flat vector style with thin black outlines, "
    "next to a purple hexagon below an orange rectangle, a cyan ellipse in the upper right corner, "
    "and a pink diamond floating above a grey cloud in the lower left corner of the picture"
)


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return 1.0 - F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.fixture(scope="module")
def sd_cond(sd_pipe):
    return TextConditioner.from_pipeline(sd_pipe, cache_size=0)


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


# ---------------------------------------------------------------------------------- long prompts


def test_long_prompt_windows_keep_every_token_and_split_at_word_ends(tokenizer):
    plain = tokenizer(LONG_PROMPT, add_special_tokens=False).input_ids
    assert len(plain) > 75, "the test prompt must need more than one window"
    (windows,) = clip_windows(tokenizer, [[Fragment(LONG_PROMPT, 1.0)]], 77)
    assert windows.num_windows == -(-len(plain) // 75) or windows.num_windows == -(-len(plain) // 75) + 1
    content = []
    for ids, mask in zip(windows.ids.tolist(), windows.mask.tolist()):
        real = sum(mask)
        assert ids[0] == tokenizer.bos_token_id and ids[real - 1] == tokenizer.eos_token_id
        assert real - 2 <= 75
        assert all(token == tokenizer.pad_token_id for token in ids[real:])
        content.append(ids[1 : real - 1])
    assert sum(content, []) == plain
    for window in content[:-1]:
        assert tokenizer.convert_ids_to_tokens(window[-1:])[0].endswith("</w>")


def test_break_starts_a_new_window(tokenizer):
    (windows,) = clip_windows(
        tokenizer, [[Fragment("a red circle", 1.0), Fragment("", 1.0, True), Fragment("a blue square", 1.0)]], 77
    )
    assert windows.num_windows == 2
    second = windows.ids[1][windows.mask[1].bool()].tolist()
    assert second == tokenizer("a blue square").input_ids


# The long prompt against the text encoder run on windows built independently (whole words):
# tests/test_windows.py (test_long_prompt_is_the_word_windows_encoded_and_joined).


def test_negative_prompt_is_padded_to_the_same_windows(sd_cond):
    kwargs = sd_cond.pipeline_kwargs(LONG_PROMPT, negative_prompt="blurry")
    positive, negative = kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"]
    assert positive.shape == negative.shape and positive.shape[1] > 77
    torch.testing.assert_close(negative[:, :77], sd_cond.encode("blurry").tokens, rtol=0, atol=1e-6)
    empty = sd_cond.encode("").tokens
    for start in range(77, negative.shape[1], 77):
        torch.testing.assert_close(negative[:, start : start + 77], empty, rtol=0, atol=1e-6)


def test_batch_of_short_and_long_prompts_shares_one_length(sd_cond):
    embeds = sd_cond.encode(["a cat", LONG_PROMPT])
    alone = sd_cond.encode("a cat").tokens
    torch.testing.assert_close(embeds.tokens[0, :77], alone[0], rtol=0, atol=1e-6)


def test_sdxl_long_prompt_pooled_comes_from_first_window(sdxl_pipe):
    cond = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0)
    long_embeds = cond.encode(LONG_PROMPT)
    width = sdxl_pipe.text_encoder.config.hidden_size + sdxl_pipe.text_encoder_2.config.hidden_size
    assert long_embeds.tokens.shape[1] % 77 == 0 and long_embeds.tokens.shape[1] > 77
    assert long_embeds.tokens.shape[2] == width
    tokenizer = sdxl_pipe.tokenizer_2
    (windows,) = clip_windows(tokenizer, [[Fragment(LONG_PROMPT, 1.0)]], 77)
    with torch.no_grad():
        pooled = sdxl_pipe.text_encoder_2(windows.ids[:1]).text_embeds
    torch.testing.assert_close(long_embeds.pooled, pooled, rtol=0, atol=1e-6)


def test_sd3_long_prompt_puts_clip_windows_before_t5(sd3_pipe):
    cond = TextConditioner.from_pipeline(sd3_pipe, cache_size=0, max_sequence_length=32)
    embeds = cond.encode(LONG_PROMPT)
    t5_width = sd3_pipe.text_encoder_3.config.d_model
    assert embeds.tokens.shape[2] == t5_width
    clip_length = embeds.tokens.shape[1] - 32
    assert clip_length > 77 and clip_length % 77 == 0


def test_t5_truncation_is_reported(flux_pipe, caplog):
    cond = TextConditioner.from_pipeline(flux_pipe, cache_size=0, max_sequence_length=16)
    with caplog.at_level(logging.WARNING, logger="clipcond"):
        embeds = cond.encode(LONG_PROMPT)
    assert embeds.tokens.shape[1] == 16
    assert any("truncated" in record.message for record in caplog.records)


# ---------------------------------------------------------------------------------- weights

FAMILIES = ["sd_pipe", "sdxl_pipe", "sd3_pipe", "flux_pipe", "pixart_pipe", "custom"]


def _conditioner(family, request):
    if family == "custom":
        # CLIP and T5 of equal width (32) joined on the sequence axis, no projection.
        flux = request.getfixturevalue("flux_pipe")
        return TextConditioner(
            "custom",
            clip=[(flux.text_encoder, flux.tokenizer)],
            t5=(flux.text_encoder_2, flux.tokenizer_2),
            cache_size=0,
        )
    return TextConditioner.from_pipeline(request.getfixturevalue(family), cache_size=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_one_is_exactly_the_plain_prompt(family, request):
    cond = _conditioner(family, request)
    plain = cond.encode("a red circle above a blue square")
    weighted = cond.encode("a red (circle:1.0) above a blue square")
    torch.testing.assert_close(weighted.tokens, plain.tokens, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_larger_weight_moves_embedding_further(family, request):
    cond = _conditioner(family, request)
    plain = cond.encode("a red circle above a blue square").tokens
    distances = [
        _cosine_distance(cond.encode(f"a red (circle:{w}) above a blue square").tokens, plain)
        for w in (1.1, 1.3, 1.6, 2.0, 3.0)
    ]
    assert distances[0] > 0
    assert all(later > earlier for earlier, later in zip(distances, distances[1:])), distances
    down = [
        _cosine_distance(cond.encode(f"a red (circle:{w}) above a blue square").tokens, plain) for w in (0.9, 0.6, 0.3)
    ]
    assert all(later > earlier for earlier, later in zip(down, down[1:])), down


def test_weight_scales_exactly_the_weighted_tokens(sd_cond, tokenizer):
    plain = sd_cond.encode("a red circle").tokens[0]
    weighted = sd_cond.encode("a red (circle:1.5)").tokens[0]
    circle = len(tokenizer("a red", add_special_tokens=False).input_ids) + 1  # after BOS
    torch.testing.assert_close(weighted[circle], plain[circle] * 1.5, rtol=0, atol=0)
    others = [i for i in range(77) if i != circle]
    torch.testing.assert_close(weighted[others], plain[others], rtol=0, atol=0)


def test_parse_weights_false_reads_brackets_literally(sd_pipe):
    literal = TextConditioner.from_pipeline(sd_pipe, cache_size=0, parse_weights=False)
    expected = sd_pipe.encode_prompt("a (red) circle", "cpu", 1, False)[0]
    torch.testing.assert_close(literal.encode("a (red) circle").tokens, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- cache


def _fresh_sd_encoder(path):
    return CLIPTextModel.from_pretrained(path).eval(), clip_tokenizer()


def test_repeat_encode_is_a_lookup(tiny_clip_text_path):
    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    cond = TextConditioner("sd", clip=[(model, tokenizer)])
    counter = ForwardCounter(model)
    first = cond.encode(["a red circle", "a blue square"])
    assert counter.calls == 1
    second = cond.encode(["a blue square", "a red circle"])
    assert counter.calls == 1
    torch.testing.assert_close(second.tokens, first.tokens.flip(0), rtol=0, atol=0)
    assert cond.cache.hits == 2


def test_repeated_prompts_in_a_batch_run_once_without_cache(tiny_clip_text_path):
    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    cond = TextConditioner("sd", clip=[(model, tokenizer)], cache_size=0)
    seen = []
    handle = model.register_forward_hook(lambda module, args, kwargs_or_out: seen.append(args[0].shape[0]))
    kwargs = cond.pipeline_kwargs(["a red circle", "a blue square", "a cat"], negative_prompt="blurry")
    handle.remove()
    assert seen == [3, 1]  # three prompts, then one negative (not three): diffusers' two batches, repeats once
    negatives = kwargs["negative_prompt_embeds"]
    torch.testing.assert_close(negatives[0], negatives[2], rtol=0, atol=0)
    ids = tokenizer(["blurry"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(negatives[:1], model(ids)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("change", ["in_place", "load_state_dict", "replace_data"])
def test_changed_weights_never_return_stale_embeddings(tiny_clip_text_path, change):
    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    cond = TextConditioner("sd", clip=[(model, tokenizer)])
    before = cond.encode("a red circle").tokens.clone()
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        if change == "in_place":
            weight.mul_(1.5)
        elif change == "load_state_dict":
            state = {k: v * 1.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
            model.load_state_dict(state)
        else:
            weight.data = weight.data * 1.5
    after = cond.encode("a red circle").tokens
    with torch.no_grad():
        expected = model(tokenizer("a red circle", padding="max_length", return_tensors="pt").input_ids)[0]
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)


def test_offload_hooks_moving_the_weights_keep_the_cache(tiny_clip_text_path):
    """`enable_model_cpu_offload` moves an encoder's weights to the GPU and back on every call
    (same parameters, new storage, same values). The cache must survive those moves, and
    still notice a real write or a cast."""
    from accelerate import cpu_offload_with_hook

    def move(module):  # what an offload round trip does to each parameter: new storage, same values
        module._apply(lambda tensor: tensor.clone())

    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    plain = TextConditioner("sd", clip=[(model, tokenizer)])
    counter = ForwardCounter(model)
    plain.encode("a red circle")
    move(model)
    plain.encode("a red circle")
    assert counter.calls == 2  # without a hook, new storage is a new weight (`.data = ...`)

    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    cpu_offload_with_hook(model, execution_device="cpu")
    cond = TextConditioner("sd", clip=[(model, tokenizer)])
    counter = ForwardCounter(model)
    first = cond.encode("a red circle").tokens.clone()
    move(model)
    torch.testing.assert_close(cond.encode("a red circle").tokens, first, rtol=0, atol=0)
    assert counter.calls == 1
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1.5)
    written = cond.encode("a red circle").tokens.clone()
    assert counter.calls == 2 and not torch.equal(written, first)
    model.to(torch.float64)
    assert cond.encode("a red circle").tokens.dtype == torch.float64 and counter.calls == 3


@pytest.mark.parametrize("cache_on_disk", [False, True])
def test_lora_adapter_settings_are_part_of_the_cache_key(tiny_clip_text_path, tmp_path, cache_on_disk):
    """A peft LoRA's scale, or turning its layers off, changes the encoder's output without
    writing a weight: the cache (in memory and on disk) must not return the old embeddings."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    model = inject_adapter_in_model(
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False), model
    )
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    settings = dict(cache_dir=str(tmp_path)) if cache_on_disk else {}
    cond = TextConditioner("sd", clip=[(model, tokenizer)], **settings)

    def fresh() -> torch.Tensor:
        return TextConditioner("sd", clip=[(model, tokenizer)], cache_size=0).encode("a red circle").tokens

    full = cond.encode("a red circle").tokens.clone()
    for layer in layers:
        layer.scale_layer(0.5)
    half = cond.encode("a red circle").tokens.clone()
    assert not torch.equal(half, full)
    torch.testing.assert_close(half, fresh(), rtol=0, atol=0)
    for layer in layers:
        layer.enable_adapters(False)
    torch.testing.assert_close(cond.encode("a red circle").tokens, fresh(), rtol=0, atol=0)
    assert not torch.equal(fresh(), half)
    for layer in layers:
        layer.enable_adapters(True)
    torch.testing.assert_close(cond.encode("a red circle").tokens, half, rtol=0, atol=0)


def test_disk_cache_survives_a_new_conditioner_and_notices_new_weights(tiny_clip_text_path, tmp_path):
    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    first = TextConditioner("sd", clip=[(model, tokenizer)], cache_dir=str(tmp_path))
    stored = first.encode("a red circle").tokens
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".safetensors"]

    same_model, _ = _fresh_sd_encoder(tiny_clip_text_path)
    second = TextConditioner("sd", clip=[(same_model, tokenizer)], cache_dir=str(tmp_path))
    counter = ForwardCounter(same_model)
    torch.testing.assert_close(second.encode("a red circle").tokens, stored, rtol=0, atol=0)
    assert counter.calls == 0

    changed_model, _ = _fresh_sd_encoder(tiny_clip_text_path)
    with torch.no_grad():
        changed_model.get_input_embeddings().weight[320] += 0.5  # token "a</w>"
    third = TextConditioner("sd", clip=[(changed_model, tokenizer)], cache_dir=str(tmp_path))
    counter = ForwardCounter(changed_model)
    fresh = third.encode("a red circle").tokens
    assert counter.calls == 1 and not torch.equal(fresh, stored)


def test_clip_skip_changes_the_cache_key(tiny_clip_text_path, tmp_path):
    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    plain = TextConditioner("sd", clip=[(model, tokenizer)], cache_dir=str(tmp_path)).encode("a cat").tokens
    skipped = TextConditioner("sd", clip=[(model, tokenizer)], cache_dir=str(tmp_path), clip_skip=1).encode("a cat")
    ids = tokenizer("a cat", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[-2]
        expected = clip_final_layer_norm(model)(hidden)
    assert not torch.equal(plain, skipped.tokens)
    torch.testing.assert_close(skipped.tokens, expected, rtol=0, atol=1e-6)


def test_trainable_encoder_bypasses_cache_and_keeps_gradients(tiny_clip_text_path):
    model, tokenizer = _fresh_sd_encoder(tiny_clip_text_path)
    model.train()
    cond = TextConditioner("sd", clip=[(model, tokenizer)])
    loss = cond.encode("a red circle").tokens.square().mean()
    loss.backward()
    assert model.get_input_embeddings().weight.grad is not None
    assert len(cond.cache) == 0


def test_pooled_vectors_of_frozen_encoders_carry_no_graph():
    # Regression: the text projection ran outside no_grad, so SDXL's pooled vectors (not its
    # tokens) held a graph into text_projection.weight whenever the weights required grad, as
    # they do in a pipeline loaded by diffusers (eval mode, requires_grad left on).
    pipe = tiny_pipelines.build_sdxl()
    assert all(p.requires_grad for p in pipe.text_encoder_2.parameters()) and not pipe.text_encoder_2.training
    cond = TextConditioner.from_pipeline(pipe)
    for conditioner in (cond, TextConditioner.from_pipeline(pipe, cache_size=0)):
        encoded = conditioner.encode("a red circle")
        assert not encoded.tokens.requires_grad and not encoded.pooled.requires_grad
        kwargs = conditioner.pipeline_kwargs("a red circle", negative_prompt="blurry")
        assert not any(value.requires_grad for value in kwargs.values() if torch.is_tensor(value))


def test_a_trained_encoder_gets_gradients_through_its_pooled_projection():
    pipe = tiny_pipelines.build_sdxl()
    pipe.text_encoder_2.train()
    cond = TextConditioner.from_pipeline(pipe)
    cond.encode("a red circle").pooled.square().mean().backward()
    assert pipe.text_encoder_2.text_projection.weight.grad is not None
    assert pipe.text_encoder_2.get_input_embeddings().weight.grad is not None


def test_compute_dtype_pooled_vectors_are_those_of_a_float32_run(tmp_path):
    # SDXL in bfloat16 computing in float32: tokens and pooled vectors are a float32 run's,
    # rounded once. Regression: records held the pooled state rounded to bfloat16 before the
    # projection read it, and the pooled vectors missed by up to 0.0156 (further than a plain
    # bfloat16 run's, 0.0062).
    pipe = tiny_pipelines.build_sdxl()
    for name in ("text_encoder", "text_encoder_2"):
        getattr(pipe, name).to(torch.bfloat16)
    widened = copy.deepcopy(pipe)
    for name in ("text_encoder", "text_encoder_2"):
        getattr(widened, name).float()
    prompts = ["a red circle to the left of a blue square", "blurry", ""]
    expected = TextConditioner.from_pipeline(widened, cache_size=0).encode(prompts)
    for settings in ({"cache_size": 0}, {"cache_size": 8}, {"cache_dir": str(tmp_path)}, {"cache_dir": str(tmp_path)}):
        conditioner = TextConditioner.from_pipeline(pipe, compute_dtype=torch.float32, **settings)
        counter = ForwardCounter(pipe.text_encoder_2)
        for _ in range(2):  # then from the memory cache; the second disk conditioner reads the files
            encoded = conditioner.encode(prompts)
            assert encoded.pooled.dtype == encoded.tokens.dtype == torch.bfloat16
            assert torch.equal(encoded.tokens, expected.tokens.to(torch.bfloat16))
            assert torch.equal(encoded.pooled, expected.pooled.to(torch.bfloat16))
        counter.handle.remove()
    assert counter.calls == 0  # the last conditioner read every record from the disk


# ---------------------------------------------------------------------------------- custom recipe


@pytest.fixture(scope="module")
def clip_pair(tiny_clip_text_path):
    return _fresh_sd_encoder(tiny_clip_text_path)


@pytest.fixture(scope="module")
def t5_pair(tiny_t5_encoder_path):
    from transformers import AutoTokenizer

    return T5EncoderModel.from_pretrained(tiny_t5_encoder_path).eval(), AutoTokenizer.from_pretrained(
        tiny_t5_encoder_path
    )


def test_custom_mismatched_widths_without_projection_is_an_error(clip_pair, t5_pair):
    if clip_pair[0].config.hidden_size == t5_pair[0].config.d_model:
        pytest.skip("fixture widths happen to match")
    with pytest.raises(ValueError, match="projection_dim"):
        TextConditioner("custom", clip=[clip_pair], t5=t5_pair)


@pytest.mark.parametrize(
    "combine,expected_length",
    [("concat_sequence", 77 + 24), ("clip_pooled_t5_tokens", 24)],
)
def test_custom_projection_shapes_and_gradients(clip_pair, t5_pair, combine, expected_length):
    from clipcond.recipes import Recipe

    recipe = Recipe(name="custom", combine=combine, pooled="last", t5_max_length=24, t5_attention_mask=True)
    cond = TextConditioner(recipe, clip=[clip_pair], t5=t5_pair, projection_dim=48)
    embeds = cond.encode(["a red circle", "two blue squares"])
    assert embeds.tokens.shape == (2, expected_length, 48)
    assert embeds.pooled.shape == (2, clip_pair[0].config.hidden_size)
    embeds.tokens.sum().backward()
    assert all(p.grad is not None for p in cond.projection.parameters())
    # The projection is applied after the cache: a changed projection changes the output.
    with torch.no_grad():
        for p in cond.projection.parameters():
            p.add_(0.1)
    assert not torch.allclose(cond.encode(["a red circle", "two blue squares"]).tokens, embeds.tokens)


def test_a_learned_projection_keeps_its_graph_only_while_it_trains(clip_pair, t5_pair, tmp_path):
    from clipcond.projection import TextProjection
    from clipcond.recipes import Recipe

    recipe = Recipe(name="custom", combine="concat_sequence", pooled="last", t5_max_length=24)
    trained = TextConditioner(recipe, clip=[clip_pair], t5=t5_pair, projection_dim=48).projection
    assert trained.training  # built fresh, as a run builds it: it trains
    trained.save_pretrained(tmp_path)
    loaded = TextProjection.from_pretrained(tmp_path)  # eval mode, requires_grad left on
    cond = TextConditioner(recipe, clip=[clip_pair], t5=t5_pair, projection=loaded)
    frozen = cond.encode("a red circle").tokens
    assert not frozen.requires_grad  # regression: it held a graph into the loaded weights
    loaded.train()
    training = cond.encode("a red circle").tokens
    assert training.requires_grad and torch.equal(training.detach(), frozen)
    with torch.no_grad():
        assert not cond.encode("a red circle").tokens.requires_grad


def test_a_training_learned_projection_leaves_a_frozen_text_projection_without_graph(t5_pair):
    from clipcond.recipes import Recipe

    recipe = Recipe(name="custom", combine="concat_sequence", pooled="last", t5_max_length=24)
    clip = (tiny_pipelines.clip_text_model(2, with_projection=True), clip_tokenizer())
    cond = TextConditioner(recipe, clip=[clip], t5=t5_pair, projection_dim=48)
    assert cond.projection.training and not clip[0].training  # the adapter learns, the CLIP is frozen
    encoded = cond.encode("a red circle")
    assert encoded.tokens.requires_grad and not encoded.pooled.requires_grad


def test_custom_concat_channels_joins_two_clips(clip_pair):
    cond = TextConditioner("custom", clip=[clip_pair, clip_pair], cache_size=0)
    one = TextConditioner("sd", clip=[clip_pair], cache_size=0).encode("a cat").tokens
    both = cond.encode("a cat").tokens
    torch.testing.assert_close(both, torch.cat([one, one], dim=-1), rtol=0, atol=0)


def test_custom_t5_alone_and_clip_with_t5_of_one_width(clip_pair, t5_pair, tmp_path):
    """T5 alone: T5's tokens, no pooled vector. CLIP + a T5 of CLIP's width, no projection:
    CLIP's tokens then T5's on the sequence axis, CLIP's pooled vector, by value."""
    import tiny_pipelines

    t5_only = TextConditioner("custom", t5=t5_pair, cache_size=0)
    with torch.no_grad():
        embeds = t5_only.encode("a red circle")
        ids = t5_pair[1]("a red circle", max_length=256, padding="max_length", return_tensors="pt").input_ids
        torch.testing.assert_close(embeds.tokens[0], t5_pair[0](ids)[0][0], rtol=0, atol=1e-6)
    assert embeds.pooled is None

    clip_model, clip_tokenizer_ = clip_pair
    width = clip_model.config.hidden_size
    t5_model = tiny_pipelines.t5_encoder(3, len(t5_pair[1]), width=width)
    assert t5_model.config.d_model == width != t5_pair[0].config.d_model  # the branch the fixtures miss
    cond = TextConditioner("custom", clip=[clip_pair], t5=(t5_model, t5_pair[1]), cache_size=0)
    with torch.no_grad():
        got = cond.encode("a red circle")
        clip_ids = clip_tokenizer_("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
        clip_out = clip_model(clip_ids)
        t5_out = t5_model(ids)[0][0]
    torch.testing.assert_close(got.tokens[0], torch.cat([clip_out.last_hidden_state[0], t5_out]), rtol=0, atol=1e-6)
    torch.testing.assert_close(got.pooled[0], clip_out.pooler_output[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- bad input


def test_bad_constructor_arguments(clip_pair, t5_pair):
    with pytest.raises(ValueError, match="recipe"):
        TextConditioner("sd4", clip=[clip_pair])
    with pytest.raises(ValueError, match="recipe 'sd' needs"):
        TextConditioner("sd", clip=[clip_pair, clip_pair])
    with pytest.raises(ValueError, match="concat_channels"):
        from clipcond.recipes import Recipe

        TextConditioner(Recipe(name="custom", combine="concat_channels"), clip=[clip_pair], t5=t5_pair)
    with pytest.raises(TypeError, match="clip"):
        TextConditioner("sd", clip=clip_pair)
    with pytest.raises(TypeError, match="t5"):
        TextConditioner("custom", clip=[clip_pair], t5=clip_pair)
    with pytest.raises(ValueError, match="projection_dim"):
        TextConditioner("sd", clip=[clip_pair], projection_dim=32)
    for clip_skip in (-1, 99):
        with pytest.raises(ValueError, match="clip_skip"):
            TextConditioner("sd", clip=[clip_pair], clip_skip=clip_skip)
    for clip_skip in (1.5, True, "1"):
        with pytest.raises(TypeError, match="clip_skip"):
            TextConditioner("sd", clip=[clip_pair], clip_skip=clip_skip)


def test_bad_prompts(sd_cond):
    with pytest.raises(ValueError, match="`prompt`"):
        sd_cond.encode([])
    with pytest.raises(TypeError, match="`prompt`"):
        sd_cond.encode(["a cat", None])
    with pytest.raises(TypeError, match="`prompt`"):
        sd_cond.encode(42)
    with pytest.raises(ValueError, match="`negative_prompt`"):
        sd_cond.pipeline_kwargs(["a", "b"], negative_prompt=["c"])
    with pytest.raises(TypeError, match="`negative_prompt`"):
        sd_cond.pipeline_kwargs(["a", "b"], negative_prompt=["c", 2])
    assert sd_cond.encode("").tokens.shape[1] == 77


def test_encode_reads_editing_brackets_as_emphasis_and_and_as_a_word(sd_pipe) -> None:
    """What `encode`'s docstring and docs/conditioning.md say it does with step syntax: the
    same embeddings as the explicit weights and the plain words."""
    cond = TextConditioner.from_pipeline(sd_pipe)
    edited = cond.encode("a [cat:dog:0.5]").tokens
    assert torch.equal(edited, cond.encode(f"a (cat\\:dog\\:0.5:{1 / 1.1!r})").tokens)
    plain = TextConditioner.from_pipeline(sd_pipe, parse_weights=False)
    assert torch.equal(cond.encode("a cat AND a dog").tokens, plain.encode("a cat AND a dog").tokens)


def test_repr_names_the_recipe_encoders_settings_and_cache(sdxl_pipe, pixart_pipe, tmp_path) -> None:
    """One line a user can read: what `print(conditioner)` shows (it was the default object repr)."""
    sdxl = TextConditioner.from_pipeline(
        sdxl_pipe, clip_skip=1, emphasis="a1111", syntax="compel", cache_dir=tmp_path / "cache"
    )
    assert repr(sdxl) == (
        "TextConditioner(recipe='sdxl', clip=[CLIPTextModel(width=32), CLIPTextModelWithProjection(width=32)], "
        "t5=None, token_width=64, clip_skip=1, window_split='word', emphasis='a1111', parse_weights=True, "
        f"syntax='compel', cache=512 in memory and {str(tmp_path / 'cache')!r}, device=cpu, dtype=torch.float32)"
    )
    pixart = TextConditioner.from_pipeline(pixart_pipe, cache_size=0, parse_weights=False)
    assert repr(pixart) == (
        "TextConditioner(recipe='pixart', clip=[], t5=T5EncoderModel(width=32), token_width=32, "
        "emphasis='multiply', parse_weights=False, syntax='a1111', cache=off, device=cpu, dtype=torch.float32)"
    )
