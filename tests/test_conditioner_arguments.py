"""`TextConditioner`'s arguments as users pass them (probe11_api, the core side).

- Numbers: numpy's integers and 0-d integer tensors, which diffusers takes wherever it takes an
  int (`encode_prompt(num_images_per_prompt=np.int64(2))`), give what the Python int gives (and
  diffusers' `encode_prompt` where it has the argument); what is kept is a Python int.
- `cache_dir=""` is refused (it was the current folder, where entries were written).
- `to(torch.float16)` reads the dtype as `torch.nn.Module.to` does.
- `assemble` checks its records against `record_spec` before any work.
- `clip_tokenizer(model_max_length=...)` and `from_config(...)` refuse what is no int / config.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_pipelines import clip_text_model

from clipcond import TextConditioner
from clipcond.cache import EmbeddingCache
from clipcond.records import EncodedPrompt
from clipcond.tokenization import clip_tokenizer

PROMPTS = ["a photo of an astronaut riding a horse", "two red circles"]
LONG_PROMPT = ", ".join(f"a {color} circle above a {color} square" for color in ("red", "blue", "green") * 5)
# What users hold: numpy's integers (np.arange, an array's shape) and a 0-d tensor.
INTEGERS = [np.int64, np.int32, lambda value: torch.tensor(value)]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():  # as inside a pipeline call (and diffusers' encode_prompt references)
        yield


def _sd_conditioner(**kwargs) -> TextConditioner:
    """A fresh SD conditioner over its own tiny CLIP (safe to move, cast and count)."""
    return TextConditioner("sd", clip=[(clip_text_model(0), clip_tokenizer())], **kwargs)


# ------------------------------------------------------------------ numpy and 0-d tensor integers


@pytest.mark.parametrize("integer", INTEGERS)
def test_images_per_prompt_as_numpy_equals_diffusers(sd_pipe, integer) -> None:
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    kwargs = cond.pipeline_kwargs(PROMPTS, "blurry", num_images_per_prompt=integer(2))
    expected = sd_pipe.encode_prompt(PROMPTS, "cpu", 2, True, ["blurry"] * len(PROMPTS))
    close(kwargs["prompt_embeds"], expected[0])
    close(kwargs["negative_prompt_embeds"], expected[1])


@pytest.mark.parametrize("integer", INTEGERS)
def test_steps_as_numpy_equal_the_python_int(sd_pipe, integer) -> None:
    """`schedule` and `pipeline_kwargs(num_inference_steps=...)` (no diffusers peer: its
    pipelines read no prompt editing) give what 4 gives."""
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    prompt = "a [cat:dog:0.5] on a lawn"
    schedule, expected = cond.schedule(prompt, integer(4), "blurry"), cond.schedule(prompt, 4, "blurry")
    assert type(schedule.num_steps) is int and schedule.num_steps == 4
    for step in range(4):
        assert schedule.rows_at(step) == expected.rows_at(step)
        close(schedule.embeds_at(step)[0].tokens, expected.embeds_at(step)[0].tokens)
        close(schedule.embeds_at(step)[1].tokens, expected.embeds_at(step)[1].tokens)
    kwargs, python = (cond.pipeline_kwargs(prompt, num_inference_steps=steps) for steps in (integer(4), 4))
    close(kwargs["prompt_embeds"], python["prompt_embeds"])
    assert kwargs["callback_on_step_end"].schedule.num_steps == 4


@pytest.mark.parametrize("integer", INTEGERS)
def test_clip_skip_as_numpy_equals_diffusers(sdxl_pipe, integer) -> None:
    cond = TextConditioner.from_pipeline(sdxl_pipe, clip_skip=integer(1), cache_size=0)
    assert type(cond.clip_skip) is int and cond.clip_skip == 1
    expected = sdxl_pipe.encode_prompt(prompt=PROMPTS, device="cpu", do_classifier_free_guidance=False, clip_skip=1)
    embeds = cond.encode(PROMPTS)
    close(embeds.tokens, expected[0])
    close(embeds.pooled, expected[2])


@pytest.mark.parametrize("integer", INTEGERS)
def test_max_sequence_length_as_numpy_equals_diffusers(flux_pipe, integer) -> None:
    cond = TextConditioner.from_pipeline(flux_pipe, max_sequence_length=integer(64), cache_size=0)
    assert type(cond.recipe.t5_max_length) is int and cond.recipe.t5_max_length == 64
    prompt_embeds, pooled, _ = flux_pipe.encode_prompt(
        prompt=PROMPTS, prompt_2=None, device="cpu", max_sequence_length=64
    )
    kwargs = cond.pipeline_kwargs(PROMPTS)
    close(kwargs["prompt_embeds"], prompt_embeds)
    close(kwargs["pooled_prompt_embeds"], pooled)


@pytest.mark.parametrize("integer", INTEGERS)
def test_cache_size_and_max_batch_windows_as_numpy(integer) -> None:
    cond = _sd_conditioner(cache_size=integer(8), max_batch_windows=integer(1))
    assert type(cond.cache.max_entries) is int and cond.cache.max_entries == 8
    assert type(cond.max_batch_windows) is int and cond.max_batch_windows == 1
    python = _sd_conditioner(cache_size=8, max_batch_windows=1)
    close(cond.encode([LONG_PROMPT, *PROMPTS]).tokens, python.encode([LONG_PROMPT, *PROMPTS]).tokens)


@pytest.mark.parametrize("integer", INTEGERS)
def test_projection_dim_as_numpy_is_a_python_int_in_the_config(integer, tmp_path) -> None:
    torch.manual_seed(1)
    cond = TextConditioner("custom", clip=[(clip_text_model(0), clip_tokenizer())], projection_dim=integer(8))
    torch.manual_seed(1)
    python = TextConditioner("custom", clip=[(clip_text_model(0), clip_tokenizer())], projection_dim=8)
    assert type(cond.projection.config.projection_dim) is int and cond.token_width == 8
    close(cond.encode(PROMPTS).tokens, python.encode(PROMPTS).tokens)
    cond.projection.save_pretrained(tmp_path)  # its JSON config holds the int
    assert (tmp_path / "config.json").stat().st_size > 0


@pytest.mark.parametrize("value", [2.0, True, np.bool_(True), torch.tensor(2.0), "2", 0, np.int64(0)])
def test_what_is_no_count_is_still_refused(sd_pipe, value) -> None:
    cond = TextConditioner.from_pipeline(sd_pipe)
    with pytest.raises(ValueError, match="`num_images_per_prompt` must be an int >= 1"):
        cond.pipeline_kwargs("a", num_images_per_prompt=value)
    with pytest.raises(ValueError, match="`num_inference_steps` must be an int >= 1"):
        cond.schedule("a [cat:dog:0.5]", value)


# ------------------------------------------------------------------ cache_dir


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_cache_dir_is_refused_and_nothing_is_written(blank, tmp_path, monkeypatch) -> None:
    """What os.environ.get("CACHE", "") gives: it was Path("") (the current folder), and encode
    wrote <key>.safetensors files there."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"`cache_dir` must be a folder path or None"):
        _sd_conditioner(cache_dir=blank)
    with pytest.raises(ValueError, match=r"`directory` must be a folder path or None"):
        EmbeddingCache(8, blank)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="`cache_dir` must be a folder path or None, got int"):
        _sd_conditioner(cache_dir=3)


