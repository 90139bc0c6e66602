"""`CaptionSource` on its own: the shapes stream's training and held-out captions against the
stream read directly (at another image size: captions do not depend on the rendering), a
manifest's captions held out from its end and read modulo, and the refusal when nothing
would remain for training."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from clipcond.shapes import ShapesStream
from clipcond.training.data import CaptionSource, DataConfig, SkipCounter


def test_the_shapes_stream_gives_training_captions_by_index_and_held_out_ones_of_the_next_seed() -> None:
    data = DataConfig(min_objects=1, max_objects=2, object_count_weights=[1, 3], split="all")
    source = CaptionSource(data, seed=3, heldout_count=4)
    train = ShapesStream(3, 64, 1, 2, "all", count_weights=[1, 3])
    heldout = ShapesStream(4, 64, 1, 2, "heldout", count_weights=[1, 3])
    assert source.size is None
    assert [source.caption(index) for index in (0, 1, 57)] == [train.sample(index).caption for index in (0, 1, 57)]
    assert source.first(3) == [train.sample(index).caption for index in range(3)]
    assert source.heldout == [heldout.sample(index).caption for index in range(4)]
    default = CaptionSource(DataConfig(), seed=0, heldout_count=1)
    assert default.caption(5) == ShapesStream(0, 64, 1, 1, "train").sample(5).caption
    assert default.heldout == [ShapesStream(1, 64, 1, 1, "heldout").sample(0).caption]


def manifest(tmp_path, count: int) -> str:
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps({"image": f"{i}.png", "caption": f"caption {i}"}) + "\n" for i in range(count)))
    return str(path)


def test_a_manifests_last_captions_are_held_out_and_the_rest_read_modulo(tmp_path) -> None:
    skipped = SkipCounter()
    source = CaptionSource(
        DataConfig(source="manifest", manifest=manifest(tmp_path, 5)), seed=9, heldout_count=2, skipped=skipped
    )
    assert source.skipped is skipped and source.size == 3
    assert source.heldout == ["caption 3", "caption 4"]
    assert [source.caption(index) for index in range(7)] == ["caption 0", "caption 1", "caption 2"] * 2 + ["caption 0"]
    assert source.first(2) == ["caption 0", "caption 1"] and source.first(10) == ["caption 0", "caption 1", "caption 2"]
    whole = CaptionSource(DataConfig(source="manifest", manifest=manifest(tmp_path, 2)), seed=0, heldout_count=0)
    assert whole.heldout == [] and whole.size == 2
    assert (
        CaptionSource(DataConfig(source="manifest", manifest=manifest(tmp_path, 2)), seed=0, heldout_count=1).size == 1
    )


def test_nothing_left_for_training_is_refused_naming_the_source(tmp_path) -> None:
    path = manifest(tmp_path, 3)
    with pytest.raises(ValueError) as raised:
        CaptionSource(DataConfig(source="manifest", manifest=path), seed=0, heldout_count=3)
    assert str(raised.value) == (
        f"{path} holds 3 usable captions; eval_captions (3) are held out of them and at least one must remain for training"
    )
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("0000.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    with pytest.raises(ValueError) as raised:
        CaptionSource(DataConfig(source="webdataset", urls=[str(shard)]), seed=0, heldout_count=1)
    assert str(raised.value) == (
        f"[{str(shard)!r}] holds 1 usable captions; eval_captions (1) are held out of them and at least one must remain "
        "for training"
    )
    source = CaptionSource(DataConfig(source="webdataset", urls=[str(shard)]), seed=0, heldout_count=0)
    assert source.first(5) == ["a"] and source.caption(3) == "a"


def test_shard_members_skipped_are_counted_in_the_sources_counter(tmp_path) -> None:
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("0000.txt", b"a red circle"), ("0001.txt", b"   "), ("0002.txt", b"a blue square")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    skipped = SkipCounter()
    source = CaptionSource(DataConfig(source="webdataset", urls=str(shard)), seed=0, heldout_count=1, skipped=skipped)
    assert source.first(5) == ["a red circle"] and source.heldout == ["a blue square"]
    assert dict(skipped.counts) == {"empty caption": 1}
