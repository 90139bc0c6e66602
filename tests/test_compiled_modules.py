"""Components wrapped by `torch.compile`, as diffusers users do (`pipe.unet = torch.compile(pipe.unet)`):
an `OptimizedModule` that forwards its attributes (`config`, `dtype`) to the module it wraps.

The eager backend traces with dynamo but runs no compiler, so the values are the uncompiled
module's; the checks are that nothing refuses or unwraps the wrapper wrongly, that the images
and embeddings equal diffusers' with the same wrapped components, and that the cache still sees
the wrapped encoder's weights change.
"""

import copy

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from tiny_pipelines import build_sd, build_sdxl

from clipcond import CLIPConditionedPipeline, TextConditioner

PROMPT = "a (red:1.2) cube beside a blue sphere"


def _compiled(module: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(module, backend="eager")


def _with_compiled_unet_and_encoder(build):
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    pipe.unet = _compiled(pipe.unet)
    pipe.text_encoder = _compiled(pipe.text_encoder)
    return pipe


# SDXL's is slow (dynamo traces each module, about 8 s a family here): run with -m slow.
@pytest.mark.parametrize(
    ("build", "peer_class"),
    [(build_sd, StableDiffusionPipeline), pytest.param(build_sdxl, StableDiffusionXLPipeline, marks=pytest.mark.slow)],
)
def test_a_pipeline_over_compiled_components_draws_diffusers_image(build, peer_class, tmp_path):
    peer = _with_compiled_unet_and_encoder(build)
    assert isinstance(peer.unet, torch._dynamo.eval_frame.OptimizedModule)
    ours = CLIPConditionedPipeline.from_pipe(peer)
    ours.set_progress_bar_config(disable=True)
    settings = {"prompt": "a red cube", "negative_prompt": "blurry", "num_inference_steps": 2, "output_type": "np"}
    expected = peer(**settings, generator=torch.Generator().manual_seed(0)).images
    got = ours(**settings, generator=torch.Generator().manual_seed(0)).images
    assert (got == expected).all()
    # Saved unwrapped, as diffusers saves a compiled module: the folder loads and draws the same.
    ours.save_pretrained(tmp_path / "saved")
    back = CLIPConditionedPipeline.from_pretrained(tmp_path / "saved")
    back.set_progress_bar_config(disable=True)
    peer_back = peer_class.from_pretrained(tmp_path / "saved")
    peer_back.set_progress_bar_config(disable=True)
    assert not isinstance(back.unet, torch._dynamo.eval_frame.OptimizedModule)
    reloaded = back(**settings, generator=torch.Generator().manual_seed(0)).images
    assert (reloaded == peer_back(**settings, generator=torch.Generator().manual_seed(0)).images).all()


def test_a_conditioner_over_a_compiled_encoder_encodes_and_sees_its_weights_change():
    pipe = _with_compiled_unet_and_encoder(build_sd)
    conditioner = TextConditioner.from_pipeline(pipe, cache_size=8)
    with torch.no_grad():
        expected = pipe.encode_prompt("a red cube", "cpu", 1, False)[0]
    assert torch.equal(conditioner.encode(["a red cube"]).tokens, expected)
    weighted = conditioner.encode([PROMPT]).tokens
    with torch.no_grad():
        pipe.text_encoder.get_parameter("final_layer_norm.bias").add_(0.25)  # through the wrapper
    changed = conditioner.encode([PROMPT]).tokens
    reference = TextConditioner.from_pipeline(
        StableDiffusionPipeline(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)})
    )
    assert not torch.equal(changed, weighted)
    assert torch.equal(changed, reference.encode([PROMPT]).tokens)
