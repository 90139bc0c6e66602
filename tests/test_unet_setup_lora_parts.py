"""`add_lora` on a tiny UNet: the config's rank, scale, targets and peft's gaussian start reach
the adapter and only the named layers get one; a target that matches nothing, or names a block
rather than a layer, are `RunSetupError`s worded whole. And `build_unet`'s
refusal of an `init_from` without a UNet."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
import torch
from test_unet_setup_latents import _config

from clipcond.training.diffusion.config import DiffusionLoraSettings
from clipcond.training.diffusion.unet_setup import add_lora, build_unet
from clipcond.training.loop import RunSetupError

ADVICE = (
    "; LoRA adapts linear and convolution layers, such as the cross-attention projections "
    "attn2.to_q, attn2.to_k, attn2.to_v, attn2.to_out.0"
)


def _unet():
    return build_unet(_config(), 32, None)


def test_the_configs_rank_scale_targets_and_start_reach_the_adapter() -> None:
    torch.manual_seed(0)
    unet = _unet()
    add_lora(unet, NS(lora=DiffusionLoraSettings(r=2, alpha=6, target_modules=["attn2.to_q", "attn2.to_v"])))
    config = unet.peft_config["default"]
    assert (config.r, config.lora_alpha, config.init_lora_weights) == (2, 6, "gaussian")
    assert set(config.target_modules) == {"attn2.to_q", "attn2.to_v"}
    adapted = sorted(name for name, module in unet.named_modules() if hasattr(module, "lora_A"))
    assert adapted and all(name.endswith(("attn2.to_q", "attn2.to_v")) for name in adapted)
    adapters = [module for module in unet.modules() if hasattr(module, "lora_A")]
    # gaussian: every A drawn with std 1/r = 0.5 (peft's default start, Kaiming-uniform, gives about
    # 0.2 for these 8- and 16-wide inputs), every B zero
    drawn = torch.cat([module.lora_A["default"].weight.detach().flatten() for module in adapters])
    assert drawn.numel() >= 100 and 0.4 < float(drawn.std()) < 0.6
    assert all(float(module.lora_B["default"].weight.detach().abs().max()) == 0.0 for module in adapters)


@pytest.mark.parametrize(
    "targets,found",
    [
        (["attn3.to_q"], "['attn3.to_q'] match no module of the UNet"),
        (["attn2.to_q", "to_z"], "['to_z'] match no module of the UNet"),
        (["attn2"], "{'attn2': 'Attention'} name modules, not layers"),
    ],
)
def test_targets_that_are_no_layer_of_the_unet_are_refused_whole(targets, found) -> None:
    unet = _unet()
    with pytest.raises(RunSetupError) as caught:
        add_lora(unet, NS(lora=DiffusionLoraSettings(target_modules=targets)))
    assert str(caught.value) == f"`lora.target_modules` {found}{ADVICE}"
    assert not any(hasattr(module, "lora_A") for module in unet.modules())


def test_an_init_from_without_a_unet_folder_is_refused(tmp_path) -> None:
    config = NS(init_from=str(tmp_path), unet=None)
    with pytest.raises(FileNotFoundError) as caught:
        build_unet(config, 32, None)
    assert str(caught.value) == f"init_from: no unet/ in {tmp_path} (a saved CLIPConditionedPipeline)"


def test_a_unet_that_already_holds_an_adapter_is_refused_naming_it() -> None:
    unet = _unet()
    settings = NS(lora=DiffusionLoraSettings(target_modules=["attn2.to_q"]))
    add_lora(unet, settings)
    before = {name: value.clone() for name, value in unet.state_dict().items()}
    with pytest.raises(RunSetupError) as caught:
        add_lora(unet, settings)
    assert str(caught.value) == (
        "the UNet already holds LoRA adapter(s) ['default']; the run adds its own to a UNet without one"
    )
    after = unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
