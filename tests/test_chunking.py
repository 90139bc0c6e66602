"""Token windows cell by cell: ids, weights, mask and fragment index of weighted prompts, BREAK,
padding, tokenizers without a pad token, T5's truncation report and the hard split of a word
longer than the look-back. References are the tokenizers run on the whole text."""

from __future__ import annotations

import logging

import pytest
import torch
from comfy_reference import comfy_batches
from transformers import AutoTokenizer

from clipcond.chunking import WORD_LOOKBACK, clip_windows, t5_sequence
from clipcond.prompts import BREAK_MARKER, Fragment
from clipcond.tokenization import clip_tokenizer

WEIGHTED = [Fragment("a ", 1.0), Fragment("red", 1.5), Fragment(" cat", 1.0)]


@pytest.fixture(scope="module")
def clip():
    return clip_tokenizer()


@pytest.fixture(scope="module")
def t5(t5_tokenizer_path):
    return AutoTokenizer.from_pretrained(t5_tokenizer_path)


class WithoutPad:
    """A tokenizer that has no pad token (the chunker must choose one)."""

    pad_token_id = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def convert_ids_to_tokens(self, ids):
        return self.tokenizer.convert_ids_to_tokens(ids)

    def decode(self, ids):
        return self.tokenizer.decode(ids)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_clip_weighted_prompt_cell_by_cell(clip):
    (got,) = clip_windows(clip, [WEIGHTED], 12)
    a, red, cat = _ids(clip, "a"), _ids(clip, "red"), _ids(clip, "cat")
    assert a + red + cat == _ids(clip, "a red cat")
    real = [clip.bos_token_id, *a, *red, *cat, clip.eos_token_id]
    padding = 12 - len(real)
    assert got.ids.tolist() == [real + [clip.pad_token_id] * padding]
    assert got.weights.tolist() == [[1.0] * (1 + len(a)) + [1.5] * len(red) + [1.0] * (len(cat) + 1 + padding)]
    assert got.mask.tolist() == [[1] * len(real) + [0] * padding]
    assert got.fragments.tolist() == [[-1] + [0] * len(a) + [1] * len(red) + [2] * len(cat) + [-1] * (1 + padding)]
    assert got.ids.dtype == got.mask.dtype == got.fragments.dtype == torch.long
    assert got.weights.dtype == torch.float32
    assert got.num_windows == 1 and got.is_weighted and got.dropped == 0


def test_clip_unweighted_prompt_is_not_weighted(clip):
    (got,) = clip_windows(clip, [[Fragment("a red cat", 1.0)]], 12)
    assert not got.is_weighted


def test_clip_break_closes_the_window_even_an_empty_one_as_a1111(clip):
    """A1111's tokenize_line calls next_chunk() at every BREAK, so a BREAK that opens the
    prompt or follows another gives an empty window; one at the end adds none. Before: repeated
    and leading BREAKs added no window."""

    def row(text):
        real = [clip.bos_token_id, *_ids(clip, text), clip.eos_token_id]
        return real + [clip.pad_token_id] * (8 - len(real))

    prompt = [Fragment("a red", 1.0), BREAK_MARKER, BREAK_MARKER, Fragment("cat", 1.0), BREAK_MARKER]
    (got,) = clip_windows(clip, [prompt], 8)
    assert got.ids.tolist() == [row("a red"), row(""), row("cat")]
    assert got.fragments[2, 1].item() == 3  # the fragment's index counts the break markers
    (leading,) = clip_windows(clip, [[BREAK_MARKER, Fragment("cat", 1.0)]], 8)
    assert leading.ids.tolist() == [row(""), row("cat")]
    assert leading.mask.tolist()[0] == [1, 1] + [0] * 6


def test_clip_empty_prompt_is_one_window_of_bos_eos_padding(clip):
    (got,) = clip_windows(clip, [[BREAK_MARKER]], 77)
    expected = clip("", padding="max_length", max_length=77).input_ids
    assert got.ids.tolist() == [expected]
    assert got.mask[0].sum().item() == 2


def test_clip_without_pad_token_pads_with_eos(clip):
    (got,) = clip_windows(WithoutPad(clip), [[Fragment("a cat", 1.0)]], 10)
    real = [clip.bos_token_id, *_ids(clip, "a cat"), clip.eos_token_id]
    assert got.ids.tolist() == [real + [clip.eos_token_id] * (10 - len(real))]