# ------------------------------------------------------------------ to()


@pytest.mark.parametrize("call", ["dtype", "device, dtype", "keywords"])
def test_to_takes_a_dtype_as_torch_does(call) -> None:
    """`to(torch.float64)` casts as `torch.nn.Module.to(torch.float64)` does (it passed the
    dtype as the device, and torch refused the combination)."""
    cond = _sd_conditioner(cache_size=0)
    reference = TextConditioner("sd", clip=[(copy.deepcopy(cond.clip[0].model).to(torch.float64), clip_tokenizer())])
    moved = {
        "dtype": lambda: cond.to(torch.float64),
        "device, dtype": lambda: cond.to("cpu", torch.float64),
        "keywords": lambda: cond.to(device="cpu", dtype=torch.float64),
    }[call]()
    assert moved is cond and cond.dtype == torch.float64
    close(cond.encode(PROMPTS).tokens, reference.encode(PROMPTS).tokens)


def test_to_refuses_what_torch_refuses_before_moving_anything() -> None:
    cond = _sd_conditioner()
    with pytest.raises(TypeError, match=r"`dtype` must be a floating torch.dtype .* got 'float64'"):
        cond.to("cpu", "float64")
    with pytest.raises(TypeError, match="`dtype` must be a floating torch.dtype"):
        cond.to(torch.int64)
    with pytest.raises(TypeError, match="takes one dtype"):
        cond.to(torch.float64, torch.float16)
    with pytest.raises(ValueError, match="`device` must be a torch.device or its name"):
        cond.to("float16")
    assert cond.dtype == torch.float32


