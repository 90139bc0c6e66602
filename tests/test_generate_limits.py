"""``clipcond generate`` and the pipeline call on values no run can take: a `--steps` /
`num_inference_steps` the scheduler refuses (as diffusers' own pipeline refuses it, but before
any encoder runs), a `--lora` that adds no adapter, sizes and counts no memory holds, and a PNG
that cannot be written. Each is one ``error:`` line with nothing written."""

from __future__ import annotations

import pytest
from test_cli_errors import one_error


@pytest.fixture(scope="module")
def sd_folder(sd_pipe, tmp_path_factory):
    """The tiny SD (DDIM, 1000 training timesteps) saved as a diffusers folder."""
    folder = tmp_path_factory.mktemp("generate-limits") / "sd"
    sd_pipe.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "DDPMScheduler", "LCMScheduler"])
def test_steps_above_the_training_timesteps_fail_before_the_text_encoder_runs(sd_pipe, scheduler_name) -> None:
    import diffusers
    from diffusers import StableDiffusionPipeline

    from clipcond.pipelines import CLIPConditionedPipeline

    scheduler = getattr(diffusers, scheduler_name).from_config(sd_pipe.scheduler.config)
    limit = scheduler.config.num_train_timesteps
    # the peer refuses the same number (after encoding the prompt)
    peer = StableDiffusionPipeline(**{**sd_pipe.components, "scheduler": scheduler})
    with pytest.raises(ValueError, match="num_inference_steps"):
        peer("a red circle", num_inference_steps=limit + 1, output_type="latent")
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe, scheduler=scheduler)
    forwards = []
    hook = pipe.text_encoder.register_forward_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(ValueError, match=rf"`num_inference_steps` {limit + 1} .*num_train_timesteps, {limit}"):
            pipe("a red circle", num_inference_steps=limit + 1, output_type="latent")
    finally:
        hook.remove()
    assert forwards == []


def test_generate_refuses_steps_the_scheduler_cannot_set(sd_folder, tmp_path, capsys) -> None:
    output = tmp_path / "a.png"
    argv = ["generate", "a red circle", "-o", str(output), "--model", str(sd_folder), "--steps", "1001"]
    line = one_error(capsys, argv, 2)
    assert line.startswith("error: --steps 1001: `num_inference_steps` 1001") and "1000" in line
    assert not output.exists()


