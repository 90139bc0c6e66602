"""Under accelerate's offloading hooks: `swap_text_encoder` re-applies diffusers' model offload
and refuses the hooks it cannot re-create, leaving the caller's tower and the pipeline as they
were; the non-finite-states error still names the fix when the weights rest on the meta device.

On a CPU, diffusers' `enable_model_cpu_offload(device="cpu")` works; its
`enable_sequential_cpu_offload` does not, so the hooks it puts on each component are made by
hand, `accelerate.cpu_offload(module, execution_device=cpu)`: the weights move to the meta
device and the hooks bring them in for each forward.
"""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
import torch
from accelerate import cpu_offload, cpu_offload_with_hook
from accelerate.hooks import CpuOffload, remove_hook_from_module
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.hooks import apply_group_offloading
from tiny_pipelines import build_sd, build_sdxl, clip_text_model, overflowing_t5
from transformers import AutoTokenizer

from clipcond import CLIPConditionedPipeline, TextConditioner
from clipcond.pipelines import swap_text_encoder
from clipcond.window_encoding import NonFiniteEncoding

PROMPTS = ["a red circle left of a blue square", ""]
NEGATIVES = ["blurry", "a green triangle"]
CPU = torch.device("cpu")


def plain(build, component: str, tower: torch.nn.Module):
    """diffusers' pipeline of `build`'s class holding `tower` in `component`, without hooks."""
    pipe = build()
    extra = {"requires_safety_checker": False} if isinstance(pipe, StableDiffusionPipeline) else {}
    return type(pipe)(**{**pipe.components, **extra, component: tower})


def encoded(pipe) -> tuple[torch.Tensor, ...]:
    """`encode_prompt`'s tensors (diffusers' method, or clipcond's on a CLIPConditionedPipeline)."""
    with torch.no_grad():
        if isinstance(pipe, StableDiffusionXLPipeline):
            return pipe.encode_prompt(PROMPTS, device=CPU, negative_prompt=NEGATIVES)
        return pipe.encode_prompt(PROMPTS, CPU, 1, True, negative_prompt=NEGATIVES)


def latents(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    images = pipe(PROMPTS[0], num_inference_steps=2, output_type="latent", generator=generator).images
    return images.float().numpy()


def equal_tensors(ours, theirs) -> bool:
    return len(ours) == len(theirs) and all(
        a.dtype == b.dtype and a.device == b.device and torch.equal(a, b) for a, b in zip(ours, theirs)
    )


def clip_conditioned() -> CLIPConditionedPipeline:
    return CLIPConditionedPipeline.from_pipe(build_sd())


# the pipeline swapped into, the slot, the new tower, and the diffusers pipeline to compare with
SWAPS = {
    "sd": (build_sd, "text_encoder", lambda: clip_text_model(7), build_sd),
    "sdxl_second_clip": (build_sdxl, "text_encoder_2", lambda: clip_text_model(8, with_projection=True), build_sdxl),
    "clip_conditioned": (clip_conditioned, "text_encoder", lambda: clip_text_model(7), build_sd),
}


@pytest.mark.parametrize("case", list(SWAPS))
def test_swap_under_model_offload_hooks_the_new_encoder_and_lets_the_old_one_go(case) -> None:
    """After `enable_model_cpu_offload(device="cpu")` the swap puts the hooks on again with the
    same device: the new encoder carries one, the old one carries none and nothing keeps it,
    and the embeddings and latents are those of a plain diffusers pipeline built with the new
    tower, bit for bit."""
    build, component, tower, build_peer = SWAPS[case]
    pipe = build()
    pipe.enable_model_cpu_offload(device="cpu")
    offload_device, old = pipe._offload_device, weakref.ref(getattr(pipe, component))
    new = tower()
    assert swap_text_encoder(pipe, new, component=component) is pipe and getattr(pipe, component) is new
    assert isinstance(new.__dict__.get("_hf_hook"), CpuOffload)
    assert new._hf_hook in [hook.hook for hook in pipe._all_hooks] and pipe._offload_device == offload_device
    if case == "clip_conditioned":
        # its conditioner over the old encoder is dropped when the pipeline next reads one
        assert pipe.conditioner.encoders[0].model is new
    gc.collect()
    assert old() is None
    peer = plain(build_peer, component, tower())
    assert equal_tensors(encoded(pipe), encoded(peer))
    assert np.array_equal(latents(pipe), latents(peer))


def sequentially_offloaded(module: torch.nn.Module, part: str = "") -> torch.nn.Module:
    """`module` as `enable_sequential_cpu_offload` leaves it (the whole encoder, or only `part`
    of it as a hand-made hook would): weights on the meta device, hooks bringing them in."""
    cpu_offload(module.get_submodule(part), execution_device=CPU)
    return module


@pytest.mark.parametrize("part", ["", "encoder"])
def test_swap_under_sequential_offload_is_refused_and_changes_nothing(part) -> None:
    """The swap moved the caller's tower to the meta device (its weights gone) and hooked
    nothing. Now it refuses first, naming the remedy, and the remedy works."""
    pipe = build_sd()
    old = sequentially_offloaded(pipe.text_encoder, part)
    before = encoded(pipe)
    tower = clip_text_model(7)
    weights = copy.deepcopy(tower.state_dict())
    with pytest.raises(
        ValueError,
        match=r"pipe\.text_encoder is offloaded by accelerate \(hooks on .*enable_sequential_cpu_offload"
        r".*Call pipe\.remove_all_hooks\(\) \(for hooks put on a part by hand: accelerate\.hooks\."
        r"remove_hook_from_module\(pipe\.text_encoder, recurse=True\)\), swap, then enable offloading again",
    ):
        swap_text_encoder(pipe, tower)
    assert pipe.text_encoder is old and equal_tensors(encoded(pipe), before)
    assert old.get_submodule(part).__dict__.get("_hf_hook") is not None
    assert {weight.device.type for weight in old.get_submodule(part).parameters()} == {"meta"}
    state = tower.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], v) for k, v in weights.items())
    assert {weight.device for weight in tower.parameters()} == {CPU}
    assert not any("_hf_hook" in module.__dict__ for module in tower.modules())
    # the remedy the message names: hooks off, swap, offload again
    if part:
        remove_hook_from_module(pipe.text_encoder, recurse=True)
    else:
        pipe.remove_all_hooks()
    swap_text_encoder(pipe, tower)
    sequentially_offloaded(pipe.text_encoder, part)
    assert equal_tensors(encoded(pipe), encoded(plain(build_sd, "text_encoder", clip_text_model(7))))


