"""CLIPConditionedPipeline against diffusers' StableDiffusionPipeline on the same components."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks, SDCFGCutoffCallback

from clipcond import CLIPConditionedPipeline


def ours_from(sd_pipe) -> CLIPConditionedPipeline:
    return CLIPConditionedPipeline(
        unet=sd_pipe.unet,
        scheduler=sd_pipe.scheduler,
        vae=sd_pipe.vae,
        text_encoder=sd_pipe.text_encoder,
        tokenizer=sd_pipe.tokenizer,
    )


def run(pipe, **kwargs) -> np.ndarray:
    settings = dict(num_inference_steps=3, guidance_scale=6.0, output_type="np")
    settings.update(kwargs)
    return pipe(generator=torch.Generator().manual_seed(0), **settings).images


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt="a red circle"),
        dict(prompt=["a red circle", "two blue squares"], negative_prompt=["blurry", "green"]),
        dict(prompt="a red circle", guidance_scale=1.0),
        dict(prompt="a red circle", num_images_per_prompt=2, negative_prompt="ugly"),
    ],
)
def test_images_equal_stable_diffusion_pipeline(sd_pipe, kwargs) -> None:
    expected = run(sd_pipe, **kwargs)
    ours = run(ours_from(sd_pipe), **kwargs)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() == 0.0


def test_prompt_embeds_path_and_output_types(sd_pipe) -> None:
    pipe = ours_from(sd_pipe)
    embeds = pipe.conditioner.pipeline_kwargs("a red circle", "blurry")
    by_text = run(pipe, prompt="a red circle", negative_prompt="blurry")
    by_embeds = run(
        pipe, prompt_embeds=embeds["prompt_embeds"], negative_prompt_embeds=embeds["negative_prompt_embeds"]
    )
    assert np.abs(by_text - by_embeds).max() == 0.0
    pil = run(pipe, prompt="a red circle", output_type="pil")
    tensor = run(pipe, prompt="a red circle", output_type="pt")
    side = sd_pipe.unet.config.sample_size * sd_pipe.vae_scale_factor
    assert pil[0].size == (side, side) and tuple(tensor.shape) == (1, 3, side, side)
    plain = run(pipe, prompt="a red circle")
    assert np.abs(tensor.permute(0, 2, 3, 1).numpy() - plain).max() < 1e-6
    assert np.abs(np.asarray(pil[0]) / 255.0 - plain[0]).max() <= 1 / 255 + 1e-6


def test_save_and_load_give_identical_images(sd_pipe, tmp_path) -> None:
    pipe = CLIPConditionedPipeline(
        unet=sd_pipe.unet,
        scheduler=sd_pipe.scheduler,
        vae=sd_pipe.vae,
        text_encoder=sd_pipe.text_encoder,
        tokenizer=sd_pipe.tokenizer,
        clip_skip=1,
    )
    before = run(pipe, prompt="(red:1.3) circle BREAK a blue square")
    pipe.save_pretrained(tmp_path / "pipe")
    assert not list((tmp_path / "pipe").rglob("*.bin"))
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.clip_skip == 1 and loaded.config.recipe == "sd"
    assert np.abs(run(loaded, prompt="(red:1.3) circle BREAK a blue square") - before).max() == 0.0


def test_diffusers_reads_a_saved_folder_with_clipconds_tokenizer_once_it_is_imported(sd_pipe, tmp_path) -> None:
    """docs/pipeline.md: in a fresh process diffusers' own class stops on the folder, naming
    `clipcond.tokenization`, until that module is imported; then it loads."""
    import subprocess
    import sys

    CLIPConditionedPipeline.from_pipe(sd_pipe).save_pretrained(tmp_path / "pipe")
    script = f"""
import sys
from diffusers import StableDiffusionPipeline
try:
    StableDiffusionPipeline.from_pretrained({str(tmp_path / "pipe")!r})
except Exception as error:
    print("refused:", error)
else:
    sys.exit("loaded before clipcond.tokenization was imported")
import clipcond.tokenization
StableDiffusionPipeline.from_pretrained({str(tmp_path / "pipe")!r})
print("loaded")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]
    assert "refused:" in done.stdout and "clipcond.tokenization" in done.stdout.split("loaded")[0], done.stdout


def test_from_pipe_swaps_the_text_encoder(sd_pipe) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(7)  # the SD fixture's encoder was seeded with 1
    other = CLIPTextModel(CLIPTextConfig(**{**sd_pipe.text_encoder.config.to_dict()})).eval()
    swapped = CLIPConditionedPipeline.from_pipe(sd_pipe, text_encoder=other)
    assert swapped.text_encoder is other and swapped.unet is sd_pipe.unet
    assert np.abs(run(swapped, prompt="a red circle") - run(ours_from(sd_pipe), prompt="a red circle")).max() > 0
    narrow = CLIPTextModel(
        CLIPTextConfig(**{**sd_pipe.text_encoder.config.to_dict(), "hidden_size": 16, "intermediate_size": 37})
    ).eval()
    with pytest.raises(ValueError, match="projection_dim"):
        run(CLIPConditionedPipeline.from_pipe(sd_pipe, text_encoder=narrow), prompt="a red circle")


