"""`CallInputChecks` on stand-ins (the attributes each check reads, no model), from the full
mutation run of pipelines/input_checks.py (benchmarks/results/mutation.md): each refusal's
whole message, with the argument it names, and the edges of what is taken (one step, a
`denoising_end` of 1, a VAE that SDXL upcasts). Milliseconds each."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from test_input_checks_messages import StandIn, WindowedStandIn


class Pipe(StandIn):
    """The shared stand-in, with what the sampling and pooled checks read too."""

    reads_time_ids = False
    _callback_tensor_inputs = ["latents", "prompt_embeds"]


Windowed = WindowedStandIn  # a pipeline whose encoded text comes in 77-token CLIP windows


def refused(error, call, expected: str) -> None:
    with pytest.raises(error) as refusal:
        call()
    assert str(refusal.value) == expected


TOKENS = torch.zeros(2, 77, 64)
POOLED = torch.zeros(2, 32)


def sdxl(**components) -> Pipe:
    pipe = Pipe("sdxl", {"force_zeros_for_empty_prompt": True}, **components)
    pipe.reads_time_ids = True
    return pipe


# ---------------------------------------------------------------- pooled embeddings (SDXL)


@pytest.mark.parametrize("negative", [False, True], ids=["positive", "negative"])
def test_pooled_embeddings_refusals_name_their_own_pair(negative) -> None:
    prefix = "negative_" if negative else ""
    tokens_name, pooled_name = f"{prefix}prompt_embeds", f"{prefix}pooled_prompt_embeds"

    def check(pipe, tokens, pooled):
        arguments = {"prompt_embeds": None, "negative_prompt_embeds": None, "pooled": None, "negative_pooled": None}
        arguments[tokens_name] = tokens
        arguments[f"{prefix}pooled"] = pooled
        return lambda: pipe.check_pooled_inputs(
            arguments["prompt_embeds"],
            arguments["negative_prompt_embeds"],
            arguments["pooled"],
            arguments["negative_pooled"],
        )

    refused(
        ValueError,
        check(Pipe(), TOKENS, POOLED),
        f"`{pooled_name}` is read by SDXL-class UNets only; this pipeline's recipe is 'sd'",
    )
    refused(
        ValueError,
        check(sdxl(), None, POOLED),
        f"`{pooled_name}` needs `{tokens_name}` (the token embeddings it was pooled from)",
    )
    refused(
        ValueError,
        check(sdxl(), TOKENS, None),
        f"an SDXL UNet reads pooled text: `{tokens_name}` needs `{pooled_name}`, from the same text encoders "
        "(`pipe.conditioner.pipeline_kwargs` gives both)",
    )
    for pooled, got in ((POOLED[:1], "(1, 32)"), (POOLED[None], "(1, 2, 32)"), ([[0.0] * 32] * 2, "list")):
        refused(
            ValueError,
            check(sdxl(), TOKENS, pooled),
            f"`{pooled_name}` must be a (2, pooled width) tensor, one row per row of `{tokens_name}`, got {got}",
        )
    check(sdxl(), TOKENS, POOLED)()  # one row per row: taken


def test_pooled_embeddings_of_one_row_per_row_are_taken_for_both() -> None:
    sdxl().check_pooled_inputs(TOKENS, TOKENS, POOLED, POOLED)
    Pipe().check_pooled_inputs(TOKENS, TOKENS, None, None)


# ---------------------------------------------------------------- SDXL's per-encoder prompts


def per_encoder(pipe, prompt_2=None, negative_prompt_2=None, embeds=None, negative_embeds=None, negative=None):
    return lambda: pipe.check_per_encoder_prompts(prompt_2, negative_prompt_2, embeds, negative_embeds, 2, negative)


TWO_CLIPS = dict(text_encoder=object(), tokenizer=object(), text_encoder_2=object(), tokenizer_2=object())


def test_a_second_prompt_beside_the_embeddings_it_would_become_is_refused_by_both_names() -> None:
    refused(
        ValueError,
        per_encoder(sdxl(**TWO_CLIPS), prompt_2="b", embeds=TOKENS),
        "give at most one of `prompt_2` and `prompt_embeds` (the embeddings are its encoding)",
    )
    refused(
        ValueError,
        per_encoder(sdxl(**TWO_CLIPS), negative_prompt_2="b", negative_embeds=TOKENS, negative="x"),
        "give at most one of `negative_prompt_2` and `negative_prompt_embeds` (the embeddings are its encoding)",
    )
    per_encoder(sdxl(**TWO_CLIPS), embeds=TOKENS, negative_embeds=TOKENS)()  # embeddings alone: taken


@pytest.mark.parametrize("name", ["prompt_2", "negative_prompt_2"])
def test_a_second_prompt_of_another_count_is_named(name) -> None:
    arguments = {name: ["a", "b", "c"], "negative": "x"}
    refused(
        ValueError,
        per_encoder(sdxl(**TWO_CLIPS), **arguments),
        f"`{name}` has 3 entries but the batch has 2 prompts; give one text per prompt, or a single string for all",
    )
    refused(
        TypeError,
        per_encoder(sdxl(**TWO_CLIPS), **{name: 3, "negative": "x"}),
        f"`{name}` must be a string or a list of strings, got int",
    )
    per_encoder(sdxl(**TWO_CLIPS), **{name: ["a", ""], "negative": "x"})()  # one per prompt, "" included


def test_a_second_negative_without_a_first_is_refused_only_where_a_missing_negative_means_zeros() -> None:
    refused(
        ValueError,
        per_encoder(sdxl(**TWO_CLIPS), negative_prompt_2="blurry"),
        "`negative_prompt_2` needs `negative_prompt`: without one, this pipeline's negative is zeros "
        "(force_zeros_for_empty_prompt=True) and the second encoder's text would be ignored",
    )
    per_encoder(sdxl(**TWO_CLIPS), negative_prompt_2="blurry", negative="dark")()
    no_zeros = Pipe("sdxl", {"force_zeros_for_empty_prompt": False}, **TWO_CLIPS)
    per_encoder(no_zeros, negative_prompt_2="blurry")()  # there a missing negative is "", as in diffusers


def test_a_second_prompt_where_one_clip_reads_is_refused_naming_what_is_read() -> None:
    """SDXL's refiner has only the second CLIP: it reads `prompt`, and nothing reads `prompt_2`."""
    refiner = sdxl(text_encoder=None, tokenizer=None, text_encoder_2=object(), tokenizer_2=object())
    expected = (
        "`{name}` has no encoder to read it: recipe 'sdxl' with these encoders reads `prompt` (encoder 1); "
        "leave `{name}` out, or use a family whose pipelines take it (prompt_2: SDXL, SD3, Flux; prompt_3: SD3 "
        "with its T5)"
    )
    refused(ValueError, per_encoder(refiner, prompt_2="b"), expected.format(name="prompt_2"))
    refused(
        ValueError, per_encoder(refiner, negative_prompt_2="b", negative="x"), expected.format(name="negative_prompt_2")
    )
    per_encoder(sdxl(**TWO_CLIPS), prompt_2="b", negative_prompt_2="c", negative="x")()  # both CLIPs: taken
    sd = Pipe("sd", text_encoder=object(), tokenizer=object())
    refused(
        ValueError,
        per_encoder(sd, prompt_2="b"),
        "`prompt_2` has no encoder to read it: recipe 'sd' with these encoders reads `prompt` (encoder 1); leave "
        "`prompt_2` out, or use a family whose pipelines take it (prompt_2: SDXL, SD3, Flux; prompt_3: SD3 with its T5)",
    )


