"""clipcond.tokenization where its mutation run (benchmarks/results/mutation.md) found it unguarded:
model_max_length's checks, the cleaning wrapper's context, a damaged BPE file, save_pretrained's
prefix and push_to_hub. References: hand computation on CLIP's
vocabulary (bos 49406, eos 49407, "a" 320, "cat" 2368), transformers' plain CLIPTokenizer reading the
saved folder, the documented messages. Cheap: a tokenizer builds in a fraction of a second."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from clipcond.tokenization import CLIPTokenizerWithTextCleaning, clip_tokenizer

BOS, EOS = 49406, 49407


@pytest.mark.parametrize("value", [True, 77.0, "77", None])
def test_a_model_max_length_that_is_no_int_is_a_type_error_naming_it(value) -> None:
    with pytest.raises(TypeError) as error:
        clip_tokenizer(model_max_length=value)
    assert str(error.value) == (
        "`model_max_length` must be an int (the encoder's context length, 77 for CLIP), "
        f"got {type(value).__name__} {value!r}"
    )


def test_a_model_max_length_below_two_is_refused_and_two_holds_bos_and_eos() -> None:
    with pytest.raises(ValueError) as error:
        clip_tokenizer(model_max_length=1)
    assert str(error.value) == "`model_max_length` must be at least 2 (bos and eos), got 1"
    tok = clip_tokenizer(model_max_length=np.int64(2))  # a numpy integer reads as the int it holds
    assert type(tok.model_max_length) is int and tok.model_max_length == 2
    assert tok("a cat", truncation=True).input_ids == [BOS, EOS]
    assert tok("", padding="max_length").input_ids == [BOS, EOS]


@pytest.fixture(scope="module")
def plain_clip_tokenizer(tmp_path_factory):
    """transformers' own CLIPTokenizer (no ftfy/html cleaning) on CLIP's vocabulary, pad "!", 77 tokens:
    what a hub-style SD 2.x folder gives."""
    folder = tmp_path_factory.mktemp("plain")
    clip_tokenizer(pad_token="!").save_pretrained(folder)
    return transformers.CLIPTokenizer.from_pretrained(folder)


@pytest.mark.parametrize(("context_length", "expected"), [(None, 77), (16, 16), (248, 77)])
def test_the_cleaning_tokenizer_takes_the_smaller_context_and_the_folders_pad(
    plain_clip_tokenizer, context_length, expected
) -> None:
    from clipcond.tokenization import with_clip_text_cleaning

    assert not isinstance(plain_clip_tokenizer, CLIPTokenizerWithTextCleaning)
    tok = with_clip_text_cleaning(plain_clip_tokenizer, context_length)
    assert isinstance(tok, CLIPTokenizerWithTextCleaning)
    assert (tok.model_max_length, tok.pad_token) == (expected, "!")
    options = {"padding": "max_length", "truncation": True}
    # the cleaning done by hand ("&amp;" unescaped), then transformers' own tokenizer: the same ids and pads
    assert (
        tok("Tom &amp; Jerry", **options).input_ids
        == plain_clip_tokenizer("Tom & Jerry", max_length=expected, **options).input_ids
    )


def test_a_damaged_vocabulary_file_is_refused_naming_the_line(tmp_path) -> None:
    import gzip

    from clipcond.tokenization import load_clip_bpe

    bad_line = tmp_path / "bad_line.txt.gz"
    bad_line.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h e\n"))  # file line 3 holds three symbols
    with pytest.raises(ValueError) as error:
        load_clip_bpe(bad_line)
    assert str(error.value) == f"{bad_line}: line 3 should hold two BPE symbols, got 't h e'"
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h"))  # no final newline: 2 merges
    with pytest.raises(ValueError) as error:
        load_clip_bpe(short)
    assert str(error.value) == f"{short}: expected 48894 merges, found 2"


def test_save_pretrained_with_a_filename_prefix_names_the_plain_class(tmp_path) -> None:
    saved = clip_tokenizer().save_pretrained(tmp_path, filename_prefix="clip")
    config = json.loads((tmp_path / "clip-tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "CLIPTokenizer"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f"clip-{name}" for name in ("tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt")
    )
    assert sorted(str(path) for path in saved) == sorted(str(path) for path in tmp_path.iterdir())  # each once


def test_save_pretrained_refuses_push_to_hub_and_writes_nothing(tmp_path) -> None:
    with pytest.raises(ValueError) as error:
        clip_tokenizer().save_pretrained(tmp_path / "out", push_to_hub=True)
    assert str(error.value) == (
        "CLIPTokenizerWithTextCleaning.save_pretrained(push_to_hub=True) is not supported: "
        "save to a local folder, then upload it with huggingface_hub.upload_folder."
    )
    assert not (tmp_path / "out").exists()


def test_a_vocabulary_file_with_a_repeated_merge_is_refused_naming_the_file(tmp_path) -> None:
    """48894 merge lines, one of them twice: 49407 distinct tokens, not 49408 (found by mutation
    testing: the message's file name and the message itself were unguarded)."""
    import gzip
    import importlib.resources

    from clipcond.tokenization import load_clip_bpe

    lines = gzip.decompress(
        (importlib.resources.files("clipcond") / "data" / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    )
    lines = lines.decode("utf-8").split("\n")
    lines[2] = lines[1]  # the second merge repeats the first
    repeated = tmp_path / "repeated.txt.gz"
    repeated.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    with pytest.raises(ValueError) as error:
        load_clip_bpe(repeated)
    assert str(error.value) == f"{repeated}: expected 49408 distinct tokens, got 49407"


def test_a_pad_token_outside_the_vocabulary_is_refused_with_both_choices() -> None:
    with pytest.raises(ValueError) as error:
        clip_tokenizer(pad_token="<pad>")
    assert str(error.value) == (
        "pad_token '<pad>' is not in the CLIP vocabulary; use '<|endoftext|>' (transformers' openai/clip-vit-*, "
        "SD 1.x) or '!' (OpenCLIP: SD 2.x, SDXL's second encoder)"
    )


def test_only_a_tokenizer_with_exactly_clips_vocabulary_gets_the_cleaning(plain_clip_tokenizer, tmp_path) -> None:
    """A tokenizer that already cleans comes back as itself (not a new one); so do one without a
    vocabulary and one of CLIP's size whose vocabulary differs; one without a pad token gets
    `<|endoftext|>` (found by mutation testing of `with_clip_text_cleaning`)."""
    from types import SimpleNamespace

    from clipcond.tokenization import with_clip_text_cleaning

    cleaning = clip_tokenizer(model_max_length=16)
    assert with_clip_text_cleaning(cleaning) is cleaning
    no_vocabulary = SimpleNamespace(model_max_length=77)
    assert with_clip_text_cleaning(no_vocabulary) is no_vocabulary
    vocab = dict(plain_clip_tokenizer.get_vocab())
    vocab["qqzzxx</w>"] = vocab.pop("cat</w>")  # CLIP's size, another vocabulary
    other = type("SameSize", (), {"get_vocab": lambda self: vocab, "__len__": lambda self: len(vocab)})()
    assert len(other) == 49408 and with_clip_text_cleaning(other) is other
    no_pad = transformers.CLIPTokenizer.from_pretrained(_saved(plain_clip_tokenizer, tmp_path))
    no_pad.pad_token = None
    tok = with_clip_text_cleaning(no_pad)
    assert isinstance(tok, CLIPTokenizerWithTextCleaning) and tok.pad_token == "<|endoftext|>"


def _saved(tokenizer, folder):
    tokenizer.save_pretrained(folder)
    return folder


def test_the_saved_tokenizer_config_is_the_same_sorted_json_on_every_save(tmp_path) -> None:
    """The folder's bytes decide its content hash (fingerprints, the cache): the rewritten
    `tokenizer_config.json` is sorted, indented JSON, the same bytes on every save."""
    first, second = tmp_path / "a", tmp_path / "b"
    clip_tokenizer().save_pretrained(first)
    clip_tokenizer().save_pretrained(second)
    text = (first / "tokenizer_config.json").read_text(encoding="utf-8")
    assert text == (second / "tokenizer_config.json").read_text(encoding="utf-8")
    config = json.loads(text)
    assert list(config) == sorted(config)
    assert text == json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
