"""Model configs are part of what stored embeddings and latents are keyed by: the same weights
under another activation or norm eps (`convert-clip` with and without `--gelu` writes such a
pair) compute other states, so the disk cache, caption shards and latent shards made under one
are not read under the other; a config saved and loaded back, or written with or without
entries at the library's default, keys alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_pipelines
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from test_encode_command import write_config
from test_train_diffusion import tiny_config
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from clipcond import TextConditioner
from clipcond.cli import main as clipcond
from clipcond.config_fingerprint import ConfigFingerprints, config_fingerprint
from clipcond.training.data.embedding_shards import StaleEmbeddings
from clipcond.training.data.latent_shards import vae_identity
from clipcond.training.diffusion.config import DiffusionDataConfig
from clipcond.training.diffusion.loop import train_diffusion


def _components(t5_tokenizer_path: Path) -> dict[str, tuple[torch.nn.Module, type]]:
    sdxl = tiny_pipelines.build_sdxl()
    return {
        "clip": (sdxl.text_encoder, CLIPTextModel),
        "clip with projection": (sdxl.text_encoder_2, CLIPTextModelWithProjection),
        "t5": (tiny_pipelines.t5_encoder(0, 100), T5EncoderModel),
        "vae": (sdxl.vae, AutoencoderKL),
        "unet": (sdxl.unet, UNet2DConditionModel),
    }


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_a_config_saved_and_loaded_back_fingerprints_alike(t5_tokenizer_path, tmp_path: Path) -> None:
    for name, (model, cls) in _components(t5_tokenizer_path).items():
        model.save_pretrained(tmp_path / name)
        loaded = cls.from_pretrained(tmp_path / name)
        assert config_fingerprint(loaded) == config_fingerprint(model) != "", name


SETTINGS = {
    "clip": ("text_encoder", {"hidden_act": "quick_gelu"}),
    "clip eps": ("text_encoder", {"layer_norm_eps": 1e-3}),
    "vae": ("vae", {"act_fn": "gelu"}),
}


@pytest.mark.parametrize("setting", SETTINGS.values(), ids=SETTINGS.keys())
def test_an_architecture_setting_changes_the_fingerprint_and_what_the_model_computes(tmp_path: Path, setting) -> None:
    component, changes = setting
    model = getattr(tiny_pipelines.build_sd(), component)
    model.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    _edit_config(tmp_path / "b", **changes)
    cls = type(model)
    a, b = cls.from_pretrained(tmp_path / "a"), cls.from_pretrained(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.no_grad():
        if component == "vae":
            pixels = torch.rand(1, 3, 16, 16) * 2 - 1
            outputs = [m.encode(pixels).latent_dist.mean for m in (a, b)]
        else:
            ids = torch.tensor([[49406, 320, 736, 49407]])
            outputs = [m(ids).last_hidden_state for m in (a, b)]
    assert not torch.allclose(*outputs, atol=1e-4)  # the setting matters
    assert config_fingerprint(a) != config_fingerprint(b)


def test_entries_at_the_librarys_default_fingerprint_as_if_absent(tmp_path: Path) -> None:
    """A library version that writes (or adds) a setting at its default keys as before."""
    sd = tiny_pipelines.build_sd()
    for component, default in (("text_encoder", {"attention_dropout": 0.0}), ("vae", {"force_upcast": True})):
        model = getattr(sd, component)
        model.save_pretrained(tmp_path / component)
        config = json.loads((tmp_path / component / "config.json").read_text())
        name, value = next(iter(default.items()))
        assert config.get(name, value) == value
        config.pop(name, None)
        (tmp_path / component / "config.json").write_text(json.dumps(config))
        loaded = type(model).from_pretrained(tmp_path / component)
        assert config_fingerprint(loaded) == config_fingerprint(model), component


def test_fingerprints_are_memoised_per_config_object_and_models_are_held_weakly() -> None:
    import gc
    import weakref

    fingerprints = ConfigFingerprints()
    model = tiny_pipelines.clip_text_model(0)
    first = fingerprints(model)
    model.config = type(model.config)(**{**model.config.to_dict(), "hidden_act": "quick_gelu"})
    assert fingerprints(model) != first  # a replaced config object is hashed again
    watched = weakref.ref(model)
    del model
    gc.collect()
    assert watched() is None


def _clip_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two CLIP folders with the same weights and tokenizer: GELU, and QuickGELU (OpenAI's)."""
    gelu = tmp_path / "gelu"
    tiny_pipelines.clip_text_model(11).save_pretrained(gelu)
    tiny_pipelines.clip_tokenizer().save_pretrained(gelu)
    quick_gelu = Path(shutil.copytree(gelu, tmp_path / "quick_gelu"))
    _edit_config(quick_gelu, hidden_act="quick_gelu")
    return gelu, quick_gelu


