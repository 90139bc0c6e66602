"""CLIPConditionedPipeline on SDXL-class UNets against diffusers' StableDiffusionXLPipeline on
the same tiny components: images bit for bit over SD's argument coverage, SDXL's own
arguments (pooled embeddings, micro-conditioning, the refiner's aesthetic score,
`denoising_end`), what the SD path has (weights, cache, clip-skip, LoRA, textual inversion,
callbacks, prompt editing and AND), and the errors for components that do not fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, SDXLCFGCutoffCallback
from tiny_pipelines import WIDTH, build_sdxl, clip_text_model, sdxl_refiner_components

from clipcond import CLIPConditionedPipeline, TextConditioner

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def ours_from(peer) -> CLIPConditionedPipeline:
    """A fresh pipeline (and so a fresh embedding cache) over the peer's components."""
    pipe = CLIPConditionedPipeline.from_pipe(peer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kwargs):
    settings = dict(num_inference_steps=2, output_type="np")
    settings.update(kwargs)
    return pipe(generator=torch.Generator().manual_seed(0), **settings).images


def equal(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b)


def fresh_sdxl() -> StableDiffusionXLPipeline:
    peer = build_sdxl()
    peer.set_progress_bar_config(disable=True)
    return peer


# ---------------------------------------------------------------- images, bit for bit


def _scale_latents_once(pipe, step, timestep, tensors):
    return {"latents": tensors["latents"] * 0.9} if step == 0 else {}


def _stop_guidance_after_the_first_step(pipe, step, timestep, tensors):
    """diffusers' documented SDXL recipe: drop guidance, keep the prompts' rows of each tensor."""
    if step != 0:
        return {}
    pipe._guidance_scale = 0.0
    return {name: tensors[name].chunk(2)[-1] for name in ("prompt_embeds", "add_text_embeds", "add_time_ids")}


def _interrupt(pipe, step, timestep, tensors):
    pipe._interrupt = True
    return {}


CALLS = {
    "zeros_for_the_missing_negative": dict(prompt="a red circle"),
    "two_prompts_two_negatives": dict(prompt=["a red circle", "two blue squares"], negative_prompt=["blurry", "dark"]),
    "no_guidance": dict(prompt="a red circle", guidance_scale=1.0),
    "two_images_per_prompt": dict(prompt="a red circle", negative_prompt="ugly", num_images_per_prompt=2),
    "a_generator_per_image": dict(prompt=["a", "b"], negative_prompt=["c", "d"], generators=True),
    "latent_output": dict(prompt="a red circle", output_type="latent"),
    "tensor_output": dict(prompt="a red circle", output_type="pt"),
    "custom_timesteps": dict(prompt="a red circle", timesteps=[999, 600, 250, 40], num_inference_steps=None),
    "custom_sigmas": dict(prompt="a red circle", sigmas=[14.6, 3.0, 0.8, 0.1], num_inference_steps=None),
    "guidance_rescale": dict(prompt="a red circle", negative_prompt="blurry", guidance_rescale=0.7),
    "micro_conditioning": dict(
        prompt="a red circle", original_size=(64, 48), crops_coords_top_left=(4, 8), target_size=(32, 40)
    ),
    "negative_micro_conditioning": dict(
        prompt="a red circle",
        negative_prompt="blurry",
        negative_original_size=(16, 16),
        negative_crops_coords_top_left=(2, 2),
        negative_target_size=(24, 24),
    ),
    # one negative size alone: diffusers' text-to-image reads the negative sizes only as a pair
    "negative_original_size_alone": dict(
        prompt="a red circle", negative_prompt="blurry", original_size=(64, 48), negative_original_size=(16, 16)
    ),
    "denoising_end": dict(prompt="a red circle", denoising_end=0.6, num_inference_steps=5, output_type="latent"),
    "denoising_end_leaving_one_step": dict(  # cutoff 990: the first step, at 999, runs
        prompt="a red circle", denoising_end=0.01, num_inference_steps=4, output_type="latent"
    ),
    "callback_changes_latents": dict(prompt="a red circle", callback_on_step_end=_scale_latents_once),
    "callback_stops_guidance": dict(
        prompt="a red circle",
        negative_prompt="blurry",
        callback_on_step_end=_stop_guidance_after_the_first_step,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"],
    ),
    "callback_interrupts": dict(prompt="a red circle", callback_on_step_end=_interrupt),
    "ready_made_callback": dict(  # diffusers' callback object names the tensors it reads
        prompt="a red circle",
        negative_prompt="blurry",
        callback_on_step_end=MultiPipelineCallbacks(
            [SDXLCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=0)]
        ),
    ),
    "clip_skip_zero_negative": dict(prompt="a red circle", clip_skip=1),
    "a_second_prompt": dict(prompt="a red circle", prompt_2="a blue square"),
    "second_prompts_and_negatives": dict(
        prompt=["a red circle", "two blue squares"],
        prompt_2=["in the rain", "at night"],
        negative_prompt=["blurry", "dark"],
        negative_prompt_2="low quality",
    ),
}


def call(pipe, kwargs: dict):
    """`run`, or with one generator per image (seeds 0, 1) where `kwargs` says `generators`."""
    kwargs = dict(kwargs)
    if kwargs.pop("generators", False):
        generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
        return pipe(generator=generators, **{"num_inference_steps": 2, "output_type": "np", **kwargs}).images
    return run(pipe, **kwargs)


