"""LoRA methods of `CLIPConditionedPipeline` against diffusers' StableDiffusion(XL)Pipeline on the
same tiny components, where the embedding cache or the call's state could part them: weights
merged through `.data` (`fuse_lora`, `unfuse_lora`, `unload_lora_weights`) with no encode
between, the LoRA scale a call leaves behind, `fuse_lora`'s signature, and `generate --lora`
with a LoRA of another architecture."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from tiny_pipelines import build_sd, build_sdxl

from clipcond import CLIPConditionedPipeline, TextConditioner
from clipcond.fingerprint import WeightsWatch

PROMPT = dict(prompt="a red circle", negative_prompt="blurry")


def saved_lora(folder, sdxl: bool = False, seed: int = 1):
    """A random LoRA on the tiny SD (or SDXL) UNet and text encoder(s), saved the diffusers way."""
    layers = _lora_layers(sdxl, seed)
    (StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline).save_lora_weights(
        folder, **{name: dict(tensors) for name, tensors in layers.items()}
    )
    return folder


@functools.cache  # one per process: building the source pipeline is most of a LoRA's cost
def _lora_layers(sdxl: bool, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """The LoRA tensors `saved_lora` writes, by argument of `save_lora_weights`."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    source = build_sdxl() if sdxl else build_sd()
    torch.manual_seed(seed)
    source.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    encoders = {"text_encoder": source.text_encoder}
    if sdxl:
        encoders["text_encoder_2"] = source.text_encoder_2
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(source.unet))}
    for name, encoder in encoders.items():
        config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        inject_adapter_in_model(config, encoder)
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    return {name: {key: value.detach().clone() for key, value in tensors.items()} for name, tensors in layers.items()}


def pair(sdxl: bool = False):
    """(diffusers' pipeline, ours over other copies of the same components)."""
    build = build_sdxl if sdxl else build_sd
    peer, ours = build(), CLIPConditionedPipeline.from_pipe(build())
    for pipe in (peer, ours):
        pipe.set_progress_bar_config(disable=True)
    return peer, ours


def run(pipe, **kwargs) -> np.ndarray:
    settings = dict(num_inference_steps=2, guidance_scale=6.0, output_type="np", **PROMPT)
    settings.update(kwargs)
    return pipe(generator=torch.Generator().manual_seed(0), **settings).images


# ---------------------------------------------------------------- weights written through .data


@pytest.mark.parametrize(
    "steps",
    [
        [("fuse_lora", {}), ("unload_lora_weights", {})],
        [("fuse_lora", {"lora_scale": 0.5}), ("unload_lora_weights", {})],
        [("fuse_lora", {}), ("unfuse_lora", {}), ("unload_lora_weights", {})],
        [("fuse_lora", {}), ("unfuse_lora", {}), ("fuse_lora", {"lora_scale": 0.5})],
    ],
    ids=["fuse_unload", "fuse_half_unload", "fuse_unfuse_unload", "fuse_unfuse_fuse_half"],
)
@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_fused_weights_are_not_served_from_the_cache(tmp_path, steps, sdxl) -> None:
    """A prompt encoded before `load_lora_weights` and these steps, with no encode between
    (peft merges through `.data`, which bumps no version counter, and unloading puts the same
    tensors back), gives diffusers' images after them, bit for bit."""
    lora = saved_lora(tmp_path / "lora", sdxl=sdxl)
    peer, ours = pair(sdxl)
    before = run(ours)
    for pipe in (peer, ours):
        pipe.load_lora_weights(lora)
        for name, kwargs in steps:
            getattr(pipe, name)(**kwargs)
    after = run(ours)
    assert np.array_equal(after, run(peer)) and not np.array_equal(after, before)


def test_weights_written_makes_a_conditioner_over_a_diffusers_pipeline_fresh(tmp_path) -> None:
    """`TextConditioner.weights_written()` after diffusers' `fuse_lora` + `unload_lora_weights`:
    the conditioner (memory and disk cache) gives what a fresh one gives, and SD's encode_prompt."""
    lora = saved_lora(tmp_path / "lora")
    pipe = build_sd()
    conditioners = [TextConditioner.from_pipeline(pipe), TextConditioner.from_pipeline(pipe, cache_dir=tmp_path / "c")]
    before = [conditioner.encode("a red circle").tokens for conditioner in conditioners]
    pipe.load_lora_weights(lora)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    fresh = TextConditioner.from_pipeline(pipe).encode("a red circle").tokens
    with torch.no_grad():
        assert torch.equal(fresh, pipe.encode_prompt("a red circle", "cpu", 1, False)[0])
    for conditioner, old in zip(conditioners, before):
        conditioner.weights_written()
        tokens = conditioner.encode("a red circle").tokens
        assert torch.equal(tokens, fresh) and not torch.equal(tokens, old)