def _conditioner(clip: Path, yaml_path: Path, **settings) -> TextConditioner:
    yaml_path.write_text(yaml.safe_dump({"recipe": "sd", "clip": [{"path": str(clip)}], **settings}))
    return TextConditioner.from_config(yaml_path)


def test_the_disk_cache_never_serves_records_made_under_another_config(tmp_path: Path) -> None:
    gelu, quick_gelu = _clip_pair(tmp_path)
    prompt = "a red circle left of a blue square"
    cache = str(tmp_path / "cache")
    with torch.no_grad():
        first = _conditioner(gelu, tmp_path / "a.yaml", cache_dir=cache).encode(prompt).tokens
        got = _conditioner(quick_gelu, tmp_path / "b.yaml", cache_dir=cache).encode(prompt).tokens
        expected = _conditioner(quick_gelu, tmp_path / "c.yaml", cache_size=0).encode(prompt).tokens
    assert not torch.allclose(first, expected, atol=1e-4)
    assert torch.equal(got, expected)


def test_caption_shards_of_another_config_are_refused_as_stale(tmp_path: Path, capsys) -> None:
    gelu, quick_gelu = _clip_pair(tmp_path)
    config_path = write_config(tiny_config(gelu, tmp_path / "x"), tmp_path / "gelu.yaml")
    assert (
        clipcond(["encode", "--train-config", str(config_path), "--out", str(tmp_path / "emb"), "--no-progress"]) == 0
    )
    run = tiny_config(quick_gelu, tmp_path / "run", data=DiffusionDataConfig(embeddings=str(tmp_path / "emb")))
    with pytest.raises(StaleEmbeddings, match=r"conditioner settings .*config="):
        train_diffusion(run, show_progress=False)
    assert not (tmp_path / "run").exists()


def test_latents_of_a_vae_under_another_config_are_stale_but_not_for_read_time_settings(tmp_path: Path) -> None:
    """The stored moments change with `act_fn`; the scaling, shift and `force_upcast` are applied
    (or not read) when a run reads the latents, so latents stay valid across them."""
    vae = tiny_pipelines.build_sd().vae
    vae.save_pretrained(tmp_path / "a")
    a = AutoencoderKL.from_pretrained(tmp_path / "a")
    assert vae_identity(a) == vae_identity(vae)
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    for changes, stale in (
        ({"act_fn": "gelu"}, True),
        ({"scaling_factor": 0.13, "shift_factor": 0.1, "force_upcast": False}, False),
    ):
        folder = Path(shutil.copytree(tmp_path / "a", tmp_path / f"b{len(changes)}"))
        _edit_config(folder, **changes)
        b = AutoencoderKL.from_pretrained(folder)
        with torch.no_grad():
            moments_differ = not torch.equal(a.encode(pixels).latent_dist.mean, b.encode(pixels).latent_dist.mean)
        difference = vae_identity(b).difference(vae_identity(a), "VAE", "VAE")
        assert moments_differ is stale and (difference is not None) is stale, changes
        if stale:
            assert difference.startswith("VAE settings")


