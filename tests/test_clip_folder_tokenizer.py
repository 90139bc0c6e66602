"""One CLIP folder, one tokenizer: a conditioner YAML, `TextConditioner.from_pipeline` on the
folder as diffusers loads it and train-diffusion's loader read a folder that clipcond wrote
(a pipeline folder, a `save_clip` folder) with OpenAI's text cleaning; a hub-style folder and a
folder of another vocabulary are read as transformers saved them, as diffusers reads them."""

from __future__ import annotations

from pathlib import Path

import tiny_pipelines
import torch

from clipcond import TextConditioner
from clipcond.conditioner_config import ConditionerConfig, EncoderSource
from clipcond.tokenization import CLIPTokenizerWithTextCleaning, clip_tokenizer
from clipcond.training.diffusion.frozen_encoders import load_text_encoder_tokenizer

# prompts OpenAI's cleaning changes (HTML entities, full-width letters, mojibake) and one it does not
CLEANED = ["caf&eacute; &amp; cr\u00e8me", "\uff26\uff55\uff4c\uff4c width", "mojibake: caf\u00c3\u00a9"]
PROMPTS = [*CLEANED, "a red circle"]


def _yaml_route(folder: Path) -> TextConditioner:
    """What `configs/conditioners/sd15.yaml` with `path: <folder>` builds."""
    source = EncoderSource(path=str(folder), subfolder="text_encoder", tokenizer_subfolder="tokenizer")
    return TextConditioner.from_config(ConditionerConfig(recipe="sd", clip=[source], cache_size=0))


def _ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    return [tokenizer(prompt).input_ids for prompt in prompts]


def test_a_clipcond_pipeline_folder_gives_one_tokenizer_on_every_route(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import AutoTokenizer

    folder = tmp_path / "sd"
    tiny_pipelines.build_sd().save_pretrained(folder)  # what train-diffusion writes
    pipe = StableDiffusionPipeline.from_pretrained(folder)  # diffusers, the peer: model_index names the class
    pipeline_route = TextConditioner.from_pipeline(pipe, cache_size=0)
    yaml_route = _yaml_route(folder)
    training_tokenizer = load_text_encoder_tokenizer(str(folder / "text_encoder"), pipe.text_encoder)

    expected = _ids(pipe.tokenizer, PROMPTS)
    plain = AutoTokenizer.from_pretrained(folder / "tokenizer")  # transformers alone: no cleaning
    assert all(a != b for a, b in zip(_ids(plain, CLEANED), _ids(pipe.tokenizer, CLEANED)))  # the prompts exercise it
    assert _ids(yaml_route.clip[0].tokenizer, PROMPTS) == expected
    assert _ids(training_tokenizer, PROMPTS) == expected
    assert yaml_route.clip[0].tokenizer.pad_token == pipe.tokenizer.pad_token
    assert yaml_route.clip[0].tokenizer.model_max_length == pipe.tokenizer.model_max_length
    torch.testing.assert_close(yaml_route.encode(PROMPTS).tokens, pipeline_route.encode(PROMPTS).tokens, rtol=0, atol=0)
    assert yaml_route.identity() == pipeline_route.identity()


def test_a_save_clip_folder_cleans_with_its_context(tmp_path) -> None:
    """A train-clip / convert-clip folder (`save_clip`, a 40-token text tower): the YAML's tokenizer
    cleans as the bundled one and pads to the tower's 40 tokens."""
    from clipcond.models import ClipTwoTower, build_clip_model, load_model_config, save_clip

    repo = Path(__file__).resolve().parents[1]
    torch.manual_seed(0)
    config = load_model_config(repo / "configs/models/clip-tiny-vit.yaml")
    folder = save_clip(ClipTwoTower.from_clip_model(build_clip_model(config)), tmp_path / "tower")
    tokenizer = _yaml_route(folder).clip[0].tokenizer
    reference = clip_tokenizer(model_max_length=config.text.context_length)
    options = {"padding": "max_length", "truncation": True}
    assert [tokenizer(p, **options).input_ids for p in PROMPTS] == [reference(p, **options).input_ids for p in PROMPTS]


def test_a_hub_style_folder_is_read_as_diffusers_reads_it(tmp_path) -> None:
    """A Stable Diffusion folder whose model_index.json names transformers' CLIPTokenizer (every
    hub SD folder): the YAML reads it without the cleaning, as diffusers' pipeline does, so its
    embeddings equal `from_pipeline`'s on prompts the cleaning would change."""
    from diffusers import StableDiffusionPipeline
    from transformers import AutoTokenizer

    pipe = tiny_pipelines.build_sd()
    clip_tokenizer().save_pretrained(tmp_path / "plain")
    pipe.tokenizer = AutoTokenizer.from_pretrained(tmp_path / "plain")  # transformers' own class
    pipe.register_modules(tokenizer=pipe.tokenizer)
    pipe.save_pretrained(tmp_path / "sd")
    peer = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert not isinstance(peer.tokenizer, CLIPTokenizerWithTextCleaning)
    yaml_route = _yaml_route(tmp_path / "sd")
    assert _ids(yaml_route.clip[0].tokenizer, PROMPTS) == _ids(peer.tokenizer, PROMPTS)
    expected = TextConditioner.from_pipeline(peer, cache_size=0).encode(PROMPTS).tokens
    torch.testing.assert_close(yaml_route.encode(PROMPTS).tokens, expected, rtol=0, atol=0)


def test_a_folder_of_another_vocabulary_is_read_as_transformers_saved_it(tmp_path) -> None:
    """A plain transformers CLIP tokenizer of nine tokens: the YAML reads the ids transformers
    reads, not OpenAI's."""
    from transformers import AutoTokenizer, CLIPTokenizer

    words = ["a</w>", "b</w>", "c</w>", "d</w>", "e</w>", "!</w>"]
    vocab = {token: index for index, token in enumerate(["<|startoftext|>", "<|endoftext|>", "!", *words])}
    folder = tmp_path / "tower"
    CLIPTokenizer(vocab=vocab, merges=[], pad_token="!").save_pretrained(folder / "tokenizer")
    tiny_pipelines.clip_text_model(3, vocab_size=len(vocab), bos_token_id=0, eos_token_id=1).save_pretrained(
        folder / "text_encoder"
    )
    tokenizer = _yaml_route(folder).clip[0].tokenizer
    peer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    assert not isinstance(tokenizer, CLIPTokenizerWithTextCleaning)
    texts = ["a b c", "d &amp; e"]
    assert _ids(tokenizer, texts) == _ids(peer, texts)
