"""The frozen inputs' record on its own: each entry's fields against `os.stat` and a blake2b of
the bytes computed here, the file read in blocks of 4 MiB, the config values that name no
model left out, and a key one record lacks skipped, not the end of the comparison."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

from clipcond.training import frozen_inputs
from clipcond.training.frozen_inputs import frozen_input_fingerprints, replaced_input


def test_each_file_is_recorded_by_its_stat_and_the_blake2b_of_its_bytes(tmp_path) -> None:
    model = tmp_path / "vae"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 3)
    record = frozen_input_fingerprints(SimpleNamespace(vae=str(model)))
    assert list(record) == ["vae"] and list(record["vae"]) == ["path", "files"] and record["vae"]["path"] == str(model)
    assert list(record["vae"]["files"]) == ["config.json", "sub/weights.bin"]
    for name, entry in record["vae"]["files"].items():
        stat = os.stat(model / name)
        digest = hashlib.blake2b((model / name).read_bytes(), digest_size=32).hexdigest()
        assert entry == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "blake2b": digest}


class RecordingFile:
    def __init__(self, path, mode) -> None:
        self.handle = open(path, mode)  # closed by __exit__
        self.reads: list[int | None] = []

    def read(self, size=None):
        self.reads.append(size)
        return self.handle.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_a_file_is_read_4_mib_at_a_time(tmp_path, monkeypatch) -> None:
    path = tmp_path / "model.safetensors"
    data = os.urandom((9 << 20) + 5)  # 9 MiB and 5 bytes
    path.write_bytes(data)
    opened = []
    monkeypatch.setattr(
        frozen_inputs, "open", lambda p, mode: opened.append(RecordingFile(p, mode)) or opened[-1], raising=False
    )
    record = frozen_input_fingerprints(SimpleNamespace(init_from=str(path)))
    assert record["init_from"]["files"]["."]["blake2b"] == hashlib.blake2b(data, digest_size=32).hexdigest()
    assert [file.reads for file in opened] == [[4 << 20] * 4]  # 4, 4, 1 MiB and 5 bytes, then the empty end


def test_config_values_that_name_no_existing_model_are_left_out(tmp_path) -> None:
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    config = SimpleNamespace(
        text_encoder=5, t5_encoder=Path(tmp_path / "vae"), vae="", init_from=str(tmp_path / "gone")
    )
    assert frozen_input_fingerprints(config) == {}
    assert list(frozen_input_fingerprints(SimpleNamespace(text_encoder=None, vae=str(tmp_path / "vae")))) == ["vae"]


def test_a_key_the_first_record_lacks_is_skipped_and_the_rest_compared(tmp_path) -> None:
    for name in ("encoder", "vae"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(b"first")
    config = SimpleNamespace(text_encoder=str(tmp_path / "encoder"), vae=str(tmp_path / "vae"))
    first = frozen_input_fingerprints(config)
    del first["text_encoder"]  # a record written before the run read a text encoder
    (tmp_path / "vae" / "weights.bin").write_bytes(b"other")
    assert replaced_input(first, frozen_input_fingerprints(config)) == (
        f"vae {tmp_path / 'vae'} was replaced since the run started (weights.bin differs)"
    )
