"""convert-clip on checkpoints whose tensor shapes disagree with each other: refused with the
key and the shapes (`ValueError` from `convert_openai_state_dict`, one `error:` line naming
--checkpoint from the command), and no output folder left."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from reference_openai_clip import OpenAIStyleCLIP
from safetensors.torch import save_file
from test_cli_errors import one_error

from clipcond.models import convert_openai_state_dict

TEXT_WIDTH, VISION_WIDTH, EMBED = 32, 64, 24  # text MLP 128, vision MLP 256, 17 image positions


def _reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = OpenAIStyleCLIP(
        embed_dim=EMBED,
        image_size=32,
        patch_size=8,
        vision_width=VISION_WIDTH,
        vision_layers=2,
        vision_heads=2,
        context_length=16,
        vocab_size=49408,
        text_width=TEXT_WIDTH,
        text_layers=2,
        text_heads=2,
    )
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


# key -> a damaged tensor of another shape than the rest of the checkpoint gives that key
DAMAGE: dict[str, Callable[[], torch.Tensor]] = {
    "transformer.resblocks.1.mlp.c_fc.weight": lambda: torch.randn(64, TEXT_WIDTH),  # layer 0 has 128 rows
    "visual.transformer.resblocks.1.mlp.c_proj.weight": lambda: torch.randn(256, VISION_WIDTH),  # transposed
    "logit_scale": lambda: torch.ones(2),
    "transformer.resblocks.0.attn.in_proj_weight": lambda: torch.randn(3 * TEXT_WIDTH - 3, TEXT_WIDTH),
    "visual.transformer.resblocks.0.attn.in_proj_bias": lambda: torch.randn(VISION_WIDTH),
    "visual.positional_embedding": lambda: torch.randn(17, 48),
    "text_projection": lambda: torch.randn(48, EMBED),
    "visual.proj": lambda: torch.randn(VISION_WIDTH, 12),
    "visual.conv1.weight": lambda: torch.randn(VISION_WIDTH, 3, 8),  # 3-D
    "positional_embedding": lambda: torch.randn(16),  # 1-D
    "token_embedding.weight": lambda: torch.randn(49408),  # 1-D
    "ln_final.weight": lambda: torch.ones(TEXT_WIDTH + 1),
    "visual.class_embedding": lambda: torch.randn(1, VISION_WIDTH),
}


def _damaged(key: str) -> dict[str, torch.Tensor]:
    return {**_reference_state(), key: DAMAGE[key]()}


@pytest.mark.parametrize("key", sorted(DAMAGE))
def test_a_tensor_of_the_wrong_shape_is_a_value_error_naming_its_key(key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"'{key}' has shape {tuple(DAMAGE[key]().shape)}")):
        convert_openai_state_dict(_damaged(key), text_heads=2)


def test_the_undamaged_checkpoint_converts() -> None:  # the control: the damage alone is refused
    config, weights = convert_openai_state_dict(_reference_state(), text_heads=2)
    assert config.text_config.intermediate_size == 4 * TEXT_WIDTH and weights["logit_scale"].shape == ()


@pytest.mark.parametrize(
    "key", ["transformer.resblocks.1.mlp.c_fc.weight", "logit_scale", "visual.conv1.weight", "positional_embedding"]
)
def test_the_command_refuses_a_damaged_checkpoint_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys, key: str
) -> None:
    checkpoint = tmp_path / "damaged.safetensors"
    save_file({name: value.contiguous() for name, value in _damaged(key).items()}, str(checkpoint))
    output = tmp_path / "out"
    argv = ["convert-clip", "--checkpoint", str(checkpoint), "--output", str(output), "--text-heads", "2"]
    line = one_error(capsys, argv, 2)
    assert line.startswith(f"error: --checkpoint {checkpoint}: '{key}' has shape"), line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["damaged.safetensors"]


def test_a_load_error_the_shape_checks_miss_is_still_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """The command's last guard: `load_state_dict` refusing the converted weights is the checkpoint's fault."""
    import clipcond.models

    checkpoint = tmp_path / "clip.safetensors"
    save_file({name: value.contiguous() for name, value in _reference_state().items()}, str(checkpoint))

    def with_a_wrong_shape(*args, **kwargs):
        config, weights = convert_openai_state_dict(*args, **kwargs)
        weights["text_model.final_layer_norm.weight"] = torch.ones(TEXT_WIDTH + 1)
        return config, weights

    monkeypatch.setattr(clipcond.models, "convert_openai_state_dict", with_a_wrong_shape)
    argv = ["convert-clip", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--text-heads", "2"]
    line = one_error(capsys, argv, 2)
    assert line.startswith(f"error: --checkpoint {checkpoint}: ") and "size mismatch" in line, line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.safetensors"]
