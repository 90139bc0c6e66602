"""`swap_text_encoder` against diffusers' pipelines built with the new encoder, on tiny components."""

from __future__ import annotations

import copy
import logging
import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from tiny_pipelines import build_sd, build_sdxl, clip_text_model, sdxl_refiner_components, t5_encoder

from clipcond import CLIPConditionedPipeline, TextConditioner
from clipcond.pipelines import swap_text_encoder

PROMPT = "a red circle left of a blue square"


def run(pipe, **kwargs) -> np.ndarray:
    settings = dict(prompt=PROMPT, num_inference_steps=2, guidance_scale=6.0, output_type="np")
    settings.update(kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(0), **settings).images


def components_of(pipe) -> dict:
    """`pipe`'s components, to build another pipeline of its class (SD's without the checker warning)."""
    extra = {"requires_safety_checker": False} if isinstance(pipe, StableDiffusionPipeline) else {}
    return {**pipe.components, **extra}


def test_sdxl_first_clip_swap_equals_diffusers_built_with_it() -> None:
    other = clip_text_model(7)
    peer = StableDiffusionXLPipeline(**{**components_of(build_sdxl()), "text_encoder": other})
    sdxl = build_sdxl()
    before = run(sdxl)
    assert swap_text_encoder(sdxl, other) is sdxl and sdxl.text_encoder is other
    after = run(sdxl)
    assert np.array_equal(after, run(peer)) and not np.array_equal(after, before)


def test_sdxl_second_clip_swap_equals_diffusers_built_with_it() -> None:
    other = clip_text_model(8, with_projection=True)
    tokenizer_2 = build_sdxl().tokenizer_2
    peer = StableDiffusionXLPipeline(**{**components_of(build_sdxl()), "text_encoder_2": other})
    sdxl = build_sdxl()
    swap_text_encoder(sdxl, other, tokenizer_2, component="text_encoder_2")
    assert sdxl.text_encoder_2 is other and sdxl.tokenizer_2 is tokenizer_2
    assert np.array_equal(run(sdxl), run(peer))


def test_a_swapped_out_encoder_is_not_kept_alive_by_the_pipelines_conditioners() -> None:
    """The conditioner a call built holds the old encoder; the swap lets it go (a CLIP-G is
    1.4 GB), and the next call encodes with the new tower."""
    import gc
    import weakref

    pipe = CLIPConditionedPipeline.from_pipe(build_sd())
    pipe.set_progress_bar_config(disable=True)
    run(pipe)  # builds and keeps a conditioner over text_encoder
    old = weakref.ref(pipe.text_encoder)
    other = clip_text_model(9)
    swap_text_encoder(pipe, other)
    gc.collect()
    assert old() is None
    assert pipe.conditioner.clip[0].model is other


def test_sdxl_refusals_name_the_width_that_fits_and_change_nothing() -> None:
    sdxl = build_sdxl()
    first, second = sdxl.text_encoder, sdxl.text_encoder_2
    with pytest.raises(ValueError, match=r"reads 32-wide tokens from `text_encoder` .*64 less text_encoder_2's 32"):
        swap_text_encoder(sdxl, clip_text_model(7, hidden_size=16))
    with pytest.raises(ValueError, match=r"reads 32-wide tokens from `text_encoder_2`"):
        swap_text_encoder(sdxl, clip_text_model(7, with_projection=True, hidden_size=16), component="text_encoder_2")
    with pytest.raises(ValueError, match=r"added embedding reads a 32-wide one .*projection_dim 32"):
        swap_text_encoder(sdxl, clip_text_model(7, with_projection=True, projection_dim=16), component="text_encoder_2")
    with pytest.raises(ValueError, match="`component` must be"):
        swap_text_encoder(sdxl, clip_text_model(7), component="text_encoder_3")
    assert sdxl.text_encoder is first and sdxl.text_encoder_2 is second
    # SDXL's pooled and time-id conditioning would be lost in a `custom` recipe: no adapter advice
    with pytest.raises(ValueError) as refused:
        swap_text_encoder(sdxl, clip_text_model(7, hidden_size=16))
    assert "TextProjection" not in str(refused.value)


