"""`clipcond generate` (clipcond.pipelines.generate) in its parts, with no model: the argument
checks before anything loads, the step-end stop on non-finite latents, out-of-memory errors as
a failed run, the loader's error wording, `run` on a pipeline that stands in for the loaded one
(what it is called with, the grid, the settings it registers), and the atomic PNG write. The
end-to-end runs are in test_pipeline.py, test_generate_limits.py and test_generate_sources.py."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

from clipcond.emphasis_modes import EMPHASIS_MODES
from clipcond.errors import RunFailed, UsageError
from clipcond.pipelines import generate, generate_checks, named_sources, png_output
from clipcond.pipelines.generate_sources import SourceImages
from clipcond.pipelines.scheduler_guards import NonFiniteLatents
from clipcond.prompt_syntaxes import SYNTAXES
from clipcond.window_encoding import NonFiniteEncoding
from clipcond.window_splits import WINDOW_SPLITS


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    return parser.parse_args(["a red circle", *argv])


@pytest.fixture()
def model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    return folder


# -- check_output -----------------------------------------------------------------------------


def test_check_output_takes_a_png_of_any_case_and_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert generate.check_output("~/picture.PNG", force=False) == tmp_path / "picture.PNG"
    assert generate.check_output(tmp_path / "a.png", force=False) == tmp_path / "a.png"


@pytest.mark.parametrize("name", ["out.jpg", "out", "out.png.txt"])
def test_check_output_refuses_a_name_not_ending_in_png(tmp_path, name):
    with pytest.raises(UsageError) as caught:
        generate.check_output(tmp_path / name, force=False)
    assert str(caught.value) == f"-o/--output must end in .png, got {tmp_path / name}"


def test_check_output_refuses_an_existing_file_unless_forced(tmp_path):
    existing = tmp_path / "old.png"
    existing.write_bytes(b"kept")
    with pytest.raises(UsageError, match="-o/--output"):
        generate.check_output(existing, force=False)
    assert generate.check_output(existing, force=True) == existing
    assert existing.read_bytes() == b"kept"


def test_check_output_refuses_a_folder_named_like_a_png_even_when_forced(tmp_path):
    (tmp_path / "grid.png").mkdir()
    for force in (False, True):
        with pytest.raises(UsageError) as caught:
            generate.check_output(tmp_path / "grid.png", force=force)
        assert str(caught.value) == f"-o/--output {tmp_path / 'grid.png'} is a folder; name a .png file"


def test_the_defaults_of_a_bare_command_stay_put():
    """The same bare command draws the same image across releases: the seed, the steps, the
    guidance and the count are part of what it means."""
    settings = vars(_args())
    assert {key: settings[key] for key in ("output", "seed", "steps", "guidance", "n", "force", "model", "lora")} == {
        "output": "out.png",
        "seed": 0,
        "steps": 50,
        "guidance": 3.0,
        "n": 1,
        "force": False,
        "model": None,
        "lora": None,
    }


# -- _check_arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "numbers"), [(["--n", "0"], "0 and 50"), (["--steps", "0"], "1 and 0")])
def test_counts_below_one_are_refused_naming_both(tmp_path, model_folder, argv, numbers):
    args = _args("-o", str(tmp_path / "o.png"), "--model", str(model_folder), *argv)
    with pytest.raises(UsageError) as caught:
        generate._check_arguments(args)
    assert str(caught.value) == f"--n and --steps must be >= 1, got {numbers}"


def test_one_image_of_one_step_is_taken(tmp_path, model_folder):
    args = _args("-o", str(tmp_path / "o.png"), "--model", str(model_folder), "--n", "1", "--steps", "1")
    assert generate._check_arguments(args)[1] == model_folder


def test_an_existing_output_passes_with_force(tmp_path, model_folder):
    (tmp_path / "o.png").write_bytes(b"old")
    base = ("-o", str(tmp_path / "o.png"), "--model", str(model_folder))
    with pytest.raises(UsageError, match="-o/--output"):
        generate._check_arguments(_args(*base))
    assert generate._check_arguments(_args(*base, "--force"))[0] == tmp_path / "o.png"


@pytest.mark.parametrize("option", ["--model", "--lora"])
def test_a_model_or_lora_path_that_does_not_exist_is_named_with_its_option(tmp_path, model_folder, option):
    missing = str(tmp_path / "missing")
    args = _args("-o", str(tmp_path / "o.png"), "--model", str(model_folder), option, missing)
    with pytest.raises(UsageError) as caught:
        generate._check_arguments(args)
    assert str(caught.value) == f"{option} {missing}: no such file or folder (a hub id is `name` or `org/name`)"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_guidance_that_is_not_finite_is_refused(tmp_path, model_folder, value):
    args = _args("-o", str(tmp_path / "o.png"), "--model", str(model_folder), f"--guidance={value}")
    with pytest.raises(UsageError) as caught:
        generate._check_arguments(args)
    assert str(caught.value) == f"--guidance must be a finite number, got {float(value)}"


def test_a_lora_scale_needs_a_lora_and_a_finite_value(tmp_path, model_folder):
    base = ("-o", str(tmp_path / "o.png"), "--model", str(model_folder))
    with pytest.raises(UsageError) as caught:
        generate._check_arguments(_args(*base, "--lora-scale", "0.5"))
    assert str(caught.value) == "--lora-scale 0.5 scales the --lora weights: give --lora too"
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"")
    with pytest.raises(UsageError) as caught:
        generate._check_arguments(_args(*base, "--lora", str(lora), "--lora-scale", "nan"))
    assert str(caught.value) == "--lora-scale must be a finite number, got nan"
    assert generate._check_arguments(_args(*base, "--lora", str(lora), "--lora-scale", "0.5"))[2] == _loras(str(lora))


@pytest.mark.parametrize(
    ("seed", "n", "taken"),
    [
        (-(2**63), 1, True),
        (-(2**63) - 1, 1, False),
        (2**64 - 1, 1, True),
        (2**64, 1, False),
        (2**64 - 3, 3, True),
        (2**64 - 2, 3, False),
    ],
)
def test_the_seed_range_is_what_torch_generators_take_for_every_image(tmp_path, model_folder, seed, n, taken):
    args = _args("-o", str(tmp_path / "o.png"), "--model", str(model_folder), "--seed", str(seed), "--n", str(n))
    if taken:
        generate._check_arguments(args)
        for index in range(n):  # each image's generator takes its seed
            torch.Generator().manual_seed(seed + index)
        return
    with pytest.raises(UsageError) as caught:
        generate._check_arguments(args)
    assert str(caught.value) == f"--seed must be in [-2**63, 2**64 - --n] (each image i takes seed + i), got {seed}"


def test_check_arguments_returns_the_output_model_and_no_lora(tmp_path, model_folder):
    checked = generate._check_arguments(_args("-o", str(tmp_path / "o.png"), "--model", str(model_folder)))
    assert checked == (tmp_path / "o.png", model_folder, [], [])


def test_a_hub_id_passes_as_a_string(tmp_path):
    _, model, loras, embeddings = generate._check_arguments(
        _args("-o", str(tmp_path / "o.png"), "--model", "org/model", "--lora", "org/lora", "--embedding", "org/neg")
    )
    assert (model, loras) == ("org/model", [named_sources.NamedSource("lora", "org/lora", "org/lora")])
    assert embeddings == [named_sources.NamedSource(None, "org/neg", "org/neg")]


def test_loras_and_embeddings_keep_their_order_and_names_are_checked_per_option(tmp_path, model_folder):
    base = ("-o", str(tmp_path / "o.png"), "--model", str(model_folder))
    _, _, loras, embeddings = generate._check_arguments(
        _args(*base, "--lora", "org/a", "--embedding", "a=org/x", "--lora", "b=org/c", "--embedding", "org/y")
    )
    assert [lora.name for lora in loras] == ["a", "b"]
    assert [embedding.name for embedding in embeddings] == ["a", None]
    with pytest.raises(UsageError, match="would both be the token 'x'"):
        generate._check_arguments(_args(*base, "--embedding", "x=org/a", "--embedding", "x=org/b"))
    with pytest.raises(UsageError, match="would both be the adapter 'x'"):
        generate._check_arguments(_args(*base, "--lora", "x=org/a", "--lora", "org/x"))


def test_a_model_that_is_a_file_is_refused(tmp_path):
    weights = tmp_path / "unet.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UsageError) as caught:
        generate._check_arguments(_args("-o", str(tmp_path / "o.png"), "--model", str(weights)))
    assert str(caught.value) == (
        f"--model {weights} is a file; give the folder a pipeline was saved to (it holds model_index.json)"
    )


def test_without_model_the_bundled_one_is_taken_when_installed(tmp_path, model_folder, monkeypatch):
    monkeypatch.setattr(generate, "BUNDLED_MODEL", model_folder)
    assert generate._check_arguments(_args("-o", str(tmp_path / "o.png")))[1] == model_folder
    monkeypatch.setattr(generate, "BUNDLED_MODEL", tmp_path / "absent")
    with pytest.raises(UsageError) as caught:
        generate._check_arguments(_args("-o", str(tmp_path / "o.png")))
    assert str(caught.value) == (
        "this install has no bundled shapes model; pass --model with a saved CLIPConditionedPipeline "
        "or a diffusers Stable Diffusion pipeline"
    )
    (tmp_path / "absent").mkdir()  # a folder without model_index.json is not an installed model
    with pytest.raises(UsageError, match="no bundled shapes model"):
        generate._check_arguments(_args("-o", str(tmp_path / "o.png")))


def test_the_output_is_checked_before_the_model(tmp_path):
    with pytest.raises(UsageError, match="must end in .png"):
        generate._check_arguments(_args("-o", str(tmp_path / "o.jpg"), "--model", str(tmp_path / "missing")))


# -- _stop_on_non_finite_latents --------------------------------------------------------------


class _Running:
    def __init__(self, num_timesteps):
        self.num_timesteps = num_timesteps


def test_finite_latents_go_on_and_change_nothing():
    callback = generate._stop_on_non_finite_latents(4)
    assert callback(_Running(4), 0, 999, {"latents": torch.zeros(1, 4, 8, 8)}) == {}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_latents_stop_the_run_naming_the_step_of_the_pipelines_count(bad):
    latents = torch.zeros(1, 4, 8, 8)
    latents[0, 1, 2, 3] = bad
    callback = generate._stop_on_non_finite_latents(4)
    with pytest.raises(RunFailed) as caught:
        callback(_Running(2), 1, 500, {"latents": latents})
    assert str(caught.value) == (
        "the latents became NaN or infinite at step 2 of 2, so the image would be black; nothing was written. "
        "Try another --steps or --seed, or a lower --guidance"
    )


@pytest.mark.parametrize("pipe", [object(), _Running(None), _Running(0)], ids=["no count", "None", "0"])
def test_without_the_pipelines_count_the_steps_asked_for_are_named(pipe):
    callback = generate._stop_on_non_finite_latents(7)
    with pytest.raises(RunFailed, match="at step 3 of 7, "):
        callback(pipe, 2, 1, {"latents": torch.full((1, 4, 2, 2), float("nan"))})


# -- _out_of_memory_is_a_failed_run -----------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory"),
        *(RuntimeError(f"DefaultCPUAllocator: {sign} (size 12)") for sign in generate._OUT_OF_MEMORY_SIGNS),
    ],
    ids=["MemoryError", "OutOfMemoryError", *generate._OUT_OF_MEMORY_SIGNS],
)
def test_memory_the_sampling_cannot_get_is_a_failed_run_naming_what_to_lower(error):
    args = _args("--n", "3", "--height", "64")
    with pytest.raises(RunFailed) as caught, generate._out_of_memory_is_a_failed_run(args, None):
        raise error
    assert str(caught.value) == (
        "out of memory sampling 3 image(s) of 64 x default pixels; nothing was written. Lower --n, --height or --width"
    )
    assert caught.value.__cause__ is error


def test_out_of_memory_with_a_source_image_names_its_size():
    args = _args("--n", "2")
    sources = SourceImages(image=Image.new("RGB", (48, 32)), mask=None, strength=None)
    with pytest.raises(RunFailed) as caught, generate._out_of_memory_is_a_failed_run(args, sources):
        raise MemoryError()
    assert str(caught.value) == (
        "out of memory sampling 2 image(s) of 32 x 48 pixels (--image's height x width); nothing was written. "
        "Lower --n or the --image size"
    )


def test_other_runtime_errors_are_not_memory_errors():
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError) as caught, generate._out_of_memory_is_a_failed_run(_args(), None):
        raise error
    assert caught.value is error
    with generate._out_of_memory_is_a_failed_run(_args(), None):
        pass  # nothing raised, nothing changed


# -- _load ------------------------------------------------------------------------------------


class _Loaded:
    """What `_load` asks of a loaded pipeline; `lora_error` raised by load_lora_weights if given.
    Each LoRA loaded adds its adapter to the UNet's, unless `adapters` fixes what they are."""

    def __init__(self, adapters=None, lora_error=None, embedding_error=None):
        self.adapters = adapters
        self.lora_error = lora_error
        self.embedding_error = embedding_error
        self.loras = []
        self.embeddings = []
        self.active = None

    def load_lora_weights(self, lora, adapter_name=None):
        if self.lora_error is not None:
            raise self.lora_error
        self.loras.append((lora, adapter_name))

    def get_list_adapters(self):
        return {"unet": [name for _, name in self.loras]} if self.adapters is None else self.adapters

    def set_adapters(self, names):
        self.active = names

    def load_textual_inversion(self, source, token=None):
        if self.embedding_error is not None:
            raise self.embedding_error
        self.embeddings.append((source, token))


