"""Two options of diffusers' `encode_prompt` that `TextConditioner.pipeline_kwargs` takes too:
`lora_scale` (a LoRA in the text encoders run at a call's scale: SD and SDXL scale their CLIPs,
SD3 its two CLIPs and not its T5, Flux its CLIP and its T5) and `num_images_per_prompt` (rows
repeated as `encode_prompt` repeats them, which SD3's and Flux's `__call__` do not do for given
embeddings). The references are each family's own `encode_prompt` and `__call__`."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from tiny_pipelines import build_family

from clipcond import TextConditioner

PROMPT = "a red circle above a blue square"
PROMPTS = ["a red circle", "a blue (square:1.2) left of a green triangle"]


def _with_lora(model: torch.nn.Module, seed: int) -> None:
    """A random LoRA (not the zero init, so that it changes the output) in `model`'s attention."""
    torch.manual_seed(seed)
    targets = ["q", "k", "v", "o"] if "T5" in type(model).__name__ else ["q_proj", "k_proj", "v_proj", "out_proj"]
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False), model)


@pytest.fixture(scope="module", params=["sd", "sdxl", "sd3", "flux"])
def lora_pipe(request, t5_tokenizer_path):
    """A tiny pipeline of the family with a LoRA in every text encoder (SD3's T5 included,
    which diffusers does not scale)."""
    pipe = build_family(request.param, t5_tokenizer_path)
    for index, name in enumerate(("text_encoder", "text_encoder_2", "text_encoder_3")):
        if getattr(pipe, name, None) is not None:
            _with_lora(getattr(pipe, name), seed=index)
    return request.param, pipe


def _encode_prompt(family: str, pipe, lora_scale):
    """(tokens, pooled or None) of the family's own `encode_prompt` without guidance."""
    with torch.no_grad():
        if family == "sd":
            return pipe.encode_prompt(PROMPT, "cpu", 1, False, lora_scale=lora_scale)[0], None
        if family == "sdxl":
            out = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False, lora_scale=lora_scale)
            return out[0], out[2]
        if family == "sd3":
            out = pipe.encode_prompt(
                PROMPT, None, None, device="cpu", do_classifier_free_guidance=False, lora_scale=lora_scale
            )
            return out[0], out[2]
        out = pipe.encode_prompt(PROMPT, None, device="cpu", lora_scale=lora_scale)
        return out[0], out[1]


@pytest.mark.parametrize("lora_scale", [0.5, 0.0, 2.0])
def test_lora_scale_equals_encode_prompt_of_each_family(lora_pipe, lora_scale) -> None:
    family, pipe = lora_pipe
    cond = TextConditioner.from_pipeline(pipe)
    plain_tokens, _ = _encode_prompt(family, pipe, None)
    assert torch.equal(cond.pipeline_kwargs(PROMPT)["prompt_embeds"], plain_tokens)
    tokens, pooled = _encode_prompt(family, pipe, lora_scale)
    assert not torch.equal(tokens, plain_tokens)  # the scale reaches the embeddings
    kwargs = cond.pipeline_kwargs(PROMPT, lora_scale=lora_scale)
    assert torch.equal(kwargs["prompt_embeds"], tokens)
    if pooled is not None:
        assert torch.equal(kwargs["pooled_prompt_embeds"], pooled)
    assert torch.equal(cond.encode(PROMPT, lora_scale=lora_scale).tokens, tokens)
    # after the call the LoRA is back at its own scale, and the cache serves no scaled rows
    assert torch.equal(cond.pipeline_kwargs(PROMPT)["prompt_embeds"], plain_tokens)
    assert torch.equal(cond.encode(PROMPT).tokens, plain_tokens)


