"""The experiment config on its own, without models: `SetupConfig`'s and `ExperimentConfig`'s
refusals whole with their edges (steps and batch 1, seeds 0 and 2**64 - 1, sizes 1), a setup's
own steps and guidance over the experiment's, relative paths read from the working directory
then the config's folder, and `check_experiment` on folders holding only a hand-written
`model_index.json` (and a VAE config where sizes are asked): every reason a pipeline cannot be
wrapped, the VAE's scale factor, missing and pending folders, an output folder inside a model's,
two suites of one name, and the CLIP folder's two kinds.

test_lab_checks.py runs tiny experiments end to end; these pin each rule one at a time."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from clipcond.lab.config import ExperimentConfig, SetupConfig, check_experiment, load_experiment_config
from clipcond.lab.prepare import PrepareStep

SD_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "safety_checker": [None, None],
}


def experiment(**fields) -> ExperimentConfig:
    values = {
        "name": "e",
        "suites": ["s.yaml"],
        "setups": [SetupConfig("a", "p")],
        "seeds": [0],
        "output_dir": "out",
        **fields,
    }
    return ExperimentConfig(**values)


def refused(build, **fields) -> str:
    with pytest.raises(ValueError) as error:
        build(**fields)
    return str(error.value)


# ------------------------------------------------------------------ SetupConfig


def test_a_setups_defaults() -> None:
    setup = SetupConfig("a", "p")
    assert (setup.guidance_scale, setup.steps, setup.native, setup.prepare) == (None, None, False, [])


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "a b"}, "setup name 'a b' is not a folder name (letters, digits, '_', '-', '.')"),
        ({"name": ""}, "setup name '' is not a folder name (letters, digits, '_', '-', '.')"),
        ({"steps": 0}, "setup 'a': steps must be >= 1, got 0"),
        ({"guidance_scale": math.inf}, "setup 'a': guidance_scale must be finite, got inf"),
        ({"guidance_scale": math.nan}, "setup 'a': guidance_scale must be finite, got nan"),
    ],
)
def test_a_setups_refusals(fields, message) -> None:
    assert refused(SetupConfig, **{"name": "a", "pipeline": "p", **fields}) == message


def test_a_setup_takes_one_step_and_any_finite_guidance() -> None:
    setup = SetupConfig("a", "p", guidance_scale=-2.0, steps=1)
    assert (setup.steps, setup.guidance_scale) == (1, -2.0)


# ------------------------------------------------------------------ ExperimentConfig


def test_an_experiments_defaults() -> None:
    config = experiment()
    assert (config.steps, config.guidance_scale, config.height, config.width) == (25, 5.0, None, None)
    assert (config.metrics, config.clip_score_model, config.batch_size) == (["judge"], None, 8)
    assert experiment().metrics is not config.metrics  # a list of its own


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": " "}, "name must be a non-empty string"),
        ({"suites": []}, "suites must list at least one entry"),
        ({"setups": []}, "setups must list at least one entry"),
        ({"seeds": []}, "seeds must list at least one entry"),
        (
            {"setups": [SetupConfig("b", "p"), SetupConfig("a", "q"), SetupConfig("b", "r"), SetupConfig("a", "s")]},
            "setup names must differ, repeated: ['a', 'b']",
        ),
        ({"seeds": [3, 1, 3, 2, 1]}, "seeds must differ, repeated: ['1', '3']"),
        ({"seeds": [0, -1]}, "seeds must be in [0, 2**64 - 1], got [0, -1]"),
        ({"seeds": [2**64]}, "seeds must be in [0, 2**64 - 1], got [18446744073709551616]"),
        ({"steps": 0}, "steps and batch_size must be >= 1, got 0 and 8"),
        ({"batch_size": 0}, "steps and batch_size must be >= 1, got 25 and 0"),
        ({"guidance_scale": -math.inf}, "guidance_scale must be finite, got -inf"),
        ({"height": 0}, "height must be a positive number of pixels or null, got 0"),
        ({"width": -8}, "width must be a positive number of pixels or null, got -8"),
        ({"metrics": []}, "metrics must name at least one metric; known metrics: ['clip_score', 'judge']"),
        ({"metrics": ["judge", "fid"]}, "unknown metric(s) ['fid']; known metrics: ['clip_score', 'judge']"),
        ({"metrics": ["judge", "judge"]}, "metrics must differ, repeated: ['judge']"),
        (
            {"metrics": ["clip_score"]},
            "metric clip_score needs `clip_score_model`: a CLIP folder (clipcond save_clip or transformers)",
        ),
        (
            {"metrics": ["clip_score"], "clip_score_model": ""},
            "metric clip_score needs `clip_score_model`: a CLIP folder (clipcond save_clip or transformers)",
        ),
    ],
)
def test_an_experiments_refusals(fields, message) -> None:
    assert refused(experiment, **fields) == message


def test_an_experiment_at_the_edges_of_its_checks() -> None:
    config = experiment(seeds=[0, 2**64 - 1], steps=1, batch_size=1, height=1, width=1, guidance_scale=0.0)
    assert (config.seeds, config.steps, config.batch_size, config.height, config.width) == ([0, 2**64 - 1], 1, 1, 1, 1)
    both = experiment(metrics=["clip_score", "judge"], clip_score_model="clip")
    assert both.metrics == ["clip_score", "judge"]


def test_a_setups_own_steps_and_guidance_come_first() -> None:
    own, plain = SetupConfig("own", "p", guidance_scale=0.0, steps=3), SetupConfig("plain", "q")
    config = experiment(setups=[own, plain], steps=30, guidance_scale=7.5)
    assert (config.setup_steps(own), config.setup_guidance(own)) == (3, 0.0)
    assert (config.setup_steps(plain), config.setup_guidance(plain)) == (30, 7.5)


# ------------------------------------------------------------------ loading and paths


def write_config(folder: Path, text: str) -> Path:
    path = folder / "experiment.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BODY = "name: e\nseeds: [0]\noutput_dir: out\n"


def test_relative_paths_are_read_from_the_working_directory_then_the_configs_folder(tmp_path, monkeypatch) -> None:
    work, configs = tmp_path / "work", tmp_path / "configs"
    work.mkdir(), configs.mkdir()
    monkeypatch.chdir(work)
    (work / "here.yaml").write_text("x")  # exists from the working directory
    (configs / "there.yaml").write_text("x")  # only beside the config
    (configs / "pipe").mkdir()
    (configs / "clip").mkdir()
    (work / "clip").mkdir()  # both: the working directory's wins
    text = (
        BODY + "suites: [here.yaml, there.yaml, nowhere.yaml, " + str(tmp_path / "abs.yaml") + "]\n"
        "setups: [{name: a, pipeline: pipe}, {name: b, pipeline: gone}]\n"
        "metrics: [clip_score]\nclip_score_model: clip\n"
    )
    config = load_experiment_config(write_config(configs, text))
    assert config.suites == ["here.yaml", str(configs / "there.yaml"), "nowhere.yaml", str(tmp_path / "abs.yaml")]
    assert [setup.pipeline for setup in config.setups] == [str(configs / "pipe"), "gone"]
    assert config.clip_score_model == "clip"
    assert config.output_dir == "out"  # taken as written
    (configs / "clip-only-here").mkdir()
    beside = write_config(configs, text.replace("clip_score_model: clip", "clip_score_model: clip-only-here"))
    assert load_experiment_config(beside).clip_score_model == str(configs / "clip-only-here")


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = BODY + "suites: [~/s.yaml]\nsetups: [{name: a, pipeline: ~/p}]\n"
    config = load_experiment_config(write_config(tmp_path, text))
    assert config.suites == [str(tmp_path / "home" / "s.yaml")]
    assert config.setups[0].pipeline == str(tmp_path / "home" / "p")
    assert config.clip_score_model is None


def test_a_folder_is_no_experiment_file(tmp_path) -> None:
    with pytest.raises(ValueError) as error:
        load_experiment_config(tmp_path)
    assert str(error.value) == f"{tmp_path} is a folder; give the experiment YAML file (see configs/experiments/)"
    with pytest.raises(FileNotFoundError):
        load_experiment_config(tmp_path / "none.yaml")


def test_a_setup_read_from_yaml_is_named_by_its_index(tmp_path) -> None:
    path = write_config(
        tmp_path, BODY + "suites: [s.yaml]\nsetups: [{name: a, pipeline: p}, {name: b c, pipeline: q}]\n"
    )
    with pytest.raises(ValueError) as error:
        load_experiment_config(path)
    assert str(error.value) == (
        f"{path}: setups[1]: setup name 'b c' is not a folder name (letters, digits, '_', '-', '.')"
    )


# ------------------------------------------------------------------ check_experiment


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text('prompts:\n  - category: c\n    prompt: "a red circle"\n    objects: [[red, circle]]\n')
    return path


def pipeline_folder(root: Path, name: str, index: object, vae_blocks: list[int] | None = None) -> Path:
    """A folder holding `index` as model_index.json (and a VAE config of `vae_blocks`)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    if vae_blocks is not None:
        (folder / "vae").mkdir()
        (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": vae_blocks}))
    return folder


def checked(tmp_path: Path, suite: Path, index: object, native: bool = False, **fields) -> list:
    folder = pipeline_folder(tmp_path, "pipe", index, fields.pop("vae_blocks", None))
    setup = SetupConfig("a", str(folder), native=native)
    config = experiment(suites=[str(suite)], setups=[setup], output_dir=str(tmp_path / "out"), **fields)
    return check_experiment(config)


def check_refusal(tmp_path: Path, suite: Path, index: object, **fields) -> str:
    with pytest.raises(ValueError) as error:
        checked(tmp_path, suite, index, **fields)
    return str(error.value)


def test_a_stable_diffusion_folder_passes_and_the_suites_come_back(tmp_path, suite) -> None:
    (loaded,) = checked(tmp_path, suite, SD_INDEX)
    assert (loaded.name, loaded.path, len(loaded.prompts)) == ("suite", suite, 1)


def test_an_sdxl_folder_and_a_saved_clipcond_pipeline_pass(tmp_path, suite) -> None:
    sdxl = {**SD_INDEX, "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    assert checked(tmp_path / "x", suite, sdxl)
    ours = {"_class_name": "CLIPConditionedPipeline", "transformer": ["diffusers", "Anything"]}
    assert checked(tmp_path / "y", suite, ours)  # whatever it holds: it loads as ours


WRAPS = (
    "clipcond wraps UNet pipelines with CLIP text encoders (Stable Diffusion 1.x/2.x and SDXL); set `native: true` "
    "to run it as saved"
)


@pytest.mark.parametrize(
    "index, why",
    [
        ({**SD_INDEX, "_class_name": "SD3", "transformer": ["diffusers", "SD3Transformer2DModel"]}, "a `transformer`"),
        (
            {**SD_INDEX, "_class_name": "SD3", "text_encoder_3": ["transformers", "T5EncoderModel"]},
            "a `text_encoder_3`",
        ),
        ({**SD_INDEX, "unet": ["diffusers", "UNet2DModel"]}, "no UNet2DConditionModel `unet`"),
        ({**SD_INDEX, "unet": None}, "no UNet2DConditionModel `unet`"),
        (
            {**SD_INDEX, "text_encoder": ["transformers", "T5EncoderModel"]},
            "`text_encoder` T5EncoderModel, not a CLIP text model",
        ),
        ({**SD_INDEX, "text_encoder": [None, None]}, "`text_encoder` None, not a CLIP text model"),
        (
            {**SD_INDEX, "text_encoder_2": ["transformers", "CLIPTextModel"]},
            "`text_encoder_2` CLIPTextModel, not SDXL's CLIPTextModelWithProjection",
        ),
    ],
)
def test_each_reason_a_pipeline_cannot_be_wrapped(tmp_path, suite, index, why) -> None:
    folder = tmp_path / "pipe"
    assert check_refusal(tmp_path, suite, index) == (
        f"setup 'a': {folder} holds a {index['_class_name']} with {why}; {WRAPS}"
    )


def test_native_runs_any_pipeline_as_saved(tmp_path, suite) -> None:
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    assert checked(tmp_path, suite, index, native=True)


def test_a_components_entry_is_read_only_as_a_library_and_class_pair(tmp_path, suite) -> None:
    # a `transformer` entry that is no [library, class] pair is no transformer
    for entry in (["FluxTransformer2DModel"], ["diffusers", "X", "Y"], ["diffusers", 3], "diffusers.X"):
        index = {**SD_INDEX, "transformer": entry}
        assert checked(tmp_path / str(len(str(entry))) / "x", suite, index)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "cannot be read as JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        ('["a"]', "must hold a JSON object (a saved pipeline's components), got list"),
    ],
)
def test_a_model_index_that_is_no_json_object_is_refused(tmp_path, suite, text, message) -> None:
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text(text)
    config = experiment(suites=[str(suite)], setups=[SetupConfig("a", str(folder))], output_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError) as error:
        check_experiment(config)
    assert str(error.value) == f"setup 'a': {folder / 'model_index.json'} {message}"


def test_a_model_index_that_is_not_utf8_is_refused(tmp_path, suite) -> None:
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_bytes(b'{"\xff": 1}')
    config = experiment(suites=[str(suite)], setups=[SetupConfig("a", str(folder))], output_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError) as error:
        check_experiment(config)
    assert str(error.value).startswith(f"setup 'a': {folder / 'model_index.json'} cannot be read as JSON (")


def test_missing_pipeline_folders_are_named_with_the_reason(tmp_path, suite) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, reason in (
        (empty, "has no model_index.json (not a saved diffusers pipeline)"),
        (
            tmp_path / "gone",
            "does not exist (a relative path is read from the working directory, then from the config file's folder)",
        ),
    ):
        setup = SetupConfig("a", str(folder))
        with pytest.raises(FileNotFoundError) as error:
            check_experiment(experiment(suites=[str(suite)], setups=[setup], output_dir=str(tmp_path / "o")))
        assert str(error.value) == f"setup 'a': pipeline folder {folder} {reason}"


def test_a_pipeline_folder_a_prepare_step_makes_may_be_pending(tmp_path, suite) -> None:
    folder = tmp_path / "made"
    step = PrepareStep("train-diffusion", str(folder))
    other = PrepareStep("train-diffusion", str(tmp_path / "other"))
    config = experiment(suites=[str(suite)], setups=[SetupConfig("a", str(folder), prepare=[other, step])])
    assert check_experiment(config, allow_pending=True)
    with pytest.raises(FileNotFoundError):
        check_experiment(config)  # not pending: it must exist
    unmade = replace(config, setups=[SetupConfig("a", str(folder), prepare=[other])])
    with pytest.raises(FileNotFoundError):
        check_experiment(unmade, allow_pending=True)  # no step of this setup makes it


@pytest.mark.parametrize("blocks, scale", [([8], 1), ([8, 8], 2), ([8, 8, 8, 8], 8)])
def test_sizes_must_be_multiples_of_the_vaes_scale_factor(tmp_path, suite, blocks, scale) -> None:
    assert checked(tmp_path / "ok", suite, SD_INDEX, vae_blocks=blocks, height=scale * 3, width=scale)
    if scale > 1:
        rule = f"a positive multiple of {scale} (the VAE's scale factor)"
        message = check_refusal(tmp_path / "h", suite, SD_INDEX, vae_blocks=blocks, height=scale + 1)
        assert message == f"height must be {rule} for setup 'a', got {scale + 1}"
        message = check_refusal(tmp_path / "w", suite, SD_INDEX, vae_blocks=blocks, width=scale * 2 - 1)
        assert message == f"width must be {rule} for setup 'a', got {scale * 2 - 1}"


def test_without_a_vae_any_positive_size_fits_and_without_sizes_the_vae_is_not_read(tmp_path, suite) -> None:
    no_vae = {**SD_INDEX, "vae": [None, None]}
    assert checked(tmp_path / "a", suite, no_vae, height=7, width=13)
    assert checked(tmp_path / "b", suite, SD_INDEX)  # no vae/config.json, and no size asked


@pytest.mark.parametrize("config_text", [None, "{", '{"block_out_channels": 4}', '{"other": [1]}', "[]"])
def test_a_vae_config_without_its_blocks_is_refused_when_sizes_are_asked(tmp_path, suite, config_text) -> None:
    folder = pipeline_folder(tmp_path, "pipe", SD_INDEX)
    path = folder / "vae" / "config.json"
    if config_text is not None:
        path.parent.mkdir()
        path.write_text(config_text)
    config = experiment(suites=[str(suite)], setups=[SetupConfig("a", str(folder))], output_dir="o", height=64)
    with pytest.raises(ValueError) as error:
        check_experiment(config)
    assert str(error.value) == f"setup 'a': {path} does not give the VAE's block_out_channels"


# ------------------------------------------------------------------ output folder and suites


def test_an_output_folder_inside_a_pipeline_folder_is_refused(tmp_path, suite) -> None:
    folder = pipeline_folder(tmp_path, "pipe", SD_INDEX)
    for output in (folder / "runs", folder):
        config = experiment(suites=[str(suite)], setups=[SetupConfig("a", str(folder))], output_dir=str(output))
        with pytest.raises(ValueError) as error:
            check_experiment(config)
        assert str(error.value) == (
            f"output_dir {output} lies inside the pipeline folder of setup 'a' {folder}: the model's digest reads "
            "every file under its folder, so the run's own files would change it and every rerun would draw every "
            "image again; put output_dir outside the model folder"
        )
    beside = experiment(suites=[str(suite)], setups=[SetupConfig("a", str(folder))], output_dir=str(tmp_path / "pipe2"))
    assert check_experiment(beside)


def test_an_output_folder_inside_the_clip_folder_is_refused_only_when_clip_score_reads_it(tmp_path, suite) -> None:
    folder = pipeline_folder(tmp_path, "pipe", SD_INDEX)
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    setups = [SetupConfig("a", str(folder))]
    output = str(clip / "out")
    config = experiment(
        suites=[str(suite)], setups=setups, output_dir=output, metrics=["clip_score"], clip_score_model=str(clip)
    )
    with pytest.raises(ValueError) as error:
        check_experiment(config)
    assert str(error.value).startswith(f"output_dir {output} lies inside the clip_score_model folder {clip}: ")
    assert check_experiment(replace(config, metrics=["judge"]))


def test_two_suites_of_one_name_are_refused(tmp_path, suite) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "suite.yaml").write_text(suite.read_text())
    folder = pipeline_folder(tmp_path, "pipe", SD_INDEX)
    config = experiment(suites=[str(suite), str(other / "suite.yaml")], setups=[SetupConfig("a", str(folder))])
    with pytest.raises(ValueError) as error:
        check_experiment(config)
    assert str(error.value) == "suite names must differ, repeated: ['suite']"


