"""The batches against what they are made of, built independently (found by mutation testing of
batches.py, where the other tests compare runs of the batches with each other): the shapes
stream's own samples under the transform, with every `DataConfig` setting of the stream passed
on; `source_images` of each source; and the refusal of a source without one usable sample."""

from __future__ import annotations

import json
import random
import tarfile

import pytest
import torch
from test_data import _add, _png

from clipcond.shapes import ShapesStream, negative_caption
from clipcond.training.data import DataConfig, ImageCaptionBatches, SkipCounter
from clipcond.training.data.batches import source_images
from clipcond.training.data.transforms import ClipImageTransform

SHAPES = {"min_objects": 2, "max_objects": 3, "split": "heldout", "object_count_weights": [1.0, 3.0]}


def _stream(seed: int, size: int) -> ShapesStream:
    return ShapesStream(
        seed=seed, image_size=size, min_objects=2, max_objects=3, split="heldout", count_weights=[1.0, 3.0]
    )


def _halved(image) -> torch.Tensor:
    """A transform of our own: the image's pixels in [0, 1], halved (not CLIP's normalisation)."""
    return torch.tensor(list(image.getdata()), dtype=torch.float32).T.reshape(3, *image.size[::-1]) / 510


@pytest.mark.parametrize("transform", [None, _halved], ids=["clip_transform", "given_transform"])
def test_shapes_batches_are_the_streams_samples_in_step_order(transform):
    """Steps 0-2 of rank 1 of 2, batch 2: global samples 2, 3, then 6, 7, then 10, 11, with
    their captions and hard negatives (drawn from (seed, index))."""
    batches = ImageCaptionBatches(
        DataConfig(source="shapes", **SHAPES), None, 24, 2, 5, rank=1, world=2, hard_negatives=True, transform=transform
    )
    stream, made = _stream(5, 24), transform or ClipImageTransform(24)
    for step, indices in enumerate([(2, 3), (6, 7), (10, 11)]):
        pixels, captions, negatives = next(batches._items)
        samples = [stream.sample(index) for index in indices]
        assert torch.equal(pixels, torch.stack([made(sample.image) for sample in samples])), step
        assert captions == [sample.caption for sample in samples]
        assert negatives == [
            negative_caption(sample.scene, random.Random(f"negative:5:{index}"))
            for sample, index in zip(samples, indices)
        ]


def test_shapes_batches_with_captions_only():
    batches = ImageCaptionBatches(DataConfig(source="shapes", **SHAPES), None, 16, 3, 7)
    stream = _stream(7, 16)
    pixels, captions = batches.next_with_captions()
    assert captions == [stream.sample(index).caption for index in range(3)]
    assert pixels.shape == (3, 3, 16, 16)
    assert batches.next_with_captions()[1] == [stream.sample(index).caption for index in range(3, 6)]


def test_source_images_of_the_shapes_stream_need_a_count():
    data = DataConfig(source="shapes", **SHAPES)
    with pytest.raises(ValueError, match=r"^the shapes stream is endless: give how many of its images to read$"):
        source_images(data, 7, 16, _halved, None, SkipCounter())
    images = list(source_images(data, 7, 16, _halved, 3, SkipCounter()))
    stream = _stream(7, 16)
    assert len(images) == 3
    assert all(torch.equal(image, _halved(stream.sample(index).image)) for index, image in enumerate(images))


def _shard(path) -> None:
    with tarfile.open(path, "w") as archive:
        for key, color, caption in (("a", (255, 0, 0), b"red"), ("b", (0, 0, 255), b"  "), ("c", (0, 255, 0), b"g")):
            _add(archive, f"{key}.png", _png(color))
            _add(archive, f"{key}.txt", caption)