def test_text_projection_adapts_a_narrow_encoder_and_round_trips(sd_pipe, tmp_path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    from clipcond import TextConditioner, TextProjection

    torch.manual_seed(3)
    narrow = CLIPTextModel(
        CLIPTextConfig(**{**sd_pipe.text_encoder.config.to_dict(), "hidden_size": 16, "intermediate_size": 37})
    ).eval()
    width = sd_pipe.unet.config.cross_attention_dim
    projection = TextProjection(projection_dim=width, clip_width=16)
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe, text_encoder=narrow, text_projection=projection, recipe="custom")
    images = run(pipe, prompt="a red circle", negative_prompt="blurry")
    # the same as a hand-built custom conditioner with that projection, fed as prompt_embeds
    manual = TextConditioner("custom", clip=[(narrow, sd_pipe.tokenizer)], projection=projection)
    embeds = manual.pipeline_kwargs("a red circle", "blurry")
    with torch.no_grad():
        by_embeds = run(
            ours_from(sd_pipe),
            prompt_embeds=embeds["prompt_embeds"],
            negative_prompt_embeds=embeds["negative_prompt_embeds"],
        )
    assert np.abs(images - by_embeds).max() == 0.0
    pipe.save_pretrained(tmp_path / "adapted")
    assert (tmp_path / "adapted" / "text_projection" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "adapted")
    assert isinstance(loaded.text_projection, TextProjection)
    assert np.abs(run(loaded, prompt="a red circle", negative_prompt="blurry") - images).max() == 0.0
    with pytest.raises(ValueError, match="recipe 'custom'"):
        run(CLIPConditionedPipeline.from_pipe(sd_pipe, text_encoder=narrow, text_projection=projection), prompt="a")
    with pytest.raises(ValueError, match="needs"):
        TextConditioner("custom", clip=[(sd_pipe.text_encoder, sd_pipe.tokenizer)], projection=projection)


def test_pixel_space_without_a_vae() -> None:
    from diffusers import DDPMScheduler
    from tiny_pipelines import clip_text_model, pixel_space_unet

    from clipcond import clip_tokenizer

    unet = pixel_space_unet(0)
    pipe = CLIPConditionedPipeline(
        unet=unet, scheduler=DDPMScheduler(), text_encoder=clip_text_model(1), tokenizer=clip_tokenizer()
    )
    images = run(pipe, prompt="a red circle")
    assert images.shape == (1, 16, 16, 3) and 0.0 <= images.min() and images.max() <= 1.0


def _cosine_ancestral_config() -> dict:
    # the bundled shapes model's sampler: its first sigma is ~2e4
    return dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", prediction_type="v_prediction")


def test_an_ancestral_sampler_on_the_cosine_schedule_gives_finite_images_where_float32_would_not(
    sd_pipe, caplog
) -> None:
    """diffusers' float32 sigma split is NaN at 3 steps on this schedule (diffusers issue
    #14213); the pipeline then samples with float64 sigmas, and elsewhere it is unchanged."""
    from diffusers import EulerAncestralDiscreteScheduler

    from clipcond.pipelines.scheduler_guards import ancestral_split_is_negative

    scheduler = EulerAncestralDiscreteScheduler(**_cosine_ancestral_config())
    scheduler.set_timesteps(3)
    assert scheduler.sigmas.dtype == torch.float32 and ancestral_split_is_negative(scheduler.sigmas)
    assert not ancestral_split_is_negative(scheduler.sigmas.double())
    upstream_pipe = type(sd_pipe)(**{**sd_pipe.components, "scheduler": scheduler})  # sd_pipe is shared: not changed
    upstream_pipe.set_progress_bar_config(disable=True)
    with np.errstate(invalid="ignore"):
        upstream = run(upstream_pipe, prompt="a red circle")
    assert np.isnan(upstream).all()  # what diffusers' own pipeline draws
    ours = ours_from(upstream_pipe)
    with caplog.at_level("WARNING", logger="clipcond.pipelines.scheduler_guards"):
        images = run(ours, prompt="a red circle")
    assert np.isfinite(images).all() and images.std() > 0
    assert "float64 sigmas" in caplog.text and "num_inference_steps=3" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="clipcond.pipelines.scheduler_guards"):  # 4 steps: nothing to fix
        assert (
            np.abs(
                run(ours, prompt="a red circle", num_inference_steps=4)
                - run(upstream_pipe, prompt="a red circle", num_inference_steps=4)
            ).max()
            == 0.0
        )
    assert caplog.text == "" and ours.scheduler.sigmas.dtype == torch.float32


def test_a_scheduler_with_nan_timesteps_is_refused_before_the_unet_runs(sd_pipe, monkeypatch) -> None:
    from diffusers import KDPM2AncestralDiscreteScheduler

    pipe = ours_from(sd_pipe)
    pipe.scheduler = KDPM2AncestralDiscreteScheduler(**_cosine_ancestral_config())
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(
        ValueError, match=r"KDPM2AncestralDiscreteScheduler \(squaredcos_cap_v2\) has NaN .* num_inference_steps=3"
    ):
        run(pipe, prompt="a red circle")


