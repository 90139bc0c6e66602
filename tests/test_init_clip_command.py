"""The `init-clip` command line on its own: its options and their help, the seed's default and
bounds, each refusal as the one ``error:`` line it prints (whole), and what it prints when done."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli_errors import one_error

from clipcond.cli import main
from clipcond.training.clip.random_init import init_clip

MODEL = str(Path(__file__).parents[1] / "configs" / "models" / "clip-tiny.yaml")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "text_encoder" / "model.safetensors"))


def test_the_help_names_each_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["init-clip", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in (
        "--model MODEL model YAML (e.g. configs/models/clip-tiny.yaml)",
        "--seed SEED seed of the random initialisation",
        "-o OUTPUT, --output OUTPUT model folder to write (must not exist)",
    ):
        assert words in text


def test_model_and_output_are_required(capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["init-clip"])
    assert raised.value.code == 2
    assert "the following arguments are required: --model, -o/--output" in capsys.readouterr().err


def test_the_seed_is_0_unless_given(tmp_path, capsys) -> None:
    assert main(["init-clip", "--model", MODEL, "-o", str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out == f"random-init CLIP saved to {tmp_path / 'cli'}\n"
    direct = init_clip(MODEL, tmp_path / "zero", seed=0)
    default = init_clip(MODEL, tmp_path / "default")
    one = init_clip(MODEL, tmp_path / "one", seed=1)
    for folder in (tmp_path / "cli", default):
        assert all(torch.equal(tensor, weights(direct)[name]) for name, tensor in weights(folder).items())
    assert any(not torch.equal(tensor, weights(direct)[name]) for name, tensor in weights(one).items())


@pytest.mark.parametrize("seed", [-(2**63), 2**64 - 1])
def test_the_extreme_seeds_torch_takes_are_taken(seed, tmp_path) -> None:
    assert main(["init-clip", "--model", MODEL, "-o", str(tmp_path / "m"), "--seed", str(seed)]) == 0


@pytest.mark.parametrize("seed", [-(2**63) - 1, 2**64, -(2**64)])
def test_seeds_torch_does_not_take_are_refused(seed, tmp_path, capsys) -> None:
    line = one_error(capsys, ["init-clip", "--model", MODEL, "-o", str(tmp_path / "m"), "--seed", str(seed)], 2)
    assert line == f"error: --seed must be in [-2**63, 2**64 - 1], got {seed}"
    assert list(tmp_path.iterdir()) == []


def test_each_refusal_whole(tmp_path, capsys) -> None:
    out = str(tmp_path / "m")
    assert one_error(capsys, ["init-clip", "--model", str(tmp_path / "x.yaml"), "-o", out], 2) == (
        f"error: --model: no such file {tmp_path / 'x.yaml'}"
    )
    long = str(tmp_path / ("y" * 300))
    assert one_error(capsys, ["init-clip", "--model", long, "-o", out], 2).startswith(f"error: --model '{tmp_path}")
    assert one_error(capsys, ["init-clip", "--model", MODEL, "-o", str(tmp_path)], 2) == (
        f"error: -o/--output {tmp_path} already exists; choose another folder"
    )
    (tmp_path / "file").write_text("")
    assert one_error(capsys, ["init-clip", "--model", MODEL, "-o", str(tmp_path / "file" / "m")], 2) == (
        f"error: -o/--output {tmp_path / 'file' / 'm'}: {tmp_path / 'file'} is a file, not a folder"
    )


def test_a_model_yaml_of_a_wrong_type_is_one_line(tmp_path, capsys) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(Path(MODEL).read_text().replace("embed_dim: 64", "embed_dim: [64]"))
    line = one_error(capsys, ["init-clip", "--model", str(wrong), "-o", str(tmp_path / "m")], 2)
    assert "embed_dim" in line and str(wrong) in line