# ---------------------------------------------------------------- the VAE's dtype


def vae_pipe(vae_dtype, unet_dtype=torch.float32, time_ids=False, upcast=None) -> Pipe:
    config = {} if upcast is None else {"force_upcast": upcast}
    pipe = Pipe("sdxl" if time_ids else "sd", vae=SimpleNamespace(dtype=vae_dtype, config=config))
    pipe.unet = SimpleNamespace(dtype=unet_dtype)
    pipe.reads_time_ids = time_ids
    return pipe


def test_a_vae_of_another_dtype_is_refused_with_each_fix() -> None:
    refused(
        ValueError,
        lambda: vae_pipe(torch.float16).check_vae_decodes("pil"),
        "the `vae` is torch.float16 but the `unet`, whose latents it decodes, is torch.float32: decoding would fail "
        "after every step; cast it (`pipe.vae.to(torch.float32)`) or load the pipeline with "
        "`torch_dtype=torch.float16`, or pass output_type='latent'",
    )
    refused(
        ValueError,
        lambda: vae_pipe(torch.float16, time_ids=True, upcast=False).check_vae_decodes("np"),
        "the `vae` is torch.float16 but the `unet`, whose latents it decodes, is torch.float32: decoding would fail "
        "after every step; cast it (`pipe.vae.to(torch.float32)`) or load the pipeline with "
        "`torch_dtype=torch.float16`, or give the VAE `force_upcast=True` (SDXL then decodes it in float32), or "
        "pass output_type='latent'",
    )
    refused(  # a bfloat16 VAE is not upcast by SDXL: no force_upcast advice
        ValueError,
        lambda: vae_pipe(torch.bfloat16, time_ids=True, upcast=True).check_vae_decodes("np"),
        "the `vae` is torch.bfloat16 but the `unet`, whose latents it decodes, is torch.float32: decoding would fail "
        "after every step; cast it (`pipe.vae.to(torch.float32)`) or load the pipeline with "
        "`torch_dtype=torch.bfloat16`, or pass output_type='latent'",
    )