def test_nan_latents_raise_before_decoding_or_warn_when_asked(sd_pipe, caplog, monkeypatch) -> None:
    from clipcond.pipelines.scheduler_guards import NonFiniteLatents

    pipe = ours_from(sd_pipe)
    pipe.scheduler = type(sd_pipe.scheduler).from_config(sd_pipe.scheduler.config)  # its own, not the shared one
    original = pipe.scheduler.step

    def poisoned(*args, **kwargs):
        result = original(*args, **kwargs)
        return (result[0] * float("nan"),) + tuple(result[1:])

    monkeypatch.setattr(pipe.scheduler, "step", poisoned)
    decoded = []
    pipe.vae.decoder.register_forward_hook(lambda *_: decoded.append(1))
    with pytest.raises(NonFiniteLatents, match="latents contain NaN or infinite values .*non_finite='warn'"):
        run(pipe, prompt="a red circle")
    assert decoded == []
    with caplog.at_level("WARNING", logger="clipcond.pipelines.scheduler_guards"), np.errstate(invalid="ignore"):
        images = run(pipe, prompt="a red circle", non_finite="warn")
    assert "contain NaN or infinite values" in caplog.text and images.shape == (1, 32, 32, 3) and decoded == [1]
    monkeypatch.setattr(pipe.scheduler, "step", original)
    with pytest.raises(ValueError, match="`non_finite` must be one of"):
        run(pipe, prompt="a red circle", non_finite="ignore")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="a", height=-8), "height"),
        (dict(prompt="a", height=True), "height"),
        (dict(prompt="a", width=0), "width"),
        (dict(prompt="a", num_inference_steps=0), "num_inference_steps"),
        (dict(prompt="a", guidance_scale=float("nan")), "guidance_scale"),
        (dict(prompt="a", guidance_scale=True), r"^`guidance_scale` must be a finite number, got True$"),
        (dict(prompt=["a", "b"], negative_prompt=["c"]), "negative_prompt"),
        (dict(), "exactly one of"),
        (dict(prompt="a", prompt_embeds=torch.zeros(1, 77, 32)), "exactly one of"),
        (dict(prompt="a", generator=[torch.Generator()] * 3), "generators"),
        (dict(prompt="a", output_type="jpeg"), "output_type"),
        (dict(prompt="a", timesteps=[999, 1], sigmas=[1.0, 0.0]), "at most one of `timesteps` and `sigmas`"),
        (dict(prompt="a", timesteps=[999, 500]), "DDIMScheduler does not accept custom `timesteps`"),
        (dict(prompt="a", timesteps=[]), "timesteps"),
        (dict(prompt="a", timesteps=["a", "b"]), r"^`timesteps` must be a flat list of real numbers"),
        (dict(prompt="a", sigmas=[float("nan"), 1.0]), r"^`sigmas` must hold finite numbers"),
        (dict(prompt="a", guidance_rescale=-0.1), "guidance_rescale"),
        (dict(prompt="a", eta="0.5"), r"^`eta` must be a finite number"),
        (dict(prompt="a", eta=1.5), r"^`eta` must be in \[0, 1\] for DDIMScheduler"),
        (dict(prompt="a", guidance_rescale=float("nan")), "guidance_rescale"),
        (dict(prompt="a", cross_attention_kwargs=[("scale", 0.5)]), "cross_attention_kwargs"),
        (dict(prompt="a", cross_attention_kwargs={1: 0.5}), r"^`cross_attention_kwargs` must have strings as keys"),
        (dict(prompt="a", callback_on_step_end="print"), "callback_on_step_end"),
        (dict(prompt="a", clip_skip=-1), "clip_skip"),
        (dict(prompt="a", negative_prompt="b", negative_prompt_embeds=torch.zeros(1, 77, 32)), "at most one of"),
        (dict(prompt_embeds=torch.zeros(2, 77, 32), negative_prompt=["b"]), "negative_prompt"),
        (dict(prompt=["a", "b"], negative_prompt_embeds=torch.zeros(1, 77, 32)), "negative_prompt_embeds"),
        (dict(prompt="a", clip_skip="2"), "clip_skip"),
        (
            dict(prompt="a", callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"]),
            "callback_on_step_end_tensor_inputs",
        ),
    ],
)
def test_bad_input_fails_before_any_work(sd_pipe, kwargs, message, monkeypatch) -> None:
    pipe = ours_from(sd_pipe)
    calls = []
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(**{"num_inference_steps": 2, **kwargs})
    assert not calls


@pytest.mark.parametrize(
    "scheduler, custom, message",
    [
        ("EulerDiscreteScheduler", dict(sigmas=[5.0]), r"^`sigmas` \[5.0\] leaves EulerDiscreteScheduler no step"),
        ("LCMScheduler", dict(timesteps=[10, 500]), r"^`timesteps` \[10, 500\] cannot be set on LCMScheduler: "),
    ],
    ids=["one_sigma", "ascending_timesteps"],
)
def test_a_custom_schedule_the_scheduler_cannot_run_is_refused_before_the_text_encoder(
    sd_pipe, scheduler, custom, message, monkeypatch
) -> None:
    """Stable Diffusion encodes the prompt first, then fails in the scheduler (LCM) or runs no
    step at all and returns the starting noise (one Euler sigma); here each is refused first."""
    import diffusers

    peer, ours = copy.copy(sd_pipe), ours_from(sd_pipe)
    for pipe in (peer, ours):
        pipe.scheduler = getattr(diffusers, scheduler).from_config(sd_pipe.scheduler.config)
    encoded, unet_calls = [], []
    monkeypatch.setattr(sd_pipe.text_encoder, "forward", lambda *a, **k: encoded.append(1) or (torch.zeros(1, 77, 32),))
    monkeypatch.setattr(sd_pipe.unet, "forward", lambda *a, **k: unet_calls.append(1))
    settings = dict(prompt="a red circle", num_inference_steps=None, output_type="latent", **custom)
    if scheduler == "LCMScheduler":
        with pytest.raises(ValueError, match="must be in descending order"):
            peer(**settings)
    else:
        peer(**settings)
    assert encoded and not unet_calls  # the peer encoded, then ran no step (or failed)
    encoded.clear()
    with pytest.raises(ValueError, match=message):
        ours(**settings)
    assert not encoded and not unet_calls


