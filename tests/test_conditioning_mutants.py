"""`TextConditioner`'s methods that the conditioning and exactness tests never call, or call
without looking at what a mutant changes: edited prompts with negatives (`pipeline_kwargs` with
steps, `schedule`), records and their assembly, `identity`, `to`, textual inversion, the dtype
`from_config` loads in, the per-encoder negatives refused, a given projection and SD3's zero
T5 tokens. Tiny encoders. Written against the mutation runs of issue 24
(benchmarks/results/mutation.md)."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import yaml
from tensor_checks import close
from transformers import CLIPTextModel

from clipcond import TextConditioner
from clipcond.tokenization import clip_tokenizer

STEPS = 4
EDITED = "a [red:blue:0.5] circle"  # steps 0 to 2 read "a red circle", step 3 "a blue circle"


def _fresh_sd(path, **kwargs) -> TextConditioner:
    """An SD conditioner on its own copy of the tiny CLIP (tests here change it in place)."""
    return TextConditioner("sd", clip=[(CLIPTextModel.from_pretrained(path).eval(), clip_tokenizer())], **kwargs)


# ------------------------------------------------------------------ edited prompts and negatives


def test_an_edited_prompt_starts_with_step_zeros_text_and_keeps_its_negative(sd_pipe):
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    kwargs = cond.pipeline_kwargs(EDITED, "blurry", num_inference_steps=STEPS)
    expected = cond.pipeline_kwargs("a red circle", "blurry")
    close(kwargs["prompt_embeds"], expected["prompt_embeds"])
    close(kwargs["negative_prompt_embeds"], expected["negative_prompt_embeds"])
    assert callable(kwargs["callback_on_step_end"])


def test_a_schedule_encodes_its_negative_prompt(sd_pipe):
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    positive, negative = cond.schedule(EDITED, STEPS, "blurry").embeds_at(0)
    close(positive.tokens, cond.encode("a red circle").tokens)
    close(negative.tokens, cond.encode("blurry").tokens)
    assert cond.schedule(EDITED, STEPS).embeds_at(0)[1] is None


def test_a_schedule_reads_negative_prompt_3_with_sd3s_t5(sd3_pipe):
    cond = TextConditioner.from_pipeline(sd3_pipe, cache_size=0)
    _, negative = cond.schedule(EDITED, STEPS, "blurry", negative_prompt_3="dark").embeds_at(0)
    close(negative.tokens, cond.encode("blurry", prompt_3="dark").tokens)


def test_a_schedule_names_a_bad_prompt(sd_pipe):
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    with pytest.raises(TypeError, match=r"^`prompt` must contain only strings, but item 1 is int: 3$"):
        cond.schedule(["a cat", 3], STEPS)


READERS = "`prompt` (encoder 1); leave `prompt_2` out, or use a family whose pipelines take it"
BAD_CALLS = {
    "a bad prompt": (
        lambda cond: cond.pipeline_kwargs(["a cat", 3]),
        TypeError,
        "`prompt` must contain only strings, but item 1 is int: 3",
    ),
    "negatives of another count": (
        lambda cond: cond.pipeline_kwargs(["a", "b"], ["c"]),
        ValueError,
        "`negative_prompt` has 1 entries but `prompt` has 2; give one negative prompt per prompt, or a single "
        "string for all",
    ),
    "a schedule's bad negative": (
        lambda cond: cond.schedule(["a", "b"], STEPS, ["c", 3]),
        TypeError,
        "`negative_prompt` must contain only strings, but item 1 is int: 3",
    ),
    "a prompt_2 nothing reads": (
        lambda cond: cond.encode("a", prompt_2="b"),
        ValueError,
        f"`prompt_2` has no encoder to read it: recipe 'sd' with these encoders reads {READERS} (prompt_2: SDXL, "
        "SD3, Flux; prompt_3: SD3 with its T5)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_prompt_arguments_are_refused_in_full_words(sd_pipe, case):
    call, error, message = BAD_CALLS[case]
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call(TextConditioner.from_pipeline(sd_pipe, cache_size=0))


def test_sdxl_negative_prompt_2_without_a_negative_names_what_the_negatives_are(sdxl_pipe):
    cond = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0)
    message = (
        "`negative_prompt_2` without `negative_prompt`: recipe 'sdxl' then has zeros "
        "(force_zeros_for_empty_prompt) for the negatives and diffusers ignores `negative_prompt_2`; "
        'pass `negative_prompt` too (negative_prompt="" encodes the empty prompt)'
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cond.pipeline_kwargs("a cat", negative_prompt_2="ugly")
    message = "`negative_prompt_2` / `negative_prompt_3` need `negative_prompt` (their default)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cond.schedule(EDITED, STEPS, negative_prompt_2="ugly")


def test_sd3_without_a_t5_joins_the_zero_tokens_it_is_given(sd3_pipe):
    """`t5_zeros` (what `from_pipeline` passes for an SD3 pipeline loaded without
    `text_encoder_3`): zero T5 tokens of that length after the CLIP tokens, which are those of
    the conditioner with the T5."""
    clip = [(sd3_pipe.text_encoder, sd3_pipe.tokenizer), (sd3_pipe.text_encoder_2, sd3_pipe.tokenizer_2)]
    width = sd3_pipe.transformer.config.joint_attention_dim
    cond = TextConditioner("sd3", clip=clip, t5_zeros=(7, width), cache_size=0)
    with_t5 = TextConditioner.from_pipeline(sd3_pipe, cache_size=0)
    clip_tokens = with_t5.encode("a red circle").tokens[:, :77]
    close(cond.encode("a red circle").tokens, torch.cat([clip_tokens, torch.zeros(1, 7, width)], dim=1))


def test_a_given_projection_is_the_one_applied(tiny_clip_text_path):
    from clipcond.projection import TextProjection

    model = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval()
    projection = TextProjection(16, clip_width=model.config.hidden_size)
    cond = TextConditioner("custom", clip=[(model, clip_tokenizer())], projection=projection, cache_size=0)
    plain = TextConditioner("sd", clip=[(model, clip_tokenizer())], cache_size=0)
    assert cond.projection is projection
    with torch.no_grad():
        close(cond.encode("a red circle").tokens, projection["clip"](plain.encode("a red circle").tokens))


# ------------------------------------------------------------------ records, identity


def test_records_assembled_are_the_encoding(tiny_clip_text_path):
    cond = _fresh_sd(tiny_clip_text_path)
    prompts = ["a (red:1.3) circle", "a blue square BREAK on grey"]
    assembled = cond.assemble(cond.encode_records(prompts))
    close(assembled.tokens, cond.encode(prompts).tokens)
    with pytest.raises(ValueError, match=r"^`records` must hold at least one EncodedPrompt$"):
        cond.assemble([])
    with pytest.raises(TypeError, match=r"^`prompt` must contain only strings, but item 0 is int: 3$"):
        cond.encode_records([3])


def test_windows_reach_the_encoder_in_batches_of_max_batch_windows(tiny_clip_text_path):
    cond = _fresh_sd(tiny_clip_text_path, cache_size=0, max_batch_windows=2)
    batches = []
    model = cond.clip[0].model
    handle = model.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        cond.encode(["a red circle", "a blue square", "a green star"])
    finally:
        handle.remove()
    assert batches == [2, 1]  # three one-window prompts, at most two windows a call


def test_the_empty_prompts_states_follow_a_changed_tokenizer(tiny_clip_text_path):
    """The comfy mode's memo of the empty prompt's states is keyed by the tokenizer too: a pad
    token set in place (SDXL's second tokenizer pads with "!") gives a fresh conditioner's result."""
    cond = _fresh_sd(tiny_clip_text_path, cache_size=0, emphasis="comfy")
    before = cond.encode("a (red:1.5) circle").tokens
    encoder = cond.clip[0]
    encoder.tokenizer.pad_token = "!"
    after = cond.encode("a (red:1.5) circle").tokens
    fresh = TextConditioner("sd", clip=[(encoder.model, encoder.tokenizer)], cache_size=0, emphasis="comfy")
    close(after, fresh.encode("a (red:1.5) circle").tokens)
    assert not torch.equal(after, before)


def test_compute_dtype_runs_a_bfloat16_encoder_in_float32(tiny_clip_text_path):
    """The states of a float32 run, returned in the weights' bfloat16, not those of a bfloat16 run."""
    half = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval().to(torch.bfloat16)
    widened = copy.deepcopy(half).float()
    expected = TextConditioner("sd", clip=[(widened, clip_tokenizer())], cache_size=0).encode("a red circle").tokens
    plain = TextConditioner("sd", clip=[(half, clip_tokenizer())], cache_size=0).encode("a red circle").tokens
    cond = TextConditioner("sd", clip=[(half, clip_tokenizer())], cache_size=0, compute_dtype=torch.float32)
    tokens = cond.encode("a red circle").tokens
    assert tokens.dtype == torch.bfloat16 and torch.equal(tokens, expected.to(torch.bfloat16))
    assert not torch.equal(plain, tokens)


def test_identity_names_the_weight_parsing(tiny_clip_text_path):
    model = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval()
    parsed = TextConditioner("sd", clip=[(model, clip_tokenizer())]).identity()
    literal = TextConditioner("sd", clip=[(model, clip_tokenizer())], parse_weights=False).identity()
    assert parsed[0] == literal[0] and parsed[1] != literal[1]


# ------------------------------------------------------------------ moving, loading


def test_to_moves_and_casts_every_encoder_and_the_projection(tiny_clip_text_path):
    cond = _fresh_sd(tiny_clip_text_path)
    assert cond.to("meta", torch.float64) is cond
    assert (cond.device, cond.dtype) == (torch.device("meta"), torch.float64)
    model = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval()
    custom = TextConditioner("custom", clip=[(model, clip_tokenizer())], projection_dim=16)
    custom.to("meta", torch.float64)
    assert {(p.device.type, p.dtype) for p in custom.projection.parameters()} == {("meta", torch.float64)}


def test_textual_inversion_vectors_land_in_the_embedding_table(tiny_clip_text_path):
    cond = _fresh_sd(tiny_clip_text_path, cache_size=0)
    encoder = cond.clip[0]
    vectors = torch.linspace(-1.0, 1.0, 2 * encoder.width).reshape(2, encoder.width)
    cond.load_textual_inversion(vectors, token="<toy>")
    ids = encoder.tokenizer.convert_tokens_to_ids(["<toy>", "<toy>_1"])
    close(encoder.model.get_input_embeddings().weight[ids].detach(), vectors)
    close(cond.encode("a <toy> cat").tokens, cond.encode("a <toy> <toy>_1 cat").tokens)  # the token reads both
    with pytest.raises(ValueError, match="<toy>"):  # loaded once: its tokens exist now
        cond.load_textual_inversion(vectors, token="<toy>")


def test_from_config_loads_every_encoder_in_the_configured_dtype(tmp_path, tiny_clip_text_path, tiny_t5_encoder_path):
    path = tmp_path / "conditioner.yaml"
    config = {
        "recipe": "custom",
        "clip": [{"path": str(tiny_clip_text_path)}],
        "t5": {"path": str(tiny_t5_encoder_path)},
        "combine": "concat_sequence",
        "projection_dim": 16,
        "dtype": "bfloat16",
    }
    path.write_text(yaml.safe_dump(config))
    cond = TextConditioner.from_config(path)
    assert cond.t5 is not None and len(cond.clip) == 1
    assert {encoder.model.dtype for encoder in cond.encoders} == {torch.bfloat16}


def test_from_config_carries_its_settings(tmp_path, tiny_clip_text_path):
    path = tmp_path / "conditioner.yaml"
    config = {"recipe": "sd", "clip": [{"path": str(tiny_clip_text_path)}], "clip_skip": 1, "emphasis": "a1111"}
    path.write_text(yaml.safe_dump({**config, "cache_size": 3}))
    cond = TextConditioner.from_config(path)
    assert cond.t5 is None and cond.clip_skip == 1 and cond.recipe.emphasis == "a1111"
    assert cond.cache.max_entries == 3


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_cache_size_is_named_as_the_argument_the_user_gave(sd_pipe, bad, error):
    with pytest.raises(error, match=rf"^`cache_size` must be an int >= 0 \(prompts kept in memory\), got {bad!r}$"):
        TextConditioner.from_pipeline(sd_pipe, cache_size=bad)
