"""The diffusion loop's own parts, beside test_train_diffusion.py's end-to-end runs: the EMA
weights swapped in and exactly back, where captions' context comes from, latents refused in
pixel space, and on tiny three-step runs (made in each test: a forked mutation run keeps what a
module fixture computed) the optimizer's and clipping's settings, caption dropout, the sample
grids, the vocabulary file, the progress bar and what the result reports."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from PIL import Image
from shards import write_image_manifest
from test_train_diffusion import tiny_config

import clipcond.training.diffusion.loop as diffusion_loop
from clipcond.training.data import DataConfig


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


# the EMA's weights


def test_without_an_ema_the_weights_are_left_alone() -> None:
    parameters = [torch.nn.Parameter(torch.arange(4.0))]
    with diffusion_loop._ema_weights(None, parameters):
        assert torch.equal(parameters[0], torch.arange(4.0))
    assert torch.equal(parameters[0], torch.arange(4.0))


def test_the_ema_weights_are_in_place_inside_and_the_own_ones_exactly_back_after() -> None:
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    parameters = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(5))]
    ema = EMAModel(parameters, decay=0.5)
    for _ in range(3):  # (diffusers' first EMA step copies the weights)
        with torch.no_grad():
            for parameter in parameters:
                parameter.add_(torch.randn_like(parameter) / 3)
        ema.step(parameters)
    own = [parameter.detach().clone() for parameter in parameters]
    shadow = [tensor.clone() for tensor in ema.shadow_params]
    assert not any(torch.equal(a, b) for a, b in zip(own, shadow))
    with pytest.raises(KeyError), diffusion_loop._ema_weights(ema, parameters):
        assert all(torch.equal(parameter, tensor) for parameter, tensor in zip(parameters, shadow))
        raise KeyError("a failure while sampling")
    assert all(torch.equal(parameter, tensor) for parameter, tensor in zip(parameters, own))
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, shadow))


# captions' context and stored latents


def test_live_captions_are_the_conditioners_tokens() -> None:
    calls: list[list[str]] = []

    def encode(captions):
        calls.append(list(captions))
        return SimpleNamespace(tokens=torch.full((len(captions), 2, 3), 7.0))

    read = diffusion_loop._caption_encoding(SimpleNamespace(encode=encode), None)
    assert torch.equal(read(["a", ""]), torch.full((2, 2, 3), 7.0)) and calls == [["a", ""]]


def test_stored_captions_are_their_records_assembled_with_the_empty_captions() -> None:
    calls: list[tuple] = []

    def record(caption, device):
        calls.append(("record", caption, device))
        return f"empty on {device}"

    def records(captions, device):
        calls.append(("records", list(captions), device))
        return [f"record of {caption!r}" for caption in captions]

    embeddings = SimpleNamespace(record=record, records=records)
    conditioner = SimpleNamespace(
        device="meta", assemble=lambda found, empty: SimpleNamespace(tokens={"records": found, "empty": empty})
    )
    read = diffusion_loop._caption_encoding(conditioner, embeddings)
    assert calls == [("record", "", "meta")]  # read once, before any step
    assert read(["a", ""]) == {"records": ["record of 'a'", "record of ''"], "empty": "empty on meta"}
    assert calls[1:] == [("records", ["a", ""], "meta")]


def test_runs_without_stored_embeddings_or_latents_read_none() -> None:
    config = SimpleNamespace(data=SimpleNamespace(embeddings=None, latents=None))
    assert diffusion_loop._embedding_shards(config, conditioner=None) is None
    assert diffusion_loop._latent_shards(config, vae=None) is None


def test_stored_latents_in_pixel_space_are_refused() -> None:
    from clipcond.training.data.embedding_shards import EmbeddingShardError

    config = SimpleNamespace(data=SimpleNamespace(latents="encoded"))
    with pytest.raises(EmbeddingShardError) as caught:
        diffusion_loop._latent_shards(config, vae=None)
    assert str(caught.value) == (
        "data.latents: this run trains in pixel space (no `vae`, and `init_from` has no vae/); "
        "latents are read only by runs on a VAE's latents"
    )


class _Opened:
    """Stands in for a shard folder class: keeps what it was opened with, or raises `error`."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.error = error

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return self


def _stored_config(**captions) -> SimpleNamespace:
    settings = {"caption_syntax": False, "caption_window_split": "truncate", **captions}
    return SimpleNamespace(data=SimpleNamespace(embeddings="enc/emb", latents="enc/lat"), **settings)


def _conditioner(spec: object = None) -> SimpleNamespace:
    """What `_embedding_shards` reads of a conditioner: its identity's parts and its record spec."""
    return SimpleNamespace(identity=lambda: ("weights", "settings"), record_spec=spec)


def test_stored_embeddings_are_opened_against_the_conditioners_identity_and_record_spec() -> None:
    from clipcond.training.data import embedding_shards

    spec = object()
    conditioner = _conditioner(spec)
    opened = _Opened()
    with (
        mock.patch.object(embedding_shards, "EmbeddingShards", opened),
        mock.patch.object(embedding_shards, "EmbeddingIdentity", lambda *parts: ("identity", *parts)),
    ):
        assert diffusion_loop._embedding_shards(_stored_config(), conditioner) is opened
    assert opened.calls == [
        (("enc/emb", ("identity", "weights", "settings")), {"argument": "data.embeddings", "spec": spec})
    ]


