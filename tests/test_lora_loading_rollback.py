"""`load_lora_weights` all or nothing (pipelines/lora_loading.py): a LoRA file that fails to
load partway (a tensor of another shape in the text encoder or the UNet), holds NaN, or lacks a
tensor of a layer it adapts leaves no adapter in any component, and the pipeline gives the
images of before, bit for bit; an adapter loaded before stays active. diffusers' loader, on the
same files, kept the adapter in both models after the shape failure (the images changed), took
NaN silently, left a missing UNet tensor on the meta device, and let transformers initialise a
missing text-encoder tensor (at random for a `lora_A`: the images changed with the seed)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from test_lora_pipeline import pair, run, saved_lora

from clipcond import CLIPConditionedPipeline

DAMAGES = {
    "text_encoder_shape": RuntimeError,
    "unet_shape": RuntimeError,
    "nan": ValueError,
    "unet_down_missing": ValueError,
    "unet_up_missing": ValueError,
    "text_encoder_down_missing": ValueError,
    "text_encoder_up_missing": ValueError,
}
MESSAGES = {
    "nan": r"^the LoRA weights of .* hold NaN or infinite values \(unet\..*; a damaged file\?\): nothing was loaded$",
    "unet_down_missing": r"^the LoRA weights of .* have no tensor for unet\.\S*\.lora\.down\.weight \(beside unet\.",
    "unet_up_missing": r"^the LoRA weights of .* have no tensor for unet\.\S*\.lora\.up\.weight \(beside unet\.",
    "text_encoder_down_missing": (
        r"^the LoRA weights of .* have no tensor for text_encoder\.encoder\.layers\.0\.self_attn\.q_proj\."
        r"lora_linear_layer\.down\.weight \(beside text_encoder\.encoder\.layers\.0\.self_attn\.q_proj\."
        r"lora_linear_layer\.up\.weight; an incomplete or damaged file\?\): nothing was loaded$"
    ),
    "text_encoder_up_missing": r"^the LoRA weights of .* have no tensor for text_encoder\.\S*\.up\.weight \(beside",
}


def _damaged(folder, good, damage: str):
    """A copy of the LoRA folder `good` with its weights damaged as `damage` says."""
    path = next(good.glob("*.safetensors"))
    weights = load_file(path)
    down = sorted(key for key in weights if ".down." in key or "lora_A" in key)
    if damage.endswith("_missing"):  # "<component>_<down|up>_missing": that component's first such tensor
        component, half = damage.removesuffix("_missing").rsplit("_", 1)
        del weights[next(key for key in sorted(weights) if key.startswith(f"{component}.") and f".{half}." in key)]
    elif damage == "text_encoder_shape":
        first = next(key for key in down if key.startswith("text_encoder."))
        weights[first] = weights[first][:, :-1].contiguous()
    elif damage == "unet_shape":
        first = next(key for key in down if key.startswith("unet."))
        weights[first] = weights[first][:, :-1].contiguous()
    elif damage == "nan":
        weights = {key: torch.full_like(value, float("nan")) for key, value in weights.items()}
    else:
        raise ValueError(f"no such damage: {damage!r}")
    folder.mkdir()
    save_file(weights, str(folder / path.name))
    return folder


def _adapters(pipe) -> dict:
    components = ["unet", "text_encoder", "text_encoder_2"]
    models = {name: getattr(pipe, name, None) for name in components}
    return {name: sorted(getattr(model, "peft_config", None) or ()) for name, model in models.items() if model}


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_lora_leaves_no_adapter_and_the_images_of_before(tmp_path, sdxl, damage) -> None:
    good = saved_lora(tmp_path / "good", sdxl)
    peer, ours = pair(sdxl)
    plain = run(ours)
    damaged = _damaged(tmp_path / "damaged", good, damage)
    with pytest.raises(DAMAGES[damage], match=MESSAGES.get(damage)) as refusal:
        ours.load_lora_weights(damaged)
    if damage in MESSAGES:  # ours: named by the folder it was given
        assert str(refusal.value).startswith(f"the LoRA weights of {damaged} ")
    assert all(names == [] for names in _adapters(ours).values())
    assert np.array_equal(run(ours), plain)
    for pipe in (peer, ours):  # a good LoRA still loads, as diffusers loads it
        pipe.load_lora_weights(good)
    assert np.array_equal(run(ours), run(peer))


@pytest.mark.parametrize(
    "component, low_cpu_mem_usage", [("text_encoder", True), ("text_encoder", False), ("unet", False)]
)
def test_a_missing_lora_a_is_refused_where_diffusers_draws_it_at_random(tmp_path, component, low_cpu_mem_usage) -> None:
    """A `lora_A` missing: transformers (text encoder) and peft (the UNet, under
    `low_cpu_mem_usage=False`; under True it stays on the meta device) initialise it at random."""
    damage = f"{component}_down_missing"
    damaged = _damaged(tmp_path / "damaged", saved_lora(tmp_path / "good"), damage)
    drawn = []
    for seed in (0, 1):
        peer, _ = pair()
        torch.manual_seed(seed)
        peer.load_lora_weights(damaged, low_cpu_mem_usage=low_cpu_mem_usage)
        drawn.append(run(peer))
    assert not np.array_equal(*drawn)  # diffusers: the images depend on the seed before the load
    _, ours = pair()
    plain = run(ours)
    with pytest.raises(ValueError, match=MESSAGES[damage]):
        ours.load_lora_weights(damaged, low_cpu_mem_usage=low_cpu_mem_usage)
    assert all(names == [] for names in _adapters(ours).values())
    assert np.array_equal(run(ours), plain)


@pytest.mark.parametrize("half", ["down", "up"])
def test_a_missing_tensor_of_sdxls_second_text_encoder_is_refused(tmp_path, half) -> None:
    damaged = _damaged(tmp_path / "damaged", saved_lora(tmp_path / "good", sdxl=True), f"text_encoder_2_{half}_missing")
    _, ours = pair(sdxl=True)
    plain = run(ours)
    with pytest.raises(
        ValueError, match=rf"have no tensor for text_encoder_2\.\S*\.{half}\.weight \(beside text_encoder_2\."
    ):
        ours.load_lora_weights(damaged)
    assert all(names == [] for names in _adapters(ours).values())
    assert np.array_equal(run(ours), plain)


@pytest.mark.parametrize("damage", ["text_encoder_shape", "nan", "text_encoder_down_missing"])
def test_a_failed_load_keeps_the_adapter_loaded_before(tmp_path, damage) -> None:
    first = saved_lora(tmp_path / "first", seed=1)
    second = saved_lora(tmp_path / "second", seed=2)
    _, ours = pair()
    ours.load_lora_weights(first, adapter_name="first")
    with_first, adapters = run(ours), _adapters(ours)
    with pytest.raises(DAMAGES[damage]):
        ours.load_lora_weights(_damaged(tmp_path / "damaged", second, damage), adapter_name="second")
    assert _adapters(ours) == adapters == {"unet": ["first"], "text_encoder": ["first"]}
    assert ours.get_active_adapters() == ["first"]
    assert np.array_equal(run(ours), with_first)


def _layout(pipe) -> dict:
    """Each LoRA-loadable component's modules (name and class) and tensors (name, the tensor
    object and its `requires_grad`)."""
    layout = {}
    for component in ["unet", "text_encoder", "text_encoder_2"]:
        model = getattr(pipe, component, None)
        if model is not None:
            modules = [(name, type(module).__name__) for name, module in model.named_modules()]
            tensors = [(name, id(value), value.requires_grad) for name, value in model.named_parameters()]
            layout[component] = (modules, tensors)
    return layout


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("loaded_before", [False, True], ids=["none_before", "one_before"])
@pytest.mark.parametrize("damage", ["text_encoder_shape", "unet_shape", "nan"])
def test_a_failed_load_leaves_the_layers_and_their_trainable_tensors_as_they_were(
    tmp_path, sdxl, loaded_before, damage
) -> None:
    """peft wraps each layer it adapts and freezes every base tensor as it loads; a failed load
    puts the plain layers back and each tensor's `requires_grad` as it was (here all True, as
    for training; a layer wrapped for the adapter loaded before stays wrapped). The frozen
    tensors changed the last bits of the images on one of our CPUs."""
    _, ours = pair(sdxl)
    if loaded_before:  # an adapter on the UNet's self-attention only: the damaged file wraps more
        ours.unet.add_adapter(LoraConfig(r=2, target_modules=["attn1.to_q"]), adapter_name="first")
    before = _layout(ours)
    damaged = _damaged(tmp_path / "damaged", saved_lora(tmp_path / "good", sdxl), damage)
    with pytest.raises(DAMAGES[damage]):
        ours.load_lora_weights(damaged, adapter_name="second")
    assert _layout(ours) == before
    assert ours.get_list_adapters() == ({"unet": ["first"]} if loaded_before else {})


def test_a_failed_load_keeps_an_empty_peft_config_there_was_before(tmp_path) -> None:
    """An empty `peft_config` goes only where the load made it (diffusers' own failed UNet load
    leaves one): one that was there before stays."""
    _, ours = pair()
    ours.unet.peft_config = {}
    with pytest.raises(RuntimeError):
        ours.load_lora_weights(_damaged(tmp_path / "damaged", saved_lora(tmp_path / "good"), "unet_shape"))
    assert ours.unet.peft_config == {}
    assert not hasattr(ours.text_encoder, "peft_config")


@pytest.mark.parametrize(
    "name", [1.5, "", "my.lora", ["a"], torch.zeros(1)], ids=["float", "empty", "dot", "list", "tensor"]
)
def test_an_adapter_name_that_cannot_name_layers_is_refused_naming_it(tmp_path, name) -> None:
    """torch refused these as module names ("module name should be a string", a KeyError for
    "") without naming the argument."""
    _, ours = pair()
    with pytest.raises(TypeError, match=r"^`adapter_name` must be None \(a default name\) or a non-empty string"):
        ours.load_lora_weights(saved_lora(tmp_path / "lora"), adapter_name=name)
    assert all(names == [] for names in _adapters(ours).values())


def _unet_only(folder, good, damage: str | None = None):
    """A copy of the LoRA folder `good` with only its UNet tensors (diffusers hotswaps no text
    encoder), damaged as `damage` says: 'nan' in every tensor (and alpha 16), 'width' (one `lora_A` one input
    wider, which peft swaps in whole), 'narrow' (one `lora_A` one input narrower) or 'short' (one `lora_B`
    one output shorter; peft pads both with zeros), 'smaller_rank' or 'larger_rank' (rank 2 or 8 for 4:
    allowed), or 'larger_rank_nan' (both: the tensors swapped in whole, then refused)."""
    path = next(good.glob("*.safetensors"))
    weights = {key: value for key, value in load_file(path).items() if key.startswith("unet.")}
    if damage is not None and "nan" in damage:
        weights = {key: torch.full_like(value, float("nan")) for key, value in weights.items()}
    if damage == "width":
        last = sorted(key for key in weights if ".down." in key)[-1]
        weights[last] = torch.cat([weights[last], weights[last][:, :1]], dim=1)
    elif damage == "narrow":
        last = sorted(key for key in weights if ".down." in key)[-1]
        weights[last] = weights[last][:, :-1]
    elif damage == "short":
        first = sorted(key for key in weights if ".up." in key)[0]
        weights[first] = weights[first][:-1]
    elif damage == "smaller_rank":
        weights = {key: value[:2] if ".down." in key else value[:, :2] for key, value in weights.items()}
    elif damage is not None and "larger_rank" in damage:
        weights = {key: torch.cat([value, value], dim=0 if ".down." in key else 1) for key, value in weights.items()}
    weights = {key.removeprefix("unet."): value.contiguous() for key, value in weights.items()}
    # 'nan' also says alpha 16 (scaling 4, where the adapter swapped into has 1): put back too
    alpha = {"r": 4, "lora_alpha": 16, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=weights, unet_lora_adapter_metadata=alpha if damage == "nan" else None
    )
    return folder


def test_a_hotswap_equals_diffusers_and_a_failed_one_leaves_the_adapter_as_it_was(tmp_path) -> None:
    first = saved_lora(tmp_path / "first", seed=1)
    second = saved_lora(tmp_path / "second", seed=2)
    peer, ours = pair()
    for pipe in (peer, ours):
        pipe.load_lora_weights(first, adapter_name="a")
    with_first = run(ours)
    # diffusers swaps the UNet's part of a file with text-encoder tensors, then refuses the rest
    message = r"hotswapping is not supported for text encoders"
    for pipe in (peer, ours):
        with pytest.raises(ValueError, match=message):
            pipe.load_lora_weights(second, adapter_name="a", hotswap=True)
    assert not np.array_equal(run(peer), with_first)
    assert np.array_equal(run(ours), with_first)
    for damage, match in [
        ("nan", r"hold NaN or infinite values \(unet\..*\.lora_[AB]\.a\.weight"),
        ("larger_rank_nan", r"hold NaN or infinite values \(unet\..*\.lora_[AB]\.a\.weight"),
        ("width", r"hold a tensor of shape \(4, 33\) for unet\.\S*\.lora_A\.weight, where adapter 'a' has \(4, 32\) "),
        (
            "narrow",
            r"hold a tensor of shape \(4, 31\) for unet\.\S*\.lora_A\.weight, where adapter 'a' has \(4, 32\) "
            r"\(a hotswap may change only the rank\): nothing was swapped$",
        ),
        (
            "short",
            r"hold a tensor of shape \(7, 4\) for unet\.\S*\.to_k\.lora_B\.weight, where adapter 'a' has \(8, 4\) ",
        ),
    ]:
        damaged = _unet_only(tmp_path / damage, second, damage)
        with pytest.raises(ValueError, match=match) as refusal:
            ours.load_lora_weights(damaged, adapter_name="a", hotswap=True)
        assert str(refusal.value).startswith(f"the LoRA weights of {damaged} ")
        assert _adapters(ours) == {"unet": ["a"], "text_encoder": ["a"]}
        assert np.array_equal(run(ours), with_first)
    for damage in ("narrow", "short"):  # diffusers' loader (peft) pads them with zeros without a word
        peer.load_lora_weights(tmp_path / damage, adapter_name="a", hotswap=True)
    for damage in (None, "smaller_rank", "larger_rank"):  # as in diffusers; so do other ranks
        swapped = _unet_only(tmp_path / f"swapped-{damage}", second, damage)
        peer, ours = pair()
        for pipe in (peer, ours):
            pipe.load_lora_weights(first, adapter_name="a")
            pipe.load_lora_weights(swapped, adapter_name="a", hotswap=True)
        assert not np.array_equal(run(ours), with_first)
        assert np.array_equal(run(ours), run(peer))


def test_a_hotswap_reads_the_file_weight_name_names(tmp_path) -> None:
    """The check reads the file diffusers' loader will read: in a folder whose default file
    holds whole tensors, `weight_name=` naming a narrowed one is refused with the images of
    before (checking the default file would let peft pad the narrowed one)."""
    first = saved_lora(tmp_path / "first", seed=1)
    folder = _unet_only(tmp_path / "second", saved_lora(tmp_path / "lora_second", seed=2))
    narrowed = _unet_only(tmp_path / "narrowed", folder, "narrow")
    (narrowed / "pytorch_lora_weights.safetensors").rename(folder / "narrowed.safetensors")
    _, ours = pair()
    ours.load_lora_weights(first, adapter_name="a")
    with_first = run(ours)
    with pytest.raises(ValueError, match=r"hold a tensor of shape \(4, 31\) for unet\."):
        ours.load_lora_weights(folder, weight_name="narrowed.safetensors", adapter_name="a", hotswap=True)
    assert np.array_equal(run(ours), with_first)
    ours.load_lora_weights(folder, weight_name="pytorch_lora_weights.safetensors", adapter_name="a", hotswap=True)
    assert not np.array_equal(run(ours), with_first)


def test_a_hotswap_of_text_encoder_tensors_alone_is_refused_as_diffusers_refuses_it(tmp_path) -> None:
    """A file with no UNet tensor has nothing for the check to read; diffusers' loader then
    refuses the text encoder's, and the images stay those of before."""
    first = saved_lora(tmp_path / "first", seed=1)
    weights = load_file(next(saved_lora(tmp_path / "second", seed=2).glob("*.safetensors")))
    text_only = {key: value for key, value in weights.items() if key.startswith("text_encoder.")}
    peer, ours = pair()
    for pipe in (peer, ours):
        pipe.load_lora_weights(first, adapter_name="a")
    with_first = run(ours)
    for pipe in (peer, ours):
        with pytest.raises(ValueError, match=r"hotswapping is not supported for text encoders"):
            pipe.load_lora_weights(dict(text_only), adapter_name="a", hotswap=True)
    assert np.array_equal(run(ours), with_first)
    assert np.array_equal(run(peer), with_first)