class _Toy(torch.nn.Module):
    """A module with a diffusers-style mapping config: its `__init__` defaults are the library's."""

    def __init__(
        self,
        width: int = 4,
        act: str = "silu",
        sizes: tuple = (1, 2),
        groups: dict = {"b": 1, "a": 2},  # noqa: B006 (a mapping default, read only by inspect)
        upcast: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()

    @classmethod
    def with_config(cls, **config) -> _Toy:
        toy = cls()
        toy.config = dict(config)
        return toy


def test_a_mapping_config_is_hashed_beyond_its_init_defaults_in_any_order() -> None:
    """What a library adds at its default, or writes in another order (a tuple default saved as
    a list included), keys as before; a value off its default, or a setting of no default, does
    not; private entries ("_name_or_path", "_diffusers_version") never count."""
    base = config_fingerprint(_Toy.with_config(width=8))
    assert base != ""
    assert config_fingerprint(_Toy.with_config(width=8, act="silu", sizes=[1, 2])) == base
    assert config_fingerprint(_Toy.with_config(act="silu", width=8)) == base
    assert config_fingerprint(_Toy.with_config(width=8, _name_or_path="/elsewhere", _diffusers_version="9")) == base
    assert config_fingerprint(_Toy.with_config(width=8, act="gelu")) != base
    assert config_fingerprint(_Toy.with_config(width=8, sizes=[1, 3])) != base
    assert config_fingerprint(_Toy.with_config(width=8, extra=1)) != base
    assert config_fingerprint(_Toy.with_config(width=4)) == config_fingerprint(_Toy.with_config())
    order = [_Toy.with_config(width=8, extra={"b": 1, "a": 2}), _Toy.with_config(extra={"a": 2, "b": 1}, width=8)]
    assert config_fingerprint(order[0]) == config_fingerprint(order[1])
    # values JSON cannot write (a dtype) are hashed by their repr, and compared with a default by it
    assert config_fingerprint(_Toy.with_config(upcast_to=torch.float16)) != config_fingerprint(_Toy.with_config())
    assert config_fingerprint(_Toy.with_config(width=8, upcast=torch.float32)) == base
    assert config_fingerprint(_Toy.with_config(width=8, upcast=torch.float16)) != base
    # a mapping at its default but saved in another key order is at its default
    assert config_fingerprint(_Toy.with_config(width=8, groups={"a": 2, "b": 1})) == base
    assert config_fingerprint(_Toy.with_config(width=8, groups={"a": 2, "b": 3})) != base


class _Unreadable(_Toy):
    """A class whose `__init__` signature `inspect` cannot read."""


_Unreadable.__init__ = lambda self: torch.nn.Module.__init__(self)
_Unreadable.__init__.__signature__ = "not a signature"


def test_a_mapping_config_of_a_class_without_a_readable_signature_is_hashed_whole() -> None:
    """With no defaults to compare against, every public entry counts, an entry at what would be
    the default included."""
    bare = config_fingerprint(_Unreadable.with_config())
    assert bare != ""
    assert config_fingerprint(_Unreadable.with_config(width=4)) != bare
    assert config_fingerprint(_Unreadable.with_config(_name_or_path="/elsewhere")) == bare


def test_a_module_without_a_config_has_an_empty_fingerprint() -> None:
    assert config_fingerprint(torch.nn.Linear(2, 2)) == ""
    assert ConfigFingerprints()(torch.nn.Linear(2, 2)) == ""
    assert config_fingerprint(_Toy.with_config(name="caf\u00e9 \ud800")) != config_fingerprint(_Toy.with_config())


def test_a_fingerprint_is_computed_once_per_model_and_config_object(monkeypatch) -> None:
    import clipcond.config_fingerprint as module

    calls = []
    real = module.config_fingerprint
    monkeypatch.setattr(module, "config_fingerprint", lambda model: calls.append(model) or real(model))
    fingerprints = ConfigFingerprints()
    model = tiny_pipelines.clip_text_model(0)
    first = fingerprints(model)
    assert fingerprints(model) == first and len(calls) == 1
    model.config = type(model.config)(**model.config.to_dict())  # an equal config, a new object
    assert fingerprints(model) == first and len(calls) == 2