@pytest.mark.parametrize("name", list(CALLS))
def test_images_equal_stable_diffusion_xl_pipelines(sdxl_pipe, name) -> None:
    """`from_pipe(sdxl)` gives StableDiffusionXLPipeline's images to the bit, over SD's
    argument coverage and SDXL's own arguments; each argument changes the image."""
    kwargs = CALLS[name]
    expected = call(sdxl_pipe, kwargs)
    assert equal(call(ours_from(sdxl_pipe), kwargs), expected)
    changed = set(kwargs) - {"prompt", "negative_prompt", "output_type", "callback_on_step_end_tensor_inputs"}
    if changed and not {"timesteps", "sigmas"} & changed:
        plain = {key: value for key, value in kwargs.items() if key not in changed}
        assert not equal(call(sdxl_pipe, plain), expected), changed


SIZES = dict(
    original_size=(64, 48),
    crops_coords_top_left=(4, 8),
    target_size=(32, 40),
    negative_original_size=(16, 16),
    negative_crops_coords_top_left=(2, 2),
    negative_target_size=(24, 24),
)


@pytest.mark.parametrize(
    "as_given",
    [np.int64, np.int32, np.uint16, float, np.float32],
    ids=["numpy_int64", "numpy_int32", "numpy_uint16", "integral_floats", "numpy_float32"],
)
def test_sizes_as_numpy_integers_or_integral_floats_are_read_as_ints(sdxl_pipe, as_given) -> None:
    """Micro-conditioning sizes and corners given as numpy integers or integral floats (as
    `arr.shape` or dataset metadata give them): diffusers takes them, and so do we, with the
    images of the same call with Python ints (and diffusers')."""
    settings = dict(prompt="a red circle", negative_prompt="blurry")
    given = {name: tuple(as_given(item) for item in pair) for name, pair in SIZES.items()}
    expected = run(sdxl_pipe, **settings, **SIZES)
    assert equal(run(ours_from(sdxl_pipe), **settings, **given), expected)
    assert equal(run(sdxl_pipe, **settings, **given), expected)


def test_from_pretrained_of_an_sdxl_folder(sdxl_pipe, tmp_path) -> None:
    """A folder saved by StableDiffusionXLPipeline loads into CLIPConditionedPipeline (recipe
    "sdxl" read from the UNet) and gives its images; our own save round-trips."""
    sdxl_pipe.save_pretrained(tmp_path / "sdxl")
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "sdxl")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.recipe == "sdxl" and loaded.config.force_zeros_for_empty_prompt is True
    assert loaded.config.requires_aesthetics_score is False
    settings = dict(prompt="a red circle", negative_prompt="blurry")
    expected = run(sdxl_pipe, **settings)
    assert np.array_equal(run(loaded, **settings), expected)
    loaded.save_pretrained(tmp_path / "ours")
    again = CLIPConditionedPipeline.from_pretrained(tmp_path / "ours")
    again.set_progress_bar_config(disable=True)
    assert again.config.recipe == "sdxl" and np.array_equal(run(again, **settings), expected)
    assert again(prompt="a", num_inference_steps=1, return_dict=False)[0][0].size == (32, 32)  # SDXL's 1-tuple


def test_force_zeros_for_empty_prompt_false_reads_the_empty_prompt(tmp_path) -> None:
    """`force_zeros_for_empty_prompt=False` (a pipeline config setting, as in SDXL): a missing
    negative is the empty prompt's embeddings, as in StableDiffusionXLPipeline."""
    peer = StableDiffusionXLPipeline(**{**fresh_sdxl().components, "force_zeros_for_empty_prompt": False})
    peer.set_progress_bar_config(disable=True)
    ours = ours_from(peer)
    assert ours.config.force_zeros_for_empty_prompt is False
    expected = run(peer, prompt="a red circle")
    assert np.array_equal(run(ours, prompt="a red circle"), expected)
    assert not np.array_equal(expected, run(ours_from(fresh_sdxl()), prompt="a red circle"))
    # There a missing negative is "" for the first encoder, and `negative_prompt_2` is the second's.
    settings = dict(prompt="a red circle", negative_prompt_2="blurry")
    assert np.array_equal(run(ours, **settings), run(peer, **settings))
    assert not np.array_equal(run(ours, **settings), expected)