def _scale_latents_once(pipe, step, timestep, tensors):
    return {"latents": tensors["latents"] * 0.9} if step == 0 else {}


def _stop_guidance_after_the_first_step(pipe, step, timestep, tensors):
    """diffusers' documented recipe: drop classifier-free guidance for the remaining steps."""
    if step != 0:
        return {}
    pipe._guidance_scale = 0.0
    return {"prompt_embeds": tensors["prompt_embeds"].chunk(2)[-1]}


def _interrupt_after_the_first_step(pipe, step, timestep, tensors):
    pipe._interrupt = True
    return {}


@pytest.mark.parametrize(
    "scheduler, kwargs",
    [
        ("DDIMScheduler", dict(guidance_rescale=0.7)),
        ("DDIMScheduler", dict(eta=0.6)),
        ("TCDScheduler", dict(eta=1)),
        ("EulerDiscreteScheduler", dict(timesteps=[999, 600, 250, 40])),
        ("EulerDiscreteScheduler", dict(sigmas=[14.6, 3.0, 0.8, 0.1])),
        ("DDIMScheduler", dict(callback_on_step_end=_scale_latents_once)),
        (
            "DDIMScheduler",
            dict(
                callback_on_step_end=_stop_guidance_after_the_first_step,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
            ),
        ),
        ("DDIMScheduler", dict(callback_on_step_end=_interrupt_after_the_first_step)),
        ("DDIMScheduler", dict(callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5))),  # names its tensors
        (
            "DDIMScheduler",
            dict(
                callback_on_step_end=MultiPipelineCallbacks(
                    [SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=0)]
                )
            ),
        ),
        ("HeunDiscreteScheduler", dict()),  # a second-order scheduler: two UNet calls per step
    ],
)
def test_diffusers_call_arguments_give_stable_diffusions_images(sd_pipe, scheduler, kwargs) -> None:
    """The StableDiffusionPipeline arguments beyond the basics (custom timesteps or sigmas,
    guidance rescale, step-end callbacks that change latents, drop guidance or interrupt, and
    diffusers' ready-made callback objects, which name the tensors they read) mean what they
    mean there: the same images, bit for bit."""
    import diffusers

    peer, ours = copy.copy(sd_pipe), ours_from(sd_pipe)
    for pipe in (peer, ours):
        pipe.scheduler = getattr(diffusers, scheduler).from_config(sd_pipe.scheduler.config)
    settings = dict(prompt="a red circle", negative_prompt="blurry", num_inference_steps=4, **kwargs)
    expected = run(peer, **settings)
    assert np.array_equal(run(ours, **settings), expected)
    if kwargs:
        plain = {name: value for name, value in settings.items() if name not in kwargs}
        assert not np.array_equal(run(peer, **plain), expected)  # the argument changed something
    if "callback_on_step_end" in kwargs:
        assert ours.num_timesteps == 4


def test_encode_prompt_is_stable_diffusions(sd_pipe) -> None:
    """`encode_prompt` keeps StableDiffusionPipeline's contract and gives its tensors, bit for bit:
    with and without guidance, several images per prompt, and given negative embeddings."""
    ours = ours_from(sd_pipe)
    prompts, negatives = ["a red circle", "two blue squares"], ["blurry", "dark"]
    for args, kwargs in [
        ((prompts, "cpu", 2, True), dict(negative_prompt=negatives)),
        ((prompts, "cpu", 1, False), dict()),
        (("a red circle", "cpu", 3, True), dict()),
        (("a red circle", "cpu", 2, True), dict(negative_prompt_embeds=torch.randn(1, 77, 32))),
    ]:
        expected, got = sd_pipe.encode_prompt(*args, **kwargs), ours.encode_prompt(*args, **kwargs)
        assert torch.equal(got[0], expected[0])
        assert (got[1] is None and expected[1] is None) or torch.equal(got[1], expected[1])


@pytest.mark.parametrize("mixed", ["prompt_with_negative_embeds", "embeds_with_negative_prompt"])
def test_text_and_embeddings_mixed_as_in_stable_diffusion(sd_pipe, mixed) -> None:
    """A text prompt with negative embeddings, or prompt embeddings with a negative text prompt,
    mean what they mean in StableDiffusionPipeline: the same images."""
    ours = ours_from(sd_pipe)
    if mixed == "prompt_with_negative_embeds":
        settings = dict(
            prompt="a red circle",
            negative_prompt_embeds=torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(5)),
        )
        baseline = dict(prompt="a red circle")
    else:
        settings = dict(
            prompt_embeds=sd_pipe.encode_prompt("a red circle", "cpu", 1, False)[0], negative_prompt="blurry"
        )
        baseline = dict(prompt_embeds=settings["prompt_embeds"])
    images = run(ours, **settings)
    assert np.array_equal(images, run(sd_pipe, **settings)) and not np.array_equal(images, run(ours, **baseline))