def _loras(*values):
    return [named_sources.lora_argument(value) for value in values]


def _loading(monkeypatch, result):
    calls = []

    def load_pipeline(model, torch_dtype=None):
        calls.append((model, torch_dtype))
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(generate, "load_pipeline", load_pipeline)
    return calls


def test_load_asks_for_float32_and_loads_the_lora(monkeypatch, tmp_path):
    pipe = _Loaded()
    calls = _loading(monkeypatch, pipe)
    assert generate._load(tmp_path, []) is pipe
    assert calls == [(tmp_path, torch.float32)] and pipe.loras == []
    assert generate._load("org/model", _loras("org/lora")) is pipe
    assert pipe.loras == [("org/lora", "lora")] and pipe.active is None  # one adapter: diffusers activates it


def test_load_loads_each_lora_as_its_adapter_and_activates_them_all(monkeypatch, tmp_path):
    pipe = _Loaded()
    _loading(monkeypatch, pipe)
    (tmp_path / "detail.safetensors").write_bytes(b"")
    assert generate._load("org/model", _loras("org/style", str(tmp_path / "detail.safetensors"), "x=org/y")) is pipe
    assert pipe.loras == [("org/style", "style"), (tmp_path / "detail.safetensors", "detail"), ("org/y", "x")]
    assert pipe.active == ["style", "detail", "x"]


