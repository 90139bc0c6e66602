"""The words a pipeline's UNet read in training (clipcond.pipelines.vocabulary): the file
written and read back, a file of another encoding named, the prompt words it lacks, and the
warning `clipcond generate` prints, each whole."""

from __future__ import annotations

import pytest

from clipcond.pipelines.vocabulary import (
    VOCABULARY_FILE,
    added_tokens,
    read_vocabulary,
    unknown_words,
    warn_about_vocabulary,
    write_vocabulary,
)


def test_the_words_are_written_sorted_once_each_and_read_back(tmp_path) -> None:
    path = write_vocabulary(tmp_path, ["red", "circle", "blue", "red"])
    assert path == tmp_path / VOCABULARY_FILE == tmp_path / "vocabulary.txt"
    assert path.read_bytes() == b"blue\ncircle\nred\n"
    assert read_vocabulary(tmp_path) == frozenset({"blue", "circle", "red"})
    assert read_vocabulary(tmp_path / "elsewhere") is None


def test_a_vocabulary_file_that_is_not_utf8_is_refused_naming_it(tmp_path) -> None:
    (tmp_path / VOCABULARY_FILE).write_bytes(b"red\n\xff\n")
    with pytest.raises(ValueError) as raised:
        read_vocabulary(tmp_path)
    assert str(raised.value) == f"{tmp_path / VOCABULARY_FILE} is not UTF-8 text (invalid start byte at byte 4)"


def test_the_unknown_words_of_a_prompt_in_order_once_each() -> None:
    vocabulary = frozenset({"a", "red", "circle"})
    prompt = "(a red:1.2) Circle BREAK Cat, cat and [dogs] 3d_x"
    assert unknown_words(prompt, vocabulary) == ["cat", "and", "dogs", "d", "x"]
    assert unknown_words("a RED circle", vocabulary) == []
    # compel's syntax: signs, weights and a blend's syntax are no words; its parts' words are
    blend = '("a red+ circle", "a (cat)1.2").blend(0.7, 0.3)'
    assert unknown_words(blend, vocabulary, "compel") == ["cat"]
    assert unknown_words("a (red)1.2 Circle-- BREAK", vocabulary, "compel") == ["break"]
    assert unknown_words(blend, vocabulary) == ["cat", "blend"]  # read as A1111's syntax
    conjunction = '("a red+ circle", "a (dog)1.2").and(1, 0.5)'
    assert unknown_words(conjunction, vocabulary, "compel") == ["dog"]
    # ComfyUI's syntax: `embedding:` is no word, `[red]` is text
    assert unknown_words("embedding:<cat> (a red:1.2) [circle]", vocabulary, "comfy") == ["cat"]
    assert unknown_words("embedding:<cat> (a red:1.2) [circle]", vocabulary) == ["embedding", "cat"]
    assert unknown_words("a <lora:style_x:0.8> red circle", vocabulary) == []  # the pipeline reads the tag


def test_the_tokenizers_added_tokens_are_no_words() -> None:
    """A textual inversion token is taken out where the tokenizer finds it: case aside, inside
    other text too, the longest first; the words around it are still read."""
    vocabulary = frozenset({"a", "red", "circle"})
    tokens = ["<toy>", "Neg-Style", "neg", "<|endoftext|>"]
    prompt = "a <toy> red circle, NEG-STYLE neg dog, cat<toy>s"
    assert unknown_words(prompt, vocabulary) == ["toy", "neg", "style", "dog", "cat", "s"]
    assert unknown_words(prompt, vocabulary, tokens=tokens) == ["dog", "cat", "s"]
    assert unknown_words("a style red circle", vocabulary, tokens=tokens) == ["style"]  # only the whole token
    assert unknown_words("a (neg-style:1.3) circle", vocabulary, tokens=["neg-style", ""]) == []
    # ComfyUI's `embedding:name` reads the name, which is the token
    assert unknown_words("embedding:neg-style a circle", vocabulary, "comfy", tokens) == []


def test_the_warning_for_unknown_words_is_printed_whole(tmp_path, capsys) -> None:
    write_vocabulary(tmp_path, ["a", "red", "circle"])
    expected = (
        "the model never read 'blue', 'square' in training, so it will draw what it knows instead; its words are "
        f"listed in {tmp_path / VOCABULARY_FILE}"
    )
    assert warn_about_vocabulary("a blue square", tmp_path) == expected
    assert capsys.readouterr().err == f"warning: {expected}\n"
    assert "'square' in training" in warn_about_vocabulary("a blue square", tmp_path, tokens=["Blue"])
    assert warn_about_vocabulary("a Blue <sq>", tmp_path, tokens=["blue", "<sq>"]) is None


def test_the_added_tokens_are_those_of_each_tokenizer_of_the_pipeline() -> None:
    from types import SimpleNamespace

    from clipcond.tokenization import clip_tokenizer

    first, second = clip_tokenizer(), clip_tokenizer(pad_token="!")
    first.add_tokens(["<toy>"])
    second.add_tokens(["<toy>", "Neg-Style"])
    specials = ["<|startoftext|>", "<|endoftext|>"]
    pipe = SimpleNamespace(tokenizer=first, tokenizer_2=second)
    # the second pads with "!", which it holds as a special token
    assert sorted(added_tokens(pipe)) == sorted([*specials, "<toy>", *specials, "!", "<toy>", "Neg-Style"])
    assert sorted(added_tokens(SimpleNamespace(tokenizer=first, tokenizer_2=None))) == sorted([*specials, "<toy>"])
    assert added_tokens(SimpleNamespace(tokenizer=first)) == added_tokens(
        SimpleNamespace(tokenizer=first, tokenizer_2=None)
    )


def test_an_empty_prompt_is_warned_about_and_a_known_one_is_not(tmp_path, capsys) -> None:
    write_vocabulary(tmp_path, ["a", "red", "circle"])
    expected = "the prompt is empty: the model draws an unconditional sample"
    assert warn_about_vocabulary("  ", tmp_path) == expected
    assert capsys.readouterr().err == f"warning: {expected}\n"
    assert warn_about_vocabulary("a red circle", tmp_path) is None
    assert warn_about_vocabulary("anything at all", tmp_path / "no-vocabulary") is None
    assert capsys.readouterr().err == ""
