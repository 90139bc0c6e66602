"""Three small parts of the training data, each on its own: a prompt file read into captions,
captions tokenized into a padded batch of real CLIP ids (with its cache and truncation count),
and per-sample random draws keyed by the sample's global index."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from clipcond.tokenization import clip_tokenizer
from clipcond.training.data.caption_tokenizer import CaptionTokenizer
from clipcond.training.data.prompt_file import prompt_file_captions
from clipcond.training.data.sample_random import SampleGenerators
from clipcond.training.data.sources import SkipCounter


def read(tmp_path, data: bytes) -> tuple[list[str], dict]:
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    skipped = SkipCounter()
    return prompt_file_captions(path, skipped), dict(skipped.counts)


def test_a_prompt_per_line_whitespace_collapsed_and_blank_lines_counted(tmp_path) -> None:
    assert read(tmp_path, b"a  red circle\n\n  blue\tsquare \r\n   \nlast") == (
        ["a red circle", "blue square", "last"],
        {"empty caption": 2},
    )
    assert read(tmp_path, b"one\ntwo\n") == (["one", "two"], {})  # the last newline ends a line
    assert read(tmp_path, b"one\n\n") == (["one"], {"empty caption": 1})
    assert read(tmp_path, b"") == ([], {})
    assert read(tmp_path, b"\n") == ([], {"empty caption": 1})


def test_only_a_newline_ends_a_line_and_a_byte_order_mark_is_dropped(tmp_path) -> None:
    """Before: the file was read with universal newlines, so a lone carriage return ended a line
    (two prompts here), where a manifest's or a shard's caption holding one is one caption."""
    text = "\ufeffa red\u2028circle\nform\x0cfeed\rstill one line\n"
    assert read(tmp_path, text.encode("utf-8")) == (["a red circle", "form feed still one line"], {})


def test_a_prompt_file_is_utf8_whatever_the_locale(tmp_path) -> None:
    """Under an ASCII locale (Python's UTF-8 mode and locale coercion off, as on systems whose
    default encoding is not UTF-8, Windows' cp1252 among them) the file is still UTF-8."""
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffcafé crème\n".encode("utf-8"))
    code = (
        "import sys; from clipcond.training.data.prompt_file import prompt_file_captions as read; "
        "from clipcond.training.data.sources import SkipCounter; print(ascii(read(sys.argv[1], SkipCounter())))"
    )
    environment = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    result = subprocess.run([sys.executable, "-c", code, str(path)], env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == ascii(["café crème"]) + "\n"


def test_each_blank_line_is_logged_with_the_file(tmp_path, caplog) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"a\n\nb\n")
    with caplog.at_level(logging.DEBUG, logger="clipcond.training.data.sources"):
        prompt_file_captions(path, SkipCounter())
    assert [record.getMessage() for record in caplog.records] == [f"skipped sample (empty caption) {path}"]


def test_a_missing_file_or_a_folder_is_not_found(tmp_path) -> None:
    for path in (tmp_path / "missing.txt", tmp_path):
        with pytest.raises(FileNotFoundError) as raised:
            prompt_file_captions(path, SkipCounter())
        assert str(raised.value) == f"prompt file not found: {path}"


def test_a_file_that_is_not_utf8_is_named(tmp_path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"ok\ncaf\xe9 au lait\n")
    with pytest.raises(UnicodeDecodeError) as reference:
        b"ok\ncaf\xe9 au lait\n".decode("utf-8")
    with pytest.raises(ValueError) as raised:
        prompt_file_captions(str(path), SkipCounter())
    assert str(raised.value) == f"{path} is not UTF-8 text: {reference.value}"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


CAT = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" in OpenAI's CLIP vocabulary


class CountingTokenizer:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, caption, **kwargs):
        self.calls.append((caption, kwargs))
        return self.tokenizer(caption, **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer(pad_token="!")


def test_ids_are_clips_and_kept_in_the_cache(tokenizer) -> None:
    counting = CountingTokenizer(tokenizer)
    captions = CaptionTokenizer(counting, context_length=77)
    first = captions.ids("a photo of a cat")
    assert first == CAT and captions.ids("a photo of a cat") is first
    assert counting.calls == [("a photo of a cat", {"truncation": False})] and captions.truncated == 0


def test_a_long_caption_keeps_its_start_and_its_end_token_and_is_counted_once(tokenizer) -> None:
    captions = CaptionTokenizer(tokenizer, context_length=4)
    assert captions.ids("a photo of a cat") == [49406, 320, 1125, 49407]
    assert captions.truncated == 1
    assert captions.ids("a photo of a cat") == [49406, 320, 1125, 49407] and captions.truncated == 1  # cached
    captions.ids("a photo of a dog")
    assert captions.truncated == 2  # each long caption counted
    exact = CaptionTokenizer(tokenizer, context_length=7)
    assert exact.ids("a photo of a cat") == CAT and exact.truncated == 0


def test_the_cache_holds_at_most_its_size(tokenizer) -> None:
    counting = CountingTokenizer(tokenizer)
    captions = CaptionTokenizer(counting, context_length=77, cache_size=1)
    captions.ids("a cat")
    captions.ids("a dog")
    captions.ids("a dog")
    captions.ids("a cat")
    assert [caption for caption, _ in counting.calls] == ["a cat", "a dog", "a dog"]
    assert list(captions._cache) == ["a cat"]
    assert CaptionTokenizer(tokenizer, 77)._cache is not CaptionTokenizer(tokenizer, 77)._cache


def test_a_batch_is_padded_after_the_end_token_with_the_pad_id(tokenizer) -> None:
    batch = CaptionTokenizer(tokenizer, context_length=77)(["a photo of a cat", "a cat", "a photo of a cat"])
    assert batch.dtype == torch.long and batch.shape == (3, 7)
    assert batch.tolist() == [CAT, [49406, 320, 2368, 49407, 0, 0, 0], CAT]  # "!" is id 0


def test_draws_depend_on_the_seed_the_stream_and_the_samples_index_only() -> None:
    two = SampleGenerators(3, [5, 7]).normal((2, 4))
    assert two.dtype == torch.float32 and two.shape == (2, 4)
    assert torch.equal(two[1], SampleGenerators(3, [7]).normal((1, 4))[0])  # whatever else is in the batch
    assert torch.equal(two, SampleGenerators(3, [5, 7], stream="noise").normal((2, 4)))
    for other in (
        SampleGenerators(4, [5, 7]),
        SampleGenerators(3, [5, 8]),
        SampleGenerators(3, [5, 7], stream="timestep"),
    ):
        assert not torch.equal(other.normal((2, 4))[1], two[1])
    assert not torch.equal(two[0], two[1])
    assert len(SampleGenerators(0, range(6))) == 6


def test_a_runs_draws_stay_the_same_from_version_to_version() -> None:
    """A run resumed by a later clipcond draws the noise the first part drew: the numbers of
    run seed 0, samples 0 and 1, written out from this version (the stream's seed is 63 bits of
    Python's SHA-512-seeded `random.Random` of "noise:0:<index>")."""
    generators = SampleGenerators(0, [0, 1])
    expected = torch.tensor(
        [
            [1.131392240524292, -0.4234870970249176, 1.0672836303710938],
            [-0.7187111973762512, 1.3154184818267822, 0.0772893950343132],
        ]
    )
    assert torch.equal(generators.normal((2, 3)), expected)
    assert SampleGenerators(0, [0, 1]).integers(1000).tolist() == [191, 544]


def test_each_draw_continues_the_samples_stream() -> None:
    generators = SampleGenerators(1, [0, 1])
    first, second = generators.normal((2, 3)), generators.normal((2, 3))
    assert not torch.equal(first, second)
    again = SampleGenerators(1, [0, 1])
    assert torch.equal(again.normal((2, 3)), first) and torch.equal(again.normal((2, 3)), second)


def test_integers_are_below_high_one_per_sample() -> None:
    draws = SampleGenerators(2, list(range(200))).integers(5)
    assert draws.dtype == torch.int64 and draws.shape == (200,)
    assert set(draws.tolist()) == {0, 1, 2, 3, 4}
    assert torch.equal(SampleGenerators(2, [10]).integers(1000), SampleGenerators(2, [4, 10]).integers(1000)[1:])


def test_the_draws_are_the_same_in_another_process_whatever_its_hash_seed() -> None:
    code = "from clipcond.training.data.sample_random import SampleGenerators as S; print(S(9, [2, 3]).normal((2, 2)).tolist(), S(9, [4]).integers(10**6).tolist())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    here = SampleGenerators(9, [2, 3]).normal((2, 2)).tolist(), SampleGenerators(9, [4]).integers(10**6).tolist()
    assert outputs == {f"{here[0]} {here[1]}\n"}


def test_no_samples_or_a_shape_of_other_rows_is_refused() -> None:
    with pytest.raises(ValueError) as raised:
        SampleGenerators(0, [])
    assert str(raised.value) == "indices must name at least one sample"
    generators = SampleGenerators(0, [1, 2])
    for shape, shown in (((3, 4), "(3, 4)"), ((), "()"), ([1], "(1,)")):
        with pytest.raises(ValueError) as raised:
            generators.normal(shape)
        assert str(raised.value) == f"shape {shown} must have 2 rows, one per sample"
