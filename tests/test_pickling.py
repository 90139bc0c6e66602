"""Conditioners and pipelines copy and pickle after use, as diffusers' pipelines do.

A conditioner's caches hold weak references (to the tensors it watches and the models whose
configs it fingerprints), which pickle refuses: a `CLIPConditionedPipeline` pickled before its
first call and failed after it, where `StableDiffusionPipeline` pickles either way (a pipeline
handed to a spawned worker, or saved whole with `torch.save`). A copy drops those weak caches
and builds them again; these tests check that the copy encodes and draws as the original and
still sees its own weights change.
"""

import copy
import pickle

import pytest
import torch
from diffusers import StableDiffusionPipeline
from tiny_pipelines import build_sd

import clipcond.tokenizer_fingerprint as tokenizer_fingerprint_module
from clipcond import CLIPConditionedPipeline, TextConditioner

PROMPTS = ["a red cube on a table", "two (small:1.3) spheres"]


def _pickled(thing):
    return pickle.loads(pickle.dumps(thing))


COPIES = {"pickle": _pickled, "deepcopy": copy.deepcopy}


@pytest.fixture(scope="module")
def sd_pipe():
    """A pipeline of this module's own: conftest's shared one may carry transformers'
    hidden-state hook (see below) from another file's `clip_skip` test, which pickle refuses."""
    return build_sd()


# SDXL's by deepcopy only: transformers hooks a CLIP text encoder asked for its hidden states
# (SDXL's penultimate layer) with a local function that pickle refuses, so a used
# StableDiffusionXLPipeline does not pickle either (diffusers 0.42.1, transformers 5.25.0).
@pytest.mark.parametrize(("family", "how"), [("sd", "pickle"), ("sd", "deepcopy"), ("sdxl", "deepcopy")])
def test_a_used_conditioner_copies_and_its_copy_encodes_as_it(how, family, request):
    pipe = request.getfixturevalue(f"{family}_pipe")
    conditioner = TextConditioner.from_pipeline(pipe, cache_size=8)
    before = conditioner.pipeline_kwargs(PROMPTS, negative_prompt="blurry")
    twin = COPIES[how](conditioner)
    again = twin.pipeline_kwargs(PROMPTS, negative_prompt="blurry")
    assert twin.encoders[0].model is not conditioner.encoders[0].model
    assert sorted(again) == sorted(before)
    for name, value in before.items():
        assert torch.equal(again[name], value), name


@pytest.mark.parametrize("how", COPIES)
def test_a_copied_conditioner_sees_its_own_weights_change_and_leaves_the_original_alone(how, sd_pipe):
    conditioner = TextConditioner.from_pipeline(sd_pipe, cache_size=8)
    original = conditioner.encode(PROMPTS).tokens
    twin = COPIES[how](conditioner)
    with torch.no_grad():
        twin.encoders[0].model.get_parameter("final_layer_norm.bias").add_(0.5)
    changed = twin.encode(PROMPTS).tokens
    # Reference: a conditioner built afresh over the copy's changed encoder, with no cache.
    parts = {**sd_pipe.components, "text_encoder": twin.encoders[0].model, "tokenizer": twin.encoders[0].tokenizer}
    fresh = TextConditioner.from_pipeline(StableDiffusionPipeline(**parts))
    assert not torch.equal(changed, original)
    assert torch.equal(changed, fresh.encode(PROMPTS).tokens)
    assert torch.equal(conditioner.encode(PROMPTS).tokens, original)


def test_a_pickled_conditioner_reads_its_tokenizers_fingerprints_and_versions_from_its_memo(sd_pipe, monkeypatch):
    conditioner = TextConditioner.from_pipeline(sd_pipe)
    tokenizer = conditioner.encoders[0].tokenizer
    fingerprint = conditioner._tokenizer_fingerprints(tokenizer)
    version = conditioner._tokenizer_fingerprints.version(tokenizer)
    twin = _pickled(conditioner)
    # The version names the same state in the copy (its memo of the empty prompt's states holds).
    assert twin._tokenizer_fingerprints.version(twin.encoders[0].tokenizer) == version
    computed = []
    real = tokenizer_fingerprint_module.tokenizer_fingerprint
    monkeypatch.setattr(
        tokenizer_fingerprint_module, "tokenizer_fingerprint", lambda tok: computed.append(tok) or real(tok)
    )
    assert twin._tokenizer_fingerprints(twin.encoders[0].tokenizer) == fingerprint
    assert computed == []  # the memo's entry was keyed by the copy's tokenizer
    twin.encoders[0].tokenizer.add_tokens(["<new-token>"])
    assert twin._tokenizer_fingerprints(twin.encoders[0].tokenizer) != fingerprint
    assert computed == [twin.encoders[0].tokenizer]


@pytest.mark.parametrize("how", COPIES)
def test_a_pipeline_copied_after_a_call_draws_as_it_as_stable_diffusion_does(how, sd_pipe):
    ours = CLIPConditionedPipeline.from_pipe(sd_pipe)
    ours.set_progress_bar_config(disable=True)
    peer = StableDiffusionPipeline(**{**sd_pipe.components, "scheduler": copy.deepcopy(sd_pipe.scheduler)})
    peer.set_progress_bar_config(disable=True)
    settings = {"prompt": PROMPTS[0], "num_inference_steps": 2, "output_type": "np"}
    images, changed = {}, {}
    for name, pipe in (("ours", ours), ("peer", peer)):
        first = pipe(**settings, generator=torch.Generator().manual_seed(0)).images
        twin = COPIES[how](pipe)
        images[name] = twin(**settings, generator=torch.Generator().manual_seed(0)).images
        assert (images[name] == first).all(), name
        # The copy encodes with its own text encoder (the conditioner it carries is bound to it).
        with torch.no_grad():
            twin.text_encoder.get_parameter("final_layer_norm.bias").add_(0.5)
            changed[name] = twin.encode_prompt(PROMPTS[0], "cpu", 1, False)[0]
            assert not torch.equal(changed[name], pipe.encode_prompt(PROMPTS[0], "cpu", 1, False)[0]), name
    assert (images["ours"] == images["peer"]).all()
    assert torch.equal(changed["ours"], changed["peer"])
