"""Where long prompts split, against windows built here from whole words, and what the encoders
make of them, against the models run directly on those windows.

The reference splits independently of clipcond's chunking: CLIP's BPE never merges across a
space, so tokenizing each word alone gives the prompt's tokens word by word, and a window takes
whole words while they fit in 75 tokens (a word longer than a window is cut, which these prompts
avoid).
"""

from __future__ import annotations

import pytest
import torch

from clipcond import TextConditioner
from clipcond.chunking import clip_windows, t5_sequence
from clipcond.prompts import Fragment
from clipcond.tokenization import clip_tokenizer

LONG_WORDS = ["photorealistic", "antidisestablishmentarianism", "hyperrealistic", "supercalifragilistic"]


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def _word_windows(tokenizer, text: str, capacity: int = 75) -> list[list[int]]:
    windows, current = [], []
    for word in text.split():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if current and len(current) + len(ids) > capacity:
            windows.append(current)
            current = []
        current = current + ids
    windows.append(current)
    return windows


def _window_rows(tokenizer, windows: list[list[int]], length: int = 77) -> torch.Tensor:
    rows = []
    for content in windows:
        row = [tokenizer.bos_token_id, *content, tokenizer.eos_token_id]
        rows.append(row + [tokenizer.pad_token_id] * (length - len(row)))
    return torch.tensor(rows)


def _boundary_prompts(tokenizer) -> list[str]:
    """Prompts whose long word straddles token 75 in several ways (its first, middle or last
    sub-token would be the 75th)."""
    prompts = []
    for word in LONG_WORDS:
        pieces = len(tokenizer(word, add_special_tokens=False).input_ids)
        assert pieces >= 2, word
        for before in range(75 - pieces - 1, 76):
            prompts.append("a " * before + word + " a a")
    return prompts


def test_a_word_across_the_window_boundary_moves_to_the_next_window(tokenizer):
    prompts = _boundary_prompts(tokenizer)
    windows = clip_windows(tokenizer, [[Fragment(text, 1.0)] for text in prompts], 77)
    for text, got in zip(prompts, windows):
        expected = _window_rows(tokenizer, _word_windows(tokenizer, text))
        assert torch.equal(got.ids, expected), text


def test_the_issue_example_keeps_photorealistic_whole(tokenizer):
    text = "a " * 73 + "photorealistic a a"
    (got,) = clip_windows(tokenizer, [[Fragment(text, 1.0)]], 77)
    first = got.ids[0][got.mask[0].bool()].tolist()[1:-1]
    assert tokenizer.decode(first).split()[-1] != "photore"  # never a word cut at the boundary
    assert torch.equal(got.ids, _window_rows(tokenizer, _word_windows(tokenizer, text)))


