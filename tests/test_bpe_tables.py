"""A CLIP tokenizer whose merges were cut short (clipcond/bpe_tables.py) is refused where clipcond
loads one from disk: `CLIPConditionedPipeline.from_pretrained` (both of SDXL's tokenizers) and a
conditioner's encoder source. transformers and diffusers load such a folder without a word, and
its tokenizer spells words out in smaller pieces: with merges.txt emptied, "photo" became five
letters."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline
from tiny_pipelines import build_sd, build_sdxl, save_t5_tokenizer

from clipcond import CLIPConditionedPipeline, TextConditioner
from clipcond.bpe_tables import check_bpe_tables, unmade_tokens
from clipcond.conditioner_config import ConditionerConfig, EncoderSource
from clipcond.tokenization import load_clip_bpe


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "sd"
    CLIPConditionedPipeline.from_pipe(build_sd()).save_pretrained(folder)
    return folder


def _merges_kept(folder: Path, subfolder: str, kept: int) -> None:
    """Cut the tokenizer in `folder`/`subfolder` to its first `kept` merges, at a line's end, as a
    copy stopped partway leaves merges.txt; tokenizer.json (which transformers reads first) goes."""
    tokenizer = folder / subfolder
    (tokenizer / "tokenizer.json").unlink()
    lines = (tokenizer / "merges.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (tokenizer / "merges.txt").write_text("".join(lines[: 1 + kept]), encoding="utf-8")  # line 0: a header


def test_the_bundled_vocabulary_is_made_whole_by_its_merges() -> None:
    """OpenAI's table: every one of the 48,894 merged tokens is made, nothing else is missing."""
    pipe = build_sd()
    assert unmade_tokens(pipe.tokenizer) == []
    vocabulary, merges = load_clip_bpe()
    assert len(merges) == 48894 and len(vocabulary) == 49408
    check_bpe_tables(pipe.tokenizer, "the bundled table")


def test_a_tokenizer_that_is_no_bpe_is_not_read(tmp_path) -> None:
    from transformers import AutoTokenizer

    t5 = AutoTokenizer.from_pretrained(save_t5_tokenizer(tmp_path / "t5"))  # a Unigram model, as T5's
    assert unmade_tokens(t5) is None
    assert unmade_tokens(object()) is None  # no tokenizers backend (a slow tokenizer)
    check_bpe_tables(t5, "a T5 folder")


def _merges_cut(subfolder: str, missing: int) -> str:
    """What the folder check (`clipcond.file_damage`) says of a CLIP tokenizer's merges.txt in
    `subfolder` whose merges leave `missing` entries of its vocab.json unmade."""
    return (
        rf"{subfolder}/merges\.txt is cut short or damaged: the tokenizer built from it and vocab\.json has {missing} "
        r"vocabulary entries that no merge rule makes \('"
    )


def _no_component_loads(monkeypatch) -> None:
    import diffusers.pipelines.pipeline_utils as pipeline_utils

    def loaded(*args, **kwargs):
        raise AssertionError("a component was loaded before the folder was checked")

    monkeypatch.setattr(pipeline_utils, "load_sub_model", loaded)


@pytest.mark.parametrize("kept", [0, 48000])
def test_a_pipeline_folder_with_its_merges_cut_short_is_refused(tmp_path, sd_folder, monkeypatch, kept) -> None:
    """Read from vocab.json and merges.txt (the hub's SD folders hold no tokenizer.json), the
    merges are checked with the folder, before anything loads."""
    folder = tmp_path / "cut"
    shutil.copytree(sd_folder, folder)
    _merges_kept(folder, "tokenizer", kept)
    missing = 48894 - kept
    message = (
        rf"^the pipeline saved at {re.escape(str(folder))} has damaged files .*: {_merges_cut('tokenizer', missing)}"
    )
    with monkeypatch.context() as patched:
        _no_component_loads(patched)
        with pytest.raises(ValueError, match=message):
            CLIPConditionedPipeline.from_pretrained(folder)
    peer = StableDiffusionPipeline.from_pretrained(folder)  # diffusers loads it without a word
    whole = build_sd().tokenizer
    if kept == 0:
        assert len(peer.tokenizer("photo").input_ids) == 2 + 5  # the five letters, between BOS and EOS
        assert len(whole("photo").input_ids) == 2 + 1
    assert len(unmade_tokens(peer.tokenizer)) == missing