def test_mark_written_changes_the_state_and_the_content_hash() -> None:
    """A write through `.data` is invisible to `state()`; `mark_written` makes it visible, and
    the content hash is read again (it sees the new bytes)."""
    layer = torch.nn.Linear(2, 2)
    watch = WeightsWatch([layer])
    state, digest = watch.state(), watch.content_hash()
    layer.weight.data += 1.0
    assert watch.state() == state
    watch.mark_written()
    assert watch.state() != state and watch.content_hash() != digest
    assert watch.state() == watch.state()  # and stays put until the next write


# ---------------------------------------------------------------- the scale a call leaves


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_a_lora_loaded_after_a_scaled_call_takes_its_scale_as_in_diffusers(tmp_path, sdxl) -> None:
    """diffusers' `encode_prompt` keeps the last call's `cross_attention_kwargs` scale as
    `lora_scale`, and `load_lora_weights` scales a later LoRA's text-encoder layers by it:
    ours does the same, so the images stay diffusers'."""
    first, second = saved_lora(tmp_path / "a", sdxl, seed=1), saved_lora(tmp_path / "b", sdxl, seed=2)
    peer, ours = pair(sdxl)
    for pipe in (peer, ours):
        pipe.load_lora_weights(first, adapter_name="a")
    half = {"scale": 0.5}
    assert np.array_equal(run(ours, cross_attention_kwargs=half), run(peer, cross_attention_kwargs=half))
    assert ours.lora_scale == peer.lora_scale == 0.5
    for pipe in (peer, ours):
        pipe.load_lora_weights(second, adapter_name="b")
    assert np.array_equal(run(ours), run(peer))
    for pipe in (peer, ours):
        pipe.encode_prompt(
            "a red circle", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, lora_scale=0.25
        )
    assert ours.lora_scale == peer.lora_scale == 0.25


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_a_scale_given_as_numpy_or_a_0d_tensor_gives_diffusers_image(tmp_path, sdxl) -> None:
    """diffusers takes `cross_attention_kwargs={"scale": torch.tensor(0.3)}` (peft multiplies its
    layers' scale by it): ours gives its image, for a float32 and a float64 tensor and numpy's
    float; a tensor of more than one number, or a bool, is refused before any work."""
    lora = saved_lora(tmp_path / "lora", sdxl)
    peer, ours = pair(sdxl)
    for pipe in (peer, ours):
        pipe.load_lora_weights(lora)
    plain = run(peer)
    for scale in (torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64), np.float32(0.3)):
        image = run(peer, cross_attention_kwargs={"scale": scale})
        assert not np.array_equal(image, plain)
        assert np.array_equal(run(ours, cross_attention_kwargs={"scale": scale}), image)
    for scale in (torch.tensor([0.3]), torch.tensor(True)):
        with pytest.raises(TypeError, match=r"^`lora_scale` must be a number \(the LoRA's weight, 1.0 as trained\)"):
            run(ours, cross_attention_kwargs={"scale": scale})


# ---------------------------------------------------------------- diffusers' signature


def test_fuse_lora_takes_diffusers_arguments_and_refuses_an_empty_list(tmp_path) -> None:
    lora = saved_lora(tmp_path / "lora")
    peer, ours = pair()
    for pipe in (peer, ours):
        pipe.load_lora_weights(lora)
        pipe.fuse_lora(["unet", "text_encoder"], 0.5, False, None)  # positional, as diffusers takes them
    assert np.array_equal(run(ours), run(peer))
    for pipe in (peer, ours):
        for method in (pipe.fuse_lora, pipe.unfuse_lora):
            with pytest.raises(ValueError, match="`components` cannot be an empty list"):
                method(components=[])
        pipe.unfuse_lora(["unet", "text_encoder"])
    assert np.array_equal(run(ours), run(peer))


