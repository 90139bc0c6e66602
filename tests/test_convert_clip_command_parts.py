"""`clipcond convert-clip`'s own work (the conversion itself is test_models.py's and
test_convert_clip_*.py's): its options and help, what a checkpoint file may hold, the line that
says what the weights did not, each refusal before anything is written, the model written and
the line that says so, and its script entry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from reference_openai_clip import tiny_openai_clip
from safetensors.torch import save_file

from clipcond.errors import UsageError
from clipcond.training.clip import convert


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """A tiny OpenAI-layout CLIP's tensors (text width 32 in 2 heads of 16, image width 128 in 2 of 64)."""
    return {key: value.detach().clone().contiguous() for key, value in tiny_openai_clip().state_dict().items()}


@pytest.fixture
def checkpoint(tmp_path, state) -> Path:
    path = tmp_path / "clip.safetensors"
    save_file(state, str(path))
    return path


def test_the_options_and_their_defaults() -> None:
    args = _args("--checkpoint", "c.pt", "--output", "o")
    assert vars(args) == {
        "checkpoint": "c.pt",
        "output": "o",
        "gelu": False,
        "text_heads": None,
        "vision_heads": None,
        "trust_pickle": False,
    }


def test_checkpoint_and_output_are_required(capsys) -> None:
    with pytest.raises(SystemExit):
        _args("--checkpoint", "c.pt")
    assert "the following arguments are required: --output" in capsys.readouterr().err


def test_checkpoint_is_required_too(capsys) -> None:
    with pytest.raises(SystemExit):
        _args("--output", "o")
    assert "the following arguments are required: --checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--checkpoint", "--output"])
def test_a_path_no_file_system_takes_is_named_with_its_option(option, checkpoint, tmp_path) -> None:
    paths = {"--checkpoint": str(checkpoint), "--output": str(tmp_path / "model"), option: "bad\0name"}
    with pytest.raises(UsageError) as caught:
        convert.run(_args(*[item for pair in paths.items() for item in pair]))
    assert str(caught.value).startswith(f"{option} ") and "NUL byte" in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.safetensors"]


def test_the_help_says_what_is_not_supported_and_every_option(capsys) -> None:
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    assert parser.epilog.startswith("Not supported, and not visible in the weights, so not refused: ")
    assert "ResNet towers" in parser.epilog and "*-worldwide, CLIPA" in parser.epilog
    helps = [action.help for action in parser._actions]
    assert all(isinstance(text, str) and len(text) > 15 for text in helps)


class _Module(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 3)


def test_a_checkpoint_may_hold_a_state_dict_a_training_checkpoint_or_a_module() -> None:
    tensors = {"a": torch.ones(2)}
    assert convert._state_dict(tensors) is tensors
    assert convert._state_dict({"state_dict": tensors, "epoch": 3}) is tensors
    module = _Module()
    assert convert._state_dict(module).keys() == {"layer.weight", "layer.bias"}
    assert torch.equal(convert._state_dict(module)["layer.weight"], module.layer.weight)
    # "state_dict" that is no mapping: the dict is the state dict
    odd = {"state_dict": 3}
    assert convert._state_dict(odd) is odd


@pytest.mark.parametrize("loaded,name", [([1, 2], "list"), (torch.ones(2), "Tensor"), (None, "NoneType")])
def test_anything_else_is_refused_naming_its_type(loaded, name) -> None:
    with pytest.raises(ValueError) as caught:
        convert._state_dict(loaded)
    assert str(caught.value) == f"expected a state dict or a module, found {name}"


def _config(text_heads=2, vision_heads=2):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"hidden_size": 32, "num_attention_heads": text_heads},
        vision_config={"hidden_size": 128, "num_attention_heads": vision_heads},
    )


@pytest.mark.parametrize(
    "argv,line",
    [
        (
            [],
            "text heads: 2 of width 16 (default); vision heads: 2 of width 64 (default); "
            "activation: quick_gelu (default; --gelu for plain GELU)",
        ),
        (
            ["--text-heads", "2", "--gelu"],
            "text heads: 2 of width 16 (--text-heads); vision heads: 2 of width 64 (default); activation: gelu (--gelu)",
        ),
        (
            ["--vision-heads", "2"],
            "text heads: 2 of width 16 (default); vision heads: 2 of width 64 (--vision-heads); "
            "activation: quick_gelu (default; --gelu for plain GELU)",
        ),
    ],
)
def test_the_architecture_line_says_what_was_chosen_and_why(argv, line) -> None:
    args = _args("--checkpoint", "c", "--output", "o", *argv)
    assert convert._architecture_line(_config(), args) == line


def test_a_safetensors_checkpoint_converts_and_says_so(checkpoint, tmp_path, capsys) -> None:
    from clipcond.models import load_clip

    output = tmp_path / "deeper" / "model"
    argv = ["--checkpoint", str(checkpoint), "--output", str(output), "--text-heads", "2", "--vision-heads", "2"]
    assert convert.run(_args(*argv)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "text heads: 2 of width 16 (--text-heads); vision heads: 2 of width 64 (--vision-heads); "
        "activation: quick_gelu (default; --gelu for plain GELU)",
        f"converted {checkpoint} -> {output} (text context 16 tokens)",
    ]
    model = load_clip(output)
    assert model.config.text.context_length == 16
    # QuickGELU unless --gelu, as OpenAI's models were trained
    text_config = json.loads((output / "text_encoder" / "config.json").read_text())
    assert text_config["hidden_act"] == "quick_gelu"
    assert sorted(path.name for path in output.parent.iterdir()) == ["model"]  # no hidden folder left


