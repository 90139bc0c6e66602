"""clipcond.tokenization against two references (tests/reference_clip.py): OpenAI's
simple_tokenizer.py read out of the clip-anytorch wheel (skipped, with the command that fetches
the wheel, when it is absent) and transformers' plain CLIPTokenizer built from the same
vocabulary (always run)."""

from __future__ import annotations

import importlib.resources
import json
import random
import sys
import unicodedata

import pytest
import transformers
from reference_clip import (
    TransformersReference,
    clip_wheel_path,
    openai_bpe_bytes,
    openai_reference_tokenizer,
    packaged_bpe_bytes,
)

from clipcond.tokenization import (
    CLIP_VOCAB_SIZE,
    CLIPTokenizerWithTextCleaning,
    clip_tokenizer,
    load_clip_bpe,
    t5_tokenizer,
)

BOS, EOS = 49406, 49407
CONTEXT = 77

# Fragment pools; generated strings join a few fragments from random pools.
POOLS: dict[str, list[str]] = {
    "captions": [
        "a photo of a cat",
        "A painting of a fox sitting in a field at sunrise, trending on artstation",
        "an astronaut riding a horse on the moon",
        "Portrait of an old man with a beard, oil on canvas",
        "a red car parked next to a blue house",
        "Two dogs playing in the snow",
        "close-up of a hummingbird drinking nectar",
        "the Eiffel Tower at night, long exposure",
        "a bowl of ramen with a soft-boiled egg",
        "cyberpunk city street in the rain, neon signs",
        "A watercolor illustration of a lighthouse",
        "minimalist logo of a mountain",
    ],
    "punctuation": [
        "!!!",
        "...",
        "?!?",
        "--",
        "((( )))",
        "@#$%^&*",
        "a.b,c;d:e",
        "<tag>",
        "{json: 1}",
        "~`|\\/",
        "[[masterpiece]]",
        "(best quality:1.2)",
        "___",
        "***",
        "'quoted'",
        '"double"',
    ],
    "numbers": [
        "3.14159",
        "1,000,000",
        "12:30pm",
        "$4.99",
        "1e-5",
        "2024-01-01",
        "0.5x",
        "100%",
        "#42",
        "4k",
        "8K UHD",
        "1920x1080",
        "-273.15°C",
        "007",
        "1 000 000",
    ],
    "contractions": [
        "don't",
        "I'M",
        "we'll",
        "they've",
        "she'd",
        "it's",
        "You're",
        "can't",
        "o'clock",
        "rock 'n' roll",
        "DON'T",
        "ma'am",
        "y'all'd've",
    ],
    "unicode_letters": [
        "café",
        "naïve",
        "Zoë",
        "cafe\u0301",
        "A\u030angstro\u0308m",
        "straße",
        "Ελληνικά",
        "ΣΊΣΥΦΟΣ",
        "Привет мир",
        "日本語のテキスト",
        "中文字符",
        "한국어 문장",
        "مرحبا بالعالم",
        "नमस्ते दुनिया",
        "İstanbul",
        "ǅemal",
        "Ⅻ",
        "x²",
        "½ cup",
        "ñandú",
        "Þórr",
        "ăşţ",
    ],
    "emoji": [
        "🐱",
        "👍🏽",
        "👨‍👩‍👧‍👦",
        "🏳️‍🌈",
        "❤️",
        "🇯🇵",
        "😀😃😄",
        "🤷🏾‍♀️",
        "🔥🔥🔥",
        "☕",
    ],
    "curly_quotes": ["“quoted”", "‘single’", "it’s", "«guillemets»", "„low“", "don’t", "‹›"],
    "html_entities": [
        "&amp;",
        "&lt;b&gt;bold&lt;/b&gt;",
        "&amp;amp;",
        "&amp;amp;amp;",
        "&quot;hi&quot;",
        "&#39;",
        "&nbsp;",
        "&eacute;",
        "&#x1F600;",
        "&amp;lt;",
        "Tom &amp; Jerry",
        "&copy; 2024",
        "&bogus;",
    ],
    "full_width": ["ＡＢＣ ｄｅｆ １２３", "Ｈｅｌｌｏ！", "ｃａｔ", "（全角）"],
    "ligatures": ["ﬁ", "ﬂower", "Æsir", "œuvre", "ﬀ", "ﬃx", "Ĳssel"],
    "mojibake": ["cafÃ©", "â€œquotesâ€\x9d", "Ã¼ber", "doesnâ€™t", "Ã©tÃ©", "Ã±"],
    "whitespace": [
        "a\tb",
        "line\nbreak",
        "  lots   of   spaces  ",
        "\r\n",
        "\u00a0nbsp",
        "\u3000ideographic",
        "para\u2029graph",
        "tab\t\t\tstop",
        "\v\f",
    ],
    "special_tokens": ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|endoftext|>literal"],
}
SEPARATORS = [" ", " ", " ", "", "\t", "\n", "  ", ", ", " - "]