def _sgm(layer: str, per_block: int) -> str:
    """A diffusers UNet layer's name as SDXL's original (SGM) UNet names it, for a UNet of
    `per_block` layers per down block: `down_blocks.b.attentions.j` is `input_blocks.i.1`
    (i = b * (per_block + 1) + j + 1), `up_blocks.b.attentions.j` is `output_blocks.i.1`
    (i = b * (per_block + 1) + j), `mid_block.attentions.0` is `middle_block.1`."""
    block = re.match(r"(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", layer)
    if block:
        kind, number, inner, rest = block.groups()
        index = int(number) * (per_block + 1) + int(inner) + (kind == "down")
        return f"{'input' if kind == 'down' else 'output'}_blocks.{index}.1.{rest}"
    return re.sub(r"^mid_block\.attentions\.0\.", "middle_block.1.", layer)


def _kohya(weights: dict, per_block: int | None = None) -> dict:
    """diffusers-named UNet LoRA weights (`unet.<layer>.lora.down.weight`) renamed as kohya's
    trainer names them (`lora_unet_<layer with _>.lora_down.weight`, with an alpha per layer),
    with SDXL's SGM block names when `per_block` (the UNet's layers per block) is given."""
    renamed = {}
    for key, value in weights.items():
        layer, half = key.removeprefix("unet.").rsplit(".lora.", 1)
        stem = "lora_unet_" + (layer if per_block is None else _sgm(layer, per_block)).replace(".", "_")
        renamed[f"{stem}.lora_{half}"] = value
        renamed[f"{stem}.alpha"] = torch.tensor(4.0)
    return renamed


