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
