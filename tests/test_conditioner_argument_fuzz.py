"""Every argument of `TextConditioner` (its options through `from_pipeline`, and `encode`,
`pipeline_kwargs` and `schedule`) for every family under values no caller means: a call either
runs or is refused before any text encoder runs, with an error that names the argument; an
option the constructor takes must then encode. Hooks on the encoders tell a refusal from a
failure after work; each call has its own prompt, so that no cached encoding hides one. The
probe of session 19 found falsy non-text `prompt_2` values read as "left out" this way."""

from __future__ import annotations

import inspect

import pytest
from hostile_values import HOSTILE, Outcomes
from tiny_pipelines import build_family

from clipcond import TextConditioner

FAMILIES = ["sd", "sdxl", "sd3", "flux", "pixart"]
# what each method needs besides the argument under test
METHODS = {"encode": {}, "pipeline_kwargs": {}, "schedule": {"num_inference_steps": 4}}
# the constructor's arguments that from_pipeline fills from the pipeline itself
FROM_THE_PIPELINE = ("self", "recipe", "clip", "t5", "t5_zeros")
# the hostile values an argument may take (every other one is refused): any text for a prompt,
# an empty list for another encoder's text ("left out", as diffusers' `prompt_2 or prompt`),
# any finite LoRA scale
OTHER_TEXTS = ("string", "empty_list")
MAY_RUN = {
    "prompt": ("string",),
    "negative_prompt": ("string",),
    "prompt_2": OTHER_TEXTS,
    "prompt_3": OTHER_TEXTS,
    "negative_prompt_2": OTHER_TEXTS,
    "negative_prompt_3": OTHER_TEXTS,
    "lora_scale": ("minus_one", "zero", "fraction"),
}
# a folder name, no memory cache (0), no layer skipped (0, as diffusers reads it), the default
# (True) of two switches
OPTIONS_MAY_RUN = {
    "cache_dir": ("string",),
    "cache_size": ("zero",),
    "clip_skip": ("zero",),
    "parse_weights": ("true",),
    "clean_caption": ("true",),
}


def _build_into(built: list[TextConditioner], pipe, options: dict) -> None:
    built.append(TextConditioner.from_pipeline(pipe, **options))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_argument_runs_or_is_refused_by_name_before_any_encoder_runs(family, t5_tokenizer_path) -> None:
    cond = TextConditioner.from_pipeline(build_family(family, t5_tokenizer_path))
    outcomes = Outcomes()
    outcomes.watch(*(encoder.model for encoder in cond.encoders))
    for method_name, required in METHODS.items():
        method = getattr(cond, method_name)
        for argument in inspect.signature(method).parameters:
            for index, (label, value) in enumerate(HOSTILE.items()):
                settings = dict(prompt=f"a red circle {method_name} {argument} {index}", **required)
                outcomes.call(method, argument, label, **{**settings, argument: value})
    outcomes.check(MAY_RUN)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_option_is_refused_by_name_or_encodes(family, t5_tokenizer_path, tmp_path, monkeypatch) -> None:
    """`from_pipeline(pipe, option=value)` refuses a value by the option's name, or the
    conditioner it builds encodes a prompt (an option taken silently and failing at the first
    encode would be a late failure)."""
    monkeypatch.chdir(tmp_path)  # a string `cache_dir` makes a folder where it is read
    pipe = build_family(family, t5_tokenizer_path)
    options = [name for name in inspect.signature(TextConditioner.__init__).parameters if name not in FROM_THE_PIPELINE]
    outcomes = Outcomes()
    for option in [*options, "max_sequence_length"]:
        for index, (label, value) in enumerate(HOSTILE.items()):
            built: list[TextConditioner] = []
            if outcomes.call(_build_into, option, label, built=built, pipe=pipe, options={option: value}):
                outcomes.follow_up(built[0].encode, option, label, prompt=f"a red circle {option} {index}")
    outcomes.check(OPTIONS_MAY_RUN)