def test_clip_skip_skips_layers_for_the_empty_negative_of_force_zeros_false() -> None:
    """A documented difference: under `force_zeros_for_empty_prompt=False` a missing negative
    reads "", and `clip_skip` skips layers for it too, as for any negative text; diffusers reads
    `hidden_states[-2]` for its negatives whatever `clip_skip` says. Our image is diffusers' fed
    its own `encode_prompt` of "" as a prompt, with the same `clip_skip`."""
    peer = StableDiffusionXLPipeline(**{**fresh_sdxl().components, "force_zeros_for_empty_prompt": False})
    peer.set_progress_bar_config(disable=True)

    def skipped(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, _, pooled, _ = peer.encode_prompt(
            text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False, clip_skip=1
        )
        return tokens, pooled

    (tokens, pooled), (negative, negative_pooled) = skipped("a red circle"), skipped("")
    expected = run(
        peer,
        prompt_embeds=tokens,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative,
        negative_pooled_prompt_embeds=negative_pooled,
    )
    got = run(ours_from(peer), prompt="a red circle", clip_skip=1)
    assert equal(got, expected)
    assert not equal(got, run(peer, prompt="a red circle", clip_skip=1))


@pytest.mark.parametrize("task", ["text_to_image", "img2img", "inpaint"])
def test_float16_images_and_the_vae_upcast_as_diffusers(task) -> None:
    """SDXL in float16 (on the CPU): a float16 VAE whose config says `force_upcast` decodes (and
    for img2img and inpaint, encodes) in float32 and is cast back, as diffusers' SDXL pipelines
    do: images equal to the bit, the shared VAE left in float16."""
    from diffusers import StableDiffusionXLInpaintPipeline

    from clipcond import CLIPConditionedImg2ImgPipeline, CLIPConditionedInpaintPipeline

    classes = {
        "text_to_image": (StableDiffusionXLPipeline, CLIPConditionedPipeline),
        "img2img": (StableDiffusionXLImg2ImgPipeline, CLIPConditionedImg2ImgPipeline),
        "inpaint": (StableDiffusionXLInpaintPipeline, CLIPConditionedInpaintPipeline),
    }
    peer_class, our_class = classes[task]
    peer = peer_class(**fresh_sdxl().components).to(torch.float16)
    ours = our_class.from_pipe(peer, torch_dtype=torch.float16)  # from_pipe casts to float32 by default
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
    assert ours.vae is peer.vae and peer.vae.dtype == torch.float16 and peer.vae.config.force_upcast
    # sizes float16 cannot hold (4097 -> 4096): the time ids are made in the pipeline's dtype, as SDXL's
    settings = dict(prompt="a red circle", negative_prompt="blurry", original_size=(4097, 2049))
    if task != "text_to_image":
        settings["image"] = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        settings["strength"] = 0.75  # of 2 steps, 1 runs (at img2img's default 0.3, none would)
    if task == "inpaint":
        settings["mask_image"] = torch.zeros(1, 1, 64, 64)
        settings["mask_image"][..., 16:48, 8:40] = 1
    expected = run(peer, **settings)
    assert peer.vae.dtype == torch.float16
    assert np.isfinite(expected).all() and np.array_equal(run(ours, **settings), expected)
    assert peer.vae.dtype == torch.float16


# ---------------------------------------------------------------- embeddings


def test_encode_prompt_and_given_embeddings_are_sdxls(sdxl_pipe) -> None:
    """`encode_prompt` returns SDXL's four tensors, bit for bit; the pipeline called with them
    (all four, the prompt's alone with zeros for the negative, or the prompt's with a negative
    text prompt) gives SDXL's images."""
    for args in [
        dict(prompt=["a red circle", "two blue squares"], num_images_per_prompt=2, negative_prompt=["x", "y"]),
        dict(prompt="a red circle", do_classifier_free_guidance=False),
        dict(prompt="a red circle"),
        dict(prompt=["a", "b"], prompt_2=["at night", "c"], negative_prompt="x", negative_prompt_2=["y", "z"]),
    ]:
        ours = ours_from(sdxl_pipe)  # a fresh cache: see test_cached_and_shared_pooled_vectors_are_bit_identical
        with torch.no_grad():  # as inside a call: with grad on, torch may pick other kernels
            expected = sdxl_pipe.encode_prompt(device="cpu", **args)
            got = ours.encode_prompt(device="cpu", **args)
        assert len(got) == 4
        for a, b in zip(got, expected):
            assert (a is None and b is None) or torch.equal(a, b)
    with torch.no_grad():
        e = sdxl_pipe.encode_prompt("a red circle", device="cpu", negative_prompt="blurry")
    for settings in [
        dict(
            prompt_embeds=e[0],
            negative_prompt_embeds=e[1],
            pooled_prompt_embeds=e[2],
            negative_pooled_prompt_embeds=e[3],
        ),
        dict(prompt_embeds=e[0], pooled_prompt_embeds=e[2]),
        dict(prompt_embeds=e[0], pooled_prompt_embeds=e[2], negative_prompt="blurry"),
        dict(prompt_embeds=e[0], pooled_prompt_embeds=e[2], negative_prompt="blurry", negative_prompt_2="dark"),
    ]:
        assert np.array_equal(run(ours, **settings), run(sdxl_pipe, **settings))


def test_weights_long_prompts_and_break_go_through_the_conditioner(sdxl_pipe) -> None:
    """Weighted, BREAK and longer-than-77-token prompts give the images of SDXL fed the
    conditioner's embeddings (diffusers itself would truncate and ignore the syntax)."""
    ours = ours_from(sdxl_pipe)
    long = ", ".join(["a small red circle next to a large blue square"] * 9)
    for prompt, negative in [("a (red:1.4) circle BREAK a [blue] square", "blurry"), (long, None)]:
        kwargs = ours.conditioner.pipeline_kwargs(prompt, negative)
        assert np.array_equal(run(ours, prompt=prompt, negative_prompt=negative), run(sdxl_pipe, **kwargs))
    assert ours.conditioner.pipeline_kwargs(long)["prompt_embeds"].shape[1] > 77


def test_a_repeated_prompt_comes_from_the_cache(sdxl_pipe) -> None:
    ours = ours_from(sdxl_pipe)
    calls = []
    hooks = [
        encoder.register_forward_hook(lambda *_: calls.append(1))
        for encoder in (ours.text_encoder, ours.text_encoder_2)
    ]
    try:
        first = run(ours, prompt="a red circle", negative_prompt="blurry")
        encoded = len(calls)
        assert np.array_equal(run(ours, prompt="a red circle", negative_prompt="blurry"), first)
        assert encoded == 4 and len(calls) == encoded  # two encoders, prompts then negatives; then none
    finally:
        for hook in hooks:
            hook.remove()


def test_cached_and_shared_pooled_vectors_are_bit_identical(sdxl_pipe) -> None:
    """The text projection that makes SDXL's pooled vector is a matrix product whose CPU
    kernel rounds differently with its number of rows, so a pooled vector projected in a batch
    of another size than diffusers' differs in the last bit. Records hold the pooled state and
    the projection runs over diffusers' rows at assembly: a cache hit (encoded in a batch of
    one, read in a batch of two) and one negative for several prompts (encoded once) give
    diffusers' images exactly."""
    ours = ours_from(sdxl_pipe)
    run(ours, prompt="a red circle")  # caches "a red circle" from a batch of one
    settings = dict(prompt=["a red circle", "two blue squares"], negative_prompt="blurry")
    assert np.array_equal(run(ours, **settings), run(sdxl_pipe, **settings))
    embeds = ours.encode_prompt(["a red circle", "two blue squares"], negative_prompt="blurry")
    expected = sdxl_pipe.encode_prompt(
        ["a red circle", "two blue squares"], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt="blurry",
    )  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(embeds, expected))


