"""A component's `config.json` that parses but holds a value of the wrong type (a hand-edited or
damaged file) fails the load naming the file (`clipcond.pipelines.component_configs`): diffusers'
own load of the same folder fails partway with transformers' `StrictDataclassFieldValidationError`
or a `TypeError` from inside torch, naming no file, and `clipcond generate` printed a traceback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline
from huggingface_hub.errors import StrictDataclassError
from tiny_pipelines import build_sd, clip_text_model

from clipcond import CLIPConditionedPipeline
from clipcond.cli import main as cli_main
from clipcond.pipelines.component_configs import config_that_cannot_build
from clipcond.pipelines.saved_pipelines import load_pipeline
from clipcond.tokenization import clip_tokenizer
from clipcond.training.loop import RunSetupError

# component -> (the config key set to a value of the wrong type, the value, its model class, what the error says)
WRONG_VALUES = {
    "text_encoder": ("num_hidden_layers", "3", "CLIPTextModel", "Field 'num_hidden_layers' expected int, got str"),
    "unet": ("cross_attention_dim", "abc", "UNet2DConditionModel", "empty(): argument 'size'"),
    "vae": ("latent_channels", "four", "AutoencoderKL", "not all arguments converted"),
}


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny SD pipeline saved by clipcond ("clipcond") and by diffusers ("diffusers"). Read only."""
    root = tmp_path_factory.mktemp("component_configs")
    pipe = build_sd()
    pipe.save_pretrained(root / "diffusers")
    CLIPConditionedPipeline.from_pipe(pipe).save_pretrained(root / "clipcond")
    return {"clipcond": root / "clipcond", "diffusers": root / "diffusers"}


def _with_a_wrong_value(folder: Path, to: Path, component: str) -> Path:
    shutil.copytree(folder, to)
    key, value, _, _ = WRONG_VALUES[component]
    config = to / component / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), key: value}))
    return config


@pytest.mark.parametrize("component", sorted(WRONG_VALUES))
def test_a_config_value_of_the_wrong_type_is_named_where_diffusers_names_no_file(
    saved_folders, tmp_path, component
) -> None:
    config = _with_a_wrong_value(saved_folders["clipcond"], tmp_path / "sd", component)
    _, _, model_class, said = WRONG_VALUES[component]
    with pytest.raises((TypeError, StrictDataclassError)) as peer:
        StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert str(config) not in str(peer.value)
    with pytest.raises(ValueError) as ours:
        CLIPConditionedPipeline.from_pretrained(tmp_path / "sd")
    message = str(ours.value)
    assert message.startswith(f"{config} cannot build its {model_class} (a value of the wrong type? ")
    assert said in message and "\n" not in message
    assert isinstance(ours.value.__cause__, (TypeError, StrictDataclassError))


def test_every_config_of_a_whole_folder_builds(saved_folders) -> None:
    assert config_that_cannot_build(saved_folders["clipcond"]) is None
    assert config_that_cannot_build(saved_folders["diffusers"]) is None


def test_a_type_error_no_config_explains_passes_unchanged(saved_folders, monkeypatch) -> None:
    from diffusers import DiffusionPipeline

    def failing(*args, **kwargs):
        raise TypeError("not the configs")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", failing)
    with pytest.raises(TypeError, match="^not the configs$"):
        CLIPConditionedPipeline.from_pretrained(saved_folders["clipcond"])


@pytest.mark.parametrize("component", ["text_encoder", "unet"])
def test_a_diffusers_folder_with_a_wrong_config_value_is_one_line_from_generate(
    saved_folders, tmp_path, capsys, component
) -> None:
    config = _with_a_wrong_value(saved_folders["diffusers"], tmp_path / "sd", component)
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))} cannot build its "):
        load_pipeline(tmp_path / "sd")
    code = cli_main(["generate", "--model", str(tmp_path / "sd"), "a red circle", "-o", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out.png").exists()
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: --model {tmp_path / 'sd'}: cannot load: {config} cannot build its ")
    assert "Traceback" not in err


def test_train_diffusion_names_the_text_encoder_whose_config_holds_a_wrong_value(tmp_path) -> None:
    from test_train_diffusion import tiny_config

    from clipcond.training.diffusion.setup import build_conditioner

    tower = tmp_path / "tower"
    clip_text_model(3).save_pretrained(tower)
    clip_tokenizer().save_pretrained(tower)
    config = tower / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_hidden_layers": "3"}))
    with pytest.raises(RunSetupError) as refused:
        build_conditioner(tiny_config(tower, tmp_path / "run"))
    assert str(refused.value).startswith(f"text_encoder {tower}: Validation error for field 'num_hidden_layers': ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change",
    ["an_unknown_class", "a_tokenizer_with_a_config_json", "a_model_without_its_config"],
)
def test_components_that_name_no_model_or_hold_no_config_are_passed_over(saved_folders, tmp_path, change) -> None:
    """Only model components with a `config.json` are built: a class the library lacks, a
    non-model class beside a stray `config.json`, a model without its config (the loader
    reports those) give None, and the wrong value of a later component is still named."""
    folder = tmp_path / "sd"
    shutil.copytree(saved_folders["diffusers"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    if change == "an_unknown_class":
        index["text_encoder"] = ["transformers", "NoSuchTextModel"]
    elif change == "a_tokenizer_with_a_config_json":
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
        (folder / "tokenizer" / "config.json").write_text('{"junk": 1}')
    else:
        (folder / "text_encoder" / "config.json").unlink()
    (folder / "model_index.json").write_text(json.dumps(index))
    assert config_that_cannot_build(folder) is None
    vae_config = folder / "vae" / "config.json"
    vae_config.write_text(json.dumps({**json.loads(vae_config.read_text()), "latent_channels": "four"}))
    assert config_that_cannot_build(folder).startswith(f"{vae_config} cannot build its AutoencoderKL ")