def test_long_prompt_is_the_word_windows_encoded_and_joined(sd_pipe, tokenizer):
    """The conditioner's output is the text encoder run on windows built here."""
    text = "a " * 73 + "photorealistic portrait of a red fox in the snow"
    cond = TextConditioner.from_pipeline(sd_pipe, cache_size=0)
    rows = _window_rows(tokenizer, _word_windows(tokenizer, text))
    with torch.no_grad():
        direct = sd_pipe.text_encoder(rows)[0]  # (windows, 77, width)
        got = cond.encode(text).tokens[0]
    assert rows.shape[0] == 2
    torch.testing.assert_close(got, direct.reshape(-1, direct.shape[-1]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_length", [8, 9, 16])
def test_t5_keeps_exactly_the_first_tokens_that_fit(flux_pipe, max_length):
    """T5 reads one sequence: the first max_length - 1 tokens, cut mid-word if need be (as
    diffusers does), then EOS; the rest is dropped and counted."""
    tokenizer = flux_pipe.tokenizer_2
    text = "photorealistic antidisestablishmentarianism of a red fox"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    (got,) = t5_sequence(tokenizer, [[Fragment(text, 1.0)]], max_length)
    kept = min(len(ids), max_length - 1)
    assert got.ids[0, :kept].tolist() == ids[:kept]
    assert got.ids[0, kept].item() == tokenizer.eos_token_id
    assert got.dropped == max(0, len(ids) - (max_length - 1))


def test_sd3_long_prompt_is_clip_windows_then_t5_by_value(sd3_pipe):
    """Values, not only shapes: SD3's long prompt is each CLIP's windows (penultimate layer,
    joined on channels, zero-padded to T5's width), then T5's tokens."""
    text = "a " * 73 + "photorealistic red fox in the snow"
    cond = TextConditioner.from_pipeline(sd3_pipe, cache_size=0, max_sequence_length=16)
    with torch.no_grad():
        got = cond.encode(text).tokens[0]
        clips = []
        for encoder, tokenizer in (
            (sd3_pipe.text_encoder, sd3_pipe.tokenizer),
            (sd3_pipe.text_encoder_2, sd3_pipe.tokenizer_2),
        ):
            rows = _window_rows(tokenizer, _word_windows(tokenizer, text))
            states = encoder(rows, output_hidden_states=True).hidden_states[-2]
            clips.append(states.reshape(-1, states.shape[-1]))
        clip = torch.cat(clips, dim=-1)
        t5_ids = sd3_pipe.tokenizer_3(text, max_length=16, truncation=True, padding="max_length", return_tensors="pt")
        t5 = sd3_pipe.text_encoder_3(t5_ids.input_ids)[0][0]
    width = t5.shape[-1]
    expected = torch.cat([torch.nn.functional.pad(clip, (0, width - clip.shape[-1])), t5])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _a1111_comma_windows(tokenizer, text: str) -> list[list[int]]:
    """A1111's windows of a plain prompt, built from its documented rule, independently of
    clipcond's chunking: when a window is full and the next token is not a comma, what follows
    the window's last comma moves on if that comma is at most 20 tokens from the end."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    windows, current, comma_at = [], [], None
    for token in tokenizer(text, add_special_tokens=False).input_ids:
        if token == comma:
            comma_at = len(current)
        elif len(current) == 75 and comma_at is not None and 75 - comma_at <= 20:
            windows.append(current[: comma_at + 1])
            current, comma_at = current[comma_at + 1 :], None
        if len(current) == 75:
            windows.append(current)
            current, comma_at = [], None
        current.append(token)
    return windows + [current]


def test_window_split_a1111_encodes_a1111s_windows(sd_pipe, tokenizer, tmp_path):
    """`window_split="a1111"`: the text encoder run on A1111's windows; a key of the cache (a
    record made with the other rule is not served) and of conditioner YAML."""
    text = ", ".join(["a photorealistic portrait of a red fox"] * 12)
    rows = _window_rows(tokenizer, _a1111_comma_windows(tokenizer, text))
    assert not torch.equal(rows, _window_rows(tokenizer, _word_windows(tokenizer, text)))
    with torch.no_grad():
        direct = sd_pipe.text_encoder(rows)[0]
    shared = str(tmp_path / "cache")
    words = TextConditioner.from_pipeline(sd_pipe, cache_dir=shared).encode(text).tokens[0]
    cond = TextConditioner.from_pipeline(sd_pipe, cache_dir=shared, window_split="a1111")
    got = cond.encode(text).tokens[0]
    assert cond.cache.hits == 0 and not torch.allclose(got[: words.shape[0]], words[: got.shape[0]])
    torch.testing.assert_close(got, direct.reshape(-1, direct.shape[-1]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="`window_split` must be one of"):
        TextConditioner.from_pipeline(sd_pipe, window_split="comma")


def test_window_split_in_the_pipeline_its_folder_yaml_and_generate(sd_pipe, tmp_path, tiny_clip_text_path, capsys):
    """CLIPConditionedPipeline(window_split=...) keeps it in its config (saved and loaded back),
    its conditioner cuts so, conditioner YAML takes the key, and `generate --window-split`
    gives the image of a pipeline built with it."""
    import numpy as np
    import yaml
    from PIL import Image

    from clipcond import CLIPConditionedPipeline
    from clipcond.cli import main

    text = ", ".join(["a photorealistic portrait of a red fox"] * 12)
    pipe = CLIPConditionedPipeline.from_pipe(sd_pipe, window_split="a1111")
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.window_split == "a1111" and loaded.conditioner.recipe.window_split == "a1111"
    reference = TextConditioner.from_pipeline(sd_pipe, window_split="a1111", cache_size=0).encode(text).tokens
    assert torch.equal(loaded.conditioner.encode(text).tokens, reference)
    with pytest.raises(ValueError, match="`window_split` must be one of"):
        CLIPConditionedPipeline.from_pipe(sd_pipe, window_split="comma")
    path = tmp_path / "cond.yaml"
    path.write_text(
        yaml.safe_dump({"recipe": "sd", "clip": [{"path": str(tiny_clip_text_path)}], "window_split": "a1111"})
    )
    assert TextConditioner.from_config(path).recipe.window_split == "a1111"

    CLIPConditionedPipeline.from_pipe(sd_pipe).save_pretrained(tmp_path / "plain")
    common = [text, "--model", str(tmp_path / "plain"), "--steps", "2", "--seed", "3"]
    assert main(["generate", *common, "-o", str(tmp_path / "a1111.png"), "--window-split", "a1111"]) == 0
    assert main(["generate", *common, "-o", str(tmp_path / "word.png")]) == 0
    loaded.set_progress_bar_config(disable=True)
    expected = loaded(text, num_inference_steps=2, guidance_scale=3.0, generator=[torch.Generator().manual_seed(3)])
    written = np.asarray(Image.open(tmp_path / "a1111.png"))
    assert np.array_equal(written, np.asarray(expected.images[0]))
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "word.png")))


@pytest.mark.parametrize("window_split", ["word", "a1111"])
def test_a_loaded_textual_inversion_that_would_cross_the_edge_starts_the_next_window(window_split):
    """A 5-vector token whose vectors would fill positions 73-77 of a window (73 words before
    it): the conditioner encodes 73 words in the first window and the token whole in the second,
    as A1111 places an embedding; the reference runs the text encoder on those two windows."""
    import tiny_pipelines

    pipe = tiny_pipelines.build_sd()
    cond = TextConditioner.from_pipeline(pipe, cache_size=0, window_split=window_split)
    torch.manual_seed(0)
    cond.load_textual_inversion(torch.randn(5, pipe.text_encoder.config.hidden_size), token="<toy>")
    tokenizer = pipe.tokenizer
    toy = tokenizer.convert_tokens_to_ids(["<toy>"] + [f"<toy>_{index}" for index in range(1, 5)])
    dog, sits = (tokenizer(word, add_special_tokens=False).input_ids for word in ("dog", "sits"))
    rows = _window_rows(tokenizer, [dog * 73, toy + sits])
    with torch.no_grad():
        direct = pipe.text_encoder(rows)[0]
        got = cond.encode("dog " * 73 + "<toy> sits").tokens[0]
    torch.testing.assert_close(got, direct.reshape(-1, direct.shape[-1]), rtol=0, atol=1e-6)


LONG_PROMPT = ", ".join(["a photorealistic portrait of a red fox (in the snow)"] * 8)


def test_truncate_equals_diffusers_encode_prompt_on_long_prompts(sd_pipe, sdxl_pipe):
    """`window_split="truncate"` with `parse_weights=False`: diffusers' own reading of a prompt
    longer than 77 tokens (it keeps the first 75), bit for bit, on SD and on SDXL's two
    encoders and pooled vector."""
    negative = "blurry " * 100
    with torch.no_grad():
        tokens, negative_tokens = sd_pipe.encode_prompt(LONG_PROMPT, "cpu", 1, True, negative_prompt=negative)
        got = TextConditioner.from_pipeline(sd_pipe, window_split="truncate", parse_weights=False, cache_size=0)
        got = got.encode([LONG_PROMPT, negative])
        assert torch.equal(got.tokens, torch.cat([tokens, negative_tokens]))
        peer = sdxl_pipe.encode_prompt(LONG_PROMPT, device="cpu", negative_prompt=negative)
        cond = TextConditioner.from_pipeline(sdxl_pipe, window_split="truncate", parse_weights=False, cache_size=0)
        for text, tokens, pooled in ((LONG_PROMPT, peer[0], peer[2]), (negative, peer[1], peer[3])):
            got = cond.encode(text)  # one at a time, as diffusers runs them (a projection of 2 rows differs by 1 ulp)
            assert torch.equal(got.tokens, tokens) and torch.equal(got.pooled, pooled)
        windows = TextConditioner.from_pipeline(sdxl_pipe, cache_size=0).encode(LONG_PROMPT).tokens
    assert windows.shape[1] > 77  # the default reads the whole prompt


def test_flux_reads_its_clip_truncated_as_diffusers_does(flux_pipe, tokenizer):
    """Flux takes only the pooled vector of the CLIP's first window, so its recipe truncates as
    diffusers does: for prompts whose 75th token falls inside a word (where a word-end cut would
    end the first window earlier), the pooled vector equals `encode_prompt`'s bit for bit, and
    the T5 still reads the whole prompt."""
    cond = TextConditioner.from_pipeline(flux_pipe, cache_size=0)
    assert cond.recipe.window_split == "truncate"
    word_end = TextConditioner.from_pipeline(flux_pipe, cache_size=0, window_split="word")
    word_end_differs = []
    for text in _boundary_prompts(tokenizer):
        with torch.no_grad():
            tokens, pooled, _ = flux_pipe.encode_prompt(prompt=text, prompt_2=None, device="cpu")
        kwargs = cond.pipeline_kwargs(text)
        assert torch.equal(kwargs["pooled_prompt_embeds"], pooled) and torch.equal(kwargs["prompt_embeds"], tokens)
        word_end_differs.append(not torch.equal(word_end.pipeline_kwargs(text)["pooled_prompt_embeds"], pooled))
    assert sum(word_end_differs) >= 3  # the prompts where a word-end cut ends the window earlier