@pytest.mark.parametrize("kind", ["flux", "empty"])
def test_generate_refuses_a_lora_that_adds_no_adapter(sd_folder, tmp_path, capsys, kind) -> None:
    """A LoRA with Flux/SD3 tensor names, or none: diffusers' SD loads it without error and
    lists no adapter (so would draw the base image); generate refuses it in one line."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    tensors = {
        "flux": {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 32),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(32, 4),
        },
        "empty": {},
    }[kind]
    lora = tmp_path / f"{kind}.safetensors"
    save_file(tensors, lora)
    peer = StableDiffusionPipeline.from_pretrained(sd_folder)
    peer.load_lora_weights(str(lora))
    assert not any(peer.get_list_adapters().values())
    output = tmp_path / "a.png"
    argv = ["generate", "a", "-o", str(output), "--model", str(sd_folder), "--lora", str(lora), "--steps", "1"]
    line = one_error(capsys, argv, 2)
    assert line.startswith(f"error: --lora {lora}: none of its tensors names a layer of this model")
    assert ("'transformer.'" in line and "Flux" in line) if kind == "flux" else "it holds no tensors" in line
    assert not output.exists()


def test_a_failed_png_write_is_one_error_line_and_leaves_no_file(tmp_path, capsys, monkeypatch) -> None:
    """The disk fills after 100 bytes of the PNG: one ``error:`` line (exit 1), the existing
    ``-o`` file (``--force``) unchanged and no temporary file left in the folder."""
    import errno
    import io

    import clipcond.output_paths

    class FullDisk(io.BytesIO):
        def write(self, data) -> int:
            super().write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):
        if isinstance(file, int) and "w" in mode:
            real_open(file, mode).close()  # the descriptor write_atomically opened
            return FullDisk()
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(clipcond.output_paths, "open", full_disk_open, raising=False)
    output = tmp_path / "img.png"
    output.write_bytes(b"old")
    argv = ["generate", "a red circle", "-o", str(output), "--steps", "1", "--force"]
    line = one_error(capsys, argv, 1)
    assert line == f"error: cannot write -o {output}: No space left on device; nothing was written"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["img.png"] and output.read_bytes() == b"old"


def test_an_output_written_by_another_run_while_drawing_is_kept_without_force(tmp_path, capsys, monkeypatch) -> None:
    """`-o` is checked before the model loads and written after the images are drawn: a file
    another run wrote there in between is kept (one ``error:`` line, exit 1), not replaced
    without ``--force``."""
    from PIL import Image

    output = tmp_path / "img.png"
    real_save = Image.Image.save

    def save_after_another_run(image, target, *args, **kwargs):
        output.write_bytes(b"another run's")  # the other run finishes first
        return real_save(image, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_after_another_run)
    line = one_error(capsys, ["generate", "a red circle", "-o", str(output), "--steps", "1"], 1)
    assert line.startswith(f"error: -o {output} was written by something else while the images were drawn; it is kept")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["img.png"] and output.read_bytes() == b"another run's"


def test_an_exclusive_atomic_write_keeps_what_is_there_even_without_hard_links(tmp_path, monkeypatch) -> None:
    import errno
    import os

    from clipcond import output_paths

    path = tmp_path / "out.png"
    output_paths.write_atomically(path, b"first", replace=False)
    with pytest.raises(FileExistsError):
        output_paths.write_atomically(path, b"second", replace=False)
    assert path.read_bytes() == b"first" and sorted(os.listdir(tmp_path)) == ["out.png"]

    def no_hard_links(source, target) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(output_paths.os, "link", no_hard_links)
    with pytest.raises(FileExistsError):
        output_paths.write_atomically(path, b"second", replace=False)
    output_paths.write_atomically(tmp_path / "new.png", b"new", replace=False)
    assert path.read_bytes() == b"first" and (tmp_path / "new.png").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["new.png", "out.png"]


@pytest.mark.parametrize(
    "numbers",
    [["--height", "1000000000", "--width", "1000000000"], ["--n", "1000000000000"]],
    ids=["size", "n"],
)
def test_sizes_and_counts_no_memory_holds_are_refused_before_any_generator(tmp_path, capsys, monkeypatch, numbers):
    """On the bundled model (32 x 32 pixels by default): a 1e9 x 1e9 image (torch's size
    arithmetic overflows) or 1e12 images (12 TB of pixels, the per-image generator list alone
    more than any machine holds) is one ``error:`` line (exit 2), with no generator made."""
    import torch

    made = []

    class CountedGenerator(torch.Generator):
        def __init__(self, *args, **kwargs) -> None:
            made.append(1)
            assert len(made) <= 1000, "the per-image generator list was built before the size check"
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch, "Generator", CountedGenerator)
    output = tmp_path / "a.png"
    line = one_error(capsys, ["generate", "a red circle", "-o", str(output), "--steps", "1", *numbers], 2)
    assert line.startswith(f"error: --n {numbers[1] if numbers[0] == '--n' else 1} image(s) of ")
    assert "GiB for their decoded pixels alone" in line and "lower --n, --height or --width" in line
    assert made == [] and not output.exists()


def test_eval_clip_keeps_an_output_another_run_wrote_during_the_evaluation(tmp_path, capsys, monkeypatch) -> None:
    """As generate's -o: `--output` is checked first and written last; without --force a file
    written there in between is kept (one ``error:`` line, exit 1; the metrics are printed)."""
    from test_cli_errors import TINY_MODEL

    from clipcond.training.clip import eval_command
    from clipcond.training.clip.random_init import init_clip

    model = init_clip(TINY_MODEL, tmp_path / "model")
    output = tmp_path / "metrics.json"
    real_dumps = eval_command.json.dumps

    def dumps_after_another_run(*args, **kwargs):
        output.write_text("another run's")
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr(eval_command.json, "dumps", dumps_after_another_run)
    argv = ["eval-clip", "--model", str(model), "--images-per-class", "1", "--pairs", "8", "--output", str(output)]
    line = one_error(capsys, argv, 1)
    assert line.startswith(f"error: --output {output} was written by something else during the evaluation; it is kept")
    assert output.read_text() == "another run's"


def test_force_replaces_an_output_that_exists(tmp_path, capsys) -> None:
    from PIL import Image

    from clipcond.cli import main

    output = tmp_path / "img.png"
    output.write_bytes(b"old")
    assert main(["generate", "a red circle", "-o", str(output), "--steps", "1", "--force"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {output}"
    assert Image.open(output).format == "PNG" and sorted(path.name for path in tmp_path.iterdir()) == ["img.png"]


def test_a_grid_of_three_leaves_its_fourth_cell_black(tmp_path) -> None:
    """`--n 3` is drawn as a 2 x 2 grid: the cell no image fills is black, the others are drawn."""
    import numpy as np
    from PIL import Image

    from clipcond.cli import main

    output = tmp_path / "grid.png"
    assert main(["generate", "a red circle", "-o", str(output), "--steps", "1", "--n", "3"]) == 0
    grid = np.asarray(Image.open(output))
    half_height, half_width = grid.shape[0] // 2, grid.shape[1] // 2
    cells = [grid[:half_height, :half_width], grid[:half_height, half_width:], grid[half_height:, :half_width]]
    assert not grid[half_height:, half_width:].any() and all(cell.any() for cell in cells)


def test_an_emphasis_mode_it_does_not_know_is_refused_naming_the_modes(tmp_path, capsys) -> None:
    from clipcond.cli import main

    output = tmp_path / "img.png"
    with pytest.raises(SystemExit) as exit_status:
        main(["generate", "a", "-o", str(output), "--emphasis", "bogus"])
    assert exit_status.value.code == 2 and not output.exists()
    assert "argument --emphasis: invalid choice: 'bogus' (choose from 'multiply', 'a1111', 'comfy', 'compel')" in (
        capsys.readouterr().err
    )


def test_a_diffusers_folder_stored_in_float16_loads_in_the_dtype_asked_for(tmp_path) -> None:
    import torch
    from tiny_pipelines import build_sd

    from clipcond.pipelines.saved_pipelines import load_pipeline

    folder = tmp_path / "sd-fp16"
    build_sd().to(torch.float16).save_pretrained(folder)
    loaded = load_pipeline(folder, torch_dtype=torch.float32)
    assert {loaded.unet.dtype, loaded.vae.dtype, loaded.text_encoder.dtype} == {torch.float32}