@pytest.mark.parametrize(
    "before, first_window",
    [(75 - WORD_LOOKBACK, 75), (75 - WORD_LOOKBACK + 1, 75 - WORD_LOOKBACK + 1)],
    ids=["word-end-just-out-of-reach", "word-end-just-in-reach"],
)
def test_clip_split_looks_back_exactly_word_lookback_tokens(clip, before, first_window):
    """A full window moves a partial word on only when a word ends within the last
    WORD_LOOKBACK tokens; otherwise it cuts the word at the window edge."""
    word = "qzxv" * 12
    assert len(_ids(clip, word)) > WORD_LOOKBACK + 2
    text = "a " * before + word
    ids = _ids(clip, text)
    (got,) = clip_windows(clip, [[Fragment(text, 1.0)]], 77)
    assert got.ids[0, 1 : 1 + first_window].tolist() == ids[:first_window]
    assert got.mask[0].sum().item() == first_window + 2
    assert got.ids[1, 1 : 1 + len(ids) - first_window].tolist() == ids[first_window:]


def test_clip_word_within_the_look_back_moves_whole(clip):
    word = "qzxv" * 4
    pieces = len(_ids(clip, word))
    assert 2 <= pieces < WORD_LOOKBACK
    before = 75 - pieces + 1  # the word's last token would be the 76th
    text = "a " * before + word
    (got,) = clip_windows(clip, [[Fragment(text, 1.0)]], 77)
    assert got.mask[0].sum().item() == before + 2
    assert got.ids[1, 1 : 1 + pieces].tolist() == _ids(clip, word)


def test_t5_weighted_prompt_cell_by_cell(t5):
    (got,) = t5_sequence(t5, [WEIGHTED], 12)
    whole = t5("a red cat").input_ids  # ends in EOS
    red = len(_ids(t5, "red"))
    assert whole[:-1] == _ids(t5, "a") + _ids(t5, "red") + _ids(t5, "cat")
    padding = 12 - len(whole)
    assert got.ids.tolist() == [whole + [t5.pad_token_id] * padding]
    a = len(_ids(t5, "a"))
    cat = len(_ids(t5, "cat"))
    assert got.weights.tolist() == [[1.0] * a + [1.5] * red + [1.0] * (cat + 1 + padding)]
    assert got.mask.tolist() == [[1] * len(whole) + [0] * padding]
    assert got.fragments.tolist() == [[0] * a + [1] * red + [2] * cat + [-1] * (1 + padding)]
    assert got.num_windows == 1 and got.dropped == 0


def test_t5_skips_break(t5):
    (got,) = t5_sequence(t5, [[Fragment("a red", 1.0), BREAK_MARKER, Fragment("cat", 1.0)]], 12)
    whole = t5("a red cat").input_ids
    assert got.ids[0, : len(whole)].tolist() == whole
    assert got.fragments[0, -len(_ids(t5, "cat")) - 1 - (12 - len(whole))].item() == 2


def test_t5_without_pad_token_pads_with_zero(t5):
    assert t5.pad_token_id != 1
    (got,) = t5_sequence(WithoutPad(t5), [[Fragment("a cat", 1.0)]], 10)
    whole = t5("a cat").input_ids
    assert got.ids.tolist() == [whole + [0] * (10 - len(whole))]


def test_t5_truncation_keeps_the_first_tokens_and_reports_the_last_eight(t5, caplog):
    text = "photorealistic portrait of a red fox in the snow at dawn under a pale blue winter sky"
    ids = _ids(t5, text)
    assert len(ids) > 14
    with caplog.at_level(logging.WARNING, logger="clipcond.chunking"):
        (got,) = t5_sequence(t5, [[Fragment(text, 1.0)]], 14)
    assert got.ids.tolist() == [ids[:13] + [t5.eos_token_id]]
    assert got.dropped == len(ids) - 13
    (record,) = caplog.records
    assert record.getMessage() == (
        f"T5 prompt truncated to max_sequence_length=14 tokens: {len(ids) - 13} tokens dropped after "
        f"'...{t5.decode(ids[5:13])}'"
    )