# ------------------------------------------------------------------ assemble()


def test_assemble_refuses_records_of_another_conditioner_before_any_work() -> None:
    """Records of a 16-wide CLIP gave (1, 77, 16) embeddings from a 32-wide conditioner; a mix
    failed in torch.stack, None in an AttributeError."""
    cond = _sd_conditioner(cache_size=0)
    narrow = TextConditioner(
        "sd",
        clip=[(clip_text_model(5, hidden_size=16, intermediate_size=20, num_attention_heads=2), clip_tokenizer())],
    )
    mine, theirs = cond.encode_records(["a"])[0], narrow.encode_records([LONG_PROMPT])[0]
    calls = []
    cond.clip[0].model.register_forward_pre_hook(lambda *_: calls.append(1))
    cases = [
        (
            [theirs],
            ValueError,
            r"`records\[0\]` is not a record of this conditioner: `clip_tokens` has shape \(2, 77, 16\)",
        ),
        ([mine, theirs], ValueError, r"`records\[1\]` .* expected \(windows, 77, 32\)"),
        ([mine, EncodedPrompt(clip_tokens=mine.clip_tokens.double())], ValueError, r"`records\[1\]` .*torch.float64"),
        ([EncodedPrompt()], ValueError, r"`records\[0\]` .*missing tensors \['clip_tokens'\]"),
        (
            [EncodedPrompt(mine.clip_tokens, pooled=mine.clip_tokens[0, 0])],
            ValueError,
            r"unexpected tensors \['pooled'\]",
        ),
        ([None], TypeError, r"`records\[0\]` must be an EncodedPrompt, got NoneType"),
        ([mine.clip_tokens], TypeError, r"`records\[0\]` must be an EncodedPrompt, got Tensor"),
        (mine, TypeError, r"`records` must be a list of EncodedPrompt, got EncodedPrompt"),
    ]
    for records, error, message in cases:
        with pytest.raises(error, match=message):
            cond.assemble(records)
    with pytest.raises(
        ValueError, match=r"`empty_prompt` is not a record of this conditioner: `clip_tokens` has shape \(1, 77, 16\)"
    ):
        cond.assemble([mine], empty_prompt=narrow.encode_records([""])[0])
    assert calls == []


def test_assemble_takes_records_of_an_equal_conditioner(sd_pipe) -> None:
    """Records of another conditioner with this one's spec (the same pipeline) assemble into the
    embeddings diffusers' encode_prompt gives."""
    records = TextConditioner.from_pipeline(sd_pipe).encode_records(PROMPTS)
    embeds = TextConditioner.from_pipeline(sd_pipe, cache_size=0).assemble(tuple(records))
    close(embeds.tokens, sd_pipe.encode_prompt(PROMPTS, "cpu", 1, False)[0])


# ------------------------------------------------------------------ clip_tokenizer, from_config


@pytest.mark.parametrize("value", [77.0, "77", None, True])
def test_clip_tokenizer_refuses_a_length_that_is_no_int(value) -> None:
    """77.0 was taken and every tokenization then failed; "77" and None failed on `<`."""
    with pytest.raises(TypeError, match=r"`model_max_length` must be an int"):
        clip_tokenizer(model_max_length=value)


def test_clip_tokenizer_takes_a_numpy_length() -> None:
    tokenizer = clip_tokenizer(model_max_length=np.int64(20))
    assert type(tokenizer.model_max_length) is int
    expected = clip_tokenizer(model_max_length=20)("a red cat", padding="max_length", truncation=True).input_ids
    assert tokenizer("a red cat", padding="max_length", truncation=True).input_ids == expected


@pytest.mark.parametrize("config", [None, {"recipe": "sd"}, 3])
def test_from_config_names_what_it_takes(config) -> None:
    with pytest.raises(TypeError, match="`config` must be a ConditionerConfig or the path of its YAML file, got"):
        TextConditioner.from_config(config)