def test_what_needs_no_cast_is_taken() -> None:
    vae_pipe(torch.float16, time_ids=True, upcast=True).check_vae_decodes("pil")  # SDXL decodes it in float32
    vae_pipe(torch.float16).check_vae_decodes("latent")  # nothing decoded
    vae_pipe(torch.float32).check_vae_decodes("pil")  # the same dtype
    no_vae = Pipe()
    no_vae.unet = SimpleNamespace(dtype=torch.float32)
    no_vae.check_vae_decodes("pil")  # no `vae` attribute at all
    with pytest.raises(ValueError):  # SD does not upcast, whatever the VAE's config says
        vae_pipe(torch.float16, upcast=True).check_vae_decodes("pil")
    with pytest.raises(ValueError):  # force_upcast missing from the config: off
        vae_pipe(torch.float16, time_ids=True).check_vae_decodes("pil")


# ---------------------------------------------------------------- sampling arguments


def sampling(
    pipe=None, steps=2, timesteps=None, sigmas=None, rescale=0.0, attention=None, callback=None, names=(), end=None
):
    pipe = pipe or Pipe()
    return lambda: pipe.check_sampling_inputs(steps, timesteps, sigmas, rescale, attention, callback, list(names), end)


def test_sampling_refusals_in_full() -> None:
    refused(ValueError, sampling(timesteps=[9], sigmas=[1.0]), "give at most one of `timesteps` and `sigmas`")
    refused(
        ValueError,
        sampling(steps=0),
        "`num_inference_steps` must be an int >= 1 (or None with custom `timesteps` or `sigmas`), got 0",
    )
    refused(ValueError, sampling(rescale=True), "`guidance_rescale` must be a finite number >= 0, got True")
    refused(ValueError, sampling(rescale="0.5"), "`guidance_rescale` must be a finite number >= 0, got '0.5'")
    refused(TypeError, sampling(attention=[("scale", 1)]), "`cross_attention_kwargs` must be a dict or None, got list")
    refused(
        TypeError,
        sampling(callback="print"),
        "`callback_on_step_end` must be callable: (pipe, step, timestep, tensors) -> dict",
    )
    refused(
        ValueError,
        sampling(names=["latents", "noise"]),
        "`callback_on_step_end_tensor_inputs` has ['noise']; choose from ['latents', 'prompt_embeds']",
    )
    for end in (0, 0.0, 1.5, True, "0.5", -0.1):
        refused(
            ValueError,
            sampling(end=end),
            f"`denoising_end` must be None or a fraction of the schedule in (0, 1], got {end!r}",
        )


def test_the_edges_of_what_sampling_takes() -> None:
    sampling(steps=1)()  # one step
    sampling(end=1)()  # the whole schedule
    sampling(end=1.0)()
    sampling(end=0.01)()
    sampling(rescale=0)()
    sampling(attention={"scale": 0.5}, callback=lambda *a: {}, names=["latents", "prompt_embeds"])()


# ---------------------------------------------------------------- the prompt arguments


def test_prompt_argument_refusals_in_full() -> None:
    pipe = Pipe()
    refused(
        ValueError,
        lambda: pipe.check_prompt_inputs(None, None, None, None),
        "give exactly one of `prompt` and `prompt_embeds`",
    )
    refused(
        ValueError,
        lambda: pipe.check_prompt_inputs("a", None, TOKENS, None),
        "give exactly one of `prompt` and `prompt_embeds`",
    )
    for embeds in (TOKENS[0], TOKENS.tolist()):
        refused(
            TypeError,
            lambda embeds=embeds: pipe.check_prompt_inputs(None, None, embeds, None),
            "`prompt_embeds` must be a (batch, seq, width) tensor",
        )
    refused(
        ValueError,
        lambda: pipe.check_prompt_inputs(["a", "b"], ["c", "d", "e"], None, None),
        "`negative_prompt` has 3 entries but there are 2 prompts; give one per prompt, or a single string",
    )
    assert pipe.check_prompt_inputs(["a", "b"], ["c", "d"], None, None) == 2
    assert pipe.check_prompt_inputs(["a", "b"], "c", None, None) == 2
    assert pipe.check_prompt_inputs(None, ["c", "d"], TOKENS, None) == 2