def test_a_disk_cache_keys_the_lora_scale(tmp_path, t5_tokenizer_path) -> None:
    pipe = build_family("sd", t5_tokenizer_path)
    _with_lora(pipe.text_encoder, seed=0)
    first = TextConditioner.from_pipeline(pipe, cache_dir=tmp_path)
    half = first.encode(PROMPT, lora_scale=0.5).tokens
    second = TextConditioner.from_pipeline(pipe, cache_dir=tmp_path)  # reads what `first` wrote
    assert torch.equal(second.encode(PROMPT, lora_scale=0.5).tokens, half)
    assert not torch.equal(second.encode(PROMPT).tokens, half)


def test_nested_scales_multiply_as_diffusers_scale_lora_layers_does(t5_tokenizer_path) -> None:
    """`with cond.lora_scaled(0.5): cond.encode(p, lora_scale=4.0)` runs the LoRA at 2.0, as
    diffusers' `scale_lora_layers` nests; the cache serves each product its own rows."""
    pipe = build_family("sd", t5_tokenizer_path)
    _with_lora(pipe.text_encoder, seed=0)
    cond = TextConditioner.from_pipeline(pipe)
    doubled, _ = _encode_prompt("sd", pipe, 2.0)
    with cond.lora_scaled(0.5):
        half = cond.encode(PROMPT).tokens
        assert torch.equal(cond.encode(PROMPT, lora_scale=4.0).tokens, doubled)
    assert torch.equal(half, _encode_prompt("sd", pipe, 0.5)[0])
    assert torch.equal(cond.encode(PROMPT).tokens, _encode_prompt("sd", pipe, None)[0])


def test_lora_scale_is_checked_before_any_work(t5_tokenizer_path) -> None:
    cond = TextConditioner.from_pipeline(build_family("sd", t5_tokenizer_path))
    with pytest.raises(
        TypeError, match=r"^`lora_scale` must be a number \(the LoRA's weight, 1.0 as trained\), got '0.5'$"
    ):
        cond.pipeline_kwargs(PROMPT, lora_scale="0.5")
    with pytest.raises(ValueError, match=r"^`lora_scale` must be finite, got nan$"):
        cond.encode(PROMPT, lora_scale=float("nan"))
    pixart = TextConditioner.from_pipeline(build_family("pixart", t5_tokenizer_path))
    with pytest.raises(ValueError, match="'pixart' pipelines' encode_prompt takes no LoRA scale"):
        pixart.schedule(PROMPT, 4, lora_scale=0.5)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "pixart"])
def test_images_per_prompt_repeat_rows_as_the_pipeline_repeats_a_prompt(family, t5_tokenizer_path) -> None:
    """Two prompts, two images each: the pipeline given `pipeline_kwargs(...,
    num_images_per_prompt=2)` makes the latents it makes from the prompts as text with
    `num_images_per_prompt=2`, bit for bit (SD3 and Flux fail on given embeddings otherwise)."""
    pipe = build_family(family, t5_tokenizer_path)
    cond = TextConditioner.from_pipeline(pipe)
    size = {"sd": 32, "sdxl": 32, "sd3": 32, "flux": 16, "pixart": 32}[family]
    common = dict(height=size, width=size, num_inference_steps=2, output_type="latent")
    if family == "pixart":
        common["use_resolution_binning"] = False  # the tiny transformer has no aspect-ratio bins
    prompts = [text.replace("(square:1.2)", "square") for text in PROMPTS]  # plain text: diffusers reads it too
    with torch.no_grad():
        ours = pipe(
            **cond.pipeline_kwargs(prompts, num_images_per_prompt=2),
            generator=torch.Generator().manual_seed(0),
            **common,
        )
        theirs = pipe(prompt=prompts, num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), **common)
    assert ours.images.shape[0] == 4
    assert torch.equal(ours.images, theirs.images)


@pytest.mark.parametrize("bad", [0, -1, 1.0, True, "2"])
def test_images_per_prompt_must_be_a_positive_int(bad, sd_pipe) -> None:
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    with pytest.raises(ValueError, match=rf"^`num_images_per_prompt` must be an int >= 1, got {bad!r}$"):
        cond.pipeline_kwargs(PROMPT, num_images_per_prompt=bad)