@pytest.mark.parametrize("form", ["diffusers", "kohya"])
@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_a_hotswap_is_checked_before_the_swap_in_each_naming(tmp_path, sdxl, form) -> None:
    """The swap's tensors are read and named as diffusers' loader names them (kohya's names,
    SDXL's SGM block names) and checked against the adapter before peft writes: a `lora_A` one input
    narrower is refused with the images of before; the whole one swaps as in diffusers."""
    first = saved_lora(tmp_path / "first", sdxl, seed=1)
    second = load_file(next(saved_lora(tmp_path / "second", sdxl, seed=2).glob("*.safetensors")))
    weights = {key: value for key, value in second.items() if key.startswith("unet.")}
    peer, ours = pair(sdxl)
    if form == "kohya":  # SDXL's with SGM names, which only the UNet's config maps to diffusers'
        weights = _kohya(weights, ours.unet.config.layers_per_block if sdxl else None)
        assert not sdxl or any("input_blocks" in key for key in weights)
    for pipe in (peer, ours):
        pipe.load_lora_weights(first, adapter_name="a")
    with_first = run(ours)
    narrowed = dict(weights)
    last = sorted(key for key in narrowed if "down" in key and key.endswith(".weight"))[-1]
    narrowed[last] = narrowed[last][:, :-1]
    width = 64 if sdxl else 32
    message = rf"shape \(4, {width - 1}\) for unet\.up_blocks\.\S*\.to_v\.lora_A\.weight, where adapter 'a' has \(4, {width}\)"
    with pytest.raises(ValueError, match=message):
        ours.load_lora_weights(narrowed, adapter_name="a", hotswap=True)
    assert np.array_equal(run(ours), with_first)
    for pipe in (peer, ours):
        pipe.load_lora_weights(dict(weights), adapter_name="a", hotswap=True)
    assert not np.array_equal(run(ours), with_first)
    assert np.array_equal(run(ours), run(peer))