@pytest.mark.parametrize("feature", ["freeu", "fused_qkv"])
def test_unet_features_of_stable_diffusion_pipelines(feature) -> None:
    """`enable_freeu` and `fuse_qkv_projections` (StableDiffusionMixin) give StableDiffusionPipeline's
    images; `disable_freeu` / `unfuse_qkv_projections` give back the plain ones."""
    from tiny_pipelines import build_sd

    peer, ours = build_sd(), ours_from(build_sd())
    plain = run(ours, prompt="a red circle")
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
        if feature == "freeu":
            pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        else:
            pipe.fuse_qkv_projections()
    changed = run(ours, prompt="a red circle")
    assert np.array_equal(changed, run(peer, prompt="a red circle"))
    if feature == "freeu":
        assert not np.array_equal(changed, plain)
        ours.disable_freeu()
    else:
        ours.unfuse_qkv_projections()
    np.testing.assert_allclose(run(ours, prompt="a red circle"), plain, rtol=0, atol=1e-6)


def test_clip_skip_for_one_call_equals_the_pipelines_setting(sd_pipe) -> None:
    """`pipe(..., clip_skip=k)` gives the images of a pipeline built with `clip_skip=k` (whose
    embeddings follow diffusers' formula, tests/test_exactness.py), and leaves the pipeline's
    own setting for the next call. (diffusers' own `clip_skip` reads `text_encoder.text_model`,
    which transformers 5 no longer has, so it cannot be the reference here.)"""
    ours = ours_from(sd_pipe)
    configured = CLIPConditionedPipeline(**{**ours.components, "clip_skip": 1})
    settings = dict(prompt="a red circle", negative_prompt="blurry")
    plain = run(ours, **settings)
    skipped = run(ours, clip_skip=1, **settings)
    assert np.array_equal(skipped, run(configured, **settings)) and not np.array_equal(skipped, plain)
    assert np.array_equal(run(ours, **settings), plain)


def test_a_guidance_distilled_unet_reads_the_guidance_scale(sd_pipe) -> None:
    """A UNet with `time_cond_proj_dim` (LCM-style, guidance distilled into it) gets the guidance
    scale as an embedding and no classifier-free batch, as in StableDiffusionPipeline."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**sd_pipe.unet.config, "time_cond_proj_dim": 8})
    parts = dict(
        unet=unet,
        scheduler=sd_pipe.scheduler,
        vae=sd_pipe.vae,
        text_encoder=sd_pipe.text_encoder,
        tokenizer=sd_pipe.tokenizer,
    )
    peer = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ours = CLIPConditionedPipeline(**parts)
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
    batch_sizes = []
    unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    for scale in (2.0, 8.0):
        assert np.array_equal(
            run(ours, prompt="a red circle", guidance_scale=scale),
            run(peer, prompt="a red circle", guidance_scale=scale),
        )
    assert set(batch_sizes) == {1}
    assert not np.array_equal(
        run(ours, prompt="a red circle", guidance_scale=2.0), run(ours, prompt="a red circle", guidance_scale=8.0)
    )


def _saved_lora(folder) -> None:
    """A LoRA on the tiny SD UNet and text encoder, saved the diffusers way in `folder`."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from tiny_pipelines import build_sd

    source = build_sd()
    torch.manual_seed(1)
    source.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False), source.text_encoder
    )
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(source.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(source.text_encoder)),
    )


def test_lora_weights_load_and_scale_as_in_stable_diffusion(tmp_path) -> None:
    """`load_lora_weights` on a LoRA for the UNet and the text encoder (saved the diffusers way),
    and `cross_attention_kwargs={"scale": s}`, give StableDiffusionPipeline's images; the
    embedding cache follows the scale of the text encoder's LoRA."""
    from tiny_pipelines import build_sd

    _saved_lora(tmp_path / "lora")
    peer, ours = build_sd(), ours_from(build_sd())
    without = run(ours, prompt="a red circle")
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(tmp_path / "lora")
    with_lora = run(ours, prompt="a red circle")
    assert np.array_equal(with_lora, run(peer, prompt="a red circle")) and not np.array_equal(with_lora, without)
    half = dict(prompt="a red circle", cross_attention_kwargs={"scale": 0.5})
    assert np.array_equal(run(ours, **half), run(peer, **half)) and not np.array_equal(run(ours, **half), with_lora)
    assert np.array_equal(run(ours, prompt="a red circle"), with_lora)  # the cache did not keep the scaled embeddings
    ours.unload_lora_weights()
    assert np.array_equal(run(ours, prompt="a red circle"), without)