def test_load_loads_each_embedding_as_its_token(monkeypatch, tmp_path):
    pipe = _Loaded()
    _loading(monkeypatch, pipe)
    (tmp_path / "EasyNegative.pt").write_bytes(b"")
    embeddings = [named_sources.embedding_argument(value) for value in ("org/toy", str(tmp_path / "EasyNegative.pt"))]
    assert generate._load("org/model", _loras("org/style"), embeddings) is pipe
    assert pipe.embeddings == [("org/toy", None), (tmp_path / "EasyNegative.pt", "EasyNegative")]
    assert pipe.loras == [("org/style", "style")]


@pytest.mark.parametrize("kind", [OSError, ValueError, TypeError, KeyError, SafetensorError])
def test_an_embedding_that_does_not_load_is_a_usage_error_naming_it(monkeypatch, tmp_path, kind):
    _loading(monkeypatch, _Loaded(embedding_error=kind("Token cat already in tokenizer vocabulary")))
    with pytest.raises(UsageError) as caught:
        generate._load(tmp_path, [], [named_sources.embedding_argument("cat=org/toy")])
    assert str(caught.value).startswith("--embedding cat=org/toy: cannot load the embedding: ")
    assert "Token cat already in tokenizer vocabulary" in str(caught.value)


@pytest.mark.parametrize("kind", [OSError, ValueError])
def test_a_model_that_does_not_load_is_a_usage_error_naming_it(monkeypatch, tmp_path, kind):
    _loading(monkeypatch, kind("broken\nindex"))
    with pytest.raises(UsageError) as caught:
        generate._load(tmp_path, [])
    assert str(caught.value) == f"--model {tmp_path}: cannot load: broken index"
    with pytest.raises(UsageError) as caught:
        generate._load("org/model", [])
    assert str(caught.value) == (
        "--model org/model: no such folder, and the Hugging Face Hub could not provide it: broken index"
    )
    _loading(monkeypatch, SafetensorError("header too large"))
    with pytest.raises(UsageError, match=r"cannot load: header too large$"):
        generate._load(tmp_path, [])


