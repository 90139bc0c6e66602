"""What `CLIPConditionedPipeline` does exactly as `StableDiffusionPipeline` on the same tiny
components, beyond the call arguments of tests/test_pipeline.py: the constructor's scheduler
rewrite, `num_inference_steps=None` with custom timesteps or sigmas, missing optional
components, the safety checker, and bit-identical prompt embeddings and images over the
prompt suites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from tiny_pipelines import sd_components

from clipcond import CLIPConditionedPipeline

SUITES = Path(__file__).resolve().parents[1] / "configs" / "suites"


def stable_diffusion(**parts) -> StableDiffusionPipeline:
    parts = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False, **parts}
    pipe = StableDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(**parts) -> CLIPConditionedPipeline:
    pipe = CLIPConditionedPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, **kwargs) -> np.ndarray:
    settings = dict(num_inference_steps=2, guidance_scale=6.0, output_type="np")
    settings.update(kwargs)
    return pipe(generator=torch.Generator().manual_seed(0), **settings).images


# ---------------------------------------------------------------- the scheduler config


def test_fresh_components_get_stable_diffusions_scheduler_config() -> None:
    """A default DDIMScheduler (`steps_offset: 0`, `clip_sample: true`) is rewritten as SD's
    constructor rewrites it, with a warning naming each key: timesteps [501, 1], not [500, 0],
    and SD's images, bit for bit."""
    with pytest.warns(FutureWarning) as warned:
        pipe = ours(**sd_components())
    messages = " ".join(str(warning.message) for warning in warned)
    assert "`steps_offset: 0`" in messages and "`clip_sample: True`" in messages
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.clip_sample is False
    peer = stable_diffusion(**sd_components())
    settings = dict(prompt="a red circle", negative_prompt="blurry")
    expected = images(peer, **settings)
    assert np.array_equal(images(pipe, **settings), expected)
    assert pipe.scheduler.timesteps.tolist() == [501, 1]


def test_from_pretrained_rewrites_an_old_scheduler_config(tmp_path) -> None:
    """A saved folder whose scheduler_config.json says `steps_offset: 0`, `clip_sample: true`
    loads as it loads into StableDiffusionPipeline; the file itself is left as it was."""
    stable_diffusion(**sd_components()).save_pretrained(tmp_path)
    config_file = tmp_path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "steps_offset": 0, "clip_sample": True}))
    with pytest.warns(FutureWarning, match="steps_offset"):
        loaded = CLIPConditionedPipeline.from_pretrained(tmp_path)
    peer = StableDiffusionPipeline.from_pretrained(tmp_path)
    for pipe in (loaded, peer):
        pipe.set_progress_bar_config(disable=True)
    assert np.array_equal(images(loaded, prompt="a red circle"), images(peer, prompt="a red circle"))
    assert json.loads(config_file.read_text())["steps_offset"] == 0


@pytest.mark.parametrize("kind", ["pixel_space", "custom_recipe"])
def test_pipelines_that_are_not_stable_diffusion_keep_their_scheduler_config(kind) -> None:
    """Without a VAE (pixels are in [-1, 1], so `clip_sample` means what it says) or with the
    `custom` recipe (the schedule the UNet was trained and sampled with), nothing is rewritten."""
    parts = sd_components()
    if kind == "pixel_space":
        parts["vae"] = None
    pipe = CLIPConditionedPipeline(**parts, recipe="sd" if kind == "pixel_space" else "custom")
    assert pipe.scheduler.config.steps_offset == 0 and pipe.scheduler.config.clip_sample is True


# ---------------------------------------------------------------- custom timesteps and sigmas


@pytest.mark.parametrize(
    "schedule",
    [dict(timesteps=[999, 600, 250, 40]), dict(sigmas=[14.6, 3.0, 0.8, 0.1])],
    ids=["timesteps", "sigmas"],
)
def test_custom_timesteps_or_sigmas_need_no_step_count(schedule) -> None:
    """`num_inference_steps=None` with `timesteps` or `sigmas` (e.g. an Align-Your-Steps
    schedule) is StableDiffusionPipeline's call (`retrieve_timesteps`): the same images."""
    pipes = []
    for build in (stable_diffusion, ours):
        parts = sd_components()
        parts["scheduler"] = EulerDiscreteScheduler.from_config(parts["scheduler"].config)
        pipes.append(build(**parts))
    settings = dict(prompt="a red circle", negative_prompt="blurry", num_inference_steps=None, **schedule)
    expected = images(pipes[0], **settings)
    assert np.array_equal(images(pipes[1], **settings), expected)
    assert pipes[1].num_timesteps == pipes[0].num_timesteps > 1


