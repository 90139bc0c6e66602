"""`TextConditioner`'s methods that the conditioning and exactness tests never call, or call
without looking at what a mutant changes: edited prompts with negatives (`pipeline_kwargs` with
steps, `schedule`), records and their assembly, `identity`, `to`, textual inversion, the dtype
`from_config` loads in, the per-encoder negatives refused, a given projection and SD3's zero
T5 tokens. Tiny encoders. Written against the mutation runs of issue 24
(benchmarks/results/mutation.md)."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
import yaml
from safetensors import safe_open
from tensor_checks import close
from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

import clipcond.fingerprint
from clipcond import TextConditioner
from clipcond.families import get_recipe
from clipcond.records import EncodedPrompt
from clipcond.tokenization import clip_tokenizer

STEPS = 4
EDITED = "a [red:blue:0.5] circle"  # steps 0 to 2 read "a red circle", step 3 "a blue circle"


def _fresh_sd(path, **kwargs) -> TextConditioner:
    """An SD conditioner on its own copy of the tiny CLIP (tests here change it in place)."""
    return TextConditioner("sd", clip=[(CLIPTextModel.from_pretrained(path).eval(), clip_tokenizer())], **kwargs)


def _fresh_t5(model_path, tokenizer_path) -> tuple[T5EncoderModel, object]:
    """The tiny T5 and its tokenizer, loaded afresh."""
    return T5EncoderModel.from_pretrained(model_path).eval(), AutoTokenizer.from_pretrained(tokenizer_path)


# ------------------------------------------------------------------ edited prompts and negatives


def test_an_edited_prompt_starts_with_step_zeros_text_and_keeps_its_negative(sd_pipe):
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    kwargs = cond.pipeline_kwargs(EDITED, "blurry", num_inference_steps=STEPS)
    expected = cond.pipeline_kwargs("a red circle", "blurry")
    close(kwargs["prompt_embeds"], expected["prompt_embeds"])
    close(kwargs["negative_prompt_embeds"], expected["negative_prompt_embeds"])
    assert callable(kwargs["callback_on_step_end"])
    assert kwargs["callback_on_step_end_tensor_inputs"] == ["prompt_embeds"]


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


def _unread(name: str) -> str:
    """The refusal of a per-encoder argument `name` that no encoder of an SD conditioner reads."""
    return (
        f"`{name}` has no encoder to read it: recipe 'sd' with these encoders reads `prompt` (encoder 1); leave "
        f"`{name}` out, or use a family whose pipelines take it (prompt_2: SDXL, SD3, Flux; prompt_3: SD3 with its T5)"
    )


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
        _unread("prompt_2"),
    ),
    "a negative_prompt_2 nothing reads": (
        lambda cond: cond.pipeline_kwargs("a", "b", negative_prompt_2="c"),
        ValueError,
        _unread("negative_prompt_2"),
    ),
    "a schedule's negative_prompt_3 nothing reads": (
        lambda cond: cond.schedule(EDITED, STEPS, "b", negative_prompt_3="c"),
        ValueError,
        _unread("negative_prompt_3"),
    ),
    "a schedule's prompt_3 nothing reads": (
        lambda cond: cond.schedule(EDITED, STEPS, prompt_3="c"),
        ValueError,
        _unread("prompt_3"),
    ),
    "a schedule's prompt_2 nothing reads": (
        lambda cond: cond.schedule(EDITED, STEPS, "b", prompt_2="c"),
        ValueError,
        _unread("prompt_2"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_prompt_arguments_are_refused_in_full_words(sd_pipe, case):
    call, error, message = BAD_CALLS[case]
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call(TextConditioner.from_pipeline(sd_pipe, cache_size=0))


@pytest.mark.parametrize(
    ("pipe_fixture", "recipe", "meaning"),
    [("sdxl_pipe", "sdxl", "zeros (force_zeros_for_empty_prompt)"), ("flux_pipe", "flux", "none")],
)
def test_negative_prompt_2_without_a_negative_names_what_the_negatives_are(request, pipe_fixture, recipe, meaning):
    cond = TextConditioner.from_pipeline(request.getfixturevalue(pipe_fixture), cache_size=0)
    with pytest.raises(ValueError) as error:
        cond.pipeline_kwargs("a cat", negative_prompt_2="ugly")
    assert str(error.value) == (
        f"`negative_prompt_2` without `negative_prompt`: recipe {recipe!r} then has {meaning} for the negatives and "
        'diffusers ignores `negative_prompt_2`; pass `negative_prompt` too (negative_prompt="" encodes the empty '
        "prompt)"
    )
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


# ------------------------------------------------------------------ settings of the constructor


def test_the_cache_is_made_for_memory_or_a_folder_and_not_for_neither(tiny_clip_text_path, tmp_path):
    assert _fresh_sd(tiny_clip_text_path, cache_size=0).cache is None
    assert _fresh_sd(tiny_clip_text_path).cache.max_entries == 512
    memory = _fresh_sd(tiny_clip_text_path, cache_size=3).cache
    assert (memory.max_entries, memory.directory) == (3, None)
    disk = _fresh_sd(tiny_clip_text_path, cache_size=0, cache_dir=str(tmp_path)).cache
    assert (disk.max_entries, disk.directory) == (0, tmp_path)


def test_window_split_is_set_in_the_recipe_and_refused_without_a_clip(
    tiny_clip_text_path, tiny_t5_encoder_path, t5_tokenizer_path
):
    assert _fresh_sd(tiny_clip_text_path).recipe.window_split != "truncate"
    assert _fresh_sd(tiny_clip_text_path, window_split="truncate").recipe.window_split == "truncate"
    with pytest.raises(ValueError) as error:
        TextConditioner("pixart", t5=_fresh_t5(tiny_t5_encoder_path, t5_tokenizer_path), window_split="word")
    assert str(error.value) == (
        "`window_split` ('word') says how CLIP windows are cut, and this conditioner has no CLIP encoder: its T5 "
        "reads one sequence, cut at its token budget (`max_sequence_length`)"
    )


def test_parse_weights_must_be_a_bool(tiny_clip_text_path):
    with pytest.raises(TypeError) as error:
        _fresh_sd(tiny_clip_text_path, parse_weights=1)
    assert str(error.value) == "`parse_weights` must be a bool, got 1"


@pytest.mark.parametrize("recipe", ["sd", "pixart"], ids=["no cleaning", "cleaned captions"])
def test_without_weight_parsing_a_prompt_is_read_as_written(
    recipe, tiny_clip_text_path, tiny_t5_encoder_path, t5_tokenizer_path
):
    """Brackets and weights are plain text then, the whole prompt at weight 1: the same as
    the prompt with every bracket escaped, read with parsing on."""
    if recipe == "sd":
        encoders = {"clip": [(CLIPTextModel.from_pretrained(tiny_clip_text_path).eval(), clip_tokenizer())]}
    else:
        encoders = {"t5": _fresh_t5(tiny_t5_encoder_path, t5_tokenizer_path)}
    literal = TextConditioner(recipe, parse_weights=False, cache_size=0, **encoders)
    parsing = TextConditioner(recipe, cache_size=0, **encoders)
    written = "a (red:1.5) circle"
    assert torch.equal(literal.encode(written).tokens, parsing.encode(r"a \(red:1.5\) circle").tokens)
    assert not torch.equal(literal.encode(written).tokens, parsing.encode(written).tokens)


def test_a_break_starts_a_new_window_with_or_without_caption_cleaning(tiny_clip_text_path):
    """PixArt's cleaning on a CLIP recipe (a recipe given whole): the break survives it."""
    model = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval()
    cleaning = dataclasses.replace(get_recipe("sd"), caption_cleaning="clean_caption")
    plain = TextConditioner("sd", clip=[(model, clip_tokenizer())], cache_size=0)
    cleaned = TextConditioner(cleaning, clip=[(model, clip_tokenizer())], cache_size=0)
    assert cleaned.recipe.caption_cleaning == "clean_caption"
    for cond in (plain, cleaned):
        assert cond.encode("a red circle BREAK a blue square").tokens.shape[1] == 2 * 77
        assert cond.encode("a red circle, a blue square").tokens.shape[1] == 77