def test_t5_fitting_prompt_reports_nothing(t5, caplog):
    with caplog.at_level(logging.WARNING, logger="clipcond.chunking"):
        (got,) = t5_sequence(t5, [[Fragment("a cat", 1.0)]], 16)
    assert got.dropped == 0 and not caplog.records


@pytest.fixture
def float64_by_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_weights_are_float32_whatever_the_default_dtype(clip, t5, float64_by_default):
    (clip_got,) = clip_windows(clip, [WEIGHTED], 12)
    (t5_got,) = t5_sequence(t5, [WEIGHTED], 12)
    assert clip_got.weights.dtype == t5_got.weights.dtype == torch.float32


def test_default_window_is_clips_77_tokens(clip):
    (got,) = clip_windows(clip, [[Fragment("a cat", 1.0)]])
    assert got.ids.shape == (1, 77)


@pytest.fixture
def transformers_logs(caplog):
    """transformers' log records, which its library logger does not pass on by default."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_propagation()
    with caplog.at_level(logging.WARNING, logger="transformers"):
        yield caplog
    transformers_logging.disable_propagation()


def test_windowed_prompts_skip_the_tokenizers_length_warning(transformers_logs):
    fresh = clip_tokenizer()  # transformers warns once per tokenizer
    text = "a red fox " * 40
    assert len(_ids(clip_tokenizer(), text)) > 77
    transformers_logs.clear()
    (got,) = clip_windows(fresh, [[Fragment(text, 1.0)]], 77)
    assert got.num_windows == 2
    assert not [r for r in transformers_logs.records if "longer than the specified maximum" in r.getMessage()]


def _a1111_chunks(
    tokenizer, prompt: list[Fragment], backtrack: int = 20, embeddings: dict[int, int] | None = None
) -> list[list[tuple[int, float]]]:
    """A1111's ``tokenize_line`` chunking, re-expressed from its description (not clipcond's
    code): tokens are taken one at a time; a comma records its place; any other token that
    finds the chunk full, with a comma at most `backtrack` tokens from its end, sends what
    follows the comma to a new chunk; a token that (still) finds the chunk full starts a new
    one; an embedding (`embeddings`: its first token id -> its vector count) that does not fit
    what is left of the chunk starts a new one and goes in whole; BREAK always starts a new
    one; an empty last chunk is kept only if it is the only one."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    embeddings = embeddings or {}
    chunks: list[list[tuple[int, float]]] = []
    chunk: list[tuple[int, float]] = []
    comma_at = None
    for fragment in prompt:
        if fragment.is_break:
            chunks.append(chunk)
            chunk, comma_at = [], None
            continue
        tokens = tokenizer(fragment.text, add_special_tokens=False).input_ids
        position = 0
        while position < len(tokens):
            token = tokens[position]
            full = len(chunk) == 75
            if token == comma:
                comma_at = len(chunk)
            elif full and comma_at is not None and 75 - comma_at <= backtrack:
                chunks.append(chunk[: comma_at + 1])
                chunk, comma_at = chunk[comma_at + 1 :], None
            if len(chunk) == 75:
                chunks.append(chunk)
                chunk, comma_at = [], None
            vectors = embeddings.get(token, 1)
            if vectors > 1 and len(chunk) + vectors > 75:
                chunks.append(chunk)
                chunk, comma_at = [], None
            chunk += [(tokens[position + index], fragment.weight) for index in range(vectors)]
            position += vectors
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


A1111_SPLIT_PROMPTS = {
    "comma-separated": [Fragment(", ".join(["a big red ball on green grass"] * 12), 1.0)],
    "no comma: cut mid-word": [Fragment("photograph " * 70 + "superlongunusualwordz " * 3, 1.0)],
    "comma too far back": [Fragment("cat, " + "photograph " * 100, 1.0)],
    "weighted, with a BREAK": [
        Fragment("misty mountains, pine forest, " * 8, 1.0),
        Fragment("golden hour, ", 1.3),
        Fragment("river, " * 9, 1.0),
        BREAK_MARKER,
        Fragment("oil painting, " * 30, 0.9),
    ],
    "a comma that finds the window full": [Fragment("dog " * 75 + ", cat " + "dog " * 10, 1.0)],
    "a comma 20 tokens back": [Fragment("dog " * 55 + ", " + "cat " * 30, 1.0)],
    "a comma 21 tokens back": [Fragment("dog " * 54 + ", " + "cat " * 30, 1.0)],
}


