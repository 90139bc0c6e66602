"""The embedding cache heals itself: damaged files, unwritable or full folders, concurrent
processes, tokenizer changes and odd strings never crash `encode` nor return wrong embeddings."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from forward_counter import ForwardCounter
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from clipcond import TextConditioner
from clipcond.tensor_digest import tensor_digest
from clipcond.tokenization import clip_tokenizer

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def model(tiny_clip_text_path):
    return CLIPTextModel.from_pretrained(tiny_clip_text_path).eval()


def _conditioner(model, cache_dir, tokenizer=None, **kwargs) -> TextConditioner:
    return TextConditioner(
        "sd",
        clip=[(model, tokenizer or clip_tokenizer())],
        cache_dir=None if cache_dir is None else str(cache_dir),
        **kwargs,
    )


def _uncached(model, prompt: str, tokenizer=None) -> torch.Tensor:
    return _conditioner(model, None, tokenizer, cache_size=0).encode(prompt).tokens


def _cache_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "clipcond.cache"]


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


# ---------------------------------------------------------------------------------- damaged files


def _rewrite(path: Path, tensors: dict[str, torch.Tensor], key: str | None = None, digest: bool = True) -> None:
    """A well-formed entry holding `tensors` (with their true digest, so that what is wrong
    is only what the damage changed)."""
    metadata = {"key": key or path.stem, "text": PROMPT}
    if digest:
        metadata["tensor_digest"] = tensor_digest(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _truncate(path: Path, other: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _garbage(path: Path, other: Path) -> None:
    path.write_bytes(b"\x00\xff garbage, not safetensors " * 100)


def _wrong_shape(path: Path, other: Path) -> None:
    tokens = load_file(path)["clip_tokens"]
    _rewrite(path, {"clip_tokens": tokens[..., :16].contiguous()})


def _wrong_dtype(path: Path, other: Path) -> None:
    _rewrite(path, {"clip_tokens": load_file(path)["clip_tokens"].half()})


def _nan(path: Path, other: Path) -> None:
    tokens = load_file(path)["clip_tokens"]
    tokens[0, 3, 5] = float("nan")
    _rewrite(path, {"clip_tokens": tokens})


def _missing_tensor(path: Path, other: Path) -> None:
    _rewrite(path, {})


def _extra_tensor(path: Path, other: Path) -> None:
    tokens = load_file(path)["clip_tokens"]
    _rewrite(path, {"clip_tokens": tokens, "pooled": tokens[0, 0].clone()})


def _flipped_byte(path: Path, other: Path) -> None:
    """One byte inside the tensor data changed: a valid float, so only the digest shows it."""
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # the low byte of a float32 mantissa near the end of the data
    path.write_bytes(bytes(data))


def _no_digest(path: Path, other: Path) -> None:
    _rewrite(path, load_file(path), digest=False)


def _wrong_key(path: Path, other: Path) -> None:
    """Another prompt's valid entry under this prompt's name (a copied or renamed file)."""
    path.write_bytes(other.read_bytes())


DAMAGES = [
    _truncate,
    _garbage,
    _wrong_shape,
    _wrong_dtype,
    _nan,
    _missing_tensor,
    _extra_tensor,
    _flipped_byte,
    _no_digest,
    _wrong_key,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda damage: damage.__name__.strip("_"))
def test_a_damaged_entry_is_recomputed_rewritten_and_reported_once(model, tmp_path, caplog, damage):
    _conditioner(model, tmp_path / "other").encode("a blue square")
    (other,) = _entries(tmp_path / "other")
    _conditioner(model, tmp_path).encode(PROMPT)
    (entry,) = _entries(tmp_path)
    damage(entry, other)
    expected = _uncached(model, PROMPT)

    counter = ForwardCounter(model)
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        tokens = _conditioner(model, tmp_path).encode(PROMPT).tokens
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
    (warning,) = _cache_warnings(caplog)
    assert str(entry) in warning
    assert counter.calls == 1

    # Healed: the next conditioner reads the rewritten file without a warning or a forward.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        again = _conditioner(model, tmp_path).encode(PROMPT).tokens
    counter.handle.remove()
    assert counter.calls == 1
    torch.testing.assert_close(again, tokens, rtol=0, atol=0)
    assert _cache_warnings(caplog) == []


def test_an_entry_deleted_between_finding_and_reading_it_is_a_miss(model, tmp_path, monkeypatch, caplog):
    """Another process deletes the file after this one found it and before it read it: a plain
    miss (as for a file never written), recomputed without a warning."""
    _conditioner(model, tmp_path).encode(PROMPT)
    (entry,) = _entries(tmp_path)

    def vanishing(method, before: bool):
        def touched(self, *args, **kwargs):
            if self != entry or not os.path.exists(entry):
                return method(self, *args, **kwargs)
            if before:  # a read starts after the delete
                entry.unlink()
                return method(self, *args, **kwargs)
            result = method(self, *args, **kwargs)  # a check answers, then the delete
            entry.unlink()
            return result

        return touched

    # Whichever of these the cache calls first to find or read the file, the file is gone after it.
    for name in ("is_file", "exists", "read_bytes"):
        monkeypatch.setattr(Path, name, vanishing(getattr(Path, name), before=name == "read_bytes"))
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        tokens = _conditioner(model, tmp_path).encode(PROMPT).tokens
    monkeypatch.undo()
    torch.testing.assert_close(tokens, _uncached(model, PROMPT), rtol=0, atol=0)
    assert _cache_warnings(caplog) == []
    assert _entries(tmp_path) == [entry]  # written again


# ---------------------------------------------------------------------------------- folders that refuse writes


def _refuse_writes(monkeypatch, folder: Path, create) -> None:
    """Files created in `folder` are made by `create(real_open, path, flags, *args)`: the
    simulation of a folder that refuses writes when chmod cannot (root), or of a full disk."""
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == folder:
            return create(real_open, path, flags, *args)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


def _permission_denied(real_open, path, flags, *args):
    raise PermissionError(errno.EACCES, "Permission denied", str(path))


def _full_disk(real_open, path, flags, *args):
    """The file is created, but what is written to it goes to /dev/full: ENOSPC."""
    os.close(real_open(path, flags, *args))
    return real_open("/dev/full", os.O_WRONLY)


def test_an_unwritable_folder_turns_the_cache_to_memory_with_one_warning(model, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root: chmod does not stop writes, refuse them instead
            _refuse_writes(monkeypatch, folder, _permission_denied)
        cond = _conditioner(model, folder)
        with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
            first = cond.encode(PROMPT).tokens
            second = cond.encode([PROMPT, "a blue square"]).tokens
        monkeypatch.undo()
    finally:
        folder.chmod(0o700)
    torch.testing.assert_close(first, _uncached(model, PROMPT), rtol=0, atol=0)
    torch.testing.assert_close(second[1:], _uncached(model, "a blue square"), rtol=0, atol=0)
    (warning,) = _cache_warnings(caplog)
    assert str(folder) in warning and "memory only" in warning
    assert list(folder.iterdir()) == []


def test_a_folder_that_cannot_be_created_leaves_a_memory_cache(model, tmp_path, monkeypatch, caplog):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    folder = parent / "cache"
    try:
        if os.access(parent, os.W_OK):  # root: chmod does not stop mkdir, refuse it instead
            real_mkdir = Path.mkdir

            def refusing_mkdir(self, *args, **kwargs):
                if self == folder:
                    raise PermissionError(errno.EACCES, "Permission denied", str(self))
                return real_mkdir(self, *args, **kwargs)

            monkeypatch.setattr(Path, "mkdir", refusing_mkdir)
        with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
            cond = _conditioner(model, folder)
            tokens = cond.encode(PROMPT).tokens
        monkeypatch.undo()
    finally:
        parent.chmod(0o700)
    torch.testing.assert_close(tokens, _uncached(model, PROMPT), rtol=0, atol=0)
    (warning,) = _cache_warnings(caplog)
    assert str(folder) in warning
    assert cond.cache.directory is None and len(cond.cache) == 1
    assert not folder.exists()


def test_a_full_disk_turns_the_cache_to_memory_with_one_warning(model, tmp_path, monkeypatch, caplog):
    """Every write to a file created in the cache folder fails with ENOSPC, as on a full disk."""
    _refuse_writes(monkeypatch, tmp_path, _full_disk)
    cond = _conditioner(model, tmp_path)
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        first = cond.encode(PROMPT).tokens
        second = cond.encode("a blue square").tokens
    monkeypatch.undo()
    torch.testing.assert_close(first, _uncached(model, PROMPT), rtol=0, atol=0)
    torch.testing.assert_close(second, _uncached(model, "a blue square"), rtol=0, atol=0)
    (warning,) = _cache_warnings(caplog)
    assert str(tmp_path) in warning and os.strerror(errno.ENOSPC) in warning
    assert list(tmp_path.iterdir()) == []  # no entry, no temporary file left behind


def test_an_entry_path_taken_by_a_folder_skips_that_entry_and_the_folder_stays_in_use(model, tmp_path, caplog):
    # probe13_files2 #6: the rename's EISDIR turned the whole disk cache off for the session
    scratch = tmp_path / "scratch"
    _conditioner(model, scratch).encode("a blue square")
    (entry,) = _entries(scratch)
    folder = tmp_path / "cache"
    (folder / entry.name).mkdir(parents=True)  # something else holds the blue square's entry path
    cond = _conditioner(model, folder)
    prompts = ["a blue square", PROMPT, "two yellow stars"]
    with caplog.at_level(logging.WARNING, logger="clipcond.cache"):
        tokens = cond.encode(prompts).tokens
    for index, prompt in enumerate(prompts):
        torch.testing.assert_close(tokens[index : index + 1], _uncached(model, prompt), rtol=0, atol=0)
    written = [path for path in _entries(folder) if path.is_file()]
    assert len(written) == 2 and entry.name not in {path.name for path in written}
    assert (folder / entry.name).is_dir()
    assert [path.name for path in folder.iterdir() if path.name.startswith(".")] == []  # no temporary left
    assert cond.cache.directory == folder
    assert any(str(folder / entry.name) in warning for warning in _cache_warnings(caplog))
    assert not any("memory only from now on" in warning for warning in _cache_warnings(caplog))


def test_entries_are_written_with_the_users_umask(model, tmp_path):
    previous = os.umask(0o002)
    try:
        _conditioner(model, tmp_path).encode(PROMPT)
    finally:
        os.umask(previous)
    (entry,) = _entries(tmp_path)
    assert entry.stat().st_mode & 0o777 == 0o664


# ---------------------------------------------------------------------------------- two processes

_WORKER = textwrap.dedent(
    """
    import random, sys, threading, time
    from pathlib import Path
    import torch
    from transformers import CLIPTextModel
    from clipcond import TextConditioner
    from clipcond.tokenization import clip_tokenizer

    torch.set_num_threads(1)
    model_path, folder, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    model = CLIPTextModel.from_pretrained(model_path).eval()
    prompts = [f"a {color} circle" for color in ("red", "blue", "green", "pink", "grey", "black")]
    expected = TextConditioner("sd", clip=[(model, clip_tokenizer())], cache_size=0).encode(prompts).tokens
    cond = TextConditioner("sd", clip=[(model, clip_tokenizer())], cache_dir=str(folder / "cache"))
    # Start together, then for a few seconds: read and write entries here, delete them in a thread.
    (folder / f"ready-{seed}").touch()
    while len(list(folder.glob("ready-*"))) < 2:
        time.sleep(0.01)
    deadline = time.monotonic() + 3

    def delete():
        while time.monotonic() < deadline:
            for entry in (folder / "cache").glob("*.safetensors"):
                entry.unlink(missing_ok=True)
            time.sleep(0.001)

    deleter = threading.Thread(target=delete)
    deleter.start()
    rng = random.Random(seed)
    rounds = 0
    while time.monotonic() < deadline:
        cond.cache.clear_memory()
        order = rng.sample(range(len(prompts)), len(prompts))
        tokens = cond.encode([prompts[i] for i in order]).tokens
        assert torch.equal(tokens, expected[order]), "a wrong record was read"
        rounds += 1
    deleter.join()
    print(rounds, cond.cache.directory is not None, cond.cache.hits, cond.cache.misses)
    """
)


@pytest.mark.slow  # two fresh interpreters importing torch: 10-25 s; the race itself is also pinned above
def test_two_processes_writing_and_deleting_one_folder_never_crash(tiny_clip_text_path, tmp_path):
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tiny_clip_text_path), str(tmp_path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    try:
        results = [worker.communicate(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (out, err) in zip(workers, results):
        assert worker.returncode == 0, err[-3000:]
        rounds, on_disk, hits, misses = out.split()
        # Both paths ran: entries read from disk, and entries found missing and written.
        assert int(rounds) >= 5 and on_disk == "True" and int(hits) > 0 and int(misses) > 0
    assert not list((tmp_path / "cache").glob(".*.tmp"))


# ---------------------------------------------------------------------------------- keys


@pytest.mark.parametrize("change", ["pad_token", "added_token"])
def test_a_changed_tokenizer_misses_the_cache_on_disk_and_in_memory(model, tmp_path, change):
    prompt = "a catalog of cats"

    def changed(tokenizer):
        if change == "pad_token":
            tokenizer.pad_token = "!"
        else:  # an existing token made whole: the same vocabulary size, other ids for "catalog"
            tokenizer.add_tokens(["cat"])
        return tokenizer

    before = _uncached(model, prompt)
    after = _uncached(model, prompt, changed(clip_tokenizer()))
    assert not torch.equal(before, after)

    tokenizer = clip_tokenizer()
    in_memory = _conditioner(model, None, tokenizer)
    torch.testing.assert_close(in_memory.encode(prompt).tokens, before, rtol=0, atol=0)
    changed(tokenizer)  # the same tokenizer object, changed in place
    torch.testing.assert_close(in_memory.encode(prompt).tokens, after, rtol=0, atol=0)

    _conditioner(model, tmp_path).encode(prompt)
    on_disk = _conditioner(model, tmp_path, changed(clip_tokenizer()))
    torch.testing.assert_close(on_disk.encode(prompt).tokens, after, rtol=0, atol=0)


def test_only_keys_that_outlive_the_conditioner_read_the_tokenizers_vocabulary(model, tmp_path, monkeypatch):
    """The in-memory cache keys a tokenizer by its version in the conditioner (`version`),
    which costs no read of the vocabulary; the disk cache and `identity` by its fingerprint,
    computed once per tokenizer state. A tokenizer object swapped in misses in memory."""
    from clipcond import tokenizer_fingerprint as module

    read = []
    real = module.tokenizer_fingerprint
    monkeypatch.setattr(module, "tokenizer_fingerprint", lambda tokenizer: read.append(tokenizer) or real(tokenizer))
    tokenizer = clip_tokenizer()
    in_memory = _conditioner(model, None, tokenizer)
    in_memory.encode(["a red circle", "a blue square"])
    in_memory.encode("a red circle")
    assert read == [] and in_memory.cache.hits == 1
    weights, settings = in_memory.identity()
    assert read == [tokenizer] and settings.count(real(tokenizer)) == 1
    on_disk = _conditioner(model, tmp_path, tokenizer)
    on_disk.encode("a red circle")
    on_disk.encode("a green star")
    assert read[1:] == [tokenizer] and on_disk.identity() == (weights, settings)

    before = in_memory.encode("a catalog").tokens
    other = clip_tokenizer()
    other.add_tokens(["cat"])  # the same size, other ids for "catalog"
    in_memory.clip[0].tokenizer = other
    expected = _uncached(model, "a catalog", other)
    assert not torch.equal(expected, before)
    assert torch.equal(in_memory.encode("a catalog").tokens, expected) and in_memory.cache.hits == 1


def test_a_tokenizer_call_with_padding_leaves_the_disk_cache_keys_as_they_were(model, tmp_path):
    """diffusers' `encode_prompt` calls the tokenizer with `padding="longest"`, which transformers
    leaves set on the backend: a conditioner made after such a call reads the rows one made
    before it wrote (no forward), as the ids of a later call do not depend on it."""
    prompt = "a catalog of cats"
    tokenizer = clip_tokenizer()
    first = _conditioner(model, tmp_path, tokenizer)
    expected = first.encode(prompt).tokens
    tokenizer(["a", "a red circle"], padding="longest", truncation=True, max_length=77)
    after = _conditioner(model, tmp_path, tokenizer)
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        torch.testing.assert_close(after.encode(prompt).tokens, expected, rtol=0, atol=0)
    finally:
        hook.remove()
    assert calls == []  # read from disk


def test_another_attention_kernel_misses_the_cache_on_disk_and_in_memory(tiny_clip_text_path, tmp_path):
    """`set_attn_implementation` changes no weight, but the states (by ~1e-7 here): a record
    made with SDPA is not served to the same model running eager attention."""
    model = CLIPTextModel.from_pretrained(tiny_clip_text_path).eval()
    prompt = "two red circles to the left of a blue square"
    in_memory = _conditioner(model, None)
    sdpa = in_memory.encode(prompt).tokens
    _conditioner(model, tmp_path).encode(prompt)
    model.set_attn_implementation("eager")
    eager = _uncached(model, prompt)
    assert not torch.equal(sdpa, eager)  # the kernels differ in the last bits
    torch.testing.assert_close(in_memory.encode(prompt).tokens, eager, rtol=0, atol=0)
    torch.testing.assert_close(_conditioner(model, tmp_path).encode(prompt).tokens, eager, rtol=0, atol=0)


def test_a_lone_surrogate_encodes_with_the_cache_as_without(model, tmp_path):
    prompt = "a \ud800 cat"
    expected = _uncached(model, prompt)
    for cache_dir in (None, tmp_path):
        cond = _conditioner(model, cache_dir)
        torch.testing.assert_close(cond.encode(prompt).tokens, expected, rtol=0, atol=0)
        torch.testing.assert_close(cond.encode(prompt).tokens, expected, rtol=0, atol=0)
    assert len(_entries(tmp_path)) == 1
    torch.testing.assert_close(_conditioner(model, tmp_path).encode(prompt).tokens, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------- the spec of a record


def _sdxl_with_a_narrower_projection():
    """SDXL encoders whose pooled width (24, the projection) differs from the token width."""
    import tiny_pipelines

    tokenizer = clip_tokenizer()
    second = tiny_pipelines.clip_text_model(2, with_projection=True, projection_dim=24)
    return TextConditioner("sdxl", clip=[(tiny_pipelines.clip_text_model(1), tokenizer), (second, tokenizer)])


@pytest.mark.parametrize("family", ["sd_pipe", "sdxl_pipe", "sd3_pipe", "flux_pipe", "pixart_pipe", "sdxl_narrow"])
def test_fresh_records_of_every_family_fit_their_spec_and_nothing_else(request, family):
    """The spec the cache checks files against is what the encoders really make (otherwise
    every entry would be rewritten, or never written), and nothing else: a tensor one larger
    on any axis but the windows', or of another dtype, is refused."""
    from clipcond.record_spec import expected_record

    if family == "sdxl_narrow":
        cond = _sdxl_with_a_narrower_projection()
    else:
        cond = TextConditioner.from_pipeline(request.getfixturevalue(family), cache_size=0)
    records = cond._encode_records(["a red circle", "(a blue:1.3) square " * 30])
    spec = expected_record(cond.clip, cond.t5, cond._active_recipe)
    assert set(spec.tensors) == set(records[0].tensors())
    for record in records:
        assert spec.problem(record.tensors()) is None
    tensors = records[0].tensors()
    assert spec.problem({**tensors, "extra": torch.zeros(1)}) is not None
    for name, tensor in tensors.items():
        assert spec.problem({**tensors, name: tensor.double()}) is not None
        for axis in range(tensor.dim()):
            if name == "clip_tokens" and axis == 0:
                continue  # any number of windows
            grown = torch.cat([tensor, tensor.narrow(axis, 0, 1)], dim=axis)
            assert spec.problem({**tensors, name: grown}) is not None, (name, axis)