def test_assemble_pads_with_the_empty_prompt_it_is_given_and_checks_it(tiny_clip_text_path):
    """A batch of one window and two: the first prompt's second window is the empty prompt's,
    the one given (here zeros) or the one encoded here."""
    cond = _fresh_sd(tiny_clip_text_path, cache_size=0)
    records = cond.encode_records(["a red circle", "a blue square BREAK on grey"])
    (empty,) = cond.encode_records("")
    zeros = EncodedPrompt(clip_tokens=torch.zeros_like(empty.clip_tokens))
    given = cond.assemble(records, empty_prompt=zeros).tokens
    encoded = cond.assemble(records).tokens
    assert given.shape == encoded.shape == (2, 2 * 77, 32)
    assert torch.equal(given[0, 77:], torch.zeros(77, 32))
    close(encoded[0, 77:], empty.clip_tokens[0])
    assert torch.equal(given[1], encoded[1]) and torch.equal(given[0, :77], encoded[0, :77])
    with pytest.raises(TypeError) as error:
        cond.assemble(records, empty_prompt="")
    assert str(error.value) == "`empty_prompt` must be an EncodedPrompt, got str"
    with pytest.raises(ValueError) as error:
        cond.assemble(records, empty_prompt=EncodedPrompt(clip_tokens=empty.clip_tokens.double()))
    assert str(error.value) == (
        "`empty_prompt` is not a record of this conditioner: `clip_tokens` is torch.float64, expected "
        "torch.float32 (its `record_spec`: clip_tokens (windows, 77, 32) torch.float32)"
    )