def test_textual_inversion_loads_and_expands_as_in_stable_diffusion(tmp_path) -> None:
    """`load_textual_inversion` of a two-vector embedding: a prompt (and a negative prompt)
    naming its token gives StableDiffusionPipeline's images, bit for bit."""
    from safetensors.torch import save_file
    from tiny_pipelines import build_sd

    peer, ours = build_sd(), ours_from(build_sd())
    torch.manual_seed(3)
    vectors = torch.randn(2, peer.text_encoder.get_input_embeddings().weight.shape[1])
    save_file({"emb_params": vectors}, tmp_path / "toy.safetensors")
    settings = dict(prompt="a <toy> circle", negative_prompt="a blurry <toy>")
    before = run(ours, **settings)
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
        pipe.load_textual_inversion(tmp_path / "toy.safetensors", token="<toy>")
    assert ours.tokenizer.tokenize("a <toy> circle") == ["a</w>", "<toy>", "circle</w>"]
    after = run(ours, **settings)
    assert np.array_equal(after, run(peer, **settings)) and not np.array_equal(after, before)


def test_swap_text_encoder_in_place_in_a_stable_diffusion_pipeline() -> None:
    from tiny_pipelines import build_sd
    from transformers import CLIPTextConfig, CLIPTextModel

    from clipcond.pipelines import swap_text_encoder

    sd = build_sd()
    before = run(sd, prompt="a red circle")
    torch.manual_seed(7)
    other = CLIPTextModel(CLIPTextConfig(**sd.text_encoder.config.to_dict())).eval()
    assert swap_text_encoder(sd, other) is sd and sd.text_encoder is other
    after = run(sd, prompt="a red circle")
    assert np.abs(after - before).max() > 0
    assert np.abs(after - run(ours_from(sd), prompt="a red circle")).max() == 0.0
    narrow = CLIPTextModel(CLIPTextConfig(**{**sd.text_encoder.config.to_dict(), "hidden_size": 16})).eval()
    with pytest.raises(ValueError, match="projection_dim"):
        swap_text_encoder(sd, narrow)
    assert sd.text_encoder is other


def test_clip_and_t5_custom_recipe_round_trips(sd_pipe, t5_tokenizer_path, tmp_path) -> None:
    from tiny_pipelines import build_clip_t5_custom

    pipe = build_clip_t5_custom(sd_pipe, t5_tokenizer_path)
    embeds = pipe.conditioner.pipeline_kwargs("a red circle left of a blue square", "blurry")
    assert embeds["prompt_embeds"].shape[1] > 77  # CLIP tokens, then T5 tokens on the sequence axis
    by_text = run(pipe, prompt="a red circle left of a blue square", negative_prompt="blurry")
    by_embeds = run(
        pipe, prompt_embeds=embeds["prompt_embeds"], negative_prompt_embeds=embeds["negative_prompt_embeds"]
    )
    assert np.abs(by_text - by_embeds).max() == 0.0
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.recipe == "custom" and loaded.text_encoder_2 is not None
    again = run(loaded, prompt="a red circle left of a blue square", negative_prompt="blurry")
    assert np.abs(again - by_text).max() == 0.0


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_is_diffusers_to_the_bit(dtype, device) -> None:
    """In half precision our images are StableDiffusionPipeline's, bit for bit (same components,
    dtype and generator), on the CPU and on a GPU. Both differ from float32 by the same amount,
    so that gap is the tiny random model's rounding, not ours (measured on an H200: mean
    |fp16 - fp32| = 0.141, |bf16 - fp32| = 0.146 for both pipelines; 3 DDIM steps, guidance 6)."""
    from tiny_pipelines import build_sd  # fresh modules: the session fixture's stay on the CPU

    peer = build_sd().to(device, dtype)
    ours = ours_from(build_sd()).to(device, dtype)
    assert ours.unet.dtype == dtype and ours.text_encoder.dtype == dtype
    images = run(ours, prompt="a red circle")
    assert np.isfinite(images).all() and np.array_equal(images, run(peer, prompt="a red circle"))


@cuda
def test_gpu_model_cpu_offload() -> None:
    """With `enable_model_cpu_offload()` images match the GPU-resident pipeline's, and a repeated
    prompt comes from the embedding cache: the hooks' moves of the encoder's weights (new
    storage, same values) do not count as new weights, so the encoder is neither run nor
    moved to the GPU again."""
    from tiny_pipelines import build_sd

    reference = run(ours_from(build_sd()).to("cuda"), prompt="a red circle")
    pipe = ours_from(build_sd())
    pipe.enable_model_cpu_offload()
    calls = []
    pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    offloaded = run(pipe, prompt="a red circle")
    assert np.abs(offloaded - reference).max() < 1e-3 and len(calls) == 1
    assert np.array_equal(run(pipe, prompt="a red circle"), offloaded) and len(calls) == 1
    assert pipe.text_encoder.device.type == "cpu" and pipe.unet.device.type == "cpu"  # offloaded after the call


def xformers_kernels_run() -> bool:
    """True when xformers is installed and its attention kernel runs on this GPU and torch (a
    wheel built for another torch imports, but has no CUDA kernels)."""
    try:
        import xformers.ops
    except ImportError:
        return False
    try:
        query = torch.randn(1, 2, 1, 40, device="cuda")  # the probe diffusers runs when enabling it
        xformers.ops.memory_efficient_attention(query, query, query)
    except (NotImplementedError, RuntimeError):
        return False
    return True


