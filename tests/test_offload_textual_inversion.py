"""Textual inversion loaded by clipcond into encoders under accelerate's sequential offload equals
diffusers' `load_textual_inversion` under the same offload, and leaves the offload as it was.

On a CPU, diffusers' `enable_sequential_cpu_offload` fails inside accelerate (the `cpu:0` index),
so the hooks it puts on each component are made by hand, as in tests/test_offload_hooks.py:
`accelerate.cpu_offload(component, cpu, offload_buffers=True)`. diffusers' loader takes the
hooks off and calls `enable_sequential_cpu_offload` again; the diffusers pipelines here do that
through the same by-hand offload.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import cpu_offload, disk_offload
from accelerate.hooks import AlignDevicesHook
from diffusers import StableDiffusionXLPipeline
from tiny_pipelines import build_sd, build_sdxl

from clipcond import CLIPConditionedPipeline, TextConditioner

CPU = torch.device("cpu")
PROMPTS = ["a photo of <toy> riding a horse", "a red circle"]
NEGATIVES = ["blurry", "a green triangle"]
ENCODERS = ("text_encoder", "text_encoder_2")


def vectors(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 32, generator=torch.Generator().manual_seed(seed))


def offloaded(pipe):
    """`pipe` with `cpu_offload` on its models, as `enable_sequential_cpu_offload` puts it, and
    that method made to put it back the same way (what diffusers' loader calls)."""
    names = [name for name in ("text_encoder", "text_encoder_2", "unet", "vae") if getattr(pipe, name, None)]

    def enable_sequential_cpu_offload(*args, **kwargs) -> None:
        pipe.remove_all_hooks()
        for name in names:
            cpu_offload(getattr(pipe, name), CPU, offload_buffers=True)

    enable_sequential_cpu_offload()
    pipe.enable_sequential_cpu_offload = enable_sequential_cpu_offload
    return pipe


def encoded(pipe) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        if isinstance(pipe, StableDiffusionXLPipeline):
            return tuple(pipe.encode_prompt(PROMPTS, device=CPU, negative_prompt=NEGATIVES))
        return tuple(pipe.encode_prompt(PROMPTS, CPU, 1, True, negative_prompt=NEGATIVES))


def assert_equal(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and torch.equal(a, b)


def assert_still_offloaded(encoder: torch.nn.Module) -> None:
    """The input-embedding table rests on the meta device, loaded for each forward by a hook
    whose state dict holds the grown table."""
    embeddings = encoder.get_input_embeddings()
    assert embeddings.weight.device.type == "meta"
    hook = embeddings._hf_hook
    hook = next(h for h in getattr(hook, "hooks", (hook,)) if isinstance(h, AlignDevicesHook) and h.offload)
    assert hook.weights_map["weight"].shape == embeddings.weight.shape


def test_conditioner_loads_into_a_sequentially_offloaded_encoder_as_diffusers_does(tmp_path) -> None:
    """`TextConditioner.load_textual_inversion` on a pipeline under sequential offload: the
    pipeline's own `encode_prompt`, and the conditioner's embeddings, equal those of a diffusers
    pipeline that loaded the same file under the same offload; the encoder is still offloaded."""
    file = tmp_path / "learned_embeds.safetensors"
    from safetensors.torch import save_file

    save_file({"<toy>": vectors(2, 3)}, file)
    theirs = offloaded(build_sd())
    theirs.load_textual_inversion(str(file))
    ours = offloaded(build_sd())
    conditioner = TextConditioner.from_pipeline(ours)
    conditioner.encode(["a red circle"])  # cached before the load: not reused after it
    conditioner.load_textual_inversion(str(file))

    assert len(ours.tokenizer) == len(theirs.tokenizer)
    assert_still_offloaded(ours.text_encoder)
    assert_equal(encoded(ours), encoded(theirs))
    with torch.no_grad():
        kwargs = conditioner.pipeline_kwargs(PROMPTS, negative_prompt=NEGATIVES)
    assert_equal((kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"]), encoded(theirs))


def test_pipeline_loads_an_sdxl_pair_under_sequential_offload_as_diffusers_two_calls(tmp_path) -> None:
    """`CLIPConditionedPipeline.load_textual_inversion` of a `clip_l`/`clip_g` pair under
    sequential offload equals diffusers' documented two calls under the same offload."""
    from safetensors.torch import save_file

    pair = {"clip_l": vectors(2, 4), "clip_g": vectors(2, 5)}
    save_file(pair, tmp_path / "toy.safetensors")
    theirs = offloaded(build_sdxl())
    theirs.load_textual_inversion(pair["clip_l"], "<toy>", theirs.tokenizer, theirs.text_encoder)
    theirs.load_textual_inversion(pair["clip_g"], "<toy>", theirs.tokenizer_2, theirs.text_encoder_2)
    ours = offloaded(CLIPConditionedPipeline.from_pipe(build_sdxl()))
    ours.load_textual_inversion(str(tmp_path / "toy.safetensors"), token="<toy>")

    for name in ENCODERS:
        assert_still_offloaded(getattr(ours, name))
    assert_equal(encoded(ours), encoded(theirs))


def test_an_encoder_offloaded_to_disk_is_refused_before_anything_changes(tmp_path) -> None:
    """Offload `cpu_offload` did not make (here accelerate's `disk_offload`) cannot be put back
    as it was: a ValueError naming the remedy, with the tokenizer, the table and the encodes as
    they were."""
    pipe = build_sd()
    disk_offload(pipe.text_encoder, tmp_path / "offload", execution_device=CPU, offload_buffers=True)
    before = encoded(pipe)
    size, table = len(pipe.tokenizer), pipe.text_encoder.get_input_embeddings().weight
    conditioner = TextConditioner.from_pipeline(pipe)
    with pytest.raises(ValueError, match="load the embedding before offloading the model"):
        conditioner.load_textual_inversion(vectors(2, 3), token="<toy>")
    assert len(pipe.tokenizer) == size
    assert pipe.text_encoder.get_input_embeddings().weight is table
    assert_equal(encoded(pipe), before)
