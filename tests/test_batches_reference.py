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