@pytest.mark.parametrize("setting", ["window_split='word'", "parse=True"])
def test_shards_stale_only_in_how_captions_are_read_say_which_keys_to_set(setting) -> None:
    from clipcond.training.data import embedding_shards

    stale = embedding_shards.StaleEmbeddings(f"data.embeddings: written with {setting}")
    conditioner = _conditioner()
    config = _stored_config(caption_syntax=False, caption_window_split="a1111")
    with mock.patch.object(embedding_shards, "EmbeddingShards", _Opened(stale)):
        with pytest.raises(embedding_shards.StaleEmbeddings) as caught:
            diffusion_loop._embedding_shards(config, conditioner)
    assert caught.value is not stale and caught.value.__cause__ is stale
    assert str(caught.value) == (
        f"data.embeddings: written with {setting}. This run reads captions as `caption_syntax` (False) and "
        "`caption_window_split` ('a1111') say; shards written by `clipcond encode --pipeline` (or before these "
        "keys) read them as a pipeline reads prompts: set caption_syntax: true and caption_window_split: word to "
        "use them"
    )


def test_shards_stale_in_anything_else_are_refused_as_they_say() -> None:
    from clipcond.training.data import embedding_shards

    stale = embedding_shards.StaleEmbeddings("data.embeddings: written by other weights (window 2, parse 1)")
    conditioner = _conditioner()
    with mock.patch.object(embedding_shards, "EmbeddingShards", _Opened(stale)):
        with pytest.raises(embedding_shards.StaleEmbeddings) as caught:
            diffusion_loop._embedding_shards(_stored_config(), conditioner)
    assert caught.value is stale


def test_stored_latents_are_opened_against_the_vaes_identity() -> None:
    from clipcond.training.data import latent_shards

    opened, vae = _Opened(), object()
    with (
        mock.patch.object(latent_shards, "LatentShards", opened),
        mock.patch.object(latent_shards, "vae_identity", lambda given: ("vae", given)),
    ):
        assert diffusion_loop._latent_shards(_stored_config(), vae) is opened
    assert opened.calls == [(("enc/lat", ("vae", vae)), {"argument": "data.latents"})]


# runs


def test_the_optimizer_and_clipping_take_the_configs_settings(tiny_clip_text_path, tmp_path) -> None:
    from accelerate import Accelerator

    optimizers, norms = [], []
    make_optimizer, clip = diffusion_loop.adamw_with_warmup_cosine, Accelerator.clip_grad_norm_

    def recording_optimizer(model, *args, **kwargs):
        optimizers.append((args, kwargs))
        return make_optimizer(model, *args, **kwargs)

    def recording_clip(self, parameters, max_norm, *args, **kwargs):
        norms.append(max_norm)
        return clip(self, parameters, max_norm, *args, **kwargs)

    config = tiny_config(tiny_clip_text_path, tmp_path / "run", weight_decay=0.03, max_grad_norm=0.5)
    with (
        mock.patch.object(diffusion_loop, "adamw_with_warmup_cosine", recording_optimizer),
        mock.patch.object(Accelerator, "clip_grad_norm_", recording_clip),
    ):
        diffusion_loop.train_diffusion(config, show_progress=False)
    assert optimizers == [((1e-3, 0.03, 1, 3), {})]  # lr, weight decay, warm-up steps, steps
    assert norms == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_captions_are_dropped_as_often_as_asked(dropout, tiny_clip_text_path, tmp_path) -> None:
    from clipcond.conditioning import TextConditioner

    seen: list[str] = []
    encode = TextConditioner.encode

    def recording(self, prompts, *args, **kwargs):
        seen.extend(prompts)
        return encode(self, prompts, *args, **kwargs)

    config = tiny_config(tiny_clip_text_path, tmp_path / "run", batch_size=8, steps=4, caption_dropout=dropout)
    with mock.patch.object(TextConditioner, "encode", recording):
        diffusion_loop.train_diffusion(config, show_progress=False)
    assert len(seen) == 32
    dropped = seen.count("")
    assert dropped == 0 if dropout == 0.0 else 8 <= dropped <= 24


def test_sample_grids_are_written_when_due(tiny_clip_text_path, tmp_path) -> None:
    prompts = ["a red circle", "a blue square", "a green triangle"]
    config = tiny_config(
        tiny_clip_text_path, tmp_path / "run", steps=4, sample_every=2, sample_steps=2, sample_prompts=prompts
    )
    diffusion_loop.train_diffusion(config, show_progress=False)
    grids = sorted((tmp_path / "run" / "samples").iterdir())
    assert [grid.name for grid in grids] == ["step-0000002.png", "step-0000004.png"]
    for path in grids:
        with Image.open(path) as grid:
            assert grid.size == (3 * 16, 16)