def test_other_load_errors_stay_bugs(monkeypatch, tmp_path):
    _loading(monkeypatch, TypeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        generate._load(tmp_path, [])


@pytest.mark.parametrize("kind", [OSError, ValueError, KeyError, SafetensorError])
def test_a_lora_that_does_not_load_is_a_usage_error_naming_it(monkeypatch, tmp_path, kind):
    _loading(monkeypatch, _Loaded(lora_error=kind("no such tensor")))
    with pytest.raises(UsageError) as caught:
        generate._load(tmp_path, _loras("org/lora"))
    assert str(caught.value).startswith("--lora org/lora: cannot load LoRA weights: ")
    assert "no such tensor" in str(caught.value)


def test_a_lora_of_another_architecture_is_named_so(monkeypatch, tmp_path):
    error = RuntimeError("Error(s) in loading state_dict for UNet:\n\tsize mismatch for a.weight: [4, 8] vs [4, 16].")
    _loading(monkeypatch, _Loaded(lora_error=error))
    with pytest.raises(UsageError, match="--lora org/lora: cannot load LoRA weights: their tensors do not fit"):
        generate._load(tmp_path, _loras("org/lora"))


@pytest.mark.parametrize("adapters", [{}, {"unet": [], "text_encoder": []}])
def test_a_lora_that_adds_no_adapter_is_refused(monkeypatch, tmp_path, adapters):
    _loading(monkeypatch, _Loaded(adapters=adapters))
    lora = tmp_path / "empty.safetensors"
    from safetensors.torch import save_file

    save_file({}, str(lora))
    with pytest.raises(UsageError) as caught:
        generate._load(tmp_path, _loras(str(lora)))
    assert str(caught.value) == (
        f"--lora {lora}: none of its tensors names a layer of this model's UNet or text encoders, so it would change "
        f"nothing{generate_checks.what_the_lora_holds(lora)}; use a LoRA trained for this --model"
    )
    assert "(it holds no tensors)" in str(caught.value)


# -- run, on a stand-in pipeline --------------------------------------------------------------


class _Config(dict):
    """A pipeline's config: read by key and by attribute, as diffusers' `FrozenDict`."""

    def __getattr__(self, name):
        return self[name]


_PROMPT_SETTINGS = {"emphasis": "multiply", "window_split": "word", "syntax": "a1111"}  # a new pipeline's


class _Pipeline:
    """Records its calls and settings; draws `n` images of one grey level each (10, 20, ...)."""

    vae_scale_factor = 8

    def __init__(self, raises=None, size=(16, 12)):
        self.raises = raises
        self.size = size
        self.calls = []
        self.config = _Config(_PROMPT_SETTINGS)

    def register_to_config(self, **values):
        self.config.update(values)

    scheduler = argparse.Namespace()  # its class names the sampler in the PNG's parameters

    def default_strength(self):
        return 0.75

    def __call__(self, prompt, **kwargs):
        self.calls.append((prompt, kwargs))
        if self.raises is not None:
            raise self.raises
        count = kwargs["num_images_per_prompt"]
        return argparse.Namespace(images=[Image.new("RGB", self.size, (10 * (i + 1),) * 3) for i in range(count)])


@pytest.fixture()
def stand_in(monkeypatch):
    """`run` with its model stood in for: returns a dict whose "pipe" `_load` gives, and which
    records what was loaded and checked."""
    seen = {"pipe": _Pipeline(), "loads": [], "checks": []}

    def load(model, loras, embeddings):
        seen["loads"].append((model, loras, embeddings))
        return seen["pipe"]

    monkeypatch.setattr(generate, "_load", load)
    monkeypatch.setattr(generate_checks, "check_against_model", lambda args, pipe: seen["checks"].append("model"))
    monkeypatch.setattr(generate, "check_prompt_against", lambda pipe, *texts: seen["checks"].append("prompt"))
    monkeypatch.setattr(
        generate_checks, "check_memory", lambda args, pipe, sources, hires_size: seen["checks"].append("memory")
    )
    return seen


def test_run_calls_the_pipeline_with_the_arguments_and_writes_the_image(tmp_path, model_folder, stand_in, capsys):
    output = tmp_path / "o.png"
    args = _args(
        "-o", str(output), "--model", str(model_folder), "--negative", "blurry", "--seed", "5",
        "--steps", "3", "--guidance", "2.5", "--height", "24", "--width", "16", "--clip-skip", "1",
    )  # fmt: skip
    assert generate.run(args) == 0
    assert stand_in["loads"] == [(model_folder, [], [])] and stand_in["checks"] == ["model", "prompt", "memory"]
    [(prompt, kwargs)] = stand_in["pipe"].calls
    generators = kwargs.pop("generator")
    callback = kwargs.pop("callback_on_step_end")
    assert prompt == "a red circle"
    assert kwargs == dict(
        negative_prompt="blurry", num_inference_steps=3, guidance_scale=2.5, height=24, width=16,
        num_images_per_prompt=1, clip_skip=1, cross_attention_kwargs=None,
    )  # fmt: skip
    assert len(generators) == 1
    assert torch.equal(generators[0].get_state(), torch.Generator().manual_seed(5).get_state())
    with pytest.raises(RunFailed, match="at step 1 of 3,"):
        callback(object(), 0, 1, {"latents": torch.full((1,), float("nan"))})
    assert stand_in["pipe"].config == _PROMPT_SETTINGS
    assert capsys.readouterr().out == f"wrote {output}\n"
    with Image.open(output) as written:
        assert written.size == (16, 12) and written.getpixel((0, 0)) == (10, 10, 10)


def test_run_gives_each_image_its_own_seed_and_the_lora_scale(tmp_path, model_folder, stand_in):
    args = _args(
        "-o", str(tmp_path / "o.png"), "--model", str(model_folder), "--seed", "7", "--n", "2",
        "--lora", "org/lora", "--lora-scale", "0.25",
    )  # fmt: skip
    generate.run(args)
    assert stand_in["loads"] == [(model_folder, _loras("org/lora"), [])]
    [(_, kwargs)] = stand_in["pipe"].calls
    assert kwargs["num_images_per_prompt"] == 2 and kwargs["cross_attention_kwargs"] == {"scale": 0.25}
    states = [generator.get_state() for generator in kwargs["generator"]]
    expected = [torch.Generator().manual_seed(seed).get_state() for seed in (7, 8)]
    assert len(states) == 2 and all(torch.equal(a, b) for a, b in zip(states, expected))


@pytest.mark.parametrize(("n", "rows", "columns"), [(2, 1, 2), (3, 2, 2), (4, 2, 2), (5, 2, 3), (7, 3, 3)])
def test_several_images_are_one_grid_its_last_cells_black(tmp_path, model_folder, stand_in, n, rows, columns):
    output = tmp_path / "grid.png"
    generate.run(_args("-o", str(output), "--model", str(model_folder), "--n", str(n)))
    width, height = stand_in["pipe"].size
    with Image.open(output) as grid:
        assert grid.size == (columns * width, rows * height)
        cells = [
            grid.getpixel((column * width + 1, row * height + 1)) for row in range(rows) for column in range(columns)
        ]
    levels = [cell[0] for cell in cells]
    assert levels == [10 * (i + 1) for i in range(n)] + [0] * (rows * columns - n)
    assert rows == math.ceil(n / columns)


def test_run_registers_the_emphasis_window_split_and_syntax_asked_for(tmp_path, model_folder, stand_in):
    args = _args(
        "-o", str(tmp_path / "o.png"), "--model", str(model_folder), "--emphasis", "comfy", "--window-split", "a1111"
    )  # fmt: skip
    generate.run(args)
    assert stand_in["pipe"].config == {"emphasis": "comfy", "window_split": "a1111", "syntax": "a1111"}
    generate.run(_args("-o", str(tmp_path / "p.png"), "--model", str(model_folder), "--emphasis", "multiply"))
    assert stand_in["pipe"].config == {"emphasis": "multiply", "window_split": "a1111", "syntax": "a1111"}  # the same
    generate.run(_args("-o", str(tmp_path / "q.png"), "--model", str(model_folder), "--syntax", "compel"))
    assert stand_in["pipe"].config == {"emphasis": "multiply", "window_split": "a1111", "syntax": "compel"}


def test_run_with_a_source_image_drives_the_task_pipeline(tmp_path, model_folder, stand_in, monkeypatch):
    sources = SourceImages(image=Image.new("RGB", (16, 16)), mask=None, strength=0.5)
    task = _Pipeline()
    seen = []
    monkeypatch.setattr(generate, "read_sources", lambda args: sources)
    monkeypatch.setattr(generate, "source_pipeline", lambda pipe, given: seen.append(("task", pipe, given)) or task)
    monkeypatch.setattr(
        generate, "check_sources_against", lambda pipe, given, steps: seen.append(("check", pipe, given, steps))
    )
    monkeypatch.setattr(
        generate, "source_call_arguments", lambda given, factor: {"image": given.image, "factor": factor}
    )
    generate.run(_args("-o", str(tmp_path / "o.png"), "--model", str(model_folder), "--steps", "4"))
    assert seen == [("task", stand_in["pipe"], sources), ("check", task, sources, 4)]
    assert stand_in["pipe"].calls == []
    [(_, kwargs)] = task.calls
    assert kwargs["image"] is sources.image and kwargs["factor"] == 8
    assert "height" not in kwargs and "width" not in kwargs


@pytest.mark.parametrize("error", [NonFiniteEncoding("the text encoder's states hold NaN"), NonFiniteLatents("NaN")])
def test_non_finite_states_fail_the_run_and_write_nothing(tmp_path, model_folder, stand_in, error):
    stand_in["pipe"] = _Pipeline(raises=error)
    output = tmp_path / "o.png"
    with pytest.raises(RunFailed) as caught:
        generate.run(_args("-o", str(output), "--model", str(model_folder)))
    assert str(caught.value) == f"nothing was written: {error}"
    assert not output.exists()


def test_out_of_memory_in_run_is_a_failed_run(tmp_path, model_folder, stand_in):
    stand_in["pipe"] = _Pipeline(raises=RuntimeError("can't allocate memory: you tried to allocate 9 GB"))
    with pytest.raises(RunFailed, match=r"^out of memory sampling 1 image\(s\) of default x default pixels"):
        generate.run(_args("-o", str(tmp_path / "o.png"), "--model", str(model_folder)))


def test_run_checks_everything_before_loading(tmp_path, model_folder, stand_in):
    (model_folder / "vocabulary.txt").write_bytes(b"\xff\xfe circle")
    with pytest.raises(UsageError, match=rf"^--model {model_folder}: "):
        generate.run(_args("-o", str(tmp_path / "o.png"), "--model", str(model_folder)))
    with pytest.raises(UsageError, match="need --image"):
        generate.run(_args("-o", str(tmp_path / "o.png"), "--model", str(model_folder), "--strength", "0.5"))
    assert stand_in["loads"] == []


# -- write_png --------------------------------------------------------------------------------


def test_write_png_makes_the_folders_and_writes_a_png(tmp_path):
    output = tmp_path / "a" / "b" / "o.png"
    png_output.write_png(Image.new("RGB", (3, 2), (1, 2, 3)), output, force=False)
    with Image.open(output) as written:
        assert written.format == "PNG" and written.size == (3, 2) and written.getpixel((2, 1)) == (1, 2, 3)
    assert [path.name for path in output.parent.iterdir()] == ["o.png"]


def test_write_png_keeps_a_file_that_appeared_unless_forced(tmp_path):
    output = tmp_path / "o.png"
    output.write_bytes(b"another run's")
    with pytest.raises(RunFailed) as caught:
        png_output.write_png(Image.new("RGB", (2, 2)), output, force=False)
    assert str(caught.value) == (
        f"-o {output} was written by something else while the images were drawn; it is kept and nothing was written: "
        "pass --force to replace it, or choose another -o"
    )
    assert output.read_bytes() == b"another run's"
    png_output.write_png(Image.new("RGB", (2, 2)), output, force=True)
    assert output.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("force", [False, True])
def test_write_png_where_a_file_stands_for_its_folder_says_so(tmp_path, force):
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "o.png"
    with pytest.raises(RunFailed) as caught:
        png_output.write_png(Image.new("RGB", (2, 2)), output, force=force)
    assert str(caught.value) == f"cannot write -o {output}: File exists; nothing was written"


@pytest.mark.parametrize(
    ("error", "reason"), [(OSError(28, "No space left on device"), "No space left on device"), (OSError("odd"), "odd")]
)
def test_write_png_that_cannot_write_says_why(tmp_path, monkeypatch, error, reason):
    def failing_write(path, data, replace):
        raise error

    monkeypatch.setattr(png_output, "write_atomically", failing_write)
    output = tmp_path / "o.png"
    with pytest.raises(RunFailed) as caught:
        png_output.write_png(Image.new("RGB", (2, 2)), output, force=False)
    assert str(caught.value) == f"cannot write -o {output}: {reason}; nothing was written"
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    ("option", "names"), [("--window-split", WINDOW_SPLITS), ("--emphasis", EMPHASIS_MODES), ("--syntax", SYNTAXES)]
)
def test_a_mode_the_pipeline_does_not_have_is_an_argparse_error_listing_the_choices(option, names, capsys):
    assert _args(option, names[-1]).__dict__[option[2:].replace("-", "_")] == names[-1]
    with pytest.raises(SystemExit) as exit_:
        _args(option, "nonsense")
    assert exit_.value.code == 2
    choices = ", ".join(repr(name) for name in names)
    assert f"argument {option}: invalid choice: 'nonsense' (choose from {choices})" in capsys.readouterr().err
