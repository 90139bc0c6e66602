"""`TextConditioner.check_prompt`: the errors `encode` raises for a text, raised without
running an encoder or touching the cache.

The reference is `encode` itself on the same conditioner: for each bad input, both raise the
same exception type with the same message; for good inputs, `check_prompt` returns None while
no encoder runs and the cache stays as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from copy import deepcopy

import pytest
import torch

from clipcond import TextConditioner

# (family fixture, conditioner settings, prompt arguments): each one `encode` refuses
REFUSED = [
    ("sd_pipe", {}, {"prompt": "a <lora:detail:0.8> cat"}),
    ("sd_pipe", {}, {"prompt": "a <hypernet:x:1> cat"}),
    ("sd_pipe", {}, {"prompt": "a <lora:detail:dyn=4> cat"}),
    ("sd_pipe", {}, {"prompt": "a cat", "prompt_2": "a dog"}),
    ("sd_pipe", {}, {"prompt": []}),
    ("sd_pipe", {}, {"prompt": 3}),
    ("sd_pipe", {}, {"prompt": ["a cat", None]}),
    ("sd_pipe", {"syntax": "comfy"}, {"prompt": "a photo of embedding:dog, in snow"}),
    ("sd_pipe", {"syntax": "compel"}, {"prompt": "a cat.swap(dog) on a mat"}),
    ("sd_pipe", {"syntax": "compel"}, {"prompt": '("a cat", "a dog").blend(1)'}),
    ("sd_pipe", {"syntax": "compel"}, {"prompt": ["a cat", '("a cat", "a dog").and(1, nan)']}),
    ("sdxl_pipe", {"syntax": "compel"}, {"prompt": '("a cat", "a dog").blend(1, 1)', "prompt_2": "a bird"}),
    ("sdxl_pipe", {}, {"prompt": "a cat", "prompt_2": "a <lora:detail> dog"}),
    ("sdxl_pipe", {}, {"prompt": "a cat", "prompt_3": "a dog"}),
    ("sd3_pipe", {"syntax": "compel"}, {"prompt": '("a cat", "a dog").and(1, 0.5)'}),
]

ACCEPTED = [
    ("sd_pipe", {}, {"prompt": ["a (red:1.3) cat", "[cat:dog:0.5] AND a bird", "a cat BREAK a mat"]}),
    ("sd_pipe", {"lora_tags": "strip"}, {"prompt": "a <lora:detail:0.8> cat"}),
    ("sd_pipe", {"parse_weights": False}, {"prompt": "a <lora:detail:0.8> cat"}),
    ("sd_pipe", {"syntax": "comfy"}, {"prompt": "a (red:1.3) cat, embedding is a word"}),
    ("sd_pipe", {"syntax": "compel"}, {"prompt": ['("a cat", "a dog").blend(1, 0.5)', "a red++ cat <lora:x>"]}),
    ("sdxl_pipe", {"syntax": "compel"}, {"prompt": '("a cat", "a dog").and(1, 0.5)', "prompt_2": None}),
    ("sdxl_pipe", {}, {"prompt": ["a cat", "a dog"], "prompt_2": ["a (bird:1.2)", ""]}),
    ("sd3_pipe", {}, {"prompt": "a cat", "prompt_2": "a dog", "prompt_3": "a (long:0.9) " * 40}),
]


def _conditioner(request, family: str, settings: dict) -> TextConditioner:
    return TextConditioner.from_pipeline(request.getfixturevalue(family), **settings)


@contextlib.contextmanager
def _encoder_runs(conditioner: TextConditioner) -> Iterator[list[str]]:
    """A list that each forward pass of one of the conditioner's encoders appends to, while
    the block runs (the models are the session's: the hooks go afterwards)."""
    runs: list[str] = []
    hooks = [
        encoder.model.register_forward_hook(lambda module, args, output: runs.append(type(module).__name__))
        for encoder in conditioner.encoders
    ]
    try:
        yield runs
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize(("family", "settings", "arguments"), REFUSED, ids=range(len(REFUSED)))
def test_check_prompt_raises_what_encode_raises(request, family: str, settings: dict, arguments: dict) -> None:
    conditioner = _conditioner(request, family, settings)
    with pytest.raises((TypeError, ValueError)) as encoded:
        conditioner.encode(**arguments)
    with pytest.raises(type(encoded.value)) as checked:
        conditioner.check_prompt(**arguments)
    assert str(checked.value) == str(encoded.value)


@pytest.mark.parametrize(("family", "settings", "arguments"), ACCEPTED, ids=range(len(ACCEPTED)))
def test_check_prompt_runs_no_encoder_and_leaves_the_cache(request, family: str, settings: dict, arguments: dict):
    conditioner = _conditioner(request, family, {**settings, "cache_size": 8})
    conditioner.encode("something cached before")
    before = len(conditioner.cache)
    with _encoder_runs(conditioner) as runs:
        assert conditioner.check_prompt(**arguments) is None
        assert runs == [] and len(conditioner.cache) == before
        conditioner.encode(**arguments)  # and `encode` accepts it: the encoders run
        assert runs


def test_an_embedding_loaded_into_the_tokenizer_is_accepted_in_comfy_syntax(sd_pipe) -> None:
    conditioner = TextConditioner.from_pipeline(sd_pipe, syntax="comfy")
    width = sd_pipe.text_encoder.config.hidden_size
    with pytest.raises(ValueError, match="`embedding:<dog>` names no textual inversion"):
        conditioner.check_prompt("a photo of embedding:<dog>")
    # loaded into a copy of the components, so that the session's pipeline keeps its tokenizer
    text_encoder, tokenizer = deepcopy(sd_pipe.text_encoder), deepcopy(sd_pipe.tokenizer)
    with_dog = TextConditioner("sd", clip=[(text_encoder, tokenizer)], syntax="comfy")
    with_dog.load_textual_inversion({"<dog>": torch.ones(width)}, token="<dog>")
    assert with_dog.check_prompt("a photo of embedding:<dog>, in snow") is None