# ------------------------------------------------------------------ the CLIP folder


def clip_config(tmp_path: Path, suite: Path, clip: Path, prepare: list[PrepareStep] | None = None) -> ExperimentConfig:
    folder = tmp_path / "pipe"
    if not folder.exists():
        pipeline_folder(tmp_path, "pipe", SD_INDEX)
    setup = SetupConfig("a", str(folder), prepare=prepare or [])
    return experiment(
        suites=[str(suite)],
        setups=[setup],
        output_dir=str(tmp_path / "o"),
        metrics=["clip_score"],
        clip_score_model=str(clip),
    )


@pytest.mark.parametrize("marker", ["clip_config.yaml", "config.json"])
def test_a_clip_folder_of_either_kind_passes(tmp_path, suite, marker) -> None:
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / marker).write_text("{}")
    assert check_experiment(clip_config(tmp_path, suite, clip))


def test_a_folder_that_is_no_clip_and_a_missing_one_are_refused(tmp_path, suite) -> None:
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "model.safetensors").write_text("")
    expected = (
        f"clip_score_model {clip} is not a CLIP folder: expected clip_config.yaml (clipcond save_clip) "
        "or config.json (transformers CLIPModel)"
    )
    with pytest.raises(FileNotFoundError) as error:
        check_experiment(clip_config(tmp_path, suite, clip))
    assert str(error.value) == expected
    gone = tmp_path / "gone"
    with pytest.raises(FileNotFoundError) as error:
        check_experiment(clip_config(tmp_path, suite, gone))
    assert str(error.value) == (
        f"clip_score_model {gone} is not a CLIP folder: expected clip_config.yaml (clipcond save_clip) or "
        "config.json (transformers CLIPModel); it does not exist (a relative path is read from the working "
        "directory, then from the config file's folder)"
    )