def test_to_refuses_a_cast_of_a_quantized_t5_by_its_name_before_moving_any(
    tiny_clip_text_path, tiny_t5_encoder_path, t5_tokenizer_path
):
    clip = [(CLIPTextModel.from_pretrained(tiny_clip_text_path).eval(), clip_tokenizer())]
    t5 = _fresh_t5(tiny_t5_encoder_path, t5_tokenizer_path)
    t5[0].quantization_method = "bitsandbytes"  # as transformers marks a bitsandbytes model
    cond = TextConditioner("custom", clip=clip, t5=t5, projection_dim=16)
    with pytest.raises(ValueError) as error:
        cond.to(torch.float16)
    assert str(error.value).startswith(
        "`dtype` (torch.float16) cannot be given to t5 (T5EncoderModel): it is quantized with bitsandbytes"
    )
    assert {encoder.model.dtype for encoder in cond.encoders} == {torch.float32}


def test_from_config_passes_every_setting_on(tmp_path, tiny_clip_text_path, tiny_t5_encoder_path):
    clip_config = {
        "recipe": "sd",
        "clip": [{"path": str(tiny_clip_text_path)}],
        "parse_weights": False,
        "window_split": "truncate",
        "cache_size": 0,
        "cache_dir": str(tmp_path / "cache"),
        "max_batch_windows": 3,
    }
    (tmp_path / "clip.yaml").write_text(yaml.safe_dump(clip_config))
    cond = TextConditioner.from_config(tmp_path / "clip.yaml")
    assert cond.parse_weights is False and cond.recipe.window_split == "truncate"
    assert cond.cache.directory == tmp_path / "cache" and cond.max_batch_windows == 3
    t5_config = {"recipe": "pixart", "t5": {"path": str(tiny_t5_encoder_path)}, "clean_caption": False}
    (tmp_path / "t5.yaml").write_text(yaml.safe_dump(t5_config))
    # PixArt lower-cases its prompts even with its cleaning off
    assert TextConditioner.from_config(tmp_path / "t5.yaml").recipe.caption_cleaning == "lowercase"
    (tmp_path / "t5.yaml").write_text(yaml.safe_dump({**t5_config, "clean_caption": None}))
    assert TextConditioner.from_config(tmp_path / "t5.yaml").recipe.caption_cleaning == "clean_caption"
    with pytest.raises(TypeError) as error:
        TextConditioner.from_config(3)
    assert str(error.value) == "`config` must be a ConditionerConfig or the path of its YAML file, got int"


