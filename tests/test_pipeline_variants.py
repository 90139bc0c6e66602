"""`TextConditioner.from_pipeline` on the ControlNet, PAG, Control, Fill and Kontext variants of
each family: their `encode_prompt` is the base pipeline's, so the conditioner's keyword arguments
equal the variant's own `encode_prompt`, bit for bit, and drive its `__call__` as a prompt does."""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch

from clipcond import TextConditioner
from clipcond.families import FAMILIES

PROMPTS = ["a red circle above a blue square", "a green triangle"]
NEGATIVE = "blurry"
BASES = {"sd": "sd_pipe", "sdxl": "sdxl_pipe", "sd3": "sd3_pipe", "flux": "flux_pipe"}
VARIANTS = [
    (family, name)
    for family in BASES
    for name in FAMILIES[family].pipeline_classes
    if name
    not in (
        f"{stem}{suffix}"
        for stem in ("StableDiffusion", "StableDiffusionXL", "StableDiffusion3", "Flux")
        for suffix in ("Pipeline", "Img2ImgPipeline", "InpaintPipeline")
    )
]


def _variant(name: str, base):
    """The variant built on `base`'s components (a ControlNet slot left empty: encoding needs
    none; SD3's PAG on the tiny transformer's one block)."""
    cls = getattr(diffusers, name)
    parameters = inspect.signature(cls.__init__).parameters
    components = {key: value for key, value in base.components.items() if key in parameters}
    if "controlnet" in parameters:
        components["controlnet"] = None
    if name.startswith("StableDiffusion3PAG"):
        components["pag_applied_layers"] = ["blocks.0"]
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _encode_prompt(family: str, pipe) -> dict[str, torch.Tensor]:
    """The variant's own `encode_prompt` under guidance, named as its `__call__` takes them."""
    negatives = [NEGATIVE] * len(PROMPTS)
    with torch.no_grad():
        if family == "sd":
            tokens, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=negatives)
            return {"prompt_embeds": tokens, "negative_prompt_embeds": negative}
        if family in ("sdxl", "sd3"):
            extra = {"prompt_3": None} if family == "sd3" else {}
            out = pipe.encode_prompt(
                prompt=PROMPTS,
                prompt_2=None,
                device="cpu",
                do_classifier_free_guidance=True,
                negative_prompt=negatives,
                **extra,
            )
            names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
            return dict(zip(names, out))
        tokens, pooled, _ = pipe.encode_prompt(prompt=PROMPTS, prompt_2=None, device="cpu")
        negative, negative_pooled, _ = pipe.encode_prompt(prompt=negatives, prompt_2=None, device="cpu")
        return {
            "prompt_embeds": tokens,
            "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": negative,
            "negative_pooled_prompt_embeds": negative_pooled,
        }


def test_every_family_has_variants_beyond_its_base_classes() -> None:
    found = {family for family, _ in VARIANTS}
    assert found == set(BASES) and len(VARIANTS) >= 25


@pytest.mark.parametrize("family, name", VARIANTS)
def test_a_variant_encodes_as_its_own_encode_prompt(family, name, request) -> None:
    base = request.getfixturevalue(BASES[family])
    pipe = _variant(name, base)
    cond = TextConditioner.from_pipeline(pipe)
    assert cond.recipe.name == family and cond.encoders[0].model is base.text_encoder
    ours = cond.pipeline_kwargs(PROMPTS, NEGATIVE)
    expected = _encode_prompt(family, pipe)
    assert set(expected) <= set(ours)
    for key, tensor in expected.items():
        assert torch.equal(ours[key], tensor), key


CALLS = {
    "StableDiffusionPAGPipeline": ("sd", dict(height=32, width=32)),
    "StableDiffusionXLPAGPipeline": ("sdxl", dict(height=32, width=32)),
    "StableDiffusion3PAGPipeline": ("sd3", dict(height=32, width=32)),
    "FluxKontextPipeline": ("flux", dict(height=16, width=16, max_area=16 * 16, true_cfg_scale=2.0)),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_variant_runs_on_the_conditioners_arguments_as_on_the_prompt(name, request) -> None:
    family, size = CALLS[name]
    pipe = _variant(name, request.getfixturevalue(BASES[family]))
    cond = TextConditioner.from_pipeline(pipe)
    settings = dict(size, num_inference_steps=2, output_type="latent")
    prompt = PROMPTS[0]
    with torch.no_grad():
        ours = pipe(**cond.pipeline_kwargs(prompt, NEGATIVE), generator=torch.Generator().manual_seed(0), **settings)
        theirs = pipe(prompt=prompt, negative_prompt=NEGATIVE, generator=torch.Generator().manual_seed(0), **settings)
    assert torch.isfinite(ours.images).all()
    assert torch.equal(ours.images, theirs.images)