@pytest.mark.parametrize("alone", [False, True], ids=["beside vocab.json", "alone"])
@pytest.mark.parametrize("written", ["pairs", "strings"])
def test_merges_cut_short_inside_tokenizer_json_are_refused_before_anything_loads(
    tmp_path, sd_folder, monkeypatch, written, alone
) -> None:
    """transformers reads tokenizer.json before vocab.json and merges.txt: its own merges count,
    checked with the folder (`clipcond.file_damage`), as tokenizers >= 0.20 writes them (pairs)
    or as older files hold them ("first second" strings), also in a folder that holds no other
    vocabulary file."""
    folder = tmp_path / "cut"
    shutil.copytree(sd_folder, folder)
    if alone:
        for name in ("vocab.json", "merges.txt"):
            (folder / "tokenizer" / name).unlink()
    path = folder / "tokenizer" / "tokenizer.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    merges = state["model"]["merges"][:-10]
    state["model"]["merges"] = merges if written == "pairs" else [" ".join(pair) for pair in merges]
    path.write_text(json.dumps(state), encoding="utf-8")
    _no_component_loads(monkeypatch)
    message = (
        rf"^the pipeline saved at {re.escape(str(folder))} has damaged files .*: tokenizer/tokenizer\.json has 10 "
        r"vocabulary entries that no merge rule makes \('.*', \.\.\.\): its model\.merges are cut short or damaged, and "
        r"its tokenizer would split words into pieces the text encoder was not trained on; nothing was loaded$"
    )
    with pytest.raises(ValueError, match=message):
        CLIPConditionedPipeline.from_pretrained(folder)