def test_a_prompt_repeated_in_a_batch_is_looked_up_and_encoded_once(tiny_clip_text_path):
    cond = _fresh_sd(tiny_clip_text_path)
    tokens = cond.encode(["a red circle", "a red circle", "a blue square"]).tokens
    assert (cond.cache.hits, cond.cache.misses) == (0, 2)
    assert torch.equal(tokens[0], tokens[1])
    close(tokens[2], _fresh_sd(tiny_clip_text_path, cache_size=0).encode("a blue square").tokens[0])


def test_a_memory_cache_never_reads_the_weights_bytes(tiny_clip_text_path, monkeypatch):
    """Only the disk cache keys records by a hash of every weight byte; in memory the weights'
    state is enough."""

    def reading(modules):
        raise AssertionError("the weights' bytes were read")

    monkeypatch.setattr(clipcond.fingerprint, "_tensor_digest", reading)
    cond = _fresh_sd(tiny_clip_text_path, cache_size=4)
    cond.encode("a red circle")
    assert (cond.cache.hits, cond.cache.misses) == (0, 1)


def test_a_lora_scale_is_refused_where_the_familys_encode_prompt_takes_none(pixart_pipe):
    cond = TextConditioner.from_pipeline(pixart_pipe, cache_size=0)
    with pytest.raises(ValueError) as error:
        cond.encode("a cat", lora_scale=0.5)
    assert (
        str(error.value) == "`lora_scale`: 'pixart' pipelines' encode_prompt takes no LoRA scale for its text encoder"
    )
    assert cond.encode("a cat", lora_scale=None).tokens.shape[0] == 1


def test_a_t5_conditioners_records_are_written_to_disk_and_read_back(pixart_pipe, tmp_path):
    first = TextConditioner.from_pipeline(pixart_pipe, cache_dir=str(tmp_path))
    tokens = first.encode("a red circle").tokens
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    second = TextConditioner.from_pipeline(pixart_pipe, cache_dir=str(tmp_path))
    assert torch.equal(second.encode("a red circle").tokens, tokens)
    assert (second.cache.hits, second.cache.misses) == (1, 0)


def test_a_disk_entry_records_the_texts_its_encoders_read(sdxl_pipe, tmp_path):
    cond = TextConditioner.from_pipeline(sdxl_pipe, cache_dir=str(tmp_path))
    cond.encode("a red circle", prompt_2="a blue square")
    cond.encode("a green star")
    texts = set()
    for path in tmp_path.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            texts.add(handle.metadata()["text"])
    assert texts == {"a red circle | a blue square", "a green star"}


@pytest.mark.parametrize("call", ["pipeline_kwargs", "schedule"])
def test_per_encoder_negatives_of_another_count_are_named_as_negatives(sdxl_pipe, call):
    cond = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0)
    with pytest.raises(ValueError) as error:
        if call == "schedule":
            cond.schedule(["a [red:blue:0.5] circle", "a square"], STEPS, ["dark", "blurry"], negative_prompt_2=["x"])
        else:
            cond.pipeline_kwargs(["a red circle", "a square"], ["dark", "blurry"], negative_prompt_2=["x"])
    assert str(error.value) == (
        "`negative_prompt_2` has 1 entries but the batch has 2 prompts; give one text per prompt, or a single "
        "string for all"
    )