# ---------------------------------------------------------------- the refiner


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(aesthetic_score=9.0, negative_aesthetic_score=1.0, negative_prompt="blurry"),
        dict(original_size=(64, 64), crops_coords_top_left=(8, 0)),
    ],
)
def test_a_refiner_reads_aesthetic_scores_as_sdxl_img2img_does(kwargs) -> None:
    """A UNet with room for 5 time ids is a refiner (requires_aesthetics_score read from it):
    its time ids end in the aesthetic score. Reference: SDXL's img2img pipeline at strength 1
    from a zero latent, which starts from the same noise."""
    parts = sdxl_refiner_components()
    peer = StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=True)
    peer.set_progress_bar_config(disable=True)
    ours = CLIPConditionedPipeline(**parts)
    ours.set_progress_bar_config(disable=True)
    assert ours.config.requires_aesthetics_score is True and ours.config.recipe == "sdxl"
    settings = dict(prompt="a red circle", output_type="latent", **kwargs)
    expected = run(peer, image=torch.zeros(1, 4, 32, 32), strength=1.0, **settings)
    got = run(ours, **settings)
    assert torch.equal(got, expected)
    if kwargs:
        assert not torch.equal(got, run(ours, prompt="a red circle", output_type="latent"))


# ---------------------------------------------------------------- what the SD path has


def _sdxl_lora(folder) -> None:
    """A LoRA on the tiny SDXL UNet and both text encoders, saved the diffusers way."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    source = build_sdxl()
    torch.manual_seed(1)
    source.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    text = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    for encoder in (source.text_encoder, source.text_encoder_2):
        inject_adapter_in_model(text, encoder)
    StableDiffusionXLPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(source.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(source.text_encoder)),
        text_encoder_2_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(source.text_encoder_2)),
    )


def test_lora_loads_into_both_text_encoders_and_scales_as_in_sdxl(tmp_path) -> None:
    """`load_lora_weights` follows SDXL's loader (the second text encoder too), and
    `cross_attention_kwargs={"scale": s}`, `unload_lora_weights` and `fuse_lora` give
    StableDiffusionXLPipeline's images (the embedding cache follows the LoRA scale)."""
    _sdxl_lora(tmp_path / "lora")
    peer, ours = fresh_sdxl(), ours_from(fresh_sdxl())
    without = run(ours, prompt="a red circle", negative_prompt="blurry")
    for pipe in (peer, ours):
        pipe.load_lora_weights(tmp_path / "lora")
    assert any("lora" in name for name, _ in ours.text_encoder_2.named_parameters())
    settings = dict(prompt="a red circle", negative_prompt="blurry")
    with_lora = run(ours, **settings)
    assert np.array_equal(with_lora, run(peer, **settings)) and not np.array_equal(with_lora, without)
    half = dict(settings, cross_attention_kwargs={"scale": 0.5})
    assert np.array_equal(run(ours, **half), run(peer, **half)) and not np.array_equal(run(ours, **half), with_lora)
    for pipe in (peer, ours):
        pipe.fuse_lora()  # SDXL's default components: the UNet and both text encoders
    fused = run(ours, **settings)
    assert np.array_equal(fused, run(peer, **settings)) and np.abs(fused - with_lora).max() < 1e-5
    ours.unfuse_lora()
    ours.unload_lora_weights()
    # Within 1e-6, not bit-equal (measured 1e-7): unfusing subtracts the LoRA's delta again.
    assert np.abs(run(ours, **settings) - without).max() < 1e-6


def test_textual_inversion_in_both_encoders_as_in_sdxl(tmp_path) -> None:
    """An SDXL embedding (`clip_l` and `clip_g` vectors, two each) loaded into each encoder as
    diffusers documents it: a prompt and a negative naming its token give SDXL's images."""
    peer, ours = fresh_sdxl(), ours_from(fresh_sdxl())
    torch.manual_seed(3)
    vectors = {name: torch.randn(2, WIDTH) for name in ("clip_l", "clip_g")}
    settings = dict(prompt="a <toy> circle", negative_prompt="a blurry <toy>")
    before = run(ours, **settings)
    for pipe in (peer, ours):
        pipe.load_textual_inversion(
            vectors["clip_l"], token="<toy>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
        )
        pipe.load_textual_inversion(
            vectors["clip_g"], token="<toy>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
        )
    after = run(ours, **settings)
    assert np.array_equal(after, run(peer, **settings)) and not np.array_equal(after, before)
    # The second encoder's own text names the token too (expanded by its tokenizer, as in SDXL).
    settings = dict(prompt="a circle", prompt_2="a <toy> circle", negative_prompt="x", negative_prompt_2="<toy>")
    assert np.array_equal(run(ours, **settings), run(peer, **settings))


