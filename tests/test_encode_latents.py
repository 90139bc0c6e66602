"""``clipcond encode --latents`` and ``train-diffusion`` on its shards (``data.latents``): the
weights of the live VAE, each distinct image once, resumption, stale and missing latents, and
bad input. On a tiny Stable Diffusion folder (its VAE, its UNet fine-tuned) at 16 px."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from forward_counter import record_encoder_runs
from PIL import Image
from safetensors import safe_open
from test_encode_command import max_weight_difference, shard_contents, write_config
from test_train_diffusion import tiny_config

from clipcond.cli import main as clipcond
from clipcond.training.data import pixels_in_unit_range
from clipcond.training.data.embedding_shards import StaleEmbeddings
from clipcond.training.data.latent_shards import LatentShards, MissingLatents, image_hash, vae_identity
from clipcond.training.diffusion.config import DiffusionDataConfig
from clipcond.training.diffusion.loop import train_diffusion


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    from tiny_pipelines import build_sd

    folder = tmp_path_factory.mktemp("latents") / "sd"
    build_sd().save_pretrained(folder)
    return folder


def latent_run(sd: Path, output: Path, **overrides):
    """A fine-tuning run of the tiny SD UNet on its VAE's latents (shapes stream, 16 px)."""
    settings = dict(unet=None, init_from=str(sd), steps=3, lr=1e-2, ema_decay=None, caption_dropout=0.5)
    return tiny_config(sd, output, **{**settings, **overrides})