@cuda
def test_gpu_xformers_attention() -> None:
    from tiny_pipelines import build_sd

    if not xformers_kernels_run():
        pytest.skip("needs xformers with CUDA kernels for this torch")
    reference = run(ours_from(build_sd()).to("cuda"), prompt="a red circle")
    pipe = ours_from(build_sd()).to("cuda")
    pipe.enable_xformers_memory_efficient_attention()
    assert np.abs(run(pipe, prompt="a red circle") - reference).max() < 1e-2


def test_generate_cli_writes_an_image_and_a_grid(sd_pipe, tmp_path, capsys) -> None:
    from PIL import Image

    from clipcond.cli import main

    ours_from(sd_pipe).save_pretrained(tmp_path / "ours")
    sd_pipe.save_pretrained(tmp_path / "sd")
    common = ["--steps", "2", "--seed", "3", "--negative", "blurry"]
    assert (
        main(["generate", "a red circle", "-o", str(tmp_path / "one.png"), "--model", str(tmp_path / "ours"), *common])
        == 0
    )
    assert (
        main(["generate", "a red circle", "-o", str(tmp_path / "sd.png"), "--model", str(tmp_path / "sd"), *common])
        == 0
    )
    one, via_sd = np.asarray(Image.open(tmp_path / "one.png")), np.asarray(Image.open(tmp_path / "sd.png"))
    assert one.shape == (32, 32, 3) and np.array_equal(one, via_sd)
    assert (
        main(
            [
                "generate",
                "a red circle",
                "-o",
                str(tmp_path / "grid.png"),
                "--model",
                str(tmp_path / "ours"),
                "--n",
                "3",
                *common,
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "grid.png").size == (64, 64)  # 2 x 2 grid, one cell blank
    assert main(["generate", "a", "-o", str(tmp_path / "x.jpg"), "--model", str(tmp_path / "ours")]) == 2
    assert "must end in .png" in capsys.readouterr().err


def test_generate_cli_loads_a_lora_and_skips_clip_layers(tmp_path, capsys) -> None:
    """`--lora`, `--lora-scale` and `--clip-skip` give the image of the pipeline called with them."""
    from PIL import Image
    from tiny_pipelines import build_sd

    from clipcond.cli import main

    ours_from(build_sd()).save_pretrained(tmp_path / "ours")
    _saved_lora(tmp_path / "lora")
    common = ["a red circle", "--model", str(tmp_path / "ours"), "--steps", "2", "--seed", "3"]
    assert (
        main(
            [
                "generate",
                *common,
                "-o",
                str(tmp_path / "lora.png"),
                "--lora",
                str(tmp_path / "lora"),
                "--lora-scale",
                "0.5",
                "--clip-skip",
                "1",
            ]
        )
        == 0
    )
    assert main(["generate", *common, "-o", str(tmp_path / "plain.png")]) == 0
    pipe = CLIPConditionedPipeline.from_pretrained(tmp_path / "ours")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(tmp_path / "lora")
    expected = pipe(
        "a red circle",
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(3)],
        cross_attention_kwargs={"scale": 0.5},
        clip_skip=1,
    ).images[0]
    written = np.asarray(Image.open(tmp_path / "lora.png"))
    assert np.array_equal(written, np.asarray(expected))
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "plain.png")))
    assert main(["generate", *common, "-o", str(tmp_path / "x.png"), "--lora-scale", "0.5"]) == 2
    assert "--lora-scale 0.5 scales the --lora weights: give --lora too" in capsys.readouterr().err


def test_generate_cli_emphasis(tmp_path, capsys) -> None:
    """`--emphasis` gives the image of a pipeline built with that mode; a weighted prompt
    changes with the mode, and an unknown mode is refused by the parser (exit 2). ComfyUI's
    mode, not a1111: the tiny SD's untrained final layer norm (weight 1, bias 0) gives every
    position a channel mean of 0, so weighting a position leaves the window's mean as it was,
    a1111's rescale ratio is exactly 1.0 (measured) and its image equals the multiply one."""
    from PIL import Image
    from tiny_pipelines import build_sd

    from clipcond.cli import main

    sd = build_sd()
    ours_from(sd).save_pretrained(tmp_path / "ours")
    prompt = "a (red:1.8) circle"
    common = [prompt, "--model", str(tmp_path / "ours"), "--steps", "2", "--seed", "3"]
    assert main(["generate", *common, "-o", str(tmp_path / "comfy.png"), "--emphasis", "comfy"]) == 0
    assert main(["generate", *common, "-o", str(tmp_path / "plain.png")]) == 0
    pipe = CLIPConditionedPipeline.from_pipe(sd, emphasis="comfy")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt, num_inference_steps=2, guidance_scale=3.0, generator=[torch.Generator().manual_seed(3)])
    written = np.asarray(Image.open(tmp_path / "comfy.png"))
    assert np.array_equal(written, np.asarray(expected.images[0]))
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "plain.png")))
    with pytest.raises(SystemExit) as stopped:
        main(["generate", *common, "-o", str(tmp_path / "x.png"), "--emphasis", "loud"])
    assert stopped.value.code == 2 and "invalid choice: 'loud'" in capsys.readouterr().err