def test_a_failed_hotswap_into_a_padded_adapter_puts_it_back(tmp_path) -> None:
    """`enable_lora_hotswap(target_rank=8)` pads the first adapter to rank 8 and turns its
    scalings into tensors (for a compiled UNet); a hotswap that then brings NaN is refused and
    those tensors are as before."""
    first = _unet_only(tmp_path / "first", saved_lora(tmp_path / "lora_first", seed=1))
    second = saved_lora(tmp_path / "second", seed=2)
    peer, ours = pair()
    for pipe in (peer, ours):
        pipe.enable_lora_hotswap(target_rank=8)
        pipe.load_lora_weights(first, adapter_name="a")
    with_first = run(ours)
    scalings = [
        module.scaling["a"] for module in ours.unet.modules() if isinstance(getattr(module, "scaling", None), dict)
    ]
    assert scalings and all(torch.is_tensor(value) for value in scalings)
    with pytest.raises(ValueError, match=r"hold NaN or infinite values"):
        ours.load_lora_weights(_unet_only(tmp_path / "nan", second, "nan"), adapter_name="a", hotswap=True)
    assert np.array_equal(run(ours), with_first)
    swapped = _unet_only(tmp_path / "swapped", second, "smaller_rank")
    for pipe in (peer, ours):
        pipe.load_lora_weights(swapped, adapter_name="a", hotswap=True)
    assert np.array_equal(run(ours), run(peer))