def test_images_reach_the_unet_in_the_unit_range_at_the_runs_size(tiny_clip_text_path, tmp_path) -> None:
    from clipcond.training.diffusion.setup import DiffusionModels

    seen: list[torch.Tensor] = []
    to_model_space = DiffusionModels.to_model_space

    def recording(self, pixels, *args, **kwargs):
        seen.append(pixels.detach().clone())
        return to_model_space(self, pixels, *args, **kwargs)

    with mock.patch.object(DiffusionModels, "to_model_space", recording):
        diffusion_loop.train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "run", steps=1), show_progress=False)
    (pixels,) = seen
    assert pixels.shape == (4, 3, 16, 16)
    assert pixels.min() >= -1.0 and pixels.max() == 1.0  # the shapes world's white background is 1


@pytest.mark.parametrize("decay", [None, 0.75])
def test_the_ema_keeps_the_configured_decay_or_is_not_made(decay, tiny_clip_text_path, tmp_path) -> None:
    import diffusers.training_utils

    made: list[float] = []
    ema_class = diffusers.training_utils.EMAModel

    class Recording(ema_class):
        def __init__(self, parameters, **kwargs):
            super().__init__(parameters, **kwargs)
            made.append(self.decay)

    config = tiny_config(tiny_clip_text_path, tmp_path / "run", steps=1, ema_decay=decay)
    with mock.patch.object(diffusers.training_utils, "EMAModel", Recording):
        diffusion_loop.train_diffusion(config, show_progress=False)
    assert made == ([] if decay is None else [0.75])


def test_each_steps_randomness_is_keyed_by_its_global_sample_indices(tiny_clip_text_path, tmp_path) -> None:
    keys: list[list[int]] = []
    generators = diffusion_loop.SampleGenerators

    def recording(seed, samples):
        keys.append(list(samples))
        return generators(seed, samples)

    with mock.patch.object(diffusion_loop, "SampleGenerators", recording):
        diffusion_loop.train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "run"), show_progress=False)
    assert keys == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # batch_size 4, steps 1 to 3


def test_a_shapes_run_saves_its_caption_vocabulary_and_another_source_none(tiny_clip_text_path, tmp_path) -> None:
    from clipcond.shapes.captions import caption_vocabulary

    shapes = diffusion_loop.train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "shapes"), show_progress=False)
    words = (shapes.pipeline_dir / "vocabulary.txt").read_text(encoding="utf-8").split()
    assert words == sorted(caption_vocabulary(DataConfig().max_objects))

    # resized to the run's 16 px; a missing picture
    manifest = write_image_manifest(tmp_path, 4, 20, extra=[{"image": "gone.png", "caption": "a missing picture"}])
    data = DataConfig(source="manifest", manifest=str(manifest))
    other = diffusion_loop.train_diffusion(
        tiny_config(tiny_clip_text_path, tmp_path / "manifest", data=data, steps=2), show_progress=False
    )
    assert not (other.pipeline_dir / "vocabulary.txt").exists()
    assert sum(other.skipped.values()) >= 1  # the missing picture, counted


def test_the_bar_is_drawn_by_default_named_for_the_command_and_not_when_asked_for_none(
    tiny_clip_text_path, tmp_path, capsys
) -> None:
    diffusion_loop.train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "shown", steps=1))
    assert "train-diffusion" in capsys.readouterr().err
    diffusion_loop.train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "quiet", steps=1), show_progress=False)
    assert "train-diffusion" not in capsys.readouterr().err


def test_the_loss_is_weighted_with_the_configs_snr_gamma(tiny_clip_text_path, tmp_path) -> None:
    gammas = []
    loss = diffusion_loop._denoising_loss

    def recording(prediction, target, timesteps, noise_schedule, snr_gamma):
        gammas.append(snr_gamma)
        return loss(prediction, target, timesteps, noise_schedule, snr_gamma)

    with mock.patch.object(diffusion_loop, "_denoising_loss", recording):
        config = tiny_config(tiny_clip_text_path, tmp_path / "snr", snr_gamma=5.0, steps=2)
        diffusion_loop.train_diffusion(config, show_progress=False)
        diffusion_loop.train_diffusion(
            tiny_config(tiny_clip_text_path, tmp_path / "plain", steps=1), show_progress=False
        )
    assert gammas == [5.0, 5.0, None]


def test_the_result_reports_the_run(tiny_clip_text_path, tmp_path) -> None:
    from clipcond.training.run_folder import RunFolderError

    result = diffusion_loop.train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "run"), show_progress=False)
    steps = [record for record in _records(tmp_path / "run") if "loss" in record]
    assert result.pipeline_dir == tmp_path / "run" / "pipeline" and (result.pipeline_dir / "model_index.json").is_file()
    assert result.steps == 3 and result.loss == steps[-1]["loss"]
    assert result.samples_per_second > 0 and result.skipped == {}
    # a run is not resumed unless asked: its folder is refused
    with pytest.raises(RunFolderError, match="already holds a run; pass --resume to continue it"):
        diffusion_loop.train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "run"), show_progress=False)
