"""The data section of the run configs on its own: its defaults, each refusal whole and in the
order it is made, what an old snapshot meant by a missing `shuffle`, and the file checks
before any work."""

from __future__ import annotations

import pytest

from clipcond.training.data.config import DATA_SOURCES, SHUFFLE_BUFFER, DataConfig


def test_the_defaults() -> None:
    config = DataConfig()
    assert (config.source, config.urls, config.manifest, config.min_objects, config.max_objects) == (
        "shapes",
        [],
        None,
        1,
        1,
    )
    assert (config.object_count_weights, config.split, config.num_workers, config.shuffle, config.shuffle_buffer) == (
        None,
        "train",
        0,
        True,
        1000,
    )
    assert SHUFFLE_BUFFER == 1000 and DATA_SOURCES == ("shapes", "webdataset", "manifest")
    assert DataConfig().urls is not DataConfig().urls


URLS = "shards/train-{000000..000099}.tar"
NEEDS_URLS = (
    "data.source 'webdataset' needs data.urls: a shard pattern such as 'shards/train-{000000..000099}.tar' ('::' "
    "between several) or a list of them, got "
)


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (
            dict(source="webdatset"),
            ValueError,
            "data.source: expected one of ['shapes', 'webdataset', 'manifest'], got 'webdatset'",
        ),
        (dict(source="webdataset"), ValueError, NEEDS_URLS + "[]"),
        (dict(source="webdataset", urls=""), ValueError, NEEDS_URLS + "''"),
        (dict(source="webdataset", urls="  "), ValueError, NEEDS_URLS + "'  '"),
        (dict(source="webdataset", urls=[URLS, " "]), ValueError, NEEDS_URLS + f"[{URLS!r}, ' ']"),
        (dict(source="webdataset", urls=[URLS, 3]), ValueError, NEEDS_URLS + f"[{URLS!r}, 3]"),
        (dict(source="manifest"), ValueError, "data.source 'manifest' needs data.manifest"),
        (dict(source="manifest", manifest=""), ValueError, "data.source 'manifest' needs data.manifest"),
        (
            dict(min_objects=0),
            ValueError,
            "data.min_objects and data.max_objects must satisfy 1 <= min <= max <= 4, got 0 and 1",
        ),
        (
            dict(min_objects=3, max_objects=2),
            ValueError,
            "data.min_objects and data.max_objects must satisfy 1 <= min <= max <= 4, got 3 and 2",
        ),
        (
            dict(max_objects=5),
            ValueError,
            "data.min_objects and data.max_objects must satisfy 1 <= min <= max <= 4, got 1 and 5",
        ),
        (
            dict(source="manifest", manifest="m.jsonl", object_count_weights=[1.0]),
            ValueError,
            "data.object_count_weights applies to data.source 'shapes' only, not 'manifest'",
        ),
        (
            dict(max_objects=2, object_count_weights=[1.0]),
            ValueError,
            "data.object_count_weights must hold one weight per object count 1..2 (2 numbers), got 1: [1.0]",
        ),
        (dict(num_workers=-1), ValueError, "data.num_workers must be >= 0, got -1"),
        (
            dict(source="webdataset", urls=URLS, num_workers=1),
            ValueError,
            "data.num_workers applies to data.source 'shapes' only, got 1 with 'webdataset': shards and manifests are "
            "decoded in the training process; set it to 0",
        ),
        (
            dict(source="manifest", manifest="m.jsonl", num_workers=2),
            ValueError,
            "data.num_workers applies to data.source 'shapes' only, got 2 with 'manifest': shards and manifests are "
            "decoded in the training process; set it to 0",
        ),
        (dict(shuffle="yes"), TypeError, "data.shuffle must be true or false, got 'yes'"),
        (
            dict(shuffle=0, source="manifest", manifest="m.jsonl"),
            TypeError,
            "data.shuffle must be true or false, got 0",
        ),
        (
            dict(shuffle=False),
            ValueError,
            "data.shuffle applies to webdataset and manifest sources; the shapes stream is random",
        ),
        (
            dict(source="webdataset", urls=URLS, shuffle_buffer=0),
            ValueError,
            "data.shuffle_buffer must be an integer >= 1, got 0",
        ),
        (
            dict(source="webdataset", urls=URLS, shuffle_buffer=True),
            ValueError,
            "data.shuffle_buffer must be an integer >= 1, got True",
        ),
        (
            dict(source="webdataset", urls=URLS, shuffle_buffer=10.0),
            ValueError,
            "data.shuffle_buffer must be an integer >= 1, got 10.0",
        ),
        (
            dict(source="manifest", manifest="m.jsonl", shuffle_buffer=10),
            ValueError,
            "data.shuffle_buffer applies to data.source 'webdataset' only, not 'manifest'",
        ),
        (
            dict(shuffle_buffer=999),
            ValueError,
            "data.shuffle_buffer applies to data.source 'webdataset' only, not 'shapes'",
        ),
        # the first problem is the one named
        (
            dict(source="manifest", min_objects=0, num_workers=-1),
            ValueError,
            "data.source 'manifest' needs data.manifest",
        ),
        (
            dict(min_objects=0, num_workers=-1, shuffle="no"),
            ValueError,
            "data.min_objects and data.max_objects must satisfy 1 <= min <= max <= 4, got 0 and 1",
        ),
        (dict(num_workers=-1, shuffle="no"), ValueError, "data.num_workers must be >= 0, got -1"),
        (dict(shuffle="no", shuffle_buffer=0), TypeError, "data.shuffle must be true or false, got 'no'"),
        (
            dict(shuffle=False, shuffle_buffer=0),
            ValueError,
            "data.shuffle applies to webdataset and manifest sources; the shapes stream is random",
        ),
        (dict(shuffle_buffer=0), ValueError, "data.shuffle_buffer must be an integer >= 1, got 0"),
    ],
)
def test_the_refusals_whole(settings, error, message) -> None:
    with pytest.raises(error) as raised:
        DataConfig(**settings)
    assert str(raised.value) == message