@pytest.mark.parametrize("name", list(A1111_SPLIT_PROMPTS))
def test_a1111_window_split_cuts_after_the_last_comma_as_a1111(clip, name):
    prompt = A1111_SPLIT_PROMPTS[name]
    (got,) = clip_windows(clip, [prompt], 77, window_split="a1111")
    chunks = _a1111_chunks(clip, prompt)
    expected_ids = [[clip.bos_token_id, *(t for t, _ in c), clip.eos_token_id] for c in chunks]
    expected_ids = [ids + [clip.pad_token_id] * (77 - len(ids)) for ids in expected_ids]
    assert got.ids.tolist() == expected_ids
    expected_weights = [[1.0, *(w for _, w in c), 1.0] + [1.0] * (75 - len(c)) for c in chunks]
    torch.testing.assert_close(got.weights, torch.tensor(expected_weights), rtol=0, atol=1e-7)
    if name in ("comma-separated", "no comma: cut mid-word"):  # the default cuts these elsewhere
        (words,) = clip_windows(clip, [prompt], 77)
        assert words.ids.tolist() != expected_ids


def test_window_split_is_checked(clip):
    with pytest.raises(ValueError, match="`window_split` must be one of"):
        clip_windows(clip, [WEIGHTED], 77, window_split="comma")


@pytest.fixture(scope="module")
def clip_with_inversions():
    """A CLIP tokenizer holding two multi-vector textual-inversion tokens, named as diffusers
    names their vectors: <toy> of 5 and <big> of 25."""
    tokenizer = clip_tokenizer()
    for name, count in (("<toy>", 5), ("<big>", 25), ("<duo>", 2)):
        tokenizer.add_tokens([name] + [f"{name}_{index}" for index in range(1, count)])
    return tokenizer


def _spelled(name: str, count: int) -> str:
    return " ".join([name] + [f"{name}_{index}" for index in range(1, count)])


def _inversion_prompts() -> dict[str, list[Fragment]]:
    toy, big = _spelled("<toy>", 5), _spelled("<big>", 25)
    prompts = {
        f"{before} words, then <toy>": [Fragment("dog " * before + toy + " sits", 1.0)] for before in range(68, 76)
    }
    prompts |= {
        f"{before} words, then <big>": [Fragment("dog " * before + big + " sits", 1.0)] for before in (45, 50, 51, 60)
    }
    prompts["<toy> after a comma near the edge"] = [Fragment("dog " * 60 + ", cat " * 4 + toy + " sits", 1.0)]
    prompts["weighted <big>"] = [Fragment("dog " * 40, 1.0), Fragment(big, 1.2), Fragment(" dog" * 40, 1.0)]
    return prompts