def test_source_images_of_shards_and_manifests_are_each_usable_image_once_in_order(tmp_path):
    _shard(tmp_path / "s-0.tar")
    skipped = SkipCounter()
    data = DataConfig(source="webdataset", urls=str(tmp_path / "s-0.tar"))
    images = list(source_images(data, 0, 12, _halved, 99, skipped))
    assert [image[:, 0, 0].tolist() for image in images] == [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]
    assert dict(skipped.counts) == {"empty caption": 1}
    (tmp_path / "red.png").write_bytes(_png((255, 0, 0)))
    lines = [{"image": "red.png", "caption": "red"}, {"image": "gone.png", "caption": "x"}, {"caption": "no image"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    skipped = SkipCounter()
    data = DataConfig(source="manifest", manifest=str(tmp_path / "m.jsonl"))
    images = list(source_images(data, 0, 12, _halved, None, skipped))
    assert [image[:, 0, 0].tolist() for image in images] == [[0.5, 0.0, 0.0]]
    assert dict(skipped.counts) == {"missing image": 1, "bad manifest line": 1}


def test_a_source_without_one_usable_sample_is_refused_naming_it_and_its_skips(tmp_path):
    path = tmp_path / "s-0.tar"
    with tarfile.open(path, "w") as archive:
        _add(archive, "a.png", _png((255, 0, 0)))
        _add(archive, "a.txt", b"   ")
    batches = ImageCaptionBatches(DataConfig(source="webdataset", urls=str(path)), None, 12, 1, 0)
    with pytest.raises(ValueError) as refusal:
        batches.next_with_captions()
    assert str(refusal.value) == f"no usable sample in {path} (skipped samples: 1 (empty caption: 1))"
    (tmp_path / "m.jsonl").write_text(json.dumps({"caption": "no image"}) + "\n", encoding="utf-8")
    batches = ImageCaptionBatches(DataConfig(source="manifest", manifest=str(tmp_path / "m.jsonl")), None, 12, 1, 0)
    with pytest.raises(ValueError) as refusal:
        batches.next_with_captions()
    assert str(refusal.value) == (
        f"no usable sample in {tmp_path / 'm.jsonl'} (skipped samples: 1 (bad manifest line: 1))"
    )


def test_a_missing_shard_is_named_by_the_config_key():
    batches = ImageCaptionBatches(DataConfig(source="webdataset", urls="/nowhere/s-{0..1}.tar"), None, 12, 1, 0)
    with pytest.raises(FileNotFoundError, match=r"^data\.urls: no shard matches '/nowhere/s-\{0\.\.1\}\.tar'$"):
        batches.next_with_captions()


def test_shapes_batches_leave_torchs_global_generator_alone():
    """The loader's workers' base seed comes from a generator of its own: a run's later draws
    (dropout) do not depend on whether batches were made."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    batches = ImageCaptionBatches(DataConfig(source="shapes"), None, 16, 2, 3)
    batches.next_with_captions()
    assert torch.equal(torch.rand(3), expected)


def test_hard_negatives_are_off_unless_asked():
    class Ids:
        def __call__(self, captions):
            return torch.tensor([[len(caption)] for caption in captions])

    batch = next(ImageCaptionBatches(DataConfig(source="shapes"), Ids(), 16, 2, 3))
    assert set(batch) == {"pixel_values", "input_ids"}


def test_the_skips_go_to_the_given_counter_and_are_logged_with_the_samples_name(tmp_path, caplog):
    import logging

    _shard(tmp_path / "s-0.tar")
    with tarfile.open(tmp_path / "s-1.tar", "w") as archive:
        _add(archive, "d.png", b"no png at all")
        _add(archive, "d.txt", b"broken")
        _add(archive, "e.png", _png((9, 9, 9)))
        _add(archive, "e.txt", b"kept")
    skipped = SkipCounter()
    data = DataConfig(source="webdataset", urls=f"{tmp_path}/s-{{0..1}}.tar", shuffle=False)
    batches = ImageCaptionBatches(data, None, 12, 3, 0, skipped=skipped)
    with caplog.at_level(logging.DEBUG, logger="clipcond.training.data.sources"):
        # stream positions: 0 red, 1 g, 2 d (undecodable), 3 kept, then the next epoch: 4 red, 5 g;
        # d's place takes the sample at its place in the next global batch (2 + 3)
        assert batches.next_with_captions()[1] == ["red", "g", "g"]
    assert dict(skipped.counts) == {"empty caption": 1, "undecodable image": 1}
    logged = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert "skipped sample (empty caption) b: " in logged
    assert any(line.startswith("skipped sample (undecodable image) d: UnidentifiedImageError(") for line in logged)


def test_a_manifests_bad_lines_are_counted_and_logged_with_the_manifest(tmp_path, caplog):
    import logging

    (tmp_path / "red.png").write_bytes(_png((255, 0, 0)))
    lines = [{"caption": "no image"}, {"image": "gone.png", "caption": "gone"}, {"image": "red.png", "caption": "r"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    skipped = SkipCounter()
    data = DataConfig(source="manifest", manifest=str(manifest), shuffle=False)
    batches = ImageCaptionBatches(data, None, 12, 1, 0, skipped=skipped)
    with caplog.at_level(logging.DEBUG, logger="clipcond.training.data.sources"):
        assert batches.next_with_captions()[1] == ["r"]
    assert dict(skipped.counts) == {"bad manifest line": 1, "missing image": 1}
    logged = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert f"skipped sample (bad manifest line) {manifest}: no image for 'no image'" in logged
    assert f"skipped sample (missing image) {tmp_path / 'gone.png'}: " in logged


@pytest.mark.parametrize("source", ["webdataset", "manifest"])
def test_a_source_whose_images_all_fail_is_refused_naming_it(tmp_path, source):
    with tarfile.open(tmp_path / "s-0.tar", "w") as archive:
        _add(archive, "a.png", b"no png")
        _add(archive, "a.txt", b"broken")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "gone.png", "caption": "x"}) + "\n", encoding="utf-8")
    where = str(tmp_path / ("s-0.tar" if source == "webdataset" else "m.jsonl"))
    data = DataConfig(source=source, **({"urls": where} if source == "webdataset" else {"manifest": where}))
    with pytest.raises(ValueError) as refusal:
        ImageCaptionBatches(data, None, 12, 1, 0).next_with_captions()
    assert str(refusal.value).startswith(
        f"no usable sample in {where}: no image from global sample 0 on can be decoded, up to the end of the next "
        "epoch or 10000 samples (skipped samples: "
    )


def _numbered_shard(path, good: set[int], count: int) -> None:
    """A shard of `count` samples captioned by their position; only those in `good` decode."""
    with tarfile.open(path, "w") as archive:
        for position in range(count):
            _add(archive, f"{position:03d}.png", _png((9, 9, 9)) if position in good else b"no png")
            _add(archive, f"{position:03d}.txt", f"p{position}".encode())


@pytest.mark.parametrize(("good", "substitute"), [({0, 2, 17}, "p17"), ({0, 2, 19}, "p2")])
def test_an_unloadable_sample_takes_its_place_in_the_next_eight_global_batches_first(tmp_path, good, substitute):
    """Batch 2: position 1 fails; its places in the next 8 global batches are 3, 5, ..., 17, and
    only then come the positions after it (2, 3, ...): 17 is taken over 2, 19 is not reached."""
    _numbered_shard(tmp_path / "s-0.tar", good, 21)
    data = DataConfig(source="webdataset", urls=str(tmp_path / "s-0.tar"), shuffle=False)
    assert ImageCaptionBatches(data, None, 12, 2, 0).next_with_captions()[1] == ["p0", substitute]


@pytest.mark.parametrize(("good", "substitute"), [({0, 4}, "p4"), ({0, 5}, None)])
def test_the_search_for_a_substitute_stops_after_its_bound_of_tries(tmp_path, monkeypatch, good, substitute):
    """Batch 1, a bound of 3 tries: position 1's substitute is looked for at 2, 3 and 4 only."""
    from clipcond.training.data import batches as batches_module

    monkeypatch.setattr(batches_module, "MAX_SUBSTITUTE_TRIES", 3)
    _numbered_shard(tmp_path / "s-0.tar", good, 12)
    data = DataConfig(source="webdataset", urls=str(tmp_path / "s-0.tar"), shuffle=False)
    batches = ImageCaptionBatches(data, None, 12, 1, 0)
    assert batches.next_with_captions()[1] == ["p0"]
    if substitute is not None:
        assert batches.next_with_captions()[1] == [substitute]
        return
    with pytest.raises(
        ValueError,
        match=r"no image from global sample 1 on can be decoded, up to the end of the next epoch or 3 samples",
    ):
        batches.next_with_captions()