FIXED_CASES = [
    "",
    " ",
    "\t\n  \r\n",
    "a photo of a cat",
    "<|endoftext|> literal",
    " ".join(POOLS["captions"] * 3),  # far beyond 77 tokens
    "word " * 120,
    "🐱" * 60,
    "&amp;" * 40,
]


def _generated_cases(count: int = 320, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names = sorted(POOLS)
    cases = []
    for _ in range(count):
        fragments = [rng.choice(POOLS[rng.choice(names)]) for _ in range(rng.randint(1, 5))]
        text = fragments[0]
        for fragment in fragments[1:]:
            separator = rng.choice(SEPARATORS)
            if fragment.startswith("<|") and separator == "":
                # Glued to preceding punctuation, the reference does not read a special token:
                # see test_special_token_glued_to_punctuation_is_a_known_difference.
                separator = " "
            text += separator + fragment
        cases.append(text)
    return cases


CASES = FIXED_CASES + _generated_cases()


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizerWithTextCleaning:
    return clip_tokenizer()


@pytest.fixture(scope="module")
def wheel():
    path, reason = clip_wheel_path()
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def openai_ref(wheel):
    return openai_reference_tokenizer(wheel)


@pytest.fixture(scope="module")
def transformers_ref(tmp_path_factory):
    return TransformersReference(packaged_bpe_bytes(), tmp_path_factory.mktemp("transformers-clip"))


@pytest.fixture(scope="module", params=["openai", "transformers"])
def ref(request):
    return request.getfixturevalue(f"{request.param}_ref")


@pytest.fixture(scope="module")
def ref_ids(ref) -> list[list[int]]:
    return [ref.encode(text) for text in CASES]


def _mismatches(texts: list[str], got: list[list[int]], want: list[list[int]]) -> list[str]:
    return [f"{text!r}: got {g}, want {w}" for text, g, w in zip(texts, got, want) if g != w]


def test_cases_cover_the_pools() -> None:
    assert len(CASES) >= 300
    assert len(set(CASES)) > 250
    for name, fragments in POOLS.items():
        assert any(fragment in case for case in CASES for fragment in fragments), name


def test_references_share_the_packaged_vocabulary_and_leave_clip_unimported(wheel, openai_ref) -> None:
    # both references tokenize with one BPE file: the wheel's is byte for byte the one clipcond ships
    assert openai_bpe_bytes(wheel) == packaged_bpe_bytes()
    assert len(openai_ref.encoder) == CLIP_VOCAB_SIZE
    assert "clip" not in sys.modules  # read from the wheel file, never imported as a package


def test_literal_ids(tok) -> None:
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("<|endoftext|> literal", add_special_tokens=False).input_ids == [49407, 24269]


def test_vocabulary_and_special_tokens(tok, ref) -> None:
    vocab, merges = load_clip_bpe()
    assert len(vocab) == len(tok) == tok.vocab_size == CLIP_VOCAB_SIZE
    assert len(merges) == 49152 - 256 - 2
    assert all(isinstance(merge, tuple) and len(merge) == 2 for merge in merges)
    assert vocab == ref.encoder
    assert tok.get_vocab() == vocab
    assert (tok.bos_token, tok.bos_token_id) == ("<|startoftext|>", BOS)
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", EOS)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", EOS)
    assert tok.model_max_length == CONTEXT


def test_the_bundled_vocabulary_is_read_once_and_each_caller_gets_its_own_copy(tmp_path) -> None:
    """The bundled file is parsed once per process; a caller that changes its tables changes
    no one else's, and the file read from a path is the same tables."""
    vocab, merges = load_clip_bpe()
    expected_vocab, expected_merges = dict(vocab), list(merges)
    vocab["a new token"] = len(vocab)
    del vocab["!"]
    merges.pop()
    again, merges_again = load_clip_bpe()
    assert again == expected_vocab and merges_again == expected_merges
    assert again is not load_clip_bpe()[0] and merges_again is not load_clip_bpe()[1]
    from clipcond.tokenization import _BPE_FILE_NAME

    copy = tmp_path / _BPE_FILE_NAME
    copy.write_bytes((importlib.resources.files("clipcond") / "data" / _BPE_FILE_NAME).read_bytes())
    assert load_clip_bpe(copy) == (expected_vocab, expected_merges)


