"""How `train-diffusion` reads its captions, against diffusers' training scripts' reading
(`train_text_to_image.py`: the tokenizer with `truncation=True, max_length=77`, then the text
encoder), and the config values refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_pipelines
import torch
from test_train_diffusion import tiny_config

from clipcond.tokenization import CLIPTokenizerWithTextCleaning, clip_tokenizer
from clipcond.training.diffusion.config import DiffusionLoraSettings, TrainDiffusionConfig
from clipcond.training.diffusion.setup import build_conditioner
from clipcond.training.loop import RunSetupError

LONG = ", ".join(["a photorealistic portrait of a red fox in the snow"] * 9)  # about 100 tokens
CAPTIONS = ["a photo (2019) of a dog", r"a (red:1.5) circle BREAK \(x\) [blue]", LONG, ""]


def _script_reading(text_encoder_path: Path, captions: list[str], tokenizer_path: Path | None = None) -> torch.Tensor:
    """What diffusers' train_text_to_image.py feeds the UNet for `captions` (the tokenizer from
    `tokenizer_path`, by default the text encoder's folder)."""
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or text_encoder_path)
    ids = tokenizer(captions, max_length=77, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return CLIPTextModel.from_pretrained(text_encoder_path)(ids, return_dict=False)[0]


def test_captions_are_read_as_diffusers_training_script_reads_them(tiny_clip_text_path, tmp_path) -> None:
    conditioner = build_conditioner(tiny_config(tiny_clip_text_path, tmp_path))
    got = conditioner.encode(CAPTIONS).tokens
    torch.testing.assert_close(got, _script_reading(tiny_clip_text_path, CAPTIONS), rtol=0, atol=1e-6)


@pytest.mark.parametrize("given", ["model and tokenizer in one folder", "pipeline folder", "its text_encoder/"])
def test_an_sd2_style_tower_is_read_with_the_tokenizer_saved_beside_it(given, tmp_path) -> None:
    """A tower saved with a tokenizer that pads with "!" (SD 2.x, OpenCLIP): the run reads captions
    with that tokenizer, as the script reads a pipeline's, wherever the config points."""
    root = tmp_path / "sd2"
    model_folder, tokenizer_folder = (
        (root, root) if given.startswith("model") else (root / "text_encoder", root / "tokenizer")
    )
    tiny_pipelines.clip_text_model(3).save_pretrained(model_folder)
    clip_tokenizer(pad_token="!").save_pretrained(tokenizer_folder)
    pointed_at = root if given != "its text_encoder/" else model_folder
    conditioner = build_conditioner(tiny_config(pointed_at, tmp_path / "run"))
    expected = _script_reading(model_folder, CAPTIONS, tokenizer_folder)
    torch.testing.assert_close(conditioner.encode(CAPTIONS).tokens, expected, rtol=0, atol=1e-6)
    assert isinstance(conditioner.clip[0].tokenizer, CLIPTokenizerWithTextCleaning)  # OpenAI's cleaning kept


def test_a_tokenizer_of_another_vocabulary_is_used_as_saved(tmp_path) -> None:
    """A CLIP tokenizer of nine tokens (one-letter words; a tower trained on them): its ids and
    pad, not OpenAI's."""
    from transformers import CLIPTokenizer

    words = ["a</w>", "b</w>", "c</w>", "d</w>", "e</w>", "!</w>"]
    vocab = {token: index for index, token in enumerate(["<|startoftext|>", "<|endoftext|>", "!", *words])}
    root = tmp_path / "tower"
    CLIPTokenizer(vocab=vocab, merges=[], pad_token="!").save_pretrained(root)
    tiny_pipelines.clip_text_model(3, vocab_size=len(vocab), bos_token_id=0, eos_token_id=1).save_pretrained(root)
    conditioner = build_conditioner(tiny_config(root, tmp_path / "run"))
    ids = conditioner.clip[0].tokenizer("a b c", padding="max_length", max_length=6).input_ids
    assert ids == [0, 3, 4, 5, 1, 2]
    captions = ["a b c", "d e"]
    expected = _script_reading(root, captions)
    torch.testing.assert_close(conditioner.encode(captions).tokens, expected, rtol=0, atol=1e-6)


def test_a_tower_without_a_tokenizer_reads_with_the_bundled_one(tmp_path) -> None:
    tiny_pipelines.clip_text_model(3).save_pretrained(tmp_path / "tower")
    conditioner = build_conditioner(tiny_config(tmp_path / "tower", tmp_path / "run"))
    ids = conditioner.clip[0].tokenizer("a red circle", padding="max_length").input_ids
    assert ids == clip_tokenizer()("a red circle", padding="max_length").input_ids


@pytest.mark.parametrize("damage", ["not json", "too many tokens"])
def test_a_saved_tokenizer_that_does_not_fit_is_a_setup_error(damage, tmp_path) -> None:
    root = tmp_path / "tower"
    tiny_pipelines.clip_text_model(3, vocab_size=1000).save_pretrained(root)
    clip_tokenizer().save_pretrained(root)
    if damage == "not json":
        (root / "tokenizer_config.json").write_text("{ not json")
        (root / "tokenizer.json").write_text("{ not json")
    expected = (
        f"{root / 'tokenizer_config.json'} is no valid JSON"
        if damage == "not json"
        else f"the tokenizer in {root} has 49408 tokens, more than the 1000 rows"
    )
    with pytest.raises(RunSetupError, match=expected) as raised:
        build_conditioner(tiny_config(root, tmp_path / "run"))
    assert str(raised.value).startswith(f"text_encoder {root}: ") and "\n" not in str(raised.value)


def test_a_captions_context_does_not_depend_on_its_batch(tiny_clip_text_path, tmp_path) -> None:
    """A short caption batched with a long one reads as it reads alone (one window each), so
    how a batch is split over processes cannot change what a caption's sample sees."""
    conditioner = build_conditioner(tiny_config(tiny_clip_text_path, tmp_path, caption_window_split="truncate"))
    alone = conditioner.encode(["a red circle"]).tokens
    batched = conditioner.encode(["a red circle", LONG]).tokens
    assert batched.shape[1] == 77
    torch.testing.assert_close(batched[:1], alone, rtol=0, atol=1e-6)


def test_caption_syntax_and_windows_read_captions_as_the_pipeline_reads_prompts(tiny_clip_text_path, tmp_path) -> None:
    as_prompts = build_conditioner(
        tiny_config(tiny_clip_text_path, tmp_path, caption_syntax=True, caption_window_split="word")
    )
    assert as_prompts.encode(LONG).tokens.shape[1] == 2 * 77  # every token read, in two windows
    literal = build_conditioner(tiny_config(tiny_clip_text_path, tmp_path))
    weighted, plain = as_prompts.encode("a (red:1.5) circle").tokens, literal.encode("a (red:1.5) circle").tokens
    assert not torch.allclose(weighted, plain)
    assert torch.equal(plain, literal.encode("a (red:1.5) circle").tokens)
    # a caption's LoRA tags (how its image was made, as A1111 writes them) are taken out, not read
    tagged = as_prompts.encode("a (red:1.5) circle <lora:style:0.8>, <hypernet:x:1>").tokens
    torch.testing.assert_close(tagged, as_prompts.encode("a (red:1.5) circle , ").tokens, rtol=0, atol=0)
    assert not torch.equal(literal.encode("a circle <lora:style:0.8>").tokens, literal.encode("a circle ").tokens)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"keep_checkpoints": 0}, "`keep_checkpoints` must be >= 1"),
        ({"image_size": 12}, "`image_size` must be >= 16 with data.source 'shapes'"),
        ({"caption_window_split": "comma"}, "`caption_window_split` must be one of"),
        ({"unet": {"layers_per_block": 0}}, "`layers_per_block` must be an integer >= 1"),
        ({"unet": {"layers_per_block": [1, 0]}}, "`layers_per_block` must be an integer >= 1"),
    ],
)
def test_values_that_would_fail_late_or_silently_are_refused(tiny_clip_text_path, tmp_path, overrides, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tiny_config(tiny_clip_text_path, tmp_path / "run", **overrides)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alpha": 0}, "`lora.alpha` must be a number > 0"),
        ({"alpha": -4}, "`lora.alpha` must be a number > 0"),
        ({"alpha": float("nan")}, "`lora.alpha` must be a number > 0"),
        ({"r": 0}, "`lora.r` must be an integer >= 1"),
        ({"r": True}, "`lora.r` must be an integer >= 1"),
    ],
)
def test_lora_settings_that_train_nothing_are_refused(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        DiffusionLoraSettings(**settings)


def test_lora_alpha_may_be_a_fraction_in_yaml(tiny_clip_text_path, tmp_path) -> None:
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"text_encoder": str(tiny_clip_text_path), "unet": {}, "lora": {"r": 4, "alpha": 2.5}, "output_dir": "x"}
        )
    )
    assert TrainDiffusionConfig.from_yaml(path).lora.alpha == 2.5


