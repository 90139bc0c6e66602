"""Conditioner configs: YAML loading, validation errors that name key and file, building."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from clipcond import TextConditioner
from clipcond.conditioner_config import ConditionerConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "conditioners").glob("*.yaml"))


def test_shipped_configs_exist():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    config = ConditionerConfig.from_yaml(path)
    assert config.to_recipe().name == config.recipe


def _write(tmp_path, data, name="conditioner.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = _write(tmp_path, {"recipe": "custom", "clip": [{"path": "x"}], "projection_dims": 8})
    with pytest.raises(ValueError, match=r"conditioner\.yaml.*projection_dims"):
        ConditionerConfig.from_yaml(path)
    nested = _write(tmp_path, {"clip": [{"path": "x", "subfoldr": "a"}]}, "nested.yaml")
    with pytest.raises(ValueError, match=r"nested\.yaml.*clip\[0\]\.subfoldr"):
        ConditionerConfig.from_yaml(nested)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"recipe: sd\nclip: [{path: x}]\nrecipe: custom\n", "line 3: the key 'recipe' is given twice"),
        (b"clip: [{path: x, path: y}]\n", "line 1: the key 'path' is given twice"),
        (b"recipe: custom\nclip: [{path: caf\xe9}]\n", r"not UTF-8 text \(invalid continuation byte at byte 32\)"),
        (b"clip: " + b"[" * 5000 + b"]" * 5000, "nested too deeply to read"),
        (
            b"recipe: custom\nclip:\n\t- path: x\n",
            r"not valid YAML: line 3, column 1: .*found character '\\t' that cannot start any token "
            r"\(YAML indents with spaces, not tabs\)$",
        ),
        (
            b"recipe: !!python/object/apply:os.system ['true']\n",
            "not valid YAML: line 1, column 9: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'$",
        ),
        (
            b"recipe: sd\n---\nrecipe: custom\n",
            "not valid YAML: line 2, column 1: expected a single document in the stream but found another document$",
        ),
        (b"recipe: custom\nclip: [{path: x}\n", "not valid YAML: line 3, column 1: "),
        (b"a: \x07\n", "not valid YAML: the character #x0007 at character 4: special characters are not allowed$"),
        (
            b"recipe: sd\n? [a, b]\n: 1\n",
            r"line 2: a key must be a plain value \(a name or a number\), got the list \['a', 'b'\]$",
        ),
        (
            b"clip:\n  - ? {path: x}\n    : 1\n",
            r"line 2: a key must be a plain value \(a name or a number\), got the dict \{'path': 'x'\}$",
        ),
    ],
    ids=[
        "key_twice",
        "nested_key_twice",
        "not_utf8",
        "deep",
        "tab",
        "python_tag",
        "two_documents",
        "unclosed",
        "control_character",
        "list_key",
        "mapping_key",
    ],
)
def test_unreadable_yaml_names_the_file_and_the_place(tmp_path, text, message):
    """A key given twice (YAML's safe loader keeps the last silently), text that is not UTF-8,
    nesting Python cannot recurse through, text that is not YAML (a tab indent, a ``!!python``
    tag, two documents, an unclosed bracket, a control character) or a key that is a list or a
    mapping: a ValueError naming the file, and the line where there is one."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        ConditionerConfig.from_yaml(path)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"clip": [{"path": "x"}], "combine": "stack"}, "combine"),
        ({"clip": [{"path": "x"}], "projection_dim": "768"}, "projection_dim"),
        ({"clip": [{"path": "x"}], "recipe": "sd5"}, "recipe"),
        ({"recipe": "custom"}, "at least one encoder"),
        ({"recipe": "sd", "clip": [{"path": "x"}], "projection_dim": 8}, "projection_dim.*custom.* only"),
        ({"clip": {"path": "x"}}, "clip"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        ConditionerConfig.from_yaml(_write(tmp_path, data))


def test_config_builds_a_working_custom_conditioner(tmp_path, tiny_clip_text_path, tiny_t5_encoder_path):
    path = _write(
        tmp_path,
        {
            "recipe": "custom",
            "clip": [{"path": str(tiny_clip_text_path)}],
            "t5": {"path": str(tiny_t5_encoder_path)},
            "combine": "concat_sequence",
            "t5_max_sequence_length": 20,
            "projection_dim": 16,
            "return_mask": True,
        },
    )
    cond = TextConditioner.from_config(path)
    embeds = cond.encode(["a red circle", "a (blue:1.3) square"])
    assert embeds.tokens.shape == (2, 77 + 20, 16)
    assert embeds.mask.shape == (2, 97) and embeds.mask[:, :77].all()
    assert embeds.pooled.shape == (2, 32)


def test_config_mismatched_widths_without_projection(tmp_path, tiny_clip_text_path, tiny_t5_encoder_path):
    path = _write(
        tmp_path,
        {"clip": [{"path": str(tiny_clip_text_path)}], "t5": {"path": str(tiny_t5_encoder_path)}},
    )
    with pytest.raises(ValueError, match="projection_dim"):
        TextConditioner.from_config(path)


def test_builtin_recipe_from_a_pipeline_folder(tmp_path, sd_pipe):
    folder = tmp_path / "pipe"
    sd_pipe.save_pretrained(folder)
    path = _write(
        tmp_path,
        {
            "recipe": "sd",
            "clip": [{"path": str(folder), "subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer"}],
        },
    )
    cond = TextConditioner.from_config(path)
    with torch.no_grad():
        expected = sd_pipe.encode_prompt("a cat", "cpu", 1, False)[0]
    torch.testing.assert_close(cond.encode("a cat").tokens, expected, rtol=0, atol=1e-6)


def test_a_flux_yaml_takes_the_family_window_split_and_matches_encode_prompt_on_long_prompts(tmp_path, flux_pipe):
    """Unset `window_split` / `emphasis` take the recipe's (Flux: "truncate"), as `from_pipeline`
    does: the pooled vector of a prompt whose word straddles token 75 is diffusers'."""
    folder = tmp_path / "flux"
    flux_pipe.save_pretrained(folder)
    encoder = {"path": str(folder), "subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer"}
    t5 = {"path": str(folder), "subfolder": "text_encoder_2", "tokenizer_subfolder": "tokenizer_2"}
    cond = TextConditioner.from_config(_write(tmp_path, {"recipe": "flux", "clip": [encoder], "t5": t5}))
    assert cond.recipe.window_split == "truncate" and cond.recipe.emphasis == "multiply"
    prompt = "a " * 74 + "photorealistic lighthouse"  # "photorealistic" spans tokens 75 and 76
    with torch.no_grad():
        expected = flux_pipe.encode_prompt(prompt, prompt_2=None, device="cpu")[1]
        got = cond.encode(prompt).pooled
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_a_float16_yaml_loads_t5_as_transformers_loads_it_in_float16(tmp_path, tiny_t5_encoder_path):
    """`dtype: float16` loads through `from_pretrained(dtype=...)`, which keeps the modules T5
    keeps in float32 against overflow (`wo`), as a pipeline loaded with `torch_dtype` holds them;
    a cast after loading made them float16, other states and shards refused as stale."""
    from transformers import T5EncoderModel

    path = _write(tmp_path, {"t5": {"path": str(tiny_t5_encoder_path)}, "dtype": "float16"})
    loaded = TextConditioner.from_config(path).t5.model
    reference = T5EncoderModel.from_pretrained(tiny_t5_encoder_path, dtype=torch.float16)
    kept = {name for name, tensor in reference.state_dict().items() if tensor.dtype == torch.float32}
    assert any(".wo." in name for name in kept)  # transformers keeps them: the check can fail
    for (name, tensor), (_, expected) in zip(loaded.state_dict().items(), reference.state_dict().items()):
        assert tensor.dtype == expected.dtype and torch.equal(tensor, expected), name


def test_an_empty_cache_dir_in_a_yaml_is_refused_when_it_is_read(tmp_path, tiny_clip_text_path):
    """Before any encoder loads (as `TextConditioner(cache_dir="")` refuses it, not the current folder)."""
    from clipcond.conditioner_config import ConditionerConfig

    path = _write(tmp_path, {"clip": [{"path": str(tiny_clip_text_path)}], "cache_dir": ""})
    with pytest.raises(ValueError, match="`cache_dir` must be a folder path or null"):
        ConditionerConfig.from_yaml(path)


def test_set_overrides_apply_and_validate():
    from clipcond.config import apply_overrides
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    base = TrainDiffusionConfig(text_encoder="clip", unet={"block_out_channels": [8, 16]})
    changed = apply_overrides(
        base,
        [
            "text_encoder=runs/b/model",
            "data.split=heldout",
            "projection_dim=32",
            "sample_prompts=[a red circle]",
            "ema_decay=null",
        ],
    )
    assert changed.text_encoder == "runs/b/model" and changed.data.split == "heldout"
    assert changed.projection_dim == 32 and changed.sample_prompts == ["a red circle"] and changed.ema_decay is None
    assert base.text_encoder == "clip"
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(base, ["text_encodr=x"])
    with pytest.raises(ValueError, match=r"data\.split"):
        apply_overrides(base, ["data.split=everything"])
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides(base, ["lr.x=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(base, ["lr"])
    with pytest.raises(ValueError, match="steps"):
        apply_overrides(base, ["steps=many"])
    with pytest.raises(ValueError, match=r"^--set: key `lr`: cannot read '\[1,' as YAML: "):
        apply_overrides(base, ["lr=[1,"])


def test_set_adds_a_key_to_a_free_form_mapping_and_the_config_judges_it():
    # probe12_train #7: `--set unet.KEY=VALUE` refused any UNet argument the YAML lacked
    import inspect

    from diffusers import UNet2DConditionModel

    from clipcond.config import apply_overrides, config_from_dict
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    base = TrainDiffusionConfig(text_encoder="clip", unet={"block_out_channels": [8, 16]})
    assert "addition_embed_type_num_heads" in inspect.signature(UNet2DConditionModel.__init__).parameters
    changed = apply_overrides(base, ["unet.addition_embed_type_num_heads=4", "unet.block_out_channels=[16, 32]"])
    as_written = config_from_dict(
        TrainDiffusionConfig,
        {"text_encoder": "clip", "unet": {"block_out_channels": [16, 32], "addition_embed_type_num_heads": 4}},
    )
    assert changed == as_written and base.unet == {"block_out_channels": [8, 16]}
    # the new key is still checked against UNet2DConditionModel's arguments
    with pytest.raises(ValueError, match=r"unknown UNet2DConditionModel arguments \['no_such_argument'\]"):
        apply_overrides(base, ["unet.no_such_argument=1"])
    # sections (dataclasses) keep their fixed keys
    with pytest.raises(ValueError, match=r"key `data\.nosuch`: unknown key; expected one of"):
        apply_overrides(base, ["data.nosuch=1"])
    with pytest.raises(ValueError, match=r"key `lora\.nosuch`: unknown key; expected one of"):
        apply_overrides(base, ["lora.nosuch=1"])
    # an init_from run has no unet mapping to add to
    with pytest.raises(ValueError, match=r"key `unet`: is not a section"):
        apply_overrides(TrainDiffusionConfig(text_encoder="clip", init_from="p"), ["unet.norm_num_groups=4"])


def test_train_commands_take_set_overrides(tmp_path):
    import argparse

    from clipcond.training import train_diffusion

    parser = argparse.ArgumentParser()
    train_diffusion.add_arguments(parser)
    args = parser.parse_args(
        [
            "--config",
            "x.yaml",
            "--set",
            "lr=0.5",
            "--set",
            "data.max_objects=1",
            "--steps",
            "7",
            "--output-dir",
            str(tmp_path),
        ]
    )
    from clipcond.training.command import config_with_overrides
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    config = config_with_overrides(TrainDiffusionConfig(text_encoder="clip", unet={}), args)
    assert (config.lr, config.data.max_objects, config.steps, config.output_dir) == (0.5, 1, 7, str(tmp_path))


def test_object_count_weights_reach_the_training_stream():
    from clipcond.config import apply_overrides
    from clipcond.shapes import ShapesStream
    from clipcond.training.data import ImageCaptionBatches as ContrastiveBatches
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    base = TrainDiffusionConfig(text_encoder="clip", unet={"block_out_channels": [8, 16]})
    config = apply_overrides(base, ["data.max_objects=2", "data.object_count_weights=[1, 3]"])
    assert config.data.object_count_weights == [1, 3]
    batches = ContrastiveBatches(config.data, None, 32, 8, seed=4)
    _, captions = batches.next_with_captions()
    stream = ShapesStream(seed=4, image_size=32, min_objects=1, max_objects=2, count_weights=[1, 3])
    assert captions == [stream.sample(i).caption for i in range(8)]
    plain = ShapesStream(seed=4, image_size=32, min_objects=1, max_objects=2)
    assert captions != [plain.sample(i).caption for i in range(8)]
    with pytest.raises(ValueError, match=r"data\.object_count_weights must hold one weight per object count 1\.\.2"):
        apply_overrides(base, ["data.max_objects=2", "data.object_count_weights=[1, 2, 3]"])
    with pytest.raises(ValueError, match=r"data\.object_count_weights.*finite numbers >= 0"):
        apply_overrides(base, ["data.max_objects=2", "data.object_count_weights=[1, -3]"])
    with pytest.raises(ValueError, match=r"data\.object_count_weights applies to data.source 'shapes' only"):
        apply_overrides(base, ["data.source=manifest", "data.manifest=m.jsonl", "data.object_count_weights=[1]"])


def _alias_bomb(levels: int) -> str:
    """A YAML flow list of `levels` anchored lists, each holding the previous one 9 times: a
    few hundred bytes whose last item has 9**levels leaves ("billion laughs")."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]" for level in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("key", ["recipe", "pooled", "clip_final_norm", "projection_dim", "cache_dir"])
def test_an_alias_bomb_gives_a_short_error_in_bounded_memory(tmp_path, key):
    """Seven levels: a 24 MB repr if the error quoted the whole value (nine levels, as in the
    classic bomb, would be 1.2 GB)."""
    import tracemalloc

    path = tmp_path / "bomb.yaml"
    path.write_text(f"{key}: {_alias_bomb(7)}\n")
    assert path.stat().st_size < 400
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as error:
            ConditionerConfig.from_yaml(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(error.value)
    assert len(message) < 400, message[:1000]
    assert peak < 50 * 2**20
    assert "bomb.yaml" in message and f"`{key}`" in message and "lol" in message


def test_set_override_quotes_at_most_200_characters():
    from clipcond.config import apply_overrides
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    base = TrainDiffusionConfig(text_encoder="clip", unet={"block_out_channels": [8, 16]})
    with pytest.raises(ValueError, match="steps") as error:
        apply_overrides(base, [f"steps={_alias_bomb(7)}"])
    assert len(str(error.value)) < 400
    with pytest.raises(ValueError, match="KEY=VALUE") as error:
        apply_overrides(base, ["x" * 100_000])
    assert len(str(error.value)) < 400


def test_numeric_yaml_keys_are_named_not_crashed_on(tmp_path):
    path = tmp_path / "numbers.yaml"
    path.write_text("recipe: custom\n1: a\nzz: b\n")
    with pytest.raises(ValueError, match=r"numbers\.yaml.*key `1`"):
        ConditionerConfig.from_yaml(path)


def test_a_float_key_takes_an_exponent_pyyaml_reads_as_a_string(tmp_path):
    """`lr: 1e-3` is a string to PyYAML (YAML 1.1 floats need a dot and a signed exponent); a
    float key reads it as the number, in a file and in ``--set``, for every config; a string
    that is not a finite decimal number stays an error."""
    from clipcond.config import apply_overrides, config_from_dict
    from clipcond.training.clip.config import TrainClipConfig
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}
    path = tmp_path / "clip.yaml"
    path.write_text("model: m.yaml\nlr: 1e-3\neps: 1.0e-8\nbetas: [0.9, 98e-2]\n")
    config = TrainClipConfig.from_yaml(path)
    assert (config.lr, config.eps, config.betas) == (1e-3, 1e-8, [0.9, 0.98])
    assert apply_overrides(config, ["lr=2E-4", "weight_decay=1e-2"]).lr == 2e-4
    base = TrainDiffusionConfig(text_encoder="clip", unet={"block_out_channels": [8, 16]})
    assert apply_overrides(base, ["lr=5e-5"]).lr == 5e-5
    for text, message in [("fast", "expected a number, got 'fast'"), ("1e999", "expected a finite number")]:
        with pytest.raises(ValueError, match=f"key `lr`: {message}"):
            apply_overrides(config, [f"lr={text}"])
    for text in ("nan", "inf", "1_000", " 1e-3", "0x10"):
        with pytest.raises(ValueError, match="expected a number"):
            config_from_dict(TrainClipConfig, {"model": "m.yaml", "lr": text})
    with pytest.raises(ValueError, match="key `steps`: expected an integer"):
        apply_overrides(config, ["steps=1e3"])  # counts stay integers


def test_a_lora_alpha_is_a_number_in_both_training_commands():
    """peft scales the update by alpha / r with any positive number: train-clip took only
    integers (`alpha: 0.5` or `16.0` was 'expected an integer'), train-diffusion any number."""
    from clipcond.config import apply_overrides
    from clipcond.training.clip.config import TrainClipConfig
    from clipcond.training.diffusion.config import TrainDiffusionConfig

    clip = TrainClipConfig(mode="lora", init_from="p")
    diffusion = TrainDiffusionConfig(text_encoder="clip", unet={"block_out_channels": [8, 16]})
    for base in (clip, diffusion):
        for text, value in (("0.5", 0.5), ("16.0", 16.0), ("8e0", 8.0), ("16", 16)):
            assert apply_overrides(base, [f"lora.alpha={text}"]).lora.alpha == value