def test_a_model_hook_put_on_by_hand_is_refused_and_the_remedy_works() -> None:
    """`cpu_offload_with_hook` by hand, outside `enable_model_cpu_offload`: the swap cannot
    know the chain it belongs to, so it does not guess."""
    pipe = build_sd()
    old = pipe.text_encoder
    cpu_offload_with_hook(old, CPU)
    with pytest.raises(ValueError, match=r"pipe\.text_encoder is offloaded by accelerate \(hooks on the encoder: "):
        swap_text_encoder(pipe, clip_text_model(7))
    assert pipe.text_encoder is old and "_hf_hook" in old.__dict__
    pipe.remove_all_hooks()
    swap_text_encoder(pipe, clip_text_model(7))
    cpu_offload_with_hook(pipe.text_encoder, CPU)
    assert equal_tensors(encoded(pipe), encoded(plain(build_sd, "text_encoder", clip_text_model(7))))


def test_an_encoder_without_weights_in_the_pipeline_is_refused_naming_from_pipe() -> None:
    """Weights on the meta device and no hook to bring them in: no device to move the tower to."""
    pipe = build_sd()
    old = pipe.text_encoder.to_empty(device="meta")
    tower = clip_text_model(7)
    with pytest.raises(
        ValueError,
        match=r"pipe\.text_encoder holds no weights \(on the meta device: embeddings\..*"
        r"StableDiffusionPipeline\.from_pipe\(pipe, text_encoder=\.\.\.\)",
    ):
        swap_text_encoder(pipe, tower)
    assert pipe.text_encoder is old and {weight.device for weight in tower.parameters()} == {CPU}
    rebuilt = StableDiffusionPipeline.from_pipe(pipe, text_encoder=tower)
    assert equal_tensors(encoded(rebuilt), encoded(plain(build_sd, "text_encoder", clip_text_model(7))))


def test_an_offloaded_or_empty_tower_is_refused_before_any_change() -> None:
    pipe = build_sd()
    old = pipe.text_encoder
    tower = sequentially_offloaded(clip_text_model(7))
    with pytest.raises(ValueError, match=r"`text_encoder` is dispatched or offloaded by accelerate \(hooks on the "):
        swap_text_encoder(pipe, tower)
    assert {weight.device.type for weight in tower.parameters()} == {"meta"}
    with torch.device("meta"):
        empty = clip_text_model(7)
    with pytest.raises(ValueError, match=r"`text_encoder` holds no weights \(on the meta device: embeddings\."):
        swap_text_encoder(pipe, empty)
    assert pipe.text_encoder is old and not any("_hf_hook" in module.__dict__ for module in old.modules())
    # the remedy the message names
    remove_hook_from_module(tower, recurse=True)
    swap_text_encoder(pipe, tower)
    assert equal_tensors(encoded(pipe), encoded(plain(build_sd, "text_encoder", clip_text_model(7))))


def test_swap_under_group_offload_is_refused_before_any_change() -> None:
    pipe = build_sd()
    old = pipe.text_encoder
    apply_group_offloading(old, onload_device=CPU, offload_type="leaf_level")
    tower = clip_text_model(7)
    with pytest.raises(ValueError, match=r"pipe\.text_encoder carries diffusers hooks \(group offloading\)"):
        swap_text_encoder(pipe, tower)
    assert pipe.text_encoder is old and not any("_diffusers_hook" in module.__dict__ for module in tower.modules())


# ------------------------------------------------------------------ non-finite states, weights on meta


def test_float16_overflow_under_sequential_offload_names_the_fix(t5_tokenizer_path) -> None:
    """Building the message read every weight, and the meta ones crashed it ("Tensor.item()
    cannot be called on meta tensors"): the user never saw the fix."""
    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    half = sequentially_offloaded(overflowing_t5(len(tokenizer)).half())
    assert {weight.device.type for weight in half.parameters()} == {"meta"}
    conditioner = TextConditioner("custom", t5=(half, tokenizer), cache_size=0)
    with pytest.raises(
        NonFiniteEncoding,
        match=r"T5 encoder T5EncoderModel \(torch\.float16\) .* although its weights are finite; in float16 pass "
        r"compute_dtype=torch\.float32",
    ):
        conditioner.encode("a red circle")


def test_non_finite_offloaded_weights_are_read_from_the_hooks(sd_pipe) -> None:
    """A NaN in a weight that rests on the meta device is found where accelerate keeps it."""
    pipe = copy.deepcopy(sd_pipe)
    with torch.no_grad():
        pipe.text_encoder.get_submodule("encoder.layers.0.mlp.fc1").weight[0, 0] = float("nan")
    sequentially_offloaded(pipe.text_encoder)
    conditioner = TextConditioner.from_pipeline(pipe, cache_size=0)
    with pytest.raises(NonFiniteEncoding, match=r"CLIP encoder CLIPTextModel \(torch\.float32\) .* weights hold NaN"):
        conditioner.encode("a red circle")
