"""The shapes stream's settings on their own: the defaults, each refusal whole, the object
counts weighted in every split, streams told apart by every setting, and samples pinned so a
later version that draws other ones is seen (the training data of a resumed run)."""

from __future__ import annotations

import pytest

from clipcond.shapes import ShapesStream
from clipcond.shapes.scene import MAX_OBJECTS


def test_the_defaults() -> None:
    stream = ShapesStream()
    assert (stream.seed, stream.image_size, stream.min_objects, stream.max_objects, stream.split) == (
        0,
        32,
        1,
        MAX_OBJECTS,
        "train",
    )
    assert stream.count_weights is None and stream.sample(0).image.size == (32, 32)
    assert (
        repr(stream)
        == "ShapesStream(seed=0, image_size=32, min_objects=1, max_objects=4, split='train', count_weights=None)"
    )


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (dict(seed="1"), TypeError, "seed must be an int, got '1'"),
        (dict(seed=1.0), TypeError, "seed must be an int, got 1.0"),
        (dict(seed=True), TypeError, "seed must be an int, got True"),
        (dict(image_size="32"), ValueError, "image_size must be an int >= 16, got '32'"),
        (dict(image_size=15), ValueError, "image_size must be an int >= 16, got 15"),
        (dict(min_objects="1"), ValueError, "min_objects must be an int in [1, 4], got '1'"),
        (dict(min_objects=0), ValueError, "min_objects must be an int in [1, 4], got 0"),
        (dict(max_objects=5), ValueError, "max_objects must be an int in [1, 4], got 5"),
        (dict(max_objects=2.0), ValueError, "max_objects must be an int in [1, 4], got 2.0"),
        (dict(min_objects=3, max_objects=2), ValueError, "min_objects (3) must not exceed max_objects (2)"),
        (dict(split="test"), ValueError, "split must be one of ('train', 'heldout', 'all'), got 'test'"),
    ],
)
def test_refusals_whole(settings, error, message) -> None:
    with pytest.raises(error) as raised:
        ShapesStream(**settings)
    assert str(raised.value) == message


@pytest.mark.parametrize("index", ["3", -1, True, 2.0])
def test_an_index_that_is_no_non_negative_int_is_refused(index) -> None:
    with pytest.raises(ValueError) as raised:
        ShapesStream().scene(index)
    assert str(raised.value) == f"index must be a non-negative int, got {index!r}"


@pytest.mark.parametrize("split", ["train", "heldout", "all"])
def test_the_count_weights_hold_in_every_split(split) -> None:
    stream = ShapesStream(0, 16, 1, 3, split, count_weights=[0, 0, 1])
    assert {len(stream.scene(index).objects) for index in range(20)} == {3}


def test_every_setting_gives_another_stream() -> None:
    def captions(stream: ShapesStream) -> list[str]:
        return [stream.sample(index).caption for index in range(6)]

    base = captions(ShapesStream(0, 16, 1, 2, "train", count_weights=[1, 3]))
    for other in (
        ShapesStream(1, 16, 1, 2, "train", count_weights=[1, 3]),
        ShapesStream(0, 16, 1, 2, "train", count_weights=[3, 1]),
        ShapesStream(0, 16, 1, 2, "train"),
        ShapesStream(0, 16, 1, 2, "all", count_weights=[1, 3]),
    ):
        assert captions(other) != base
    assert captions(ShapesStream(0, 64, 1, 2, "train", count_weights=[1.0, 3.0])) == base  # the size draws no caption


def test_samples_are_those_of_earlier_versions() -> None:
    """Written out from this version: a change of how the stream draws shows here."""
    assert ShapesStream(0).sample(0).caption == "a red triangle"
    assert ShapesStream(0, 32, 1, 2, "train", count_weights=[1, 3]).sample(0).caption == (
        "an image of a small green triangle above a large cyan circle"
    )
    assert (
        ShapesStream(5, 16, 2, 3, "heldout").sample(7).caption
        == "a purple square, a large green square and a green triangle"
    )