def test_what_each_source_takes() -> None:
    DataConfig(source="webdataset", urls=URLS, shuffle=False, shuffle_buffer=10)
    DataConfig(source="webdataset", urls=[URLS, "more/{0..3}.tar"])
    DataConfig(
        source="webdataset", urls="my shards/train {0..3}.tar", shuffle_buffer=1
    )  # spaces in a path; the least buffer
    DataConfig(source="manifest", manifest="m.jsonl", shuffle=False)
    DataConfig(min_objects=1, max_objects=4, object_count_weights=[1, 0, 0, 2], num_workers=3, split="all")
    DataConfig(min_objects=4, max_objects=4)


def test_a_snapshot_without_shuffle_read_files_in_order() -> None:
    assert DataConfig.meaning_of_missing_keys({}) == {"shuffle": True}
    assert DataConfig.meaning_of_missing_keys({"source": "shapes"}) == {"shuffle": True}
    assert DataConfig.meaning_of_missing_keys({"source": "manifest"}) == {"shuffle": False}
    assert DataConfig.meaning_of_missing_keys({"source": "webdataset"}) == {"shuffle": False}


def test_the_files_are_checked_before_any_work(tmp_path) -> None:
    DataConfig().check_files()  # the shapes stream reads no file
    manifest = tmp_path / "data.jsonl"
    with pytest.raises(FileNotFoundError) as raised:
        DataConfig(source="manifest", manifest=str(manifest)).check_files()
    assert str(raised.value) == f"data.manifest: no such file {manifest}"
    manifest.mkdir()  # a folder is no manifest
    with pytest.raises(FileNotFoundError):
        DataConfig(source="manifest", manifest=str(manifest)).check_files()
    manifest.rmdir()
    manifest.write_text("")
    DataConfig(source="manifest", manifest=str(manifest)).check_files()
    pattern = str(tmp_path / "train-{0..1}.tar")
    with pytest.raises(FileNotFoundError) as raised:
        DataConfig(source="webdataset", urls=pattern).check_files()
    assert str(raised.value).startswith("data.urls: ")
    (tmp_path / "train-0.tar").write_bytes(b"")
    (tmp_path / "train-1.tar").write_bytes(b"")
    DataConfig(source="webdataset", urls=pattern).check_files()