def test_a_tokenizer_with_ids_beyond_the_encoders_rows_is_refused_before_any_change() -> None:
    """A textual-inversion token loaded before the swap (49,410 ids for 49,408 rows), or a tower
    of a smaller vocabulary: refused naming both sizes (torch's IndexError at the next call
    before); with its own tokenizer the small tower is taken."""
    pipe = CLIPConditionedPipeline.from_pipe(build_sd())
    pipe.load_textual_inversion({"<toy>": torch.randn(2, pipe.text_encoder.config.hidden_size)}, token="<toy>")
    encoder = pipe.text_encoder
    with pytest.raises(
        ValueError,
        match=r"has 49408 token embeddings but .* gives 49410 ids \(added tokens without a row: <toy>, <toy>_1\)",
    ):
        swap_text_encoder(pipe, clip_text_model(7))
    assert pipe.text_encoder is encoder
    small = clip_text_model(7, vocab_size=1000)
    with pytest.raises(ValueError, match=r"has 1000 token embeddings but the tokenizer it would read gives 49410 ids"):
        swap_text_encoder(pipe, small)
    assert pipe.text_encoder is encoder
    from transformers import CLIPTokenizer

    class SmallVocabulary(CLIPTokenizer):  # stands in for the small tower's own tokenizer
        def __len__(self) -> int:
            return 1000

    small_tokenizer = copy.copy(pipe.tokenizer)
    small_tokenizer.__class__ = SmallVocabulary
    assert swap_text_encoder(pipe, small, tokenizer=small_tokenizer).text_encoder is small