def test_a_tokenizer_read_from_its_tokenizer_json_has_the_files_tables(sd_folder, tmp_path) -> None:
    """What lets from_pretrained leave out the check after loading for a tokenizer read from a
    checked tokenizer.json: the loaded tokenizer holds that file's vocabulary and merges
    (clipcond's tokenizer and transformers' CLIPTokenizer, as SD and SDXL folders save them)."""
    sdxl = tmp_path / "sdxl"
    CLIPConditionedPipeline.from_pipe(build_sdxl()).save_pretrained(sdxl)
    for folder, name in [(sd_folder, "tokenizer"), (sdxl, "tokenizer"), (sdxl, "tokenizer_2")]:
        loaded = getattr(CLIPConditionedPipeline.from_pretrained(folder), name)
        saved = json.loads((folder / name / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        model = json.loads(loaded.backend_tokenizer.to_str())["model"]
        assert (model["vocab"], model["merges"]) == (saved["vocab"], saved["merges"]), (folder, name)


@pytest.mark.parametrize("slot", ["tokenizer", "tokenizer_2"])
def test_a_tokenizer_given_to_from_pretrained_is_checked_after_the_load(tmp_path, sd_folder, slot) -> None:
    """Not read from the folder, it is checked as it is: its merges cut short are refused (given
    as SD's tokenizer, and as SDXL's second)."""
    from transformers import CLIPTokenizer

    folder = sd_folder
    if slot == "tokenizer_2":
        folder = tmp_path / "sdxl"
        CLIPConditionedPipeline.from_pipe(build_sdxl()).save_pretrained(folder)
    cut = tmp_path / "cut-tokenizer"
    shutil.copytree(sd_folder / "tokenizer", cut)
    _merges_kept(tmp_path, "cut-tokenizer", 48000)
    tokenizer = CLIPTokenizer.from_pretrained(cut)
    with pytest.raises(ValueError, match=rf"\({slot}\) has 894 vocabulary entries that no merge rule makes"):
        CLIPConditionedPipeline.from_pretrained(folder, **{slot: tokenizer})


def test_tokenizers_read_from_the_checked_folder_are_not_checked_again_after_the_load(
    tmp_path, sd_folder, monkeypatch
) -> None:
    """The folder check read their tables already: the after-load check is for a tokenizer given
    as an argument only (its tables come from no checked file)."""
    import clipcond.file_damage as file_damage

    checked = []
    monkeypatch.setattr(file_damage, "check_bpe_tables", lambda tokenizer, where: checked.append(where))
    sdxl = tmp_path / "sdxl"
    CLIPConditionedPipeline.from_pipe(build_sdxl()).save_pretrained(sdxl)
    CLIPConditionedPipeline.from_pretrained(sdxl)
    assert checked == []
    from transformers import CLIPTokenizer

    CLIPConditionedPipeline.from_pretrained(sdxl, tokenizer_2=CLIPTokenizer.from_pretrained(sd_folder / "tokenizer"))
    assert checked == [f"{sdxl} (tokenizer_2)"]


def test_sdxls_second_tokenizer_is_checked_too(tmp_path) -> None:
    folder = tmp_path / "sdxl"
    CLIPConditionedPipeline.from_pipe(build_sdxl()).save_pretrained(folder)
    _merges_kept(folder, "tokenizer_2", 48893)
    with pytest.raises(ValueError, match=_merges_cut("tokenizer_2", 1)):
        CLIPConditionedPipeline.from_pretrained(folder)


def test_a_conditioner_source_with_its_merges_cut_short_is_refused(tmp_path, sd_folder) -> None:
    folder = tmp_path / "cut"
    shutil.copytree(sd_folder, folder)
    _merges_kept(folder, "tokenizer", 100)
    source = EncoderSource(path=str(folder), subfolder="text_encoder", tokenizer_subfolder="tokenizer")
    config = ConditionerConfig(recipe="sd", clip=[source], cache_size=0)
    message = rf"^the clip encoder at {re.escape(repr(str(folder)))} has damaged files .*: {_merges_cut('.*tokenizer', 48794)}"
    with pytest.raises(ValueError, match=message):
        TextConditioner.from_config(config)
    whole = EncoderSource(path=str(sd_folder), subfolder="text_encoder", tokenizer_subfolder="tokenizer")
    TextConditioner.from_config(ConditionerConfig(recipe="sd", clip=[whole], cache_size=0))


def test_a_tokenizer_loaded_without_the_folder_check_is_checked_after_the_load(tmp_path, sd_folder) -> None:
    """`load_tokenizer` alone (no `folder_checked`): the tables of the tokenizer it loaded are checked."""
    from clipcond.encoder_loading import load_tokenizer

    folder = tmp_path / "cut"
    shutil.copytree(sd_folder, folder)
    _merges_kept(folder, "tokenizer", 100)
    source = EncoderSource(path=str(folder), subfolder="text_encoder", tokenizer_subfolder="tokenizer")
    message = rf"^the tokenizer of {re.escape(repr(str(folder)))} \(subfolder 'tokenizer'\) has 48794 vocabulary"
    with pytest.raises(ValueError, match=message):
        load_tokenizer(source, "clip")


def _tokenizer(vocab: dict[str, int], merges: list, **model: str):
    """A transformers fast tokenizer over a BPE model of `vocab` and `merges` (pairs, or
    "first second" strings as tokenizers wrote them before 0.20: it reads both and writes
    pairs), with `model`'s options."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = {"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": vocab, "merges": merges}}
    state["model"].update(model)
    backend = Tokenizer.from_str(json.dumps(state))
    backend.add_special_tokens(["<special>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.mark.parametrize("form", ["pairs", "strings"])
def test_unmade_tokens_reads_merges_in_either_form(form) -> None:
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "<special>": 5}
    merges = [["a", "b"], ["ab", "c"]]
    written = merges if form == "pairs" else [" ".join(pair) for pair in merges]
    assert unmade_tokens(_tokenizer(vocab, written)) == []
    assert unmade_tokens(_tokenizer(vocab, written[:1])) == ["abc"]
    assert unmade_tokens(_tokenizer(vocab, [])) == ["ab", "abc"]


def test_unmade_tokens_reads_a_word_end_suffix_and_a_subword_prefix() -> None:
    """Base symbols carry the suffix (CLIP's "</w>") or prefix ("##"); a merge drops the second
    half's prefix, as tokenizers' BPE does."""
    suffixed = {"a": 0, "b</w>": 1, "ab</w>": 2}
    assert unmade_tokens(_tokenizer(suffixed, [["a", "b</w>"]], end_of_word_suffix="</w>")) == []
    assert unmade_tokens(_tokenizer(suffixed, [], end_of_word_suffix="</w>")) == ["ab</w>"]
    prefixed = {"a": 0, "##b": 1, "ab": 2}
    assert unmade_tokens(_tokenizer(prefixed, [["a", "##b"]], continuing_subword_prefix="##")) == []
    assert unmade_tokens(_tokenizer(prefixed, [], continuing_subword_prefix="##")) == ["ab"]


def test_a_refusal_names_three_entries_and_says_when_there_are_more() -> None:
    vocab = {"a": 0, "b": 1, "ab": 2, "ba": 3, "aa": 4, "bb": 5}
    with pytest.raises(
        ValueError, match=r"has 4 vocabulary entries that no merge rule makes \('ab', 'ba', 'aa', \.\.\.\)"
    ):
        check_bpe_tables(_tokenizer(vocab, []), "x")
    with pytest.raises(ValueError, match=r"has 3 vocabulary entries that no merge rule makes \('ba', 'aa', 'bb'\): "):
        check_bpe_tables(_tokenizer(vocab, [["a", "b"]]), "x")


def test_train_diffusions_text_encoder_with_its_merges_cut_short_is_refused(tmp_path, sd_folder) -> None:
    """train-diffusion's loader of a CLIP tower's saved tokenizer: a RunSetupError before any step."""
    from clipcond.training.diffusion.frozen_encoders import load_text_encoder_tokenizer
    from clipcond.training.loop import RunSetupError

    folder = tmp_path / "cut"
    shutil.copytree(sd_folder, folder)
    _merges_kept(folder, "tokenizer", 48890)
    encoder = build_sd().text_encoder
    tokenizer = folder / "tokenizer"
    message = (
        rf"^text_encoder {re.escape(str(tokenizer))}: the folder has damaged files .*{_merges_cut('tokenizer', 4)}"
    )
    with pytest.raises(RunSetupError, match=message):
        load_text_encoder_tokenizer(str(folder / "text_encoder"), encoder)
    assert unmade_tokens(load_text_encoder_tokenizer(str(sd_folder / "text_encoder"), encoder)) == []


def test_a_clip_score_folder_with_its_merges_cut_short_is_refused(tmp_path) -> None:
    """The lab's CLIP score of a transformers CLIPModel folder reads the tokenizer saved in it."""
    from clipcond.lab.metrics import load_clip_scorer
    from clipcond.models import build_clip_model, load_model_config
    from clipcond.tokenization import clip_tokenizer

    repo = Path(__file__).resolve().parents[1]
    folder = tmp_path / "hf"
    build_clip_model(load_model_config(repo / "configs/models/clip-tiny-vit.yaml")).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    load_clip_scorer(folder)
    (folder / "tokenizer.json").unlink()
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    message = (
        rf"^the CLIP at {re.escape(str(folder))} has damaged files .*: {_merges_cut(re.escape(str(folder)), 48894)}"
    )
    with pytest.raises(ValueError, match=message):
        load_clip_scorer(folder)


def test_the_folder_check_reads_the_tables_of_clip_tokenizers_alone(tmp_path, sd_folder) -> None:
    """A BPE tokenizer.json of another class (a sentencepiece model converted with byte fallback,
    as Llama's and Gemma's are) holds entries no merge makes by design (``<0x0A>``): it is not
    refused. The same file saved as a CLIP tokenizer's is, and with no tokenizer_config.json
    (class unknown) the tables are left to the check after the load."""
    from clipcond.file_damage import bpe_tables_read, damaged_files

    folder = tmp_path / "tokenizer"
    shutil.copytree(sd_folder / "tokenizer", folder)
    path = folder / "tokenizer.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    state["model"]["vocab"]["<0x0A>"] = len(state["model"]["vocab"])  # a byte-fallback entry
    path.write_text(json.dumps(state), encoding="utf-8")
    config = folder / "tokenizer_config.json"
    assert bpe_tables_read(folder)
    (found,) = damaged_files(tmp_path, ["tokenizer"], None, safetensors=True)
    assert found.startswith("tokenizer/tokenizer.json has 1 vocabulary entries that no merge rule makes ('<0x0A>')")
    config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": "LlamaTokenizerFast"}))
    assert not bpe_tables_read(folder) and damaged_files(tmp_path, ["tokenizer"], None, safetensors=True) == []
    config.unlink()
    assert not bpe_tables_read(folder)


def _add_entry(folder: Path) -> str:
    """A vocab.json entry that no merge makes, as a special token added to the vocabulary is."""
    path = folder / "vocab.json"
    vocab = json.loads(path.read_text(encoding="utf-8"))
    vocab["<|extra|>"] = len(vocab)
    path.write_text(json.dumps(vocab), encoding="utf-8")
    return "<|extra|>"


def _set_json(path: Path, **settings) -> None:
    whole = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(json.dumps({**whole, **settings}), encoding="utf-8")


def _rewrite_merges(folder: Path, change) -> None:
    path = folder / "merges.txt"
    path.write_bytes(change(path.read_bytes()))


def _without_special_settings(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({key: value for key, value in config.items() if not key.endswith("_token")}))


# variant -> what it does to a CLIP tokenizer folder read from vocab.json and merges.txt
SLOW_TABLE_VARIANTS = {
    "whole": lambda folder: None,
    "CRLF line ends": lambda folder: _rewrite_merges(folder, lambda raw: raw.replace(b"\n", b"\r\n")),
    "no final line break": lambda folder: _rewrite_merges(folder, lambda raw: raw.rstrip(b"\n")),
    "one merge gone": lambda folder: _rewrite_merges(folder, lambda raw: raw.rstrip(b"\n").rsplit(b"\n", 1)[0]),
    "a second version line": lambda folder: _rewrite_merges(folder, lambda raw: raw + b"#version: 0.2\n"),
    "special-token settings left to the class": _without_special_settings,
    "an entry no setting names": _add_entry,
    "an additional special token": lambda folder: _set_json(
        folder / "tokenizer_config.json", additional_special_tokens=[_add_entry(folder)]
    ),
    "an entry of added_tokens_decoder": lambda folder: _set_json(
        folder / "tokenizer_config.json",
        added_tokens_decoder={"49408": {"content": _add_entry(folder), "special": True}},
    ),
    "a special token of special_tokens_map.json": lambda folder: _set_json(
        folder / "special_tokens_map.json", mask_token={"content": _add_entry(folder)}
    ),
    "an entry of added_tokens.json": lambda folder: _set_json(
        folder / "added_tokens.json", **{_add_entry(folder): 49408}
    ),
}


@pytest.mark.parametrize("variant", SLOW_TABLE_VARIANTS.values(), ids=SLOW_TABLE_VARIANTS.keys())
def test_the_folder_check_of_vocab_json_and_merges_txt_agrees_with_the_loaded_tokenizer(
    tmp_path, sd_folder, variant
) -> None:
    """What lets the check after the load be left out for a tokenizer read from them: the folder
    check finds, from the files alone, the entries that the tokenizer transformers loads from
    them has unmade (`unmade_tokens`), its added tokens read from the files' settings."""
    from transformers import AutoTokenizer

    from clipcond.file_damage import bpe_tables_read, damaged_files

    folder = tmp_path / "tokenizer"
    shutil.copytree(sd_folder / "tokenizer", folder)
    (folder / "tokenizer.json").unlink()
    variant(folder)
    assert bpe_tables_read(folder)
    found = damaged_files(tmp_path, ["tokenizer"], None, safetensors=True)
    loaded = unmade_tokens(AutoTokenizer.from_pretrained(folder))
    if not loaded:
        assert found == []
    else:
        (problem,) = found
        assert problem.startswith("tokenizer/merges.txt is cut short or damaged: the tokenizer built from it and ")
        assert f"has {len(loaded)} vocabulary entries that no merge rule makes ({loaded[0]!r}" in problem
        assert problem.endswith("), and would split words into pieces the text encoder was not trained on")


def _small_clip_files() -> tuple[dict, list[str]]:
    """CLIP's 512 base symbols, its first 300 merges and what they make: a vocab.json and the
    lines of a merges.txt that tokenizers builds in well under a millisecond."""
    vocabulary, merges = load_clip_bpe()
    kept = [" ".join(pair) for pair in merges[:300]]
    tokens = list(vocabulary)[:512] + ["".join(pair) for pair in merges[:300]]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}, kept


def _damaged_merges(text: str, rng) -> str:
    """`text` with one random damage of the kinds a copy or an editor leaves."""
    lines = text.split("\n")
    kind = rng.randrange(7)
    if kind == 0:  # cut anywhere
        return text[: rng.randrange(len(text) + 1)]
    if kind == 1:  # characters put in somewhere: separators, line ends, a comment's start
        at = rng.randrange(len(text) + 1)
        return (
            text[:at]
            + "".join(
                rng.choice([" ", "\n", "\r", "\r\n", "\t", "#", "#version", "a", "é", "</w>"])
                for _ in range(rng.randrange(1, 4))
            )
            + text[at:]
        )
    if kind == 2:  # a span gone
        at = rng.randrange(len(text) + 1)
        return text[:at] + text[at + rng.randrange(1, 12) :]
    if kind == 3:  # line ends as another system writes them
        return text.replace("\n", rng.choice(["\r\n", "\r", "\n\n"]))
    if kind == 4:  # a line doubled, or two swapped
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = (lines[j], lines[i]) if rng.random() < 0.5 else (lines[i], lines[i])
        return "\n".join(lines)
    if kind == 5:  # a line's tokens joined or a rule of tokens the vocabulary lacks
        i = rng.randrange(len(lines))
        lines[i] = rng.choice([lines[i].replace(" ", ""), lines[i] + " x", "zz qq", " ", ""])
        return "\n".join(lines)
    return text.rstrip("\n")  # no final line break


def _damaged_vocab(vocab: dict, rng) -> dict:
    """`vocab` as JSON would hold it after one random damage to an id or an entry."""
    damaged = dict(vocab)
    token = rng.choice(list(vocab))
    kinds = [
        -1,
        1.5,
        2.0,
        "7",
        None,
        True,
        2**64 - 1,
        2**64,
    ]  # the last two: the largest id tokenizers reads, and one past it
    choice = rng.randrange(len(kinds) + 2)
    if choice == len(kinds):
        del damaged[token]
    elif choice == len(kinds) + 1:  # a token of a lone surrogate, as an escape "\\udc80" reads in Python
        damaged[token[:-1] + "\udc80"] = damaged.pop(token)
    else:
        damaged[token] = kinds[choice]
    return damaged


def test_reading_clip_files_fits_where_tokenizers_builds(tmp_path) -> None:
    """`read_clip_files` says the files fit (and the folder check then builds no BPE of its own)
    only where tokenizers' `BPE` builds from them, as transformers loads them, and exactly where
    it does for a vocabulary of numbers alone: over 2,000 seeded random damages of merges.txt's
    text and of vocab.json's entries."""
    import random

    from tokenizers.models import BPE

    from clipcond.bpe_tables import read_clip_files

    vocab, lines = _small_clip_files()
    whole = "#version: 0.2\n" + "\n".join(lines) + "\n"
    rng = random.Random(0)
    counts = {True: 0, False: 0}
    for case in range(2000):
        text = _damaged_merges(whole, rng) if case % 4 else whole
        ids = _damaged_vocab(vocab, rng) if case % 4 in (0, 1) else vocab
        (tmp_path / "merges.txt").write_text(text, encoding="utf-8", newline="")
        (tmp_path / "vocab.json").write_text(json.dumps(ids), encoding="utf-8")
        try:
            BPE(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
            built = True
        except Exception:  # tokenizers raises bare `Exception`s
            built = False
        fits = read_clip_files(ids, text, [])[0]
        numbers = all(type(id_) in (int, float) for id_ in ids.values())  # tokenizers skips other values
        damage = (case, text[:200], {k: v for k, v in ids.items() if v != vocab.get(k)})
        assert fits == built if numbers else not fits, damage
        counts[built] += 1
    assert min(counts.values()) > 300, counts  # both verdicts, many times


@pytest.mark.parametrize("settings_file", ["special_tokens_map.json", "added_tokens.json", "vocab.json"])
def test_a_settings_file_that_is_no_object_is_named_beside_the_tables(tmp_path, sd_folder, settings_file) -> None:
    """The added tokens of a folder read from vocab.json and merges.txt are read from its
    settings files; one that holds a JSON list names no tokens, and is named as damaged, as is
    a vocab.json that holds one (its tables are not read)."""
    from clipcond.file_damage import damaged_files

    folder = tmp_path / "tokenizer"
    shutil.copytree(sd_folder / "tokenizer", folder)
    (folder / "tokenizer.json").unlink()
    (folder / settings_file).write_text('["<|extra|>"]', encoding="utf-8")
    assert damaged_files(tmp_path, ["tokenizer"], None, safetensors=True) == [
        f"tokenizer/{settings_file} holds a JSON list, not an object"
    ]


def test_a_slow_bpe_tokenizer_of_another_class_has_its_merges_built_by_tokenizers(tmp_path, sd_folder) -> None:
    """The tables of vocab.json and merges.txt are read for CLIP's classes alone; another BPE
    tokenizer built from them (GPT-2's) has its merges.txt built by tokenizers, as transformers
    builds it: a rule cut in half is named, merges cut at a line's end are not a CLIP's to judge."""
    from clipcond.file_damage import bpe_tables_read, damaged_files

    folder = tmp_path / "tokenizer"
    shutil.copytree(sd_folder / "tokenizer", folder)
    (folder / "tokenizer.json").unlink()
    _set_json(folder / "tokenizer_config.json", tokenizer_class="GPT2Tokenizer")
    assert not bpe_tables_read(folder)
    assert damaged_files(tmp_path, ["tokenizer"], None, safetensors=True) == []
    whole = (folder / "merges.txt").read_text(encoding="utf-8")
    (folder / "merges.txt").write_text(whole[: whole.index("\n", 5000)], encoding="utf-8")  # at a line's end
    assert damaged_files(tmp_path, ["tokenizer"], None, safetensors=True) == []
    (folder / "merges.txt").write_text(whole[: whole.index("\n", 5000) - 2], encoding="utf-8")  # within a rule
    (found,) = damaged_files(tmp_path, ["tokenizer"], None, safetensors=True)
    assert found.startswith("tokenizer/merges.txt does not fit vocab.json as BPE merges (tokenizers: ")