def test_size_and_generator_refusals_name_the_argument() -> None:
    def call(**changes):
        arguments = (
            dict(
                prompt=["a", "b"],
                negative_prompt=None,
                prompt_embeds=None,
                negative_prompt_embeds=None,
                height=64,
                width=64,
                guidance_scale=7.5,
                num_images_per_prompt=2,
                generator=None,
                output_type="pil",
            )
            | changes
        )
        return lambda: Pipe().check_inputs(*arguments.values())

    refused(ValueError, call(height=60), "`height` must be a positive multiple of 8 (the VAE's scale factor), got 60")
    refused(ValueError, call(width=60), "`width` must be a positive multiple of 8 (the VAE's scale factor), got 60")
    refused(
        ValueError,
        call(generator=[torch.Generator()] * 3),
        "got 3 generators for 4 images (prompts x num_images_per_prompt); pass one generator or one per image",
    )
    assert call(generator=[torch.Generator()] * 4)() == 2


def test_the_negative_given_reaches_the_window_check() -> None:
    """`check_inputs` hands its own negative arguments on: with `negative_prompt_embeds` there is
    nothing to encode, so short `prompt_embeds` are taken."""

    arguments = [None, None, torch.zeros(1, 50, 8), torch.zeros(1, 50, 8), 64, 64, 7.5, 1, None, "pil"]
    assert Windowed().check_inputs(*arguments) == 1
    arguments[3] = None
    with pytest.raises(ValueError, match=r"the missing negative prompt \(read as \"\"\) would be encoded"):
        Windowed().check_inputs(*arguments)
    arguments[1] = "blurry"
    with pytest.raises(
        ValueError, match=r"50 tokens, not a whole number of 77-token CLIP windows, and the negative prompt"
    ):
        Windowed().check_inputs(*arguments)


def test_short_embeddings_beside_a_text_negative_in_full() -> None:
    refused(
        ValueError,
        lambda: Windowed().check_negative_length(torch.zeros(1, 50, 8), "blurry", None, True),
        "`prompt_embeds` has 50 tokens, not a whole number of 77-token CLIP windows, and the negative prompt would "
        "be encoded as text, which gives whole windows: its embeddings could not go beside these. Give "
        "`negative_prompt_embeds` of the same shape, or encode both with "
        "`pipe.conditioner.pipeline_kwargs(prompt, negative_prompt)`",
    )


def test_embeddings_of_another_width_than_the_unet_reads_in_full() -> None:
    pipe = Pipe(unet=SimpleNamespace(config=SimpleNamespace(cross_attention_dim=64)))
    refused(
        ValueError,
        lambda: pipe.check_embeds_width(None, torch.zeros(1, 77, 32)),
        "`negative_prompt_embeds` is 32 wide but unet.config.cross_attention_dim is 64; give embeddings of this "
        "pipeline's text encoders (`pipe.conditioner.pipeline_kwargs`)",
    )


def test_a_pipeline_without_a_unet_says_how_to_build_one() -> None:
    refused(
        ValueError,
        Pipe().check_unet,
        "this pipeline has no `unet`, which a call denoises with; Pipe without one can only `encode_prompt`. "
        "Build it with a UNet: Pipe.from_pipe(pipe, unet=unet)",
    )


def test_a_negative_without_its_encoders_under_guidance_names_both_ways_out() -> None:
    pipe = Pipe("sd")
    refused(
        ValueError,
        lambda: pipe.check_text_encoders(False, True),
        "classifier-free guidance needs the negative prompt encoded, but this pipeline has no `text_encoder`, "
        "`tokenizer` to encode it; pass `negative_prompt_embeds`, or guidance_scale <= 1",
    )
    half = Pipe("sd", text_encoder=object())  # an encoder without its tokenizer encodes nothing
    with pytest.raises(
        ValueError, match=re.escape("this pipeline has no `tokenizer` to encode it; pass `prompt_embeds`")
    ):
        half.check_text_encoders(True, False)


# ---------------------------------------------------------------- the CLIP window


def test_no_window_without_a_clip_and_its_tokenizer() -> None:
    """Components missing altogether (no attribute) read as None, as those set to None."""
    assert Pipe("sd")._clip_window() is None
    assert Pipe("sd", text_encoder=object())._clip_window() is None  # no tokenizer
    assert Pipe("sd", tokenizer=object())._clip_window() is None  # no encoder