@pytest.mark.parametrize("pipeline", ["diffusers", "clipcond"])
@pytest.mark.parametrize("tokenizer", ["openai/clip-vit-large-patch14", "encoder"], ids=["hub_id", "a_model"])
def test_a_tokenizer_that_is_not_one_is_refused_by_name_before_any_change(pipeline, tokenizer) -> None:
    """A hub id passed as `tokenizer` failed in diffusers' `register_modules` after the encoder
    was put in (the old tokenizer left beside it); a model, on `len`."""
    pipe = build_sd() if pipeline == "diffusers" else CLIPConditionedPipeline.from_pipe(build_sd())
    encoder, old_tokenizer, other = pipe.text_encoder, pipe.tokenizer, clip_text_model(7)
    given = other if tokenizer == "encoder" else tokenizer
    message = (
        f"`tokenizer` must be a transformers tokenizer (PreTrainedTokenizerBase) or None, got {type(given).__name__}"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        swap_text_encoder(pipe, other, tokenizer=given)
    assert pipe.text_encoder is encoder and pipe.tokenizer is old_tokenizer


def test_sdxl_refiner_reads_its_second_clip_alone() -> None:
    refiner = StableDiffusionXLImg2ImgPipeline(**sdxl_refiner_components(), requires_aesthetics_score=True)
    with pytest.raises(ValueError, match="reads no tokens from `text_encoder`"):
        swap_text_encoder(refiner, clip_text_model(7))
    assert refiner.text_encoder is None
    other = clip_text_model(8, with_projection=True)
    assert swap_text_encoder(refiner, other, component="text_encoder_2").text_encoder_2 is other


@pytest.mark.parametrize("family", ["sd3_pipe", "flux_pipe", "pixart_pipe"])
def test_transformer_pipelines_are_refused_before_any_change(family, request) -> None:
    pipe = request.getfixturevalue(family)
    encoder = pipe.text_encoder
    with pytest.raises(TypeError, match=rf"has no `unet`.*{type(pipe).__name__}\.from_pipe\(pipe, text_encoder="):
        swap_text_encoder(pipe, clip_text_model(7, with_projection=family == "sd3_pipe"))
    assert pipe.text_encoder is encoder


def test_cast_to_the_pipeline_dtype_equals_diffusers_built_with_the_cast_tower(caplog) -> None:
    tower = clip_text_model(7)  # float32, as `CLIPTextModel.from_pretrained` loads it
    peer = StableDiffusionPipeline(
        **{**components_of(build_sd().to(torch.bfloat16)), "text_encoder": copy.deepcopy(tower).to(torch.bfloat16)}
    )
    sd = build_sd().to(torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="clipcond.pipelines.swap"):
        swap_text_encoder(sd, tower)
    assert sd.text_encoder.dtype == torch.bfloat16
    assert "from torch.float32 to torch.bfloat16" in caplog.text
    assert np.array_equal(run(sd), run(peer))


@pytest.mark.parametrize(
    ("make", "component", "expected"),
    [
        (lambda: t5_encoder(3, 400), "text_encoder", "CLIPTextModel"),
        (lambda: clip_text_model(7, with_projection=True), "text_encoder", "CLIPTextModel"),
        (lambda: clip_text_model(7), "text_encoder_2", "CLIPTextModelWithProjection"),
        (lambda: "not a model", "text_encoder", "CLIPTextModel"),
    ],
)
def test_an_encoder_of_the_wrong_class_is_refused(make, component, expected) -> None:
    pipe = build_sdxl() if component == "text_encoder_2" else build_sd()
    old = getattr(pipe, component)
    with pytest.raises(TypeError, match=rf"`text_encoder` must be a {expected} for pipe\.{component} "):
        swap_text_encoder(pipe, make(), component=component)
    assert getattr(pipe, component) is old


def test_clip_conditioned_pipeline_takes_a_projection_clip_and_a_t5_slot_is_refused(sd_pipe) -> None:
    tower = clip_text_model(7, with_projection=True)
    ours = swap_text_encoder(CLIPConditionedPipeline.from_pipe(sd_pipe), tower)
    built = CLIPConditionedPipeline.from_pipe(sd_pipe, text_encoder=tower)
    assert ours.text_encoder is tower and np.array_equal(run(ours), run(built))
    plain = build_sd()
    t5_pipe = CLIPConditionedPipeline(
        **{k: plain.components[k] for k in ("unet", "scheduler", "vae", "text_encoder", "tokenizer")},
        text_encoder_2=t5_encoder(3, 400),
        tokenizer_2=plain.tokenizer,
        recipe="custom",
    )
    with pytest.raises(TypeError, match="text_encoder_2 holds a T5EncoderModel"):
        swap_text_encoder(t5_pipe, t5_encoder(4, 400), component="text_encoder_2")


def test_a_conditioner_made_before_the_swap_keeps_its_encoders() -> None:
    """Documented in swap_text_encoder and docs/pipeline.md: make the conditioner after swapping."""
    sd = build_sd()
    old, tower = sd.text_encoder, clip_text_model(7)
    before = TextConditioner.from_pipeline(sd)
    swap_text_encoder(sd, tower)
    assert before.clip[0].model is old
    after = TextConditioner.from_pipeline(sd)
    assert after.clip[0].model is tower
    expected = run(sd, negative_prompt="")
    kwargs = dict(num_inference_steps=2, guidance_scale=6.0, output_type="np", prompt=None)
    assert np.array_equal(run(sd, **kwargs, **after.pipeline_kwargs(PROMPT)), expected)
    assert not np.array_equal(run(sd, **kwargs, **before.pipeline_kwargs(PROMPT)), expected)


LONG = "a red circle " + "on a white background " * 20 + "and a blue square"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    """What transformers logs (its library logger does not propagate to pytest's caplog)."""
    records = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    yield records.messages
    logger.removeHandler(records)


def _length_warnings(messages: list[str]) -> list[str]:
    return [message for message in messages if "Token indices sequence length is longer" in message]


def test_a_long_prompt_with_and_logs_no_false_length_warning(transformers_log) -> None:
    pipe = CLIPConditionedPipeline.from_pipe(build_sd())  # a fresh tokenizer: transformers warns once per tokenizer
    run(pipe, prompt=f"{LONG} AND a green star", num_inference_steps=1)
    assert _length_warnings(transformers_log) == []
    pipe.tokenizer(LONG)  # the user's own whole-prompt tokenization still gets it
    assert len(_length_warnings(transformers_log)) == 1


def test_a_long_prompt_naming_a_multi_vector_token_logs_no_false_length_warning(transformers_log) -> None:
    conditioner = TextConditioner.from_pipeline(build_sd(), cache_size=0)
    torch.manual_seed(3)
    conditioner.load_textual_inversion(torch.randn(3, 32), token="<toy>")
    long = conditioner.encode(f"a <toy> {LONG}").tokens
    assert long.shape[1] == 2 * 77  # two windows: the length warning would be false
    assert _length_warnings(transformers_log) == []


def test_a_long_plain_prompt_logs_no_false_length_warning(transformers_log) -> None:
    pipe = CLIPConditionedPipeline.from_pipe(build_sd())
    run(pipe, prompt=LONG, num_inference_steps=1)
    assert _length_warnings(transformers_log) == []