@pytest.mark.parametrize(
    "counts",
    [{"clip_l": 2}, {"clip_l": 2, "clip_g": 3}, {"clip_l": 2, "clip_g": 1}],
    ids=["clip_l_only", "two_then_three_vectors", "two_then_one_vector"],
)
def test_each_encoder_expands_a_token_with_its_own_tokenizer_as_sdxl(counts) -> None:
    """With `prompt_2` left out, each CLIP reads the prompt with the token expanded by its own
    tokenizer, as SDXL's encode_prompt does: a token loaded into the first CLIP only, or with
    another number of vectors in each, gives SDXL's images and embeddings, bit for bit."""
    peer, ours = fresh_sdxl(), ours_from(fresh_sdxl())
    torch.manual_seed(3)
    vectors = {name: torch.randn(count, WIDTH) for name, count in counts.items()}
    for pipe in (peer, ours):
        for name, encoder, tokenizer in (
            ("clip_l", pipe.text_encoder, pipe.tokenizer),
            ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2),
        ):
            if name in vectors:
                pipe.load_textual_inversion(vectors[name], token="<toy>", text_encoder=encoder, tokenizer=tokenizer)
    settings = dict(prompt=["a <toy> circle", "two <toy>s"], negative_prompt="a blurry <toy>")
    assert np.array_equal(run(ours, **settings), run(peer, **settings))
    given = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    expected = peer.encode_prompt(settings["prompt"], negative_prompt=settings["negative_prompt"], **given)
    got = ours.encode_prompt(settings["prompt"], negative_prompt=settings["negative_prompt"], **given)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    # A negative text beside given prompt embeddings is expanded per encoder too.
    embeds = dict(prompt_embeds=expected[0], pooled_prompt_embeds=expected[2])
    expected = peer.encode_prompt(None, negative_prompt=["a blurry <toy>", "<toy>"], **embeds, **given)
    got = ours.encode_prompt(None, negative_prompt=["a blurry <toy>", "<toy>"], **embeds, **given)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_prompt_editing_swaps_tokens_and_pooled_rows(sdxl_pipe) -> None:
    """`[red:blue:0.5]` natively equals SDXL driven by `pipeline_kwargs`' step callback, which
    swaps `prompt_embeds` and `add_text_embeds`; with a negative and with SDXL's zeros, and with
    negative sizes, whose time ids go on the unconditional rows only (found by mutation testing:
    `xǁDenoisingPlanǁunconditional_rows__mutmut_1`, `_4`, the count of those rows changed)."""
    ours = ours_from(sdxl_pipe)
    sizes = dict(negative_original_size=(16, 16), negative_target_size=(24, 24))
    for negative, negative_sizes in (("[blurry|dark]", {}), (None, {}), ("blurry", sizes)):
        edited = dict(prompt="a [red:blue:0.5] circle", negative_prompt=negative, num_inference_steps=4)
        kwargs = ours.conditioner.pipeline_kwargs(edited["prompt"], negative, num_inference_steps=4)
        expected = run(sdxl_pipe, **kwargs, num_inference_steps=4, output_type="latent", **negative_sizes)
        got = run(ours, **edited, output_type="latent", **negative_sizes)
        assert torch.equal(got, expected), negative
        plain = run(ours, prompt="a red circle", negative_prompt=negative, output_type="latent", **negative_sizes)
        assert not torch.equal(got, plain)


def test_one_second_prompt_string_goes_with_every_prompt(sdxl_pipe) -> None:
    """docs/pipeline.md: a single `prompt_2` string reads as that text for each prompt of a
    list (StableDiffusionXLPipeline fails on it: its batches would differ in size)."""
    ours = ours_from(sdxl_pipe)
    prompts = dict(prompt=["a red circle", "two blue squares"], negative_prompt=["x", "y"])
    shared = run(ours, **prompts, prompt_2="at night")
    assert np.array_equal(shared, run(ours_from(sdxl_pipe), **prompts, prompt_2=["at night", "at night"]))
    assert not np.array_equal(shared, run(ours_from(sdxl_pipe), **prompts))


def test_prompt_editing_in_the_second_prompt(sdxl_pipe) -> None:
    """An edit in `prompt_2` alone (or in `negative_prompt_2`) swaps the second encoder's text
    at its step: natively equal to SDXL driven by `pipeline_kwargs`' step callback."""
    ours = ours_from(sdxl_pipe)
    for second in (dict(prompt_2="a [red:blue:0.5] circle"), dict(prompt_2="a", negative_prompt_2="[dark|dim] x")):
        edited = dict(prompt="a circle", negative_prompt="blurry", num_inference_steps=4, **second)
        kwargs = ours.conditioner.pipeline_kwargs(
            "a circle",
            "blurry",
            num_inference_steps=4,
            prompt_2=second["prompt_2"],
            negative_prompt_2=second.get("negative_prompt_2"),
        )
        assert "callback_on_step_end" in kwargs
        expected = run(sdxl_pipe, **kwargs, num_inference_steps=4, output_type="latent")
        assert torch.equal(run(ours, **edited, output_type="latent"), expected)


def test_and_gives_each_part_its_own_pooled_row(sdxl_pipe) -> None:
    """`AND` with SDXL: the UNet runs on the unconditional rows (zeros: no negative) and each
    part's row, each with its pooled vector and time ids; predictions combine as A1111."""
    ours = ours_from(sdxl_pipe)
    got = run(
        ours,
        prompt="a red circle :1.2 AND a blue square :0.8",
        guidance_scale=6.0,
        num_inference_steps=3,
        output_type="latent",
    )
    parts = ours.conditioner.encode(["a red circle", " a blue square"])
    tokens = torch.cat([torch.zeros_like(parts.tokens[:1]), parts.tokens])
    pooled = torch.cat([torch.zeros_like(parts.pooled[:1]), parts.pooled])
    time_ids = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]).repeat(3, 1)
    scheduler = ours.scheduler
    scheduler.set_timesteps(3)
    latents = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        rows = scheduler.scale_model_input(torch.cat([latents] * 3), t)
        with torch.no_grad():
            noise = ours.unet(
                rows, t, encoder_hidden_states=tokens, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
            ).sample
        uncond = noise[0:1]
        combined = uncond + (noise[1:2] - uncond) * (1.2 * 6.0) + (noise[2:3] - uncond) * (0.8 * 6.0)
        latents = scheduler.step(combined, t, latents).prev_sample
    torch.testing.assert_close(got, latents, rtol=1e-5, atol=1e-5)


