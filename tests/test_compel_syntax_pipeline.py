"""`CLIPConditionedPipeline(syntax="compel")` and `clipcond generate --syntax compel`: prompts read
in compel's syntax, drawn as StableDiffusionPipeline draws the conditioner's embeddings."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from clipcond import CLIPConditionedPipeline, TextConditioner

PROMPTS = [
    "a red circle+ and a (blue square)1.3",
    "a [cat:dog:0.5] AND a (dog)1.2",
    '("a red circle", "a (blue square)++").blend(0.6, 0.4)',
    '("a red circle", "a (blue square)++").and(1, 0.4)',
]
NEGATIVE = "(blurry)-- noise"
STEPS = 3


def _images(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(5)
    return pipe(num_inference_steps=STEPS, generator=generator, output_type="np", **kwargs).images


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_pipeline_draws_what_stable_diffusion_draws_from_the_conditioners_embeddings(sd_pipe, prompt) -> None:
    ours = CLIPConditionedPipeline.from_pipe(sd_pipe, syntax="compel", emphasis="compel")
    assert ours.config.syntax == "compel"
    conditioner = TextConditioner.from_pipeline(sd_pipe, syntax="compel", emphasis="compel", cache_size=0)
    kwargs = conditioner.pipeline_kwargs(prompt, NEGATIVE, num_inference_steps=STEPS)
    sd = StableDiffusionPipeline(**sd_pipe.components)
    expected = _images(sd, **kwargs)
    np.testing.assert_array_equal(_images(ours, prompt=prompt, negative_prompt=NEGATIVE), expected)
    # A1111's syntax reads other weights (and AND as composable parts): the comparison bites
    a1111 = CLIPConditionedPipeline.from_pipe(sd_pipe, emphasis="compel")
    assert not np.allclose(_images(a1111, prompt=prompt, negative_prompt=NEGATIVE), expected, atol=1e-4)
    a1111.register_to_config(syntax="compel")  # as `generate --syntax` does: the conditioner is rebuilt
    np.testing.assert_array_equal(_images(a1111, prompt=prompt, negative_prompt=NEGATIVE), expected)


def test_a_saved_pipeline_keeps_its_syntax_and_generate_takes_one(sd_pipe, tmp_path) -> None:
    from PIL import Image

    from clipcond.cli import main

    folder = tmp_path / "ours"
    CLIPConditionedPipeline.from_pipe(sd_pipe, syntax="compel").save_pretrained(folder)
    loaded = CLIPConditionedPipeline.from_pretrained(folder)
    assert loaded.config.syntax == "compel"
    CLIPConditionedPipeline.from_pipe(sd_pipe).save_pretrained(tmp_path / "a1111")
    prompt = "a (red circle)1.8"
    common = [prompt, "--steps", "2", "--seed", "3"]
    assert main(["generate", *common, "--model", str(tmp_path / "a1111"), "-o", str(tmp_path / "c.png")] + [
        "--syntax", "compel"
    ]) == 0  # fmt: skip
    assert main(["generate", *common, "--model", str(tmp_path / "a1111"), "-o", str(tmp_path / "a.png")]) == 0
    loaded.set_progress_bar_config(disable=True)
    expected = loaded(prompt, num_inference_steps=2, guidance_scale=3.0, generator=[torch.Generator().manual_seed(3)])
    written = np.asarray(Image.open(tmp_path / "c.png"))
    assert np.array_equal(written, np.asarray(expected.images[0]))
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "a.png")))


def test_an_unknown_syntax_is_refused_by_name(sd_pipe) -> None:
    with pytest.raises(ValueError, match=re.escape("`syntax` must be one of ['a1111', 'compel', 'comfy']")):
        CLIPConditionedPipeline.from_pipe(sd_pipe, syntax="invoke")
    with pytest.raises(TypeError, match="`syntax` must be a str"):
        CLIPConditionedPipeline.from_pipe(sd_pipe, syntax=1)


def test_generate_reads_the_vocabulary_of_a_compel_prompt_in_compel_syntax(tmp_path, capsys, monkeypatch) -> None:
    """The bundled model warns about words it never read; a blend's syntax is no word there."""
    from clipcond.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompt = '("a red circle", "a (blue square)+").blend(0.5, 0.5)'
    common = ["generate", prompt, "--steps", "2", "--syntax"]
    assert main([*common, "compel", "-o", str(tmp_path / "c.png")]) == 0
    assert "never read" not in capsys.readouterr().err
    assert main([*common, "a1111", "-o", str(tmp_path / "a.png")]) == 0
    assert "never read 'blend'" in capsys.readouterr().err