_ZEROS = torch.zeros(4, 4)


@pytest.mark.parametrize(
    "present, missing",
    [
        ("unet.a.lora_A.weight", "unet.a.lora_B.weight"),  # peft's names
        ("unet.a.lora_B.weight", "unet.a.lora_A.weight"),
        ("unet.a.lora.up.weight", "unet.a.lora.down.weight"),  # diffusers'
        ("unet.a.processor.to_k_lora.down.weight", "unet.a.processor.to_k_lora.up.weight"),  # attention processors'
        ("text_encoder.a.lora_linear_layer.up.weight", "text_encoder.a.lora_linear_layer.down.weight"),
    ],
)
def test_lora_state_dict_refuses_a_layer_with_one_of_its_two_tensors(present, missing) -> None:
    """Beside whole layers with their biases (`lora_B.bias`, no other half: not looked at), however
    the keys come out of the set they are read from."""
    weights = {present: _ZEROS, "unet.b.lora_A.weight": _ZEROS, "unet.b.lora_B.weight": _ZEROS}
    for layer in range(12):
        weights |= {f"unet.c{layer}.lora_{half}.weight": _ZEROS for half in "AB"}
        weights[f"unet.c{layer}.lora_B.bias"] = _ZEROS[0]
    message = (
        rf"^the LoRA weights of the state dict have no tensor for {re.escape(missing)} \(beside {re.escape(present)};"
    )
    with pytest.raises(ValueError, match=message):
        CLIPConditionedPipeline.lora_state_dict(weights)