def test_exclamation_pad_token() -> None:
    tok = clip_tokenizer(pad_token="!")
    assert (tok.pad_token, tok.pad_token_id, tok.model_max_length) == ("!", 0, CONTEXT)
    ids = tok("a cat", padding="max_length").input_ids
    assert ids == [BOS, 320, 2368, EOS] + [0] * (CONTEXT - 4)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="not in the CLIP vocabulary"):
        clip_tokenizer(pad_token="<pad>")
    with pytest.raises(ValueError, match="model_max_length"):
        clip_tokenizer(model_max_length=1)


def test_ids_match_reference_without_special_tokens(tok, ref_ids) -> None:
    got = [tok(text, add_special_tokens=False).input_ids for text in CASES]
    assert _mismatches(CASES, got, ref_ids) == []


def test_ids_match_reference_with_special_tokens(tok, ref_ids) -> None:
    got = [tok(text).input_ids for text in CASES]
    want = [[BOS, *ids, EOS] for ids in ref_ids]
    assert _mismatches(CASES, got, want) == []
    assert [tok.encode(text) for text in CASES[:50]] == want[:50]


def test_batch_matches_reference(tok, ref_ids) -> None:
    got = tok(CASES).input_ids
    want = [[BOS, *ids, EOS] for ids in ref_ids]
    assert _mismatches(CASES, got, want) == []


def test_padded_truncated_batch_matches_reference(tok, ref_ids) -> None:
    batch = tok(CASES, padding="max_length", truncation=True)
    want = []
    for ids in ref_ids:
        # Truncated as clip.tokenize(truncate=True) does (bos + ids cut to 77, the last one forced to
        # eos), padded with eos as transformers' openai/clip-vit-* tokenizers and SD 1.x pad; not
        # clip.tokenize's rows, which pad with 0 (test_ids_match_clip_tokenize compares those).
        kept = [BOS, *ids][: CONTEXT - 1] + [EOS]
        want.append(kept + [EOS] * (CONTEXT - len(kept)))
    assert _mismatches(CASES, batch.input_ids, want) == []
    assert any(len(ids) + 2 > CONTEXT for ids in ref_ids)  # truncation was exercised
    for mask, ids in zip(batch.attention_mask, ref_ids):
        length = min(len(ids) + 2, CONTEXT)
        assert mask == [1] * length + [0] * (CONTEXT - length)


def _import_clip():
    """OpenAI's `clip` package (clip-anytorch), or a skip naming why it does not import."""
    try:
        import clip
    except Exception as error:  # its __init__ needs torchvision and pkg_resources
        pytest.skip(f"OpenAI's clip.tokenize: `import clip` fails ({type(error).__name__}: {error})")
    return clip


def test_ids_match_clip_tokenize(tok) -> None:
    """Up to and including eos, rows equal OpenAI's clip.tokenize(truncate=True); after it, clip.tokenize
    has 0 where the default tokenizer has eos."""
    clip = _import_clip()
    # The known difference (a special token glued to punctuation) is left out.
    texts = [text for text in CASES if "<|" not in text]
    expected = clip.tokenize(texts, context_length=CONTEXT, truncate=True).tolist()
    assert any(len(tok(text).input_ids) > CONTEXT for text in texts)  # truncation is exercised
    got = tok(texts, padding="max_length", truncation=True).input_ids
    up_to_eos = [row[: row.index(EOS) + 1] for row in expected]
    assert _mismatches(texts, [row[: row.index(EOS) + 1] for row in got], up_to_eos) == []
    assert all(row[len(kept) :] == [0] * (CONTEXT - len(kept)) for row, kept in zip(expected, up_to_eos))
    assert all(row[len(kept) :] == [EOS] * (CONTEXT - len(kept)) for row, kept in zip(got, up_to_eos))