def test_no_step_count_without_a_custom_schedule_is_refused(monkeypatch) -> None:
    pipe = ours(**sd_components())
    calls = []
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="`num_inference_steps` must be an int >= 1 .or None with custom"):
        pipe("a red circle", num_inference_steps=None)
    assert not calls


# ---------------------------------------------------------------- optional components


def test_encode_prompt_needs_no_unet() -> None:
    """diffusers' `test_encode_prompt_works_in_isolation`: a pipeline of the text encoder and
    tokenizer alone (no UNet, VAE or scheduler) encodes as the whole StableDiffusionPipeline."""
    parts = sd_components()
    peer = stable_diffusion(**parts)
    text_only = ours(
        **{**{name: None for name in parts}, "text_encoder": parts["text_encoder"], "tokenizer": parts["tokenizer"]}
    )
    for args, kwargs in [
        ((["a red circle", "two blue squares"], "cpu", 2, True), dict(negative_prompt=["blurry", "dark"])),
        (("a red circle", "cpu", 1, False), dict()),
    ]:
        expected, got = peer.encode_prompt(*args, **kwargs), text_only.encode_prompt(*args, **kwargs)
        assert torch.equal(got[0], expected[0])
        assert (got[1] is None and expected[1] is None) or torch.equal(got[1], expected[1])


def test_a_call_with_embeddings_needs_no_text_encoder() -> None:
    """diffusers' `test_encode_prompt_works_in_isolation`, second half: with `prompt_embeds` and
    `negative_prompt_embeds`, a pipeline without text encoder and tokenizer gives the images of
    the whole StableDiffusionPipeline."""
    parts = sd_components()
    peer = stable_diffusion(**parts)
    positive, negative = peer.encode_prompt("a red circle", "cpu", 1, True, negative_prompt="blurry")
    textless = ours(**{**parts, "text_encoder": None, "tokenizer": None})
    expected = images(peer, prompt="a red circle", negative_prompt="blurry")
    got = images(textless, prompt_embeds=positive, negative_prompt_embeds=negative)
    assert np.array_equal(got, expected)
    assert np.array_equal(
        images(textless, prompt_embeds=positive, guidance_scale=1.0),
        images(peer, prompt="a red circle", guidance_scale=1.0),
    )


@pytest.mark.parametrize(
    "missing, kwargs, message",
    [
        (
            ("text_encoder", "tokenizer"),
            dict(prompt="a red circle"),
            "`prompt` is text, but this pipeline has no `text_encoder`, `tokenizer`",
        ),
        (("tokenizer",), dict(prompt="a red circle"), "has no `tokenizer` to encode"),
        (("text_encoder",), dict(prompt="a red circle"), "has no `text_encoder` to encode"),
        (
            ("text_encoder", "tokenizer"),
            dict(prompt_embeds=torch.zeros(1, 77, 32)),
            "guidance needs the negative prompt encoded.*`negative_prompt_embeds`",
        ),
        (
            ("text_encoder", "tokenizer"),
            dict(prompt_embeds=torch.zeros(1, 77, 32), negative_prompt="blurry"),
            "negative_prompt_embeds",
        ),
    ],
)
def test_text_without_a_text_encoder_is_refused_before_any_work(missing, kwargs, message, monkeypatch) -> None:
    pipe = ours(**{**sd_components(), **dict.fromkeys(missing)})
    calls = []
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=message):
        pipe(num_inference_steps=2, **kwargs)
    with pytest.raises(ValueError, match=message):
        pipe.encode_prompt(
            kwargs.get("prompt"),
            "cpu",
            1,
            True,
            negative_prompt=kwargs.get("negative_prompt"),
            prompt_embeds=kwargs.get("prompt_embeds"),
        )
    assert not calls


# ---------------------------------------------------------------- the safety checker


