"""Session fixtures: tiny pipelines of every family, saved and loaded back through
`save_pretrained` / `from_pretrained` (the real loading path), and tiny encoder folders."""

from __future__ import annotations

import gc
import os
import sys

import pytest
import tiny_pipelines
import torch
from diffusers.utils import logging as diffusers_logging
from hypothesis import settings as hypothesis_settings
from transformers.utils import logging as transformers_logging

# diffusers' and transformers' loggers get their stream handler when first asked for one, bound
# to the sys.stderr of that moment. Asked here, at collection, they write to the session's
# stderr; first asked inside a test that captures stderr (capsys: a CLI test whose command is
# the first to import diffusers), they kept writing to that test's closed stream, and every
# later warning put a "--- Logging error ---" traceback into the stderr of another test.
diffusers_logging.get_logger("diffusers")
transformers_logging.get_logger("transformers")

# The property tests draw the same examples on every run unless asked otherwise: a rare example
# found by chance would fail one CI run of a change that did not cause it. `--hypothesis-profile
# fuzz` draws new examples each run (the way to look for new failures); a failure prints the
# blob that replays it (`@reproduce_failure`). No example database is kept in the checkout.
hypothesis_settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True)


def pytest_configure(config) -> None:
    """The `repeatable` profile unless `--hypothesis-profile` names another."""
    if not config.getoption("hypothesis_profile", None):
        hypothesis_settings.load_profile("repeatable")


if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (`pytest -n auto` starts one per core): two torch threads per worker
    # on a fully loaded machine spin against each other (the run took several times as long).
    # The environment variable carries it to the processes that tests start.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def t5_tokenizer_path(tmp_path_factory):
    return tiny_pipelines.save_t5_tokenizer(tmp_path_factory.mktemp("t5_tokenizer"))


def _saved_and_reloaded(pipe, tmp_path_factory, name):
    folder = tmp_path_factory.mktemp(name)
    pipe.save_pretrained(folder)
    reloaded = type(pipe).from_pretrained(folder)
    reloaded.set_progress_bar_config(disable=True)
    return reloaded.to("cpu", torch.float32)


@pytest.fixture(scope="session")
def sd_pipe(tmp_path_factory):
    return _saved_and_reloaded(tiny_pipelines.build_sd(), tmp_path_factory, "sd")


@pytest.fixture(scope="session")
def sdxl_pipe(tmp_path_factory):
    return _saved_and_reloaded(tiny_pipelines.build_sdxl(), tmp_path_factory, "sdxl")


@pytest.fixture(scope="session")
def sd3_pipe(tmp_path_factory, t5_tokenizer_path):
    return _saved_and_reloaded(tiny_pipelines.build_sd3(t5_tokenizer_path), tmp_path_factory, "sd3")


@pytest.fixture(scope="session")
def flux_pipe(tmp_path_factory, t5_tokenizer_path):
    return _saved_and_reloaded(tiny_pipelines.build_flux(t5_tokenizer_path), tmp_path_factory, "flux")


@pytest.fixture(scope="session")
def pixart_pipe(tmp_path_factory, t5_tokenizer_path):
    return _saved_and_reloaded(tiny_pipelines.build_pixart(t5_tokenizer_path), tmp_path_factory, "pixart")


@pytest.fixture(scope="session")
def diffusers_sd_folder(tmp_path_factory):
    """A tiny StableDiffusionPipeline saved by diffusers (text_encoder/, tokenizer/, unet/, vae/,
    scheduler/, model_index.json naming StableDiffusionPipeline). Read only: copy it to change it."""
    folder = tmp_path_factory.mktemp("diffusers_sd") / "sd"
    tiny_pipelines.build_sd().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_text_path(tmp_path_factory):
    """A saved CLIPTextModel with the offline CLIP tokenizer in the same folder."""
    folder = tmp_path_factory.mktemp("clip_text")
    tiny_pipelines.clip_text_model(11).save_pretrained(folder)
    tiny_pipelines.clip_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5_encoder_path(tmp_path_factory, t5_tokenizer_path):
    """A saved T5EncoderModel (width 24, unlike CLIP's 32) with the tiny T5 tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("t5_encoder")
    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_path)
    tiny_pipelines.t5_encoder(12, len(tokenizer), width=24).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pytest_collection_finish(session) -> None:
    """Take what collection imported (torch, transformers, diffusers, the test modules: about
    half a million objects) out of the cyclic garbage collector's reach, and let it run less
    often. Tests build many tokenizers (a CLIP merge table is about 49,000 tuples), which set
    off full collections that each walked every one of those objects. On six test files run
    in one process (tests/test_lora_loading_rollback.py, test_sdxl_pipeline.py, test_lab.py,
    test_textual_inversion.py, test_cache.py, test_conditioning.py; about 165 s of CPU), the
    collector's own time went from 18.2 s to 8.0 s (measured with `gc.callbacks`; 10.8 s with
    the freeze alone). Objects are still freed by reference counting as before; only cycles
    wait longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 10)


@pytest.fixture
def frequent_thread_switches():
    """The interpreter switches threads about every microsecond instead of every 5 ms, so that
    a race between threads shows within a few hundred calls (tests of threads sharing a
    conditioner or a cache)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects by mark
def pytest_collection_modifyitems(items):
    """A test class may name inherited checks in `slow_checks`: those of its tests carry
    @pytest.mark.slow (the mixin checks of tests/pipeline_checks.py that a class inherits but
    that add little to what another class checks by default)."""
    for item in items:
        if item.originalname in getattr(item.cls, "slow_checks", ()):
            item.add_marker(pytest.mark.slow)