def stored_latents(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """image hash -> {"mean", "std"} over every latent shard of `folder` (each hash once)."""
    return shard_contents(folder, "latents")


def the_vae(sd: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(sd / "vae").eval()


@pytest.mark.parametrize("source", ["shapes", "webdataset"])
def test_training_on_encoded_latents_gives_the_weights_of_the_live_vae(
    source: str, sd_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    from diffusers import AutoencoderKL

    sources = {}
    if source == "webdataset":  # 8 samples of 20x24 px, resized by the run to 16 px
        from shards import write_shards

        write_shards(tmp_path / "shards", "train", 2)
        sources = dict(source="webdataset", urls=str(tmp_path / "shards" / "train-{000000..000001}.tar"))
    live = latent_run(sd_folder, tmp_path / "live", data=DiffusionDataConfig(**sources))
    data = DiffusionDataConfig(latents=str(tmp_path / "lat"), embeddings=str(tmp_path / "emb"), **sources)
    read = latent_run(sd_folder, tmp_path / "read", data=data)
    config = write_config(read, tmp_path / "read.yaml")
    argv = ["encode", "--train-config", str(config), "--out", str(tmp_path / "emb"), "--latents", str(tmp_path / "lat")]
    # in the run's batches of images (a VAE's output can differ in the last bit with the batch
    # size), so that the latents read are those the live VAE computes, bit for bit
    assert clipcond([*argv, "--batch-size", str(read.batch_size), "--no-progress"]) == 0
    encoded = []
    real = AutoencoderKL.encode

    def counted(self, pixels, *args, **kwargs):
        encoded.append(len(pixels))
        return real(self, pixels, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counted)
    live_run = train_diffusion(live, show_progress=False)
    assert encoded == [read.batch_size] * read.steps  # the live run encodes every step's images ...
    encoded.clear()
    read_run = train_diffusion(read, show_progress=False)
    assert encoded == []  # ... the run on shards never does
    assert max_weight_difference(live_run.pipeline_dir, read_run.pipeline_dir) == 0.0  # bit for bit
    assert read_run.loss == live_run.loss


def write_images(folder: Path) -> tuple[Path, list[Path]]:
    """A manifest of five lines over four files: b.png is a copy of a.png, a.png is listed
    twice, d.png is 20x24 (the run resizes it); three distinct images as the run reads them."""
    folder.mkdir()
    colours = {"a": (200, 30, 30), "c": (20, 160, 40), "d": (10, 20, 220)}
    for name, colour in colours.items():
        size = (20, 24) if name == "d" else (16, 16)
        image = Image.new("RGB", size, colour)
        image.putpixel((3, 5), (255, 255, 255))
        image.save(folder / f"{name}.png")
    shutil.copy(folder / "a.png", folder / "b.png")
    lines = [{"image": f"{name}.png", "caption": f"picture {name}"} for name in ("a", "b", "c", "a", "d")]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "manifest.jsonl", [folder / f"{name}.png" for name in ("a", "c", "d")]


def test_each_distinct_image_is_encoded_once_with_the_vaes_identity_and_resumes(
    sd_folder: Path, tmp_path: Path, capsys
) -> None:
    manifest, distinct = write_images(tmp_path / "images")
    config = write_config(latent_run(sd_folder, tmp_path / "run"), tmp_path / "run.yaml")
    out = tmp_path / "lat"
    argv = ["encode", "--train-config", str(config), "--manifest", str(manifest), "--latents", str(out)]
    assert clipcond([*argv, "--batch-size", "2", "--shard-size", "2", "--no-progress"]) == 0
    report = capsys.readouterr().out.strip()
    assert report == (
        f"3 images encoded into 2 new latent shards in {out} (0 already there, 2 duplicates; 3 images in the "
        "folder); skipped samples: 0"
    )
    assert not list(out.glob("embeddings-*")), "--latents alone encodes no caption"
    vae = the_vae(sd_folder)
    expected = {}
    for path in distinct:  # each image alone through the VAE, as the run transforms it
        with Image.open(path) as image:
            pixels = pixels_in_unit_range(image, 16)
        distribution = vae.encode(pixels[None]).latent_dist
        expected[image_hash(pixels)] = (distribution.mean[0].detach(), distribution.std[0].detach())
    stored = stored_latents(out)
    assert stored.keys() == expected.keys()
    for key, (mean, std) in expected.items():
        assert stored[key]["mean"].shape == (vae.config.latent_channels, 16, 16)  # one level: no downsampling
        assert torch.allclose(stored[key]["mean"], mean, atol=1e-6, rtol=0)
        assert torch.allclose(stored[key]["std"], std, atol=1e-6, rtol=0)
    identity = vae_identity(vae)
    for path in out.glob("latents-*.safetensors"):
        with safe_open(str(path), "pt") as shard:
            metadata = shard.metadata()
            assert metadata["format"] == "clipcond-image-latents-v1"
            assert (metadata["weights"], metadata["settings"]) == (identity.weights, identity.settings)
    # run again: everything is there, nothing is encoded
    assert clipcond([*argv, "--no-progress"]) == 0
    assert "0 images encoded into 0 new latent shards" in capsys.readouterr().out
    # a lost shard (a killed run writes whole shards or none): only its image is encoded again
    (out / "latents-000001.safetensors").unlink()
    assert clipcond([*argv, "--no-progress"]) == 0
    assert "1 image encoded into 1 new latent shard in" in capsys.readouterr().out
    again = stored_latents(out)
    assert again.keys() == expected.keys()
    assert all(torch.equal(again[key]["mean"], stored[key]["mean"]) for key in expected)
    assert sorted(path.name for path in out.glob("latents-*")) == [
        "latents-000000.safetensors",
        "latents-000001.safetensors",
    ]


def test_image_hash_is_the_pixels_as_read() -> None:
    pixels = torch.rand(3, 8, 8)
    assert image_hash(pixels) == image_hash(pixels.clone())
    nudged = pixels.clone()
    nudged[1, 4, 4] = torch.nextafter(nudged[1, 4, 4], torch.tensor(2.0))
    assert image_hash(nudged) != image_hash(pixels)  # one ulp of one channel
    assert image_hash(pixels.reshape(3, 4, 16)) != image_hash(pixels)  # same bytes, other shape
    assert image_hash(pixels.double()) != image_hash(pixels)
    assert image_hash(pixels.transpose(1, 2).contiguous().transpose(1, 2)) == image_hash(pixels)  # a strided view
    with pytest.raises(ValueError, match=r"one image \(3, H, W\)"):
        image_hash(pixels[None])


def test_latents_of_another_vae_are_refused_and_a_missing_image_stops_the_run(
    sd_folder: Path, tmp_path: Path, capsys
) -> None:
    # the same SD with the VAE's weights changed
    other = tmp_path / "other_sd"
    shutil.copytree(sd_folder, other)
    vae = the_vae(sd_folder)
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(1.5)
    vae.save_pretrained(other / "vae")
    data = DiffusionDataConfig(latents=str(tmp_path / "lat"))
    encoded = write_config(latent_run(other, tmp_path / "x", data=data), tmp_path / "other.yaml")
    assert (
        clipcond(["encode", "--train-config", str(encoded), "--latents", str(tmp_path / "lat"), "--no-progress"]) == 0
    )
    config = latent_run(sd_folder, tmp_path / "run", data=data)
    with pytest.raises(StaleEmbeddings, match=r"latents-000000.safetensors was encoded with VAE weights .*VAE"):
        train_diffusion(config, show_progress=False)
    assert not (tmp_path / "run").exists()
    config_path = write_config(config, tmp_path / "run.yaml")
    assert clipcond(["train-diffusion", "--config", str(config_path)]) == 2
    assert "stale" in capsys.readouterr().err
    # encoding into that folder with the other VAE is refused, leaving it as it was
    before = sorted(p.name for p in (tmp_path / "lat").iterdir())
    assert clipcond(["encode", "--train-config", str(config_path), "--latents", str(tmp_path / "lat")]) == 2
    assert "--latents: " in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "lat").iterdir()) == before

    # latents of other images: the run stops at its first step, naming the image's hash
    manifest, _ = write_images(tmp_path / "images")
    elsewhere = DiffusionDataConfig(latents=str(tmp_path / "lat2"))
    config_path = write_config(latent_run(sd_folder, tmp_path / "run2", data=elsewhere), tmp_path / "run2.yaml")
    argv = [
        "encode",
        "--train-config",
        str(config_path),
        "--manifest",
        str(manifest),
        "--latents",
        str(tmp_path / "lat2"),
    ]
    assert clipcond([*argv, "--no-progress"]) == 0
    with pytest.raises(MissingLatents) as missing:
        train_diffusion(latent_run(sd_folder, tmp_path / "run2", data=elsewhere), show_progress=False)
    named = re.search(r"image 0 of the batch \(hash ([0-9a-f]{64})\) is not in (\S+);", str(missing.value))
    assert named is not None, missing.value
    from clipcond.shapes import ShapesStream

    first = pixels_in_unit_range(ShapesStream(0, 16, 1, 1, "train").sample(0).image, 16)
    assert named[1] == image_hash(first) and named[2] == str(tmp_path / "lat2")
    shutil.rmtree(tmp_path / "run2")
    assert clipcond(["train-diffusion", "--config", str(config_path), "--no-progress"]) == 1
    assert "is not in" in capsys.readouterr().err


def test_bad_latents_input_is_refused_before_any_work(
    sd_folder: Path, tiny_clip_text_path: Path, tmp_path: Path, capsys
) -> None:
    latent = write_config(latent_run(sd_folder, tmp_path / "run"), tmp_path / "latent.yaml")
    pixel_space = write_config(tiny_config(tiny_clip_text_path, tmp_path / "run"), tmp_path / "pixels.yaml")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    (tmp_path / "file").write_text("")
    out = str(tmp_path / "o")
    cases = {
        "give --out": ["encode", "--train-config", str(latent)],
        "--latents needs --train-config": ["encode", "--pipeline", str(sd_folder), "--shapes", "4", "--latents", out],
        "--prompts holds captions only": [
            "encode",
            "--train-config",
            str(latent),
            "--prompts",
            str(prompts),
            "--latents",
            out,
        ],
        "--latents: the run trains in pixel space": ["encode", "--train-config", str(pixel_space), "--latents", out],
        # with --out too: refused before any caption is encoded
        "the run trains in pixel space": [
            "encode",
            "--train-config",
            str(pixel_space),
            "--out",
            str(tmp_path / "emb"),
            "--latents",
            out,
        ],  # fmt: skip
        "is not a folder": ["encode", "--train-config", str(latent), "--latents", str(tmp_path / "file")],
    }
    for expected, argv in cases.items():
        assert clipcond([*argv, "--no-progress"]) == 2, expected
        assert expected in capsys.readouterr().err, expected
    assert not (tmp_path / "o").exists() and not (tmp_path / "run").exists() and not (tmp_path / "emb").exists()
    # the run config: data.latents is checked with its other files, and needs a VAE
    (tmp_path / "lat").mkdir()
    for config, message in (
        (
            latent_run(sd_folder, tmp_path / "r", data=DiffusionDataConfig(latents=str(tmp_path / "none"))),
            "data.latents: no such folder",
        ),
        (
            tiny_config(tiny_clip_text_path, tmp_path / "r", data=DiffusionDataConfig(latents=str(tmp_path / "lat"))),
            "trains in pixel space",
        ),
    ):
        assert clipcond(["train-diffusion", "--config", str(write_config(config, tmp_path / "bad.yaml"))]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="data.latents must be a folder path"):
        DiffusionDataConfig(latents=" ")
    with pytest.raises(ValueError, match="data.latents must be a folder path"):
        DiffusionDataConfig(latents=3)
    # reading an empty folder
    with pytest.raises(ValueError, match="holds no latent shard"):
        LatentShards(tmp_path / "lat")


def test_an_empty_latents_is_refused_rather_than_read_as_the_current_folder(
    sd_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`--latents "$LAT"` with LAT unset: a usage error naming --latents, nothing written in the
    current folder (the latent shards landed there)."""
    config = write_config(latent_run(sd_folder, tmp_path / "run"), tmp_path / "run.yaml")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["encode", "--train-config", str(config), "--shapes", "2", "--latents", "", "--no-progress"]
    assert clipcond(argv) == 2
    assert capsys.readouterr().err.strip() == "error: --latents: expected a folder path, got ''"
    assert list(cwd.iterdir()) == []


def test_a_tilde_in_latents_is_the_home_folder_where_the_shards_go(
    sd_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`--latents=~/lat`: the latent shards go to $HOME/lat, not to a folder named ~."""
    config = write_config(latent_run(sd_folder, tmp_path / "run"), tmp_path / "run.yaml")
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert clipcond(["encode", "--train-config", str(config), "--shapes", "2", "--latents=~/lat", "--no-progress"]) == 0
    assert f"in {home / 'lat'} " in capsys.readouterr().out
    assert len(stored_latents(home / "lat")) == 2
    assert list(cwd.iterdir()) == []


def test_a_latents_folder_that_cannot_be_used_is_refused_before_any_caption_is_encoded(
    sd_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`encode --out E --latents L`: L holding latents of another VAE, held by another live
    encode or holding a damaged shard is a usage error naming --latents before the conditioner
    encodes a caption (the whole caption pass ran first, then the error came)."""
    from clipcond.training.run_lock import RunFolderLock

    other = tmp_path / "other_sd"  # the same SD with the VAE's weights changed
    shutil.copytree(sd_folder, other)
    vae = the_vae(sd_folder)
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(1.5)
    vae.save_pretrained(other / "vae")
    stale = tmp_path / "stale"
    encoded = write_config(latent_run(other, tmp_path / "x"), tmp_path / "other.yaml")
    assert clipcond(["encode", "--train-config", str(encoded), "--shapes", "2", "--latents", str(stale)]) == 0
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "latents-000000.safetensors").write_bytes(b"<html>not a shard</html>")
    locked = RunFolderLock(tmp_path / "locked")
    locked.acquire()  # another encode into it, still running
    config = write_config(latent_run(sd_folder, tmp_path / "run"), tmp_path / "run.yaml")
    encoder_calls = record_encoder_runs(monkeypatch)
    try:
        for folder, expected in (
            (stale, "these latents are stale"),
            (tmp_path / "locked", "is in use by another run (pid"),
            (damaged, "is not a readable latent shard"),
        ):
            out = tmp_path / f"emb-{folder.name}"
            argv = [
                "encode",
                "--train-config",
                str(config),
                "--shapes",
                "2",
                "--out",
                str(out),
                "--latents",
                str(folder),
            ]
            assert clipcond([*argv, "--no-progress"]) == 2, folder
            lines = capsys.readouterr().err.strip().splitlines()
            assert lines[-1].startswith(f"error: --latents: {folder}") and expected in lines[-1], lines[-1]
            if folder.name == "locked":  # the option that chooses another folder
                assert lines[-1].endswith("choose another --latents"), lines[-1]
            assert not any("Traceback" in line for line in lines)
            assert encoder_calls == [] and not out.exists(), folder
    finally:
        locked.release()
    # one folder for both: locked once, and both encoded into it
    argv = ["encode", "--train-config", str(config), "--shapes", "2", "--out", str(tmp_path / "both")]
    assert clipcond([*argv, "--latents", str(tmp_path / "both" / "."), "--no-progress"]) == 0
    assert encoder_calls and len(stored_latents(tmp_path / "both")) == 2
    assert len(shard_contents(tmp_path / "both")) == 3  # "" and the two captions


def test_the_progress_bars_count_captions_and_images(sd_folder: Path, tmp_path: Path, capfd) -> None:
    config = write_config(latent_run(sd_folder, tmp_path / "run"), tmp_path / "run.yaml")
    argv = ["encode", "--train-config", str(config), "--shapes", "3"]
    assert clipcond([*argv, "--out", str(tmp_path / "emb"), "--latents", str(tmp_path / "lat")]) == 0
    bars = [line.rpartition("\r")[2] for line in capfd.readouterr().err.splitlines() if "encode: " in line]
    captions, images = (
        re.search(rf"encode: 100%\|[^|]*\| (\d+)/(\d+) \[[^\]]*(?:{unit}/s|s/{unit})\]", "\n".join(bars))
        for unit in ("caption", "image")
    )
    assert captions is not None and images is not None, bars
    assert captions.group(1) == captions.group(2)  # every distinct caption of the 3 samples, the empty one too
    assert images.groups() == ("3", "3")  # the shapes stream's 3 images: the total is known beforehand


def test_a_manifests_images_have_no_total_and_a_killed_writers_leftovers_go(
    sd_folder: Path, tmp_path: Path, capfd
) -> None:
    manifest, _ = write_images(tmp_path / "images")
    config = write_config(latent_run(sd_folder, tmp_path / "run"), tmp_path / "run.yaml")
    (tmp_path / "lat").mkdir()
    leftover = tmp_path / "lat" / ".latents-000000.safetensors.123.abcd.tmp"  # a killed encode's half shard
    leftover.write_bytes(b"half a shard")
    argv = ["encode", "--train-config", str(config), "--manifest", str(manifest), "--latents", str(tmp_path / "lat")]
    assert clipcond(argv) == 0
    assert not leftover.exists()
    bars = [line.rpartition("\r")[2] for line in capfd.readouterr().err.splitlines() if "encode: " in line]
    # a manifest's count of distinct images is known only once read: no total, no percentage
    assert re.search(r"^encode: 3image \[", bars[-1]), bars