def tiny_safety_checker():
    """A StableDiffusionSafetyChecker on a tiny random CLIP vision tower, and its feature
    extractor (as diffusers' tests build one: no download)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, extractor


def test_from_pipe_keeps_the_safety_checker_and_runs_it_as_stable_diffusion() -> None:
    """`from_pipe(sd_with_safety_checker)` keeps the checker (a diffusers user who loaded SD
    with it expects it to run): the same images and `nsfw_content_detected` as SD, per image,
    with a checker that flags the first of two images and not the second."""
    checker, extractor = tiny_safety_checker()
    peer = stable_diffusion(
        **sd_components(), safety_checker=checker, feature_extractor=extractor, requires_safety_checker=True
    )
    pipe = CLIPConditionedPipeline.from_pipe(peer)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is checker and pipe.feature_extractor is extractor
    assert pipe.config.requires_safety_checker is True
    settings = dict(prompt=["a red circle", "two blue squares"], output_type="np")
    plain = images(pipe, **settings)
    # Flag exactly the first image: a concept equal to its embedding, with a threshold between
    # its cosine (1) and the second image's.
    pixels = extractor(list((plain * 255).round().astype(np.uint8)), return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(pixels)[1])
    cosine = torch.nn.functional.cosine_similarity(embeds[0], embeds[1], dim=0).item()
    checker.concept_embeds.data[0] = embeds[0]
    checker.concept_embeds_weights.data[0] = (1 + cosine) / 2
    settings.update(num_inference_steps=2, guidance_scale=6.0)
    expected = peer(generator=torch.Generator().manual_seed(0), **settings)
    got = pipe(generator=torch.Generator().manual_seed(0), **settings)
    assert expected.nsfw_content_detected == [True, False]
    assert got.nsfw_content_detected == expected.nsfw_content_detected
    assert np.array_equal(got.images, expected.images)
    assert not got.images[0].any() and np.array_equal(got.images[1], plain[1])
    as_tuple = pipe(generator=torch.Generator().manual_seed(0), return_dict=False, **settings)
    assert as_tuple[1] == [True, False] and np.array_equal(as_tuple[0], got.images)


def test_safety_checker_rules_are_stable_diffusions(caplog) -> None:
    """No checker: `nsfw_content_detected` is None; `requires_safety_checker=True` without one
    warns, naming the setting; a checker without a feature extractor is refused."""
    pipe = ours(**sd_components())
    assert pipe(prompt="a", num_inference_steps=1, output_type="np").nsfw_content_detected is None
    with caplog.at_level("WARNING"):
        CLIPConditionedPipeline(**sd_components(), requires_safety_checker=True)
    assert "requires_safety_checker=True" in caplog.text
    with pytest.raises(ValueError, match="needs a `feature_extractor`"):
        CLIPConditionedPipeline(**sd_components(), safety_checker=tiny_safety_checker()[0])


# ---------------------------------------------------------------- bit-exactness over many prompts


def suite_prompts(tokenizer, count: int) -> list[str]:
    """The first `count` prompts of the prompt suites that fit one 77-token window (longer ones
    are chunked here and truncated by diffusers: an intended difference)."""
    prompts = []
    for path in sorted(SUITES.glob("*.yaml")):
        prompts += [entry["prompt"] for entry in yaml.safe_load(path.read_text())["prompts"]]
    return [prompt for prompt in prompts if len(tokenizer(prompt).input_ids) <= 77][:count]


def test_the_text_encoder_runs_on_stable_diffusions_batches() -> None:
    """Prompts in one batch, then negatives in another, as StableDiffusionPipeline.encode_prompt
    runs them: a row's numbers can depend on its batch on some CPUs, so this is what makes the
    embeddings diffusers' to the bit. (The cache then only skips rows already encoded.)"""
    parts = sd_components()
    peer, pipe = stable_diffusion(**parts), ours(**parts)
    pipe.conditioner.cache = None
    batches = []
    parts["text_encoder"].register_forward_pre_hook(lambda module, args: batches.append(args[0].tolist()))
    call = (["a red circle", "two blue squares"], "cpu", 1, True)
    peer.encode_prompt(*call, negative_prompt=["blurry", "dark"])
    expected, batches[:] = list(batches), []
    pipe.encode_prompt(*call, negative_prompt=["blurry", "dark"])
    assert batches == expected and len(expected) == 2


def test_embeddings_and_images_equal_stable_diffusions_over_the_prompt_suites() -> None:
    """Over 40 suite prompts, each with a negative (another suite prompt, "" or none), through
    one pipeline whose embedding cache fills as it goes: `encode_prompt` and the images equal
    StableDiffusionPipeline's, bit for bit."""
    parts = sd_components()
    peer, pipe = stable_diffusion(**parts), ours(**parts)
    prompts = suite_prompts(parts["tokenizer"], 40)
    assert len(prompts) == 40
    for index, prompt in enumerate(prompts):
        negative = [prompts[-1 - index], "", None][index % 3]
        expected = peer.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
        got = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), prompt
        settings = dict(prompt=prompt, negative_prompt=negative)
        assert np.array_equal(images(pipe, **settings), images(peer, **settings)), prompt