def test_gelu_and_heads_reach_the_converted_model(checkpoint, tmp_path, capsys) -> None:
    from transformers import CLIPTextModel

    output = tmp_path / "model"
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--output",
        str(output),
        "--gelu",
        "--text-heads",
        "4",
        "--vision-heads",
        "1",
    ]
    convert.run(_args(*argv))
    text = CLIPTextModel.from_pretrained(output / "text_encoder")
    assert (text.config.hidden_act, text.config.num_attention_heads) == ("gelu", 4)
    assert "vision heads: 1 of width 128 (--vision-heads)" in capsys.readouterr().out


def test_a_missing_checkpoint_or_an_existing_output_is_refused_before_reading(checkpoint, tmp_path) -> None:
    with pytest.raises(UsageError) as caught:
        convert.run(_args("--checkpoint", str(tmp_path / "none.pt"), "--output", str(tmp_path / "o")))
    assert str(caught.value) == f"--checkpoint: no such file {tmp_path / 'none.pt'}"
    (tmp_path / "taken").mkdir()
    with pytest.raises(UsageError) as caught:
        convert.run(_args("--checkpoint", str(checkpoint), "--output", str(tmp_path / "taken")))
    assert str(caught.value) == f"--output {tmp_path / 'taken'} already exists; choose a new folder"


def test_an_output_below_a_file_is_refused_naming_the_option(checkpoint, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError) as caught:
        convert.run(_args("--checkpoint", str(checkpoint), "--output", str(tmp_path / "file" / "model")))
    assert str(caught.value).startswith(f"--output {tmp_path / 'file' / 'model'}")


def test_a_pickle_is_read_only_when_trusted(state, tmp_path, capsys) -> None:
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    with pytest.raises(UsageError) as caught:
        convert.run(_args("--checkpoint", str(path), "--output", str(tmp_path / "o")))
    assert str(caught.value).startswith(
        f"--checkpoint {path}: refusing to load the pickle checkpoint {path}: unpickling can run arbitrary code."
    )
    assert not (tmp_path / "o").exists()
    argv = ["--checkpoint", str(path), "--output", str(tmp_path / "o"), "--trust-pickle", "--text-heads", "2"]
    assert convert.run(_args(*argv)) == 0
    assert (tmp_path / "o" / "clip_config.yaml").is_file()


@pytest.mark.parametrize(
    "damage,message",
    [
        ("cut", "--checkpoint {path}: "),
        ("wrong shape", "--checkpoint {path}: "),
        ("wrong vocabulary", "--checkpoint {path}: "),
    ],
)
def test_a_damaged_or_foreign_checkpoint_is_named_and_nothing_is_written(state, tmp_path, damage, message) -> None:
    path = tmp_path / "clip.safetensors"
    if damage == "cut":
        save_file(state, str(path))
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "wrong shape":
        save_file({**state, "ln_final.weight": torch.ones(31)}, str(path))
    else:
        save_file({**state, "token_embedding.weight": torch.ones(1000, 32)}, str(path))
    with pytest.raises(UsageError) as caught:
        convert.run(_args("--checkpoint", str(path), "--output", str(tmp_path / "o")))
    assert str(caught.value).startswith(message.format(path=path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.safetensors"]


def test_weights_the_model_cannot_take_are_the_checkpoints_fault(checkpoint, tmp_path, monkeypatch) -> None:
    import clipcond.models as models

    original = models.convert_openai_state_dict

    def with_an_extra_key(*args, **kwargs):
        config, weights = original(*args, **kwargs)
        return config, {**weights, "text_model.extra": torch.ones(1)}

    monkeypatch.setattr(models, "convert_openai_state_dict", with_an_extra_key)
    with pytest.raises(UsageError) as caught:
        convert.run(_args("--checkpoint", str(checkpoint), "--output", str(tmp_path / "o"), "--text-heads", "2"))
    assert str(caught.value).startswith(f"--checkpoint {checkpoint}: Error(s) in loading state_dict for CLIPModel")
    assert not (tmp_path / "o").exists()


def test_an_output_another_run_wrote_meanwhile_is_kept(checkpoint, tmp_path, monkeypatch) -> None:
    import clipcond.models as models

    output = tmp_path / "model"
    save_clip = models.save_clip

    def and_another_run(model, folder, *args, **kwargs):
        saved = save_clip(model, folder, *args, **kwargs)
        output.mkdir()
        (output / "theirs").write_text("kept")
        return saved

    monkeypatch.setattr(models, "save_clip", and_another_run)
    with pytest.raises(UsageError) as caught:
        convert.run(_args("--checkpoint", str(checkpoint), "--output", str(output), "--text-heads", "2"))
    assert str(caught.value) == (
        f"--output {output} was written by another run meanwhile; this conversion is not kept, choose a new folder"
    )
    assert [path.name for path in output.iterdir()] == ["theirs"]


def test_the_module_runs_as_a_script(monkeypatch, capsys) -> None:
    monkeypatch.setattr(convert, "run", lambda args: 3 if args.debug and args.output == "o" else 1)
    assert convert.main(["--checkpoint", "c", "--output", "o", "--debug"]) == 3
    with pytest.raises(SystemExit):
        convert.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: convert_clip ") and "Long-CLIP" in out and "ResNet towers" in out
    # the module's docstring is the description (argparse re-wraps it)
    assert "becomes a text tower with 248 positions and a tokenizer of 248 tokens" in " ".join(out.split())