@pytest.mark.parametrize("name", list(_inversion_prompts()))
def test_a1111_window_split_keeps_a_textual_inversion_whole_as_a1111(clip_with_inversions, name):
    tokenizer, prompt = clip_with_inversions, _inversion_prompts()[name]
    embeddings = {tokenizer.convert_tokens_to_ids("<toy>"): 5, tokenizer.convert_tokens_to_ids("<big>"): 25}
    (got,) = clip_windows(tokenizer, [prompt], 77, window_split="a1111")
    chunks = _a1111_chunks(tokenizer, prompt, embeddings=embeddings)
    expected = [[tokenizer.bos_token_id, *(t for t, _ in c), tokenizer.eos_token_id] for c in chunks]
    assert got.ids.tolist() == [ids + [tokenizer.pad_token_id] * (77 - len(ids)) for ids in expected]
    expected_weights = [[1.0, *(w for _, w in c), 1.0] + [1.0] * (75 - len(c)) for c in chunks]
    torch.testing.assert_close(got.weights, torch.tensor(expected_weights), rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", list(_inversion_prompts()))
def test_word_window_split_keeps_a_textual_inversion_whole(clip_with_inversions, name):
    """The default rule: a multi-vector token that does not fit the window's room starts the
    next window; all tokens are kept, in order."""
    tokenizer, prompt = clip_with_inversions, _inversion_prompts()[name]
    (got,) = clip_windows(tokenizer, [prompt], 77)
    rows = [row[mask.bool()][1:-1].tolist() for row, mask in zip(got.ids, got.mask)]
    assert [token for row in rows for token in row] == _ids(tokenizer, "".join(f.text for f in prompt))
    for name_, count in (("<toy>", 5), ("<big>", 25)):
        vectors = tokenizer.convert_tokens_to_ids([name_] + [f"{name_}_{index}" for index in range(1, count)])
        holding = [row for row in rows if vectors[0] in row]
        for row in holding:
            start = row.index(vectors[0])
            assert row[start : start + count] == vectors, f"{name_} is split across windows"


def test_truncate_keeps_the_first_75_tokens_as_the_tokenizer_truncates(clip, caplog):
    """`window_split="truncate"`: one window, equal to the tokenizer's own truncation
    (`truncation=True, max_length=77`, what diffusers' `encode_prompt` feeds CLIP)."""
    text = ", ".join(["a big red ball on green grass"] * 12)
    with caplog.at_level(logging.INFO, logger="clipcond.chunking"):
        (got,) = clip_windows(clip, [[Fragment(text, 1.0)]], 77, window_split="truncate")
    expected = clip(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert got.ids.tolist() == [expected] and got.num_windows == 1
    dropped = len(_ids(clip, text)) - 75
    assert f"truncated to 75 tokens: {dropped} tokens dropped" in caplog.text
    (short,) = clip_windows(clip, [[Fragment("a red ball", 1.0)]], 77, window_split="truncate")
    assert short.ids.tolist() == [clip("a red ball", padding="max_length", max_length=77).input_ids]


def test_truncate_ends_the_prompt_at_a_break(clip):
    (got,) = clip_windows(clip, [[Fragment("a red ball", 1.0), BREAK_MARKER, Fragment("a cat", 1.0)]], 77, "truncate")
    assert got.ids.tolist() == [clip("a red ball", padding="max_length", max_length=77).input_ids]


def _random_long_prompts(count: int, seed: int) -> dict[str, list[Fragment]]:
    """Long comma-separated prompts of common tag words, some phrases weighted."""
    import random

    words = ["red", "fox", "snow", "photorealistic", "masterpiece", "best", "quality", "8k", "ultra,", "detailed"]
    rng = random.Random(seed)
    prompts = {}
    for index in range(count):
        fragments = []
        for _ in range(rng.randint(20, 45)):
            phrase = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) + ", "
            fragments.append(Fragment(phrase, rng.choice([1.0, 1.0, 1.2, 0.8])))
        prompts[f"random {index}"] = fragments
    return prompts


COMFY_SPLIT_PROMPTS = {
    **_random_long_prompts(40, seed=0),
    "a word of 8+ tokens at the edge is split": [Fragment("dog " * 70 + "antidisestablishmentarianismusx cat", 1.0)],
    "a word of 8 tokens at the edge is split": [Fragment("dog " * 70 + "zxqvbnmplk cat", 1.0)],
    "a word of 7 tokens at the edge moves whole": [Fragment("dog " * 70 + "xqzvbnmkl cat", 1.0)],
    "glued punctuation moves with its word": [Fragment("dog " * 74 + "ultra, sharp", 1.0)],
    "line breaks and double spaces": [Fragment("ultra,\n" * 40 + "cat  " * 40, 1.0)],
    "capital letters keep their own entries": [Fragment("A photo of A fox, vitamin D, " * 12, 1.0)],
    "a tab does not cut a word (ComfyUI cuts at spaces)": [Fragment("dog " * 74 + "red\tfox cat", 1.0)],
    "an empty prompt is one empty window": [Fragment("", 1.0)],
    "weighted, with a BREAK": [
        Fragment("misty mountains, pine forest, " * 8, 1.0),
        Fragment("golden hour, ", 1.3),
        BREAK_MARKER,
        Fragment("oil painting, " * 30, 0.9),
    ],
}


def _expected_windows(tokenizer, batches) -> tuple[list[list[int]], list[list[float]]]:
    ids = [[tokenizer.bos_token_id, *(t for t, _ in b), tokenizer.eos_token_id] for b in batches]
    ids = [row + [tokenizer.pad_token_id] * (77 - len(row)) for row in ids]
    weights = [[1.0, *(w for _, w in b), 1.0] + [1.0] * (75 - len(b)) for b in batches]
    return ids, weights


@pytest.mark.parametrize("name", list(COMFY_SPLIT_PROMPTS))
def test_comfy_window_split_cuts_before_a_space_separated_word_as_comfyui(clip, name):
    prompt = COMFY_SPLIT_PROMPTS[name]
    (got,) = clip_windows(clip, [prompt], 77, window_split="comfy")
    ids, weights = _expected_windows(clip, comfy_batches(clip, prompt))
    assert got.ids.tolist() == ids
    torch.testing.assert_close(got.weights, torch.tensor(weights), rtol=0, atol=1e-7)


def test_comfy_windows_differ_from_the_default_on_many_random_prompts(clip):
    """The rule is not the default one under another name: on the random prompts above, most
    long prompts are windowed alike, but not all (ComfyUI moves ``ultra,`` whole)."""
    prompts = _random_long_prompts(40, seed=0).values()
    differ = sum(
        clip_windows(clip, [p], 77, window_split="comfy")[0].ids.tolist() != clip_windows(clip, [p], 77)[0].ids.tolist()
        for p in prompts
    )
    assert 0 < differ < 40


def _glued_inversion_prompts() -> dict[str, list[Fragment]]:
    prompts = {}
    for name, count in (("<toy>", 5), ("<duo>", 2)):
        spelled = _spelled(name, count)
        for before in range(66, 76):
            prompts[f"{before} words, then {name},"] = [Fragment("dog " * before + spelled + ", sits", 1.0)]
    return prompts


@pytest.mark.parametrize("name", list(_inversion_prompts()) + list(_glued_inversion_prompts()))
def test_comfy_window_split_counts_a_textual_inversion_as_one_word(clip_with_inversions, name):
    """A multi-vector token of fewer than 8 vectors moves whole, one of 8 or more is split at
    the edge, as ComfyUI places an embedding."""
    tokenizer, prompt = clip_with_inversions, {**_inversion_prompts(), **_glued_inversion_prompts()}[name]
    (got,) = clip_windows(tokenizer, [prompt], 77, window_split="comfy")
    ids, weights = _expected_windows(tokenizer, comfy_batches(tokenizer, prompt, {"<toy>": 5, "<big>": 25, "<duo>": 2}))
    assert got.ids.tolist() == ids
    torch.testing.assert_close(got.weights, torch.tensor(weights), rtol=0, atol=1e-7)


def test_t5_tokenizes_a_weighted_prompts_fragments_one_by_one_as_compel(t5, flux_pipe):
    """docs/conditioning.md: on T5 a weighted prompt's fragments are tokenized one by one, trimmed,
    so `, cat` in `a (red:1.2), cat` starts with a lone "▁" that the whole text does not have;
    compel (untrimmed fragments) has the same "▁", "," pair."""
    from compel import Compel

    from clipcond.prompts import parse_prompt

    fragments = parse_prompt("a (red:1.2), cat")
    (got,) = t5_sequence(t5, [fragments], 16)
    ours = got.ids[0][got.mask[0].bool()].tolist()
    pieces = [t5(fragment.text.strip(), add_special_tokens=False).input_ids for fragment in fragments]
    assert ours == sum(pieces, []) + [t5.eos_token_id]
    assert len(ours) == len(t5("a red, cat").input_ids) + 1
    lone_comma = t5.convert_tokens_to_ids(["▁", ","])
    assert pieces[2][:2] == lone_comma
    compel = Compel(tokenizer=flux_pipe.tokenizer_2, text_encoder=flux_pipe.text_encoder_2, truncate_long_prompts=False)
    ids, _, _ = compel.conditioning_provider.get_token_ids_and_expand_weights(
        [fragment.text for fragment in fragments], [fragment.weight for fragment in fragments], device="cpu"
    )
    theirs = ids.tolist()
    assert any(theirs[i : i + 2] == lone_comma for i in range(len(theirs) - 1))