def test_special_token_glued_to_punctuation_is_a_known_difference(tok, openai_ref) -> None:
    # OpenAI's regex lets a punctuation run swallow "<|" when "<|endoftext|>" directly follows
    # punctuation or emoji; transformers matches the special token wherever it appears.
    text = "hello!<|endoftext|>"
    assert tok(text, add_special_tokens=False).input_ids == [3306, 256, EOS]  # "hello</w>", "!</w>", eos
    assert openai_ref.encode(text)[:2] == [3306, 0] and EOS not in openai_ref.encode(text)  # "hello</w>", "!", "<", ...
    assert tok("hello! <|endoftext|>", add_special_tokens=False).input_ids == openai_ref.encode("hello! <|endoftext|>")
    assert tok("hello<|endoftext|>", add_special_tokens=False).input_ids == openai_ref.encode("hello<|endoftext|>")


def test_pairs_and_pre_split_words_are_cleaned(tok, ref) -> None:
    first, second = "Tom &amp; Jerry", "ﬁne “art”"
    assert tok(first, second, add_special_tokens=False).input_ids == ref.encode(first) + ref.encode(second)
    words = ["Café", "&amp;amp;", "ﬂower", "doesnâ€™t"]
    got = tok(words, is_split_into_words=True, add_special_tokens=False).input_ids
    assert got == [i for word in words for i in ref.encode(word)]
    assert tok.tokenize("Tom &amp; Jerry") == ["tom</w>", "&</w>", "jerry</w>"]


def test_save_pretrained_reloads_with_plain_transformers(tok, ref, tmp_path) -> None:
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "CLIPTokenizer"
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    texts = ["a photo of a cat", "Two dogs, playing in the snow!", "it's 4:30 and 3.5 degrees", "<|endoftext|>"]
    for loader in (transformers.CLIPTokenizer, transformers.AutoTokenizer):
        plain = loader.from_pretrained(tmp_path)
        assert type(plain).__name__ in ("CLIPTokenizer", "CLIPTokenizerFast")
        assert not isinstance(plain, CLIPTokenizerWithTextCleaning)
        assert (plain.model_max_length, plain.pad_token_id) == (CONTEXT, EOS)
        assert plain(texts).input_ids == tok(texts).input_ids == [[BOS, *ref.encode(t), EOS] for t in texts]


def test_saved_exclamation_pad_survives_reload(tmp_path) -> None:
    clip_tokenizer(pad_token="!").save_pretrained(tmp_path)
    plain = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert (plain.pad_token, plain.pad_token_id) == ("!", 0)


def test_t5_tokenizer_loads_a_local_folder(tmp_path) -> None:
    # A tiny unigram vocabulary saved locally; nothing touches the hub.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁a", -1.0), ("▁cat", -2.0), ("▁", -3.0)]
    transformers.T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(tmp_path)
    tok = t5_tokenizer(str(tmp_path), model_max_length=16)
    assert tok("a cat").input_ids == [3, 4, 1]
    assert (tok.pad_token_id, tok.eos_token_id, tok.model_max_length) == (0, 1, 16)


def test_lone_ypogegrammeni_breaks_the_word_as_openai_drops_it(tok, openai_ref) -> None:
    # U+0345 alone (not folded into a letter by NFC) matches none of OpenAI's pattern alternatives,
    # so the reference drops it and the word splits around it; transformers' own tokenizer keeps it.
    texts = ["a\u0345b", "a \u0345 b", "\u0345", "A\u0345B cat", "\u00cd\x85 x", "&#x345;x"]
    for text in texts:
        assert tok(text, add_special_tokens=False).input_ids == openai_ref.encode(text), text
    assert tok("a\u0345b", add_special_tokens=False).input_ids == [320, 321]  # "a</w>", "b</w>"
    assert tok("\u1fb3 x", add_special_tokens=False).input_ids == openai_ref.encode("\u1fb3 x")  # composed: kept


@pytest.mark.slow
def test_every_assigned_code_point_matches_openai(tok, openai_ref) -> None:
    """Each code point that this Python's Unicode database assigns, between two letters and before
    a word, gives OpenAI's ids (newer characters differ by Unicode version, as the docstring says)."""
    texts = [
        text
        for point in range(0x110000)
        if unicodedata.category(chr(point)) not in ("Cn", "Cs")
        for text in (f"a{chr(point)}b", f"{chr(point)} x")
    ]
    mismatched = []
    for start in range(0, len(texts), 4000):
        chunk = texts[start : start + 4000]
        for text, ids in zip(chunk, tok(chunk, add_special_tokens=False).input_ids):
            if ids != openai_ref.encode(text):
                mismatched.append(text)
    assert mismatched == []