def test_generate_uses_the_bundled_model_by_default(tmp_path, monkeypatch) -> None:
    from PIL import Image

    from clipcond.cli import main
    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL, load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        main(["generate", "a red circle to the left of a blue square", "-o", str(tmp_path / "a.png"), "--steps", "3"])
        == 0
    )
    assert (
        main(
            [
                "generate",
                "a red circle to the left of a blue square",
                "-o",
                str(tmp_path / "b.png"),
                "--steps",
                "3",
                "--model",
                str(BUNDLED_MODEL),
            ]
        )
        == 0
    )
    first, second = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert first.shape == (32, 32, 3) and np.array_equal(first, second)
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 2  # a drawing, not a blank (NaN) image
    pipe = load_pipeline(BUNDLED_MODEL, torch_dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32 and pipe.vae is None


def test_the_bundled_model_draws_what_it_is_asked() -> None:
    """A quality floor for the shipped weights (benchmarks/shapes_model_judge.py measures them in
    full): single objects by colour and shape, two objects with both bindings, and two objects
    placed as the prompt says."""
    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL, load_pipeline
    from clipcond.shapes import score_image
    from clipcond.shapes.prompt_suite import scene_from_spec

    pipe = load_pipeline(BUNDLED_MODEL, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    red_circle, blue_square = ("red", "circle"), ("blue", "square")
    yellow_triangle, green_square = ("yellow", "triangle"), ("green", "square")
    asks = [
        ([red_circle], None, "a red circle"),
        ([blue_square], None, "a blue square"),
        ([yellow_triangle], None, "a yellow triangle"),
        ([("purple", "circle")], None, "a purple circle"),
        ([red_circle, blue_square], None, "a red circle and a blue square"),
        ([yellow_triangle, ("cyan", "square")], None, "a yellow triangle and a cyan square"),
        ([red_circle, blue_square], (0, "left of", 1), "a red circle to the left of a blue square"),
        ([yellow_triangle, green_square], (0, "above", 1), "a yellow triangle above a green square"),
    ]
    seeds = range(3)
    prompts = [prompt for _, _, prompt in asks for _ in seeds]
    generators = [torch.Generator().manual_seed(seed) for _ in asks for seed in seeds]
    images = pipe(prompts, num_inference_steps=30, guidance_scale=3.0, generator=generators).images
    scores = [
        score_image(image, scene_from_spec(objects, relation))
        for image, (objects, relation, _) in zip(images, [ask for ask in asks for _ in seeds])
    ]
    found = [score.objects_found == score.expected for score in scores]
    single, pairs = found[: 4 * len(seeds)], found[4 * len(seeds) : 6 * len(seeds)]
    alone = [score.detected == 1 for score in scores[: 4 * len(seeds)]]  # no extra object beside it
    placed = [score.relation_correct for score in scores[6 * len(seeds) :]]
    # measured: 12 of 12 single, 12 of 12 alone, 6 of 6 pairs, 6 of 6 placed
    assert sum(single) >= 10 and sum(alone) >= 10, (single, alone, prompts)
    assert sum(pairs) >= 4 and sum(placed) >= 4, (found, placed, prompts)


def test_generate_loads_an_sdxl_pipeline(sdxl_pipe, tmp_path) -> None:
    """An SDXL folder (two CLIPs, the second with projection) loads as an SDXL-recipe pipeline
    over the same components, which draws SDXL's image (tests/test_sdxl_pipeline.py)."""
    from clipcond.pipelines.saved_pipelines import load_pipeline

    sdxl_pipe.save_pretrained(tmp_path / "sdxl")
    pipe = load_pipeline(tmp_path / "sdxl")
    assert isinstance(pipe, CLIPConditionedPipeline) and pipe.config.recipe == "sdxl"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"


def test_generate_warns_about_words_the_bundled_model_never_read(tmp_path, capsys) -> None:
    """ "a cat" or "" on the bundled shapes model still draws shapes: generate says so before
    sampling, naming the unknown words; a prompt in its vocabulary gets no warning."""
    from clipcond.cli import main
    from clipcond.pipelines.saved_pipelines import BUNDLED_MODEL
    from clipcond.pipelines.vocabulary import unknown_words, warn_about_vocabulary

    assert warn_about_vocabulary("a (red:1.2) circle to the left of a blue square BREAK", BUNDLED_MODEL) is None
    assert unknown_words("a Cat and a red DOG, cat", frozenset({"a", "and", "red"})) == ["cat", "dog"]
    assert "empty" in warn_about_vocabulary("  ", BUNDLED_MODEL)
    assert warn_about_vocabulary("a cat", tmp_path) is None  # no vocabulary.txt: nothing to say
    capsys.readouterr()
    assert main(["generate", "a cat on a red square", "-o", str(tmp_path / "cat.png"), "--steps", "1"]) == 0
    err = capsys.readouterr().err
    assert "never read 'cat'" in err and "'square'" not in err and (tmp_path / "cat.png").is_file()
    # an --embedding's token is no word the model should have read
    embedding = tmp_path / "zq-style.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 64)}, "name": "zq-style", "step": 100}, embedding)
    argv = ["generate", "a red circle, zq-style", "-o", str(tmp_path / "e.png"), "--steps", "1"]
    assert main([*argv, "--embedding", str(embedding)]) == 0
    assert "never read" not in capsys.readouterr().err
