"""A1111's ``<lora:name:0.8>`` tags: the parser (`clipcond.network_tags`) and
`CLIPConditionedPipeline` activating the tagged adapters for one call, against diffusers'
StableDiffusion(XL)Pipeline with the same adapters set by `set_adapters` and the tags taken out."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_lora_pipeline import pair, run, saved_lora

from clipcond import CLIPConditionedPipeline, TextConditioner
from clipcond.network_tags import LoraTag, split_network_tags
from clipcond.pipelines.img2img import CLIPConditionedImg2ImgPipeline
from clipcond.pipelines.inpaint import CLIPConditionedInpaintPipeline
from clipcond.pipelines.lora_tags import _LayerState


@pytest.mark.parametrize(
    ("text", "stripped", "tags"),
    [
        ("a <lora:style:0.7> cat", "a  cat", (LoraTag("style", 0.7, 0.7),)),
        ("a <lora:x>, b", "a , b", (LoraTag("x", 1.0, 1.0),)),
        ("<lora:a:0.5:0.9>x<lyco:b:te=0.2:unet=1.5>", "x", (LoraTag("a", 0.5, 0.9), LoraTag("b", 0.2, 1.5))),
        ("<lora:a:0.5:unet=2> <lora:b:te=-1>", " ", (LoraTag("a", 0.5, 2.0), LoraTag("b", -1.0, -1.0))),
        ("<x:y> <lora:> (a:1.2) [b:c:0.5] <lora:a:1", None, ()),
        ("<lora:a b (v2):0.5> c", " c", (LoraTag("a b (v2)", 0.5, 0.5),)),
        ("plain text", None, ()),
        (
            "<lora:n<lora:1> x <lora:> <lora:b:0.5>",
            " x <lora:> ",
            (LoraTag("n<lora", 1.0, 1.0), LoraTag("b", 0.5, 0.5)),
        ),
    ],
    ids=lambda value: None if isinstance(value, str) else "-",
)
def test_tags_are_taken_out_and_read_as_a1111_reads_them(text: str, stripped: str | None, tags: tuple) -> None:
    assert split_network_tags(text) == ((text if stripped is None else stripped), tags)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a <hypernet:h:1>", "`<hypernet:h:1>`: A1111's hypernetworks are not read (diffusers has no loader for them)"),
        ("<lora:a:nan>", "`<lora:a:nan>`: the multiplier 'nan' is no finite number (write one such as 0.8)"),
        ("<lora:a:te=inf>", "`<lora:a:te=inf>`: the multiplier 'inf' is no finite number"),
        ("<lora:a:x>", "`<lora:a:x>`: the multiplier 'x' is no finite number"),
        (
            "<lora:a:1:1:4>",
            "`<lora:a:1:1:4>`: a LoRA tag takes a name and up to two multipliers (text encoder, UNet), "
            "or te= and unet=; a fourth part (a LyCORIS dyn dimension) is not read",
        ),
        (
            "<lora:a:dyn=4>",
            "`<lora:a:dyn=4>`: a LoRA tag takes a name and up to two multipliers (text encoder, UNet), "
            "or te= and unet=; named dyn is not read",
        ),
        ("<lora::1>", "`<lora::1>`: a LoRA tag names its adapter first, as <lora:name:0.8>"),
        ("<lora:a> and <lora:a:0.5>", "prompt '<lora:a> and <lora:a:0.5>': LoRA tags name ['a'] more than once"),
        ("x" * 90 + "<lora:a><lora:a>", f"prompt {'x' * 80!r}: LoRA tags name ['a'] more than once: give each one tag"),
        ("<lora:a:nan> more", "`<lora:a:nan>`: the multiplier"),
        ("<lora:a:1:x>", "`<lora:a:1:x>`: the multiplier 'x' is no finite number"),
        ("<lora:a:unet=x>", "`<lora:a:unet=x>`: the multiplier 'x' is no finite number"),
        ("<lora:a:te=0.5=1>", "`<lora:a:te=0.5=1>`: the multiplier '0.5=1' is no finite number"),
        (
            "<lora:a:dyn=4:foo=1>",
            "`<lora:a:dyn=4:foo=1>`: a LoRA tag takes a name and up to two multipliers (text "
            "encoder, UNet), or te= and unet=; named dyn, foo is not read",
        ),
    ],
    ids=lambda value: "-",
)
def test_tags_that_cannot_be_read_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        split_network_tags(text)
    assert str(refused.value).startswith(message)


def test_a_prompt_that_is_no_string_is_refused() -> None:
    with pytest.raises(TypeError) as refused:
        split_network_tags(["a"])
    assert str(refused.value) == "`text` must be a string, got list: ['a']"


def test_work_grows_linearly_with_the_prompt() -> None:
    from line_counter import lines_executed

    for unit in ["<lora:a", "<lora:a<lora:", "<lora:a:1> ", "<<<lora:", "<lora:>"]:
        if unit == "<lora:a:1> ":  # names must differ: one tag per adapter
            small_text = "".join(f"<lora:a{i}:1> " for i in range(500))
            large_text = "".join(f"<lora:a{i}:1> " for i in range(1000))
        else:
            small_text, large_text = unit * 500, unit * 1000
        small = lines_executed("network_tags.py", split_network_tags, small_text)
        large = lines_executed("network_tags.py", split_network_tags, large_text)
        assert large <= 2.05 * small + 50, (unit, small, large)


# ---------------------------------------------------------------------------- the pipeline


def _loaded(tmp_path, sdxl: bool = False):
    """(diffusers' pipeline, ours), each holding the adapters "style" and "detail" (two random LoRAs)."""
    peer, ours = pair(sdxl)
    for name, seed in (("style", 1), ("detail", 2)):
        lora = saved_lora(tmp_path / f"{name}-{sdxl}", sdxl=sdxl, seed=seed)
        for pipe in (peer, ours):
            pipe.load_lora_weights(lora, adapter_name=name)
    return peer, ours


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_a_tagged_prompt_draws_what_diffusers_draws_with_the_adapters_set(tmp_path, sdxl: bool) -> None:
    peer, ours = _loaded(tmp_path, sdxl)
    text_encoders = ["text_encoder", "text_encoder_2"] if sdxl else ["text_encoder"]
    peer.set_adapters(
        ["style", "detail"],
        [{"unet": 0.9, **dict.fromkeys(text_encoders, 0.5)}, {"unet": -0.4, **dict.fromkeys(text_encoders, -0.4)}],
    )
    expected = run(peer, prompt="a red circle  on a square ")
    tagged = run(ours, prompt="a red circle <lora:style:0.5:0.9> on a square <lyco:detail:-0.4>")
    np.testing.assert_array_equal(tagged, expected)
    # the tags bite: diffusers with both adapters at 1 draws another image
    peer.set_adapters(["style", "detail"])
    assert not np.allclose(run(peer, prompt="a red circle  on a square "), expected, atol=1e-4)


def test_the_pipelines_adapters_are_as_they_were_after_the_call_even_one_that_fails(tmp_path) -> None:
    peer, ours = _loaded(tmp_path)
    for pipe in (peer, ours):
        pipe.set_adapters(["style", "detail"], [0.5, 0.7])
    before = run(ours)
    assert np.array_equal(before, run(peer))
    state = [(pipe.get_active_adapters(), pipe.get_list_adapters()) for pipe in (ours,)]
    grads = [value.requires_grad for model in (ours.unet, ours.text_encoder) for value in model.parameters()]
    run(ours, prompt="a red circle <lora:style:0.3:0.2>")
    with pytest.raises(ValueError, match="`num_inference_steps` must be"):
        run(ours, prompt="a red circle <lora:style:0.3>", num_inference_steps=-1)
    assert [(pipe.get_active_adapters(), pipe.get_list_adapters()) for pipe in (ours,)] == state
    assert [value.requires_grad for model in (ours.unet, ours.text_encoder) for value in model.parameters()] == grads
    np.testing.assert_array_equal(run(ours), before)  # the cache serves no embedding of the tagged call


def test_a_tagged_list_img2img_inpaint_and_the_compel_syntax(tmp_path) -> None:
    peer, ours = _loaded(tmp_path)
    peer.set_adapters("style", 0.6)
    negatives = ["blurry", "blurry"]
    expected = run(peer, prompt=["a red circle ", "a blue square "], negative_prompt=negatives)
    tagged = ["a red circle <lora:style:0.6>", "a blue square <lora:style:0.6>"]
    np.testing.assert_array_equal(run(ours, prompt=tagged, negative_prompt=negatives), expected)
    with pytest.raises(ValueError) as refused:
        run(ours, prompt=["a red circle <lora:style:0.6><lora:detail:1>", "a blue square"], negative_prompt=negatives)
    assert str(refused.value) == (
        "the prompts of one call carry different LoRA tags (<lora:detail:1:1>, <lora:style:0.6:0.6>; none): one set "
        "of adapters runs per call, so give every prompt the same tags (A1111 applies the first prompt's to all)"
    )
    with pytest.raises(ValueError, match=re.escape("tags (<lora:style:0.5:0.5>; <lora:style:0.6:0.6>): one set")):
        run(ours, prompt=["a <lora:style:0.6>", "b <lora:style:0.5>"], negative_prompt=negatives)
    # the same tags in another order are the same set: the first prompt's order is used
    both = ["a red circle <lora:style:0.6><lora:detail:1>", "a blue square <lora:detail:1> <lora:style:0.6>"]
    peer.set_adapters(["style", "detail"], [0.6, 1.0])
    expected = run(peer, prompt=["a red circle ", "a blue square  "], negative_prompt=negatives)
    np.testing.assert_array_equal(run(ours, prompt=both, negative_prompt=negatives), expected)
    # img2img and inpainting read them the same way (their __call__ runs the shared one)
    image = np.full((1, 32, 32, 3), 0.5, dtype=np.float32)
    img2img = CLIPConditionedImg2ImgPipeline.from_pipe(ours)
    with_tag = run(img2img, prompt="a red circle <lora:style:0.6>", image=image, strength=0.8)
    inpaint = CLIPConditionedInpaintPipeline.from_pipe(ours)
    mask = np.zeros((1, 32, 32, 1), dtype=np.float32)
    mask[:, 8:24, 8:24] = 1.0
    inpainted = run(inpaint, prompt="a red circle <lora:style:0.6>", image=image, mask_image=mask, strength=0.8)
    ours.set_adapters("style", 0.6)
    np.testing.assert_array_equal(run(img2img, prompt="a red circle ", image=image, strength=0.8), with_tag)
    expected = run(inpaint, prompt="a red circle ", image=image, mask_image=mask, strength=0.8)
    np.testing.assert_array_equal(inpainted, expected)
    # in compel's syntax a tag is text, read as diffusers reads it, with no adapter changed
    compel = CLIPConditionedPipeline.from_pipe(ours, syntax="compel")
    for pipe in (compel, peer):
        pipe.set_adapters(["style", "detail"])
    text = "a red circle <lora:style:0.6>"
    np.testing.assert_array_equal(run(compel, prompt=text), run(peer, prompt=text))
    assert compel.get_active_adapters() == ["style", "detail"]


def test_one_tagged_prompt_in_a_list_given_embeddings_and_a_layer_of_one_active_adapter(tmp_path) -> None:
    peer, ours = _loaded(tmp_path)
    peer.set_adapters("style", 0.6)
    negative = ["blurry"]
    expected = run(peer, prompt=["a red circle "], negative_prompt=negative)
    np.testing.assert_array_equal(
        run(ours, prompt=["a red circle <lora:style:0.6>"], negative_prompt=negative), expected
    )
    # no prompt, its embeddings given: nothing to read, the call as it is
    embeds, negative_embeds = ours.encode_prompt("a cat", "cpu", 1, True, "blurry")
    given = run(ours, prompt=None, negative_prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative_embeds)
    np.testing.assert_array_equal(given, run(ours, prompt="a cat"))
    with pytest.raises(ValueError):  # the call's own refusal of an empty list, not an IndexError
        run(ours, prompt=[], negative_prompt=[])
    # a layer whose one active adapter peft keeps as a string comes back as that string
    layer = SimpleNamespace(_active_adapter="style", scaling={"style": 0.5}, adapter_layer_names=())
    state = _LayerState.of(layer)
    layer._active_adapter, layer.scaling["style"] = ["detail"], 2.0
    state.restore()
    assert layer._active_adapter == "style" and layer.scaling == {"style": 0.5}


def test_tags_are_refused_before_any_work_where_they_cannot_be_read(tmp_path) -> None:
    _, ours = _loaded(tmp_path)
    with pytest.raises(ValueError) as refused:
        run(ours, prompt="a cat <lora:missing:0.5>")
    assert str(refused.value) == (
        "LoRA tags name ['missing'], which the pipeline holds no adapter of (loaded: ['detail', 'style']): load each "
        "first with `load_lora_weights(path, adapter_name=name)`"
    )
    with pytest.raises(ValueError, match=re.escape("A1111's LoRA tags activate adapters in the text encoder")):
        run(ours, prompt="a cat", negative_prompt="blurry <lora:style:0.5>")
    ours.set_adapters("style", 0.5)
    ours.fuse_lora()
    fused = run(ours, prompt="a cat")
    with pytest.raises(ValueError) as refused:
        run(ours, prompt="a cat <lora:style:0.5>")
    assert str(refused.value) == (
        "the unet's LoRA is fused into its weights (`fuse_lora()`), and the prompt's LoRA tags switch adapters: call "
        "`unfuse_lora()` first, or take the tags out"
    )
    np.testing.assert_array_equal(run(ours, prompt="a cat"), fused)  # nothing unfused
    ours.unfuse_lora()
    ours.disable_lora()
    with pytest.raises(ValueError, match=re.escape("the unet's LoRA layers are switched off (`disable_lora()`)")):
        run(ours, prompt="a cat <lora:style:0.5>")
    conditioner = TextConditioner("sd", clip=[(ours.text_encoder, ours.tokenizer)], cache_size=0)
    with pytest.raises(ValueError) as refused:
        conditioner.encode("a cat <lora:style:0.5>")
    assert str(refused.value) == (
        "prompt 'a cat <lora:style:0.5>': A1111's LoRA tags activate adapters in the text encoder and the UNet for a "
        "call: `CLIPConditionedPipeline` reads them in a call's `prompt` (not in a negative, `prompt_2` or "
        "`encode_prompt`); for another pipeline, take the tag out and call its `set_adapters`"
    )
    assert conditioner.encode("a cat <x:y>").tokens.shape == (1, 77, 32)  # other kinds are text
    # taken out where asked (captions), before the cache: the tagged text is never what is encoded
    strip = TextConditioner("sd", clip=[(ours.text_encoder, ours.tokenizer)], cache_size=8, lora_tags="strip")
    assert "syntax='a1111', lora_tags='strip', cache=8 in memory" in repr(strip)
    assert "lora_tags" not in repr(conditioner)
    untagged = strip.encode("a cat , ").tokens
    torch.testing.assert_close(strip.encode("a cat <lora:style:0.5>, <hypernet:h:x>").tokens, untagged, rtol=0, atol=0)
    with pytest.raises(ValueError) as refused:
        TextConditioner("sd", clip=[(ours.text_encoder, ours.tokenizer)], lora_tags="drop")
    assert str(refused.value) == "`lora_tags` must be one of ['refuse', 'strip'], got 'drop'"
    plain = TextConditioner("sd", clip=[(ours.text_encoder, ours.tokenizer)], cache_size=0, parse_weights=False)
    assert plain.encode("<lora:a:1>").tokens.shape == (1, 77, 32)  # no syntax read: text