def test_the_offload_sequence_names_the_second_text_encoder() -> None:
    assert CLIPConditionedPipeline.model_cpu_offload_seq.split("->")[:2] == ["text_encoder", "text_encoder_2"]


def test_model_cpu_offload_hooks_on_the_cpu_keep_sdxls_images() -> None:
    """`enable_model_cpu_offload(device="cpu")` runs accelerate's hooks (each model placed
    for its forward) without an accelerator: SDXL's images bit for bit, also from the cache
    (the pooled state projected at assembly, outside the text encoder's hooked forward)."""
    reference = run(fresh_sdxl(), prompt="a red circle", negative_prompt="blurry")
    pipe = ours_from(fresh_sdxl())
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe.text_encoder_2.__dict__.get("_hf_hook") is not None
    assert np.array_equal(run(pipe, prompt="a red circle", negative_prompt="blurry"), reference)
    assert np.array_equal(run(pipe, prompt="a red circle", negative_prompt="blurry"), reference)  # cached


def test_an_encoder_placed_by_hooks_computes_on_their_execution_device() -> None:
    """Sequential offload leaves the weights on the meta device and places them per layer at
    its execution device: prompts go there, not to the first weight's device."""
    from accelerate import cpu_offload

    from clipcond.encoders import TextEncoder

    pipe = fresh_sdxl()
    encoder = TextEncoder(pipe.text_encoder_2, pipe.tokenizer_2)
    states = torch.randn(3, pipe.text_encoder_2.config.hidden_size)
    with torch.no_grad():
        projected = encoder.project_pooled(states)
        cpu_offload(pipe.text_encoder_2, execution_device=torch.device("cpu"))
        assert next(pipe.text_encoder_2.parameters()).device.type == "meta"
        assert encoder.device == torch.device("cpu")
        # the pooled projection, run outside the model's forward, is placed by its own hook
        assert torch.equal(encoder.project_pooled(states), projected)


@cuda
def test_gpu_model_cpu_offload_of_an_sdxl_pipeline() -> None:
    """`enable_model_cpu_offload()` moves both text encoders, the UNet and the VAE in turn:
    SDXL's images, and every model back on the CPU after the call."""
    reference = run(fresh_sdxl().to("cuda"), prompt="a red circle", negative_prompt="blurry")
    pipe = ours_from(fresh_sdxl())
    pipe.enable_model_cpu_offload()
    images = run(pipe, prompt="a red circle", negative_prompt="blurry")
    assert np.abs(images - reference).max() < 1e-3
    assert all(model.device.type == "cpu" for model in (pipe.text_encoder, pipe.text_encoder_2, pipe.unet))


LONG_PROMPT = " ".join(["red circle"] * 45)  # two CLIP windows


@cuda
def test_gpu_pooled_vectors_of_prompts_of_several_windows(sdxl_pipe) -> None:
    """Each prompt's pooled vector is its first window's, picked on the device the states are on
    (probe16's mutation run: an index left on the CPU survives every CPU test)."""
    pipe = copy.deepcopy(sdxl_pipe).to("cuda")
    with torch.no_grad():
        got = TextConditioner.from_pipeline(pipe, cache_size=0).encode([LONG_PROMPT, "a red cat"]).pooled
        on_cpu = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0).encode([LONG_PROMPT, "a red cat"]).pooled
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), on_cpu, rtol=1e-4, atol=1e-4)


@cuda
def test_gpu_t5_masks_of_a_disk_hit_and_a_fresh_prompt_share_their_device(pixart_pipe, tmp_path) -> None:
    """A record read from disk is put on the conditioner's device; a fresh prompt's T5 mask must be
    there too, or stacking the batch's masks mixes devices (probe16's mutation run, as above)."""
    pipe = copy.deepcopy(pixart_pipe).to("cuda")
    with torch.no_grad():
        TextConditioner.from_pipeline(pipe, cache_dir=str(tmp_path)).encode("a red cat")
        second = TextConditioner.from_pipeline(pipe, cache_dir=str(tmp_path))
        embeds = second.encode(["a red cat", "a blue dog"])  # one disk hit, one fresh encode
    assert second.cache.hits == 1
    assert embeds.mask is not None and embeds.mask.device == embeds.tokens.device
    assert embeds.tokens.device.type == "cuda"


@cuda
def test_gpu_compel_mode_on_the_device_equals_the_cpu(sd_pipe) -> None:
    """compel's blend weights are made on the states' device (probe17's mutation run of
    emphasis.py: weights left on the CPU survive every CPU test)."""
    prompt = "a (red:1.3) circle and a (blue:0.5) square on a (green:0) mat"
    with torch.no_grad():
        expected = TextConditioner.from_pipeline(sd_pipe, emphasis="compel", cache_size=0).encode(prompt).tokens
        pipe = copy.deepcopy(sd_pipe).to("cuda")
        got = TextConditioner.from_pipeline(pipe, emphasis="compel", cache_size=0).encode(prompt).tokens
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)