def test_the_learning_rate_is_open_clips_warm_up_then_diffusers_cosine() -> None:
    """During warm-up, open_clip's `lr * (step + 1) / warmup` (diffusers' `get_scheduler`
    is one step behind, starting at 0); after it, diffusers' cosine exactly."""
    from diffusers.optimization import get_scheduler

    from clipcond.training.optim import warmup_cosine

    def rates(make) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        schedule, seen = make(optimizer), []
        for _ in range(30):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return seen

    ours = rates(lambda optimizer: warmup_cosine(optimizer, 5, 30))
    peer = rates(lambda optimizer: get_scheduler("cosine", optimizer, num_warmup_steps=5, num_training_steps=30))
    assert ours[:5] == pytest.approx([0.1 * (step + 1) / 5 for step in range(5)])
    assert peer[:5] == pytest.approx([0.1 * step / 5 for step in range(5)])
    assert ours[5:] == pytest.approx(peer[5:], rel=1e-12)


def test_t5_attention_mask_reaches_the_conditioner_the_saved_pipeline_and_its_reload(
    sd_pipe, t5_tokenizer_path, tiny_clip_text_path, tiny_t5_encoder_path, tmp_path
) -> None:
    """`t5_attention_mask`: the T5 part of the context is the T5 run on the padded prompt with
    padding masked (as `train-t5` pretrains it), in the pipeline, after save / load, and in a
    train-diffusion run's conditioner and saved pipeline; without it the padding is attended to."""
    import tiny_pipelines

    from clipcond.pipelines import CLIPConditionedPipeline
    from clipcond.training.diffusion.loop import train_diffusion

    custom = tiny_pipelines.build_clip_t5_custom(sd_pipe, t5_tokenizer_path)
    masked = CLIPConditionedPipeline.from_pipe(custom, t5_attention_mask=True)
    masked.save_pretrained(tmp_path / "masked")
    reloaded = CLIPConditionedPipeline.from_pretrained(tmp_path / "masked")
    padded = custom.tokenizer_2("a red circle", padding="max_length", max_length=256, return_tensors="pt")
    with torch.no_grad():
        direct = custom.text_encoder_2(padded.input_ids, attention_mask=padded.attention_mask)[0]
        unmasked = custom.text_encoder_2(padded.input_ids)[0]
        for pipe in (masked, reloaded):
            tokens = pipe.conditioner.encode("a red circle").tokens[:, 77:]
            torch.testing.assert_close(tokens, direct, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            custom.conditioner.encode("a red circle").tokens[:, 77:], unmasked, rtol=0, atol=1e-6
        )
    assert not torch.allclose(direct, unmasked, atol=1e-3)
    with pytest.raises(ValueError, match="`t5_attention_mask` applies to recipe 'custom' with a T5"):
        CLIPConditionedPipeline.from_pipe(sd_pipe, t5_attention_mask=True)
    # a train-diffusion run: its conditioner and the pipeline it saves
    config = tiny_config(
        tiny_clip_text_path,
        tmp_path / "run",
        t5_encoder=str(tiny_t5_encoder_path),
        projection_dim=24,
        t5_attention_mask=True,
        steps=1,
    )
    assert build_conditioner(config).recipe.t5_attention_mask
    saved = CLIPConditionedPipeline.from_pretrained(train_diffusion(config, show_progress=False).pipeline_dir)
    assert saved.config.t5_attention_mask and saved.conditioner.recipe.t5_attention_mask
    with pytest.raises(ValueError, match="`t5_attention_mask` needs a `t5_encoder`"):
        tiny_config(tiny_clip_text_path, tmp_path / "x", t5_attention_mask=True)