def test_lora_state_dict_names_the_tensor_kohyas_converter_looked_for() -> None:
    """diffusers' converter of kohya's names raised a bare KeyError for a missing `lora_up`."""
    down = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
    weights = {down: _ZEROS}  # diffusers' converter takes the keys out of the dict it is given
    message = (
        r"have no tensor for lora_unet_down_blocks_0_attentions_0_proj_in\.lora_up\.weight \(an incomplete or damaged "
        r"file\?\): nothing was loaded$"
    )
    with pytest.raises(ValueError, match=message):
        CLIPConditionedPipeline.lora_state_dict(weights)
    whole = {down: _ZEROS, down.replace("lora_down", "lora_up"): _ZEROS}
    assert sorted(CLIPConditionedPipeline.lora_state_dict(whole)[0]) == [
        "unet.down_blocks.0.attentions.0.proj_in.lora.down.weight",
        "unet.down_blocks.0.attentions.0.proj_in.lora.up.weight",
    ]


def test_lora_state_dict_takes_a_bias_without_another_half() -> None:
    weights = {"unet.a.lora_A.weight": _ZEROS, "unet.a.lora_B.weight": _ZEROS, "unet.a.lora_B.bias": torch.zeros(4)}
    assert sorted(CLIPConditionedPipeline.lora_state_dict(dict(weights))[0]) == sorted(weights)


@pytest.mark.parametrize("key", ["text_model.final_layer_norm", 7, None], ids=["a text key", "a number", "no key"])
def test_a_key_error_that_names_no_lora_tensor_is_diffusers_own(monkeypatch, key) -> None:
    """Only a KeyError for a LoRA tensor (a string naming "lora") is read as an incomplete file;
    any other (one that names nothing included) is raised as diffusers raised it."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    arguments = () if key is None else (key,)

    def failing(*args, **kwargs):
        raise KeyError(*arguments)

    monkeypatch.setattr(StableDiffusionXLLoraLoaderMixin, "lora_state_dict", classmethod(failing))
    with pytest.raises(KeyError) as raised:
        CLIPConditionedPipeline.lora_state_dict({"unet.a.lora_A.weight": _ZEROS})
    assert raised.type is KeyError and raised.value.args == arguments


@pytest.mark.parametrize("lacking", [1, 2, 3])
def test_the_refusal_counts_the_other_layers_that_lack_a_tensor(lacking) -> None:
    """The first layer (by the missing key) is named; the count of the others follows."""
    weights = {f"unet.l{layer}.lora_A.weight": _ZEROS for layer in range(lacking)} | {
        "unet.whole.lora_A.weight": _ZEROS,
        "unet.whole.lora_B.weight": _ZEROS,
    }
    more = {1: "", 2: "; 1 more layers lack a tensor", 3: "; 2 more layers lack a tensor"}[lacking]
    message = rf"have no tensor for unet\.l0\.lora_B\.weight \(beside unet\.l0\.lora_A\.weight{re.escape(more)}; an"
    with pytest.raises(ValueError, match=message):
        CLIPConditionedPipeline.lora_state_dict(weights)