@pytest.mark.parametrize(
    "scale, error, message",
    [
        (float("nan"), ValueError, r"^`lora_scale` must be finite, got nan$"),
        (float("inf"), ValueError, r"^`lora_scale` must be finite, got inf$"),
        ("0.5", TypeError, r"^`lora_scale` must be a number \(the LoRA's weight, 1.0 as trained\), got '0.5'$"),
        (None, TypeError, r"^`lora_scale` must be a number \(the LoRA's weight, 1.0 as trained\), got None$"),
        (True, TypeError, r"^`lora_scale` must be a number \(the LoRA's weight, 1.0 as trained\), got True$"),
    ],
    ids=["nan", "inf", "string", "none", "bool"],
)
def test_fuse_lora_refuses_a_scale_that_is_no_finite_number_before_any_weight_changes(
    tmp_path, scale, error, message
) -> None:
    """diffusers fuses a NaN or infinite `lora_scale` into the base weights, which `unfuse_lora`
    cannot take out again (the weights stay NaN): refused here with every weight as it was;
    a numpy or 0-d tensor scale fuses as its float does in diffusers."""
    lora = saved_lora(tmp_path / "lora")
    peer, ours = pair()
    for pipe in (peer, ours):
        pipe.load_lora_weights(lora)
    before = {name: value.clone() for name, value in ours.unet.state_dict().items()}
    before_text = {name: value.clone() for name, value in ours.text_encoder.state_dict().items()}
    with pytest.raises(error, match=message):
        ours.fuse_lora(lora_scale=scale)
    assert all(torch.equal(value, before[name]) for name, value in ours.unet.state_dict().items())
    assert all(torch.equal(value, before_text[name]) for name, value in ours.text_encoder.state_dict().items())
    peer.fuse_lora(lora_scale=0.5)
    ours.fuse_lora(lora_scale=torch.tensor(0.5))
    assert np.array_equal(run(ours), run(peer))


def _lora_scalings(pipe) -> list:
    return [
        dict(module.scaling)
        for model in (pipe.unet, pipe.text_encoder)
        for module in model.modules()
        if hasattr(module, "scaling") and isinstance(module.scaling, dict)
    ]


@pytest.mark.parametrize(
    "weights, error, message",
    [
        ("0.5", TypeError, r"^`adapter_weights` must be a finite number, a dict of weights per component or block"),
        ((0.5,), TypeError, r"^`adapter_weights` must be a finite number, .* got \(0.5,\)$"),
        (True, TypeError, r"^`adapter_weights` must be a finite number, .* got True$"),
        (float("nan"), ValueError, r"^`adapter_weights` must be finite, got nan$"),
        ({"unet": float("inf")}, ValueError, r"^`adapter_weights` must be finite, got inf$"),
    ],
    ids=["string", "tuple", "bool", "nan", "inf_for_the_unet"],
)
def test_set_adapters_refuses_weights_that_are_no_finite_numbers_with_nothing_changed(
    tmp_path, weights, error, message
) -> None:
    """diffusers took NaN and infinity (every image NaN) and failed on a string or a tuple in its
    arithmetic: refused here, before any layer's scale changes."""
    _, ours = pair()
    ours.load_lora_weights(saved_lora(tmp_path / "lora"), adapter_name="a")
    ours.set_adapters("a", 0.5)
    before = _lora_scalings(ours)
    with pytest.raises(error, match=message):
        ours.set_adapters("a", weights)
    assert _lora_scalings(ours) == before


@pytest.mark.parametrize(
    "weights",
    [np.float32(0.5), torch.tensor(0.5), [0.5], {"unet": 0.5, "text_encoder": 0.8}, {"unet": {"down": 0.3, "up": 1.0}}],
    ids=["numpy", "0d_tensor", "list", "per_component", "per_block"],
)
def test_set_adapters_takes_the_weights_diffusers_takes_and_gives_its_images(tmp_path, weights) -> None:
    lora = saved_lora(tmp_path / "lora")
    peer, ours = pair()
    for pipe in (peer, ours):
        pipe.load_lora_weights(lora, adapter_name="a")
        pipe.set_adapters("a", weights)
    assert np.array_equal(run(ours), run(peer))


# ---------------------------------------------------------------- generate --lora


def test_generate_names_a_lora_of_another_architecture(tmp_path, capsys) -> None:
    """An SDXL LoRA on a Stable Diffusion model: one ``error:`` line naming --lora, the first
    tensor that does not fit and the likely cause, exit 2, no traceback, no image."""
    from clipcond.cli import main

    build_sd().save_pretrained(tmp_path / "model")
    lora = saved_lora(tmp_path / "sdxl_lora", sdxl=True)
    png = tmp_path / "a.png"
    argv = ["generate", "a", "-o", str(png), "--model", str(tmp_path / "model"), "--lora", str(lora), "--steps", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: --lora {lora}: cannot load LoRA weights: their tensors do not fit")
    assert "size mismatch for " in errors[0] and "made for another model architecture" in errors[0]
    assert not png.exists()