def test_a_clip_folder_any_prepare_step_makes_may_be_pending(tmp_path, suite) -> None:
    clip = tmp_path / "clip"
    config = clip_config(tmp_path, suite, clip, prepare=[PrepareStep("train-clip", str(clip))])
    assert check_experiment(config, allow_pending=True)
    with pytest.raises(FileNotFoundError):
        check_experiment(config)
    config = clip_config(tmp_path, suite, clip, prepare=[PrepareStep("train-clip", str(tmp_path / "x"))])
    with pytest.raises(FileNotFoundError):
        check_experiment(config, allow_pending=True)
    # an existing folder that is no CLIP is refused even when a step would make it
    clip.mkdir()
    config = clip_config(tmp_path, suite, clip, prepare=[PrepareStep("train-clip", str(clip))])
    with pytest.raises(FileNotFoundError):
        check_experiment(config, allow_pending=True)


def test_the_working_directory_does_not_matter_to_absolute_paths(tmp_path, suite, monkeypatch) -> None:
    folder = pipeline_folder(tmp_path, "pipe", SD_INDEX)
    monkeypatch.chdir(os.sep)
    assert check_experiment(
        experiment(suites=[str(suite)], setups=[SetupConfig("a", str(folder))], output_dir="/tmp/o")
    )