@cuda
def test_gpu_a_schedules_step_embeddings_on_the_device_equal_the_cpus(sd_pipe) -> None:
    """`PromptSchedule.embeds_at` selects rows with an index on the embeddings' device (probe17's
    mutation run of scheduled_embeds.py: a CPU index for CUDA embeddings)."""
    prompt = "a [red:blue:0.5] circle"
    with torch.no_grad():
        expected = TextConditioner.from_pipeline(sd_pipe, cache_size=0).schedule(prompt, 4, "blurry")
        pipe = copy.deepcopy(sd_pipe).to("cuda")
        schedule = TextConditioner.from_pipeline(pipe, cache_size=0).schedule(prompt, 4, "blurry")
    for step in (0, 3):
        (got, got_negative), (want, want_negative) = schedule.embeds_at(step), expected.embeds_at(step)
        assert got.tokens.device.type == "cuda"
        torch.testing.assert_close(got.tokens.cpu(), want.tokens, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_negative.tokens.cpu(), want_negative.tokens, rtol=1e-4, atol=1e-4)


@cuda
def test_gpu_step_callback_puts_the_next_texts_on_the_pipelines_device(sd_pipe) -> None:
    """A conditioner kept on the CPU and a pipeline on the GPU: the step callback's tensors go to
    the device of the pipeline's tensors (probe17's mutation run: `.to(dtype=...)` alone survives)."""
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    kwargs = cond.pipeline_kwargs("a [red:blue:0.5] circle", num_inference_steps=4)
    swap = kwargs["callback_on_step_end"]
    pipe = copy.deepcopy(sd_pipe).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    devices = []

    def recording(pipeline, index, timestep, tensors):
        replaced = swap(pipeline, index, timestep, tensors)
        devices.extend(value.device.type for value in replaced.values())
        return replaced

    kwargs["callback_on_step_end"] = recording
    kwargs["prompt_embeds"] = kwargs["prompt_embeds"].to("cuda")
    kwargs["negative_prompt_embeds"] = kwargs["negative_prompt_embeds"].to("cuda")
    pipe(**kwargs, num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert devices and set(devices) == {"cuda"}


# ---------------------------------------------------------------- components that do not fit


@pytest.fixture(scope="module")
def sdxl_parts() -> dict:
    parts = dict(build_sdxl().components)
    parts.pop("image_encoder"), parts.pop("feature_extractor")
    return parts


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(text_encoder_2=None, tokenizer_2=None), ValueError, "needs two CLIP text encoders.*no `text_encoder_2`"),
        (dict(text_encoder_2="plain_clip"), TypeError, "must be a CLIPTextModelWithProjection, got CLIPTextModel"),
        (dict(unet="wrong_added_width"), ValueError, r"takes 88 inputs .* 6 time ids x addition_time_embed_dim 8"),
        (dict(requires_aesthetics_score=True), ValueError, "reads 6 time ids: pass requires_aesthetics_score=False"),
        (dict(recipe="sd"), ValueError, "`recipe` 'sd' cannot drive an SDXL-class UNet"),
        (dict(unet="sd_unet", recipe="sdxl"), ValueError, "`recipe` 'sdxl' needs an SDXL-class UNet"),
        (dict(force_zeros_for_empty_prompt="yes"), TypeError, "`force_zeros_for_empty_prompt` must be a bool"),
    ],
)
def test_components_that_do_not_fit_an_sdxl_unet_are_refused(sdxl_parts, change, error, message) -> None:
    parts = dict(sdxl_parts)
    for name, value in change.items():
        if value == "plain_clip":
            value = clip_text_model(2)
        elif value in ("wrong_added_width", "sd_unet"):
            overrides = dict(projection_class_embeddings_input_dim=7 * 8 + WIDTH)
            if value == "sd_unet":
                overrides = dict(addition_embed_type=None, projection_class_embeddings_input_dim=None)
            torch.manual_seed(0)
            value = UNet2DConditionModel(**{**sdxl_parts["unet"].config, **overrides})
        parts[name] = value
    with pytest.raises(error, match=message):
        CLIPConditionedPipeline(**parts)


def test_sdxl_settings_on_a_stable_diffusion_pipeline_are_refused(sd_pipe) -> None:
    for name in ("force_zeros_for_empty_prompt", "requires_aesthetics_score"):
        with pytest.raises(ValueError, match=f"`{name}` applies to recipe 'sdxl'"):
            CLIPConditionedPipeline.from_pipe(sd_pipe, **{name: True})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt_embeds=torch.zeros(1, 77, 64)), "`prompt_embeds` needs `pooled_prompt_embeds`"),
        (
            dict(
                prompt_embeds=torch.zeros(1, 77, 64),
                pooled_prompt_embeds=torch.zeros(1, 32),
                negative_prompt_embeds=torch.zeros(1, 77, 64),
            ),
            "`negative_prompt_embeds` needs `negative_pooled_prompt_embeds`",
        ),
        (dict(prompt="a", pooled_prompt_embeds=torch.zeros(1, 32)), "needs `prompt_embeds`"),
        (dict(prompt_embeds=torch.zeros(2, 77, 64), pooled_prompt_embeds=torch.zeros(1, 32)), r"must be a \(2, pooled"),
        (dict(prompt_embeds=torch.zeros(1, 77, 64), pooled_prompt_embeds=torch.zeros(1, 16)), "takes 80 inputs"),
        (
            dict(prompt="a", aesthetic_score=6.0),
            r"^`aesthetic_score` is read by a refiner \(requires_aesthetics_score=True\) only; this pipeline's UNet "
            "does not read it$",
        ),
        (dict(prompt="a", original_size=(32,)), "`original_size` must be a pair of ints"),
        (dict(prompt="a", crops_coords_top_left=(0.5, 0)), "`crops_coords_top_left` must be a pair of ints"),
        (dict(prompt="a", target_size=(np.bool_(True), 32)), "`target_size` must be a pair of ints"),
        (dict(prompt="a", original_size=(64, True)), "`original_size` must be a pair of ints"),
        (dict(prompt="a", original_size=(float("inf"), 32)), "`original_size` must be a pair of ints"),
        (dict(prompt="a", denoising_end=0.0), "`denoising_end` must be None or a fraction"),
        (dict(prompt="a", denoising_end=1.5), "`denoising_end` must be None or a fraction"),
        (
            dict(prompt="a", denoising_end=0.0001),
            r"`denoising_end` 0.0001 leaves none of the 2 steps to run: .* timestep 1000, above the first step's, 999",
        ),
        (
            dict(prompt="a", callback_on_step_end=_interrupt, callback_on_step_end_tensor_inputs=["time_ids"]),
            "choose from",
        ),
        (
            dict(prompt_embeds=torch.zeros(1, 77, 64), pooled_prompt_embeds=torch.zeros(1, 32), prompt_2="b"),
            "at most one of `prompt_2` and `prompt_embeds`",
        ),
        (
            dict(
                prompt="a",
                negative_prompt_embeds=torch.zeros(1, 77, 64),
                negative_pooled_prompt_embeds=torch.zeros(1, 32),
                negative_prompt_2="b",
            ),
            "at most one of `negative_prompt_2` and `negative_prompt_embeds`",
        ),
        (dict(prompt=["a", "b"], prompt_2=["c", "d", "e"]), "`prompt_2` has 3 entries but the batch has 2"),
        (dict(prompt="a", prompt_2=7), "`prompt_2` must be a string or a list of strings"),
        (dict(prompt="a", negative_prompt_2="b"), "`negative_prompt_2` needs `negative_prompt`"),
        (
            dict(prompt="a red AND a blue", prompt_2="c"),
            r"^a prompt with AND cannot go with `prompt_2`: AND splits `prompt` into parts, and the second "
            r"encoder's text has no part to go with; put the parts in `prompt` alone$",
        ),
        (dict(prompt="a", prompt_2="c AND d"), "`prompt_2` has AND"),
    ],
)
def test_bad_sdxl_arguments_fail_before_any_work(sdxl_pipe, kwargs, message, monkeypatch) -> None:
    ours = ours_from(sdxl_pipe)
    calls = []
    for model in (ours.unet, ours.text_encoder, ours.text_encoder_2):
        monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=message):
        ours(**{"num_inference_steps": 2, **kwargs})
    assert not calls


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(original_size=(64, 64)), "`original_size` is SDXL's micro-conditioning"),
        (dict(pooled_prompt_embeds=torch.zeros(1, 32)), "`pooled_prompt_embeds` is read by SDXL-class UNets only"),
        (dict(callback_on_step_end=_interrupt, callback_on_step_end_tensor_inputs=["add_time_ids"]), "choose from"),
        (dict(prompt_2="b"), "`prompt_2` has no encoder to read it: recipe 'sd'"),
        (dict(negative_prompt_2="b"), "`negative_prompt_2` has no encoder to read it"),
    ],
)
def test_sdxl_arguments_on_a_stable_diffusion_pipeline_fail_before_any_work(sd_pipe, kwargs, message, monkeypatch):
    ours = CLIPConditionedPipeline.from_pipe(sd_pipe)
    calls = []
    monkeypatch.setattr(ours.unet, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=message):
        ours(prompt="a", num_inference_steps=2, **kwargs)
    assert not calls


def test_a_refiner_has_no_second_prompt(monkeypatch) -> None:
    """A refiner's only CLIP reads `prompt` (diffusers pairs prompts with the encoders it has
    and drops `prompt_2` unread); ours says so instead."""
    ours = CLIPConditionedPipeline(**sdxl_refiner_components())
    monkeypatch.setattr(ours.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(ValueError, match="`prompt_2` has no encoder to read it"):
        ours("a", prompt_2="b", num_inference_steps=2)


def test_a_refiner_refuses_the_base_models_target_size(monkeypatch) -> None:
    ours = CLIPConditionedPipeline(**sdxl_refiner_components())
    monkeypatch.setattr(ours.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(ValueError, match="`target_size` is read by a base model only"):
        ours("a", target_size=(32, 32), num_inference_steps=2)


def test_an_edited_prompt_expands_each_encoders_token_with_its_own_tokenizer(sdxl_pipe, tmp_path):
    """Prompt editing in CLIPConditionedPipeline with a token in the first CLIP only: the second
    encoder reads the token as SDXL's second tokenizer does. Before: the first tokenizer's
    vector tokens reached the second encoder (0.029 off SDXL driven by pipeline_kwargs)."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    sdxl = StableDiffusionXLPipeline(**copy.deepcopy(sdxl_pipe.components))  # the fixture stays as it is
    sdxl.set_progress_bar_config(disable=True)
    path = tmp_path / "toy.safetensors"
    width = sdxl.text_encoder.config.hidden_size
    save_file({"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(1))}, str(path))
    ours = CLIPConditionedPipeline.from_pipe(copy.deepcopy(sdxl))
    for pipe in (sdxl, ours):
        pipe.load_textual_inversion(str(path), token="<toy>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    prompt = "a [<toy>:circle:0.5] thing"
    cond = TextConditioner.from_pipeline(sdxl)
    kwargs = cond.pipeline_kwargs(prompt, "blurry", num_inference_steps=4)
    theirs = sdxl(**kwargs, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent")
    got = ours(
        prompt,
        negative_prompt="blurry",
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    assert torch.equal(got.images, theirs.images)


def test_only_the_prompt_may_be_given_by_position(sdxl_pipe) -> None:
    """SD's second positional argument is `height`, SDXL's `prompt_2`: one class cannot follow
    both, so every argument after `prompt` is keyword-only, and a second positional one is
    Python's TypeError before any work, never another argument read silently."""
    ours = ours_from(sdxl_pipe)
    with pytest.raises(TypeError, match="positional argument"):
        ours("a red circle", "oil painting", num_inference_steps=1)
