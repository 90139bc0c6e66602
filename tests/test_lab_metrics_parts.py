"""`clipcond.lab.metrics` part by part: the metric names and the judge's legend, `check_metrics`'
refusals (whole), `shapes_judge_metrics` on rendered scenes and hand-painted arrays (every key and
value: the found fraction, the relation only where the scene has one, exact failing on an extra
object), and CLIP score against its peers: a tiny transformers `CLIPModel` against transformers
directly (`get_text_features` / `get_image_features`), a tiny clipcond `ClipTwoTower` against its
own `encode_text` / `encode_image`, the pixels against CLIP's preprocessing written here with PIL
and numpy, truncation at the text context (warned, scored as the cut prompt), `clip_scorer`'s and
`load_clip_scorer`'s choices of tokenizer, preprocessing, sizes and device, and their refusals
(whole)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
import yaml
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from clipcond.lab import metrics
from clipcond.lab.metrics import (
    JUDGE_VALUES,
    METRICS,
    ClipScorer,
    check_metrics,
    clip_score,
    clip_scorer,
    load_clip_scorer,
    shapes_judge_metrics,
)
from clipcond.shapes.render import render_scene
from clipcond.shapes.scene import Scene, ShapeObject
from clipcond.shapes.vocab import COLOURS
from clipcond.tokenization import clip_tokenizer

REPO = Path(__file__).resolve().parents[1]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
BOS, EOS = 49406, 49407
CONTEXT = 16  # both tiny CLIPs' text context: a long prompt is cheap
HF_SIZE = 24  # the transformers CLIP's image side (3 x 3 patches of 8)
OURS_SIZE = 32  # clip-tiny's ResNet tower
PIL_PROCESSOR = transformers.CLIPImageProcessorPil


def _hf_model() -> CLIPModel:
    """A tiny transformers CLIP (seed 0): the real CLIP vocabulary, context 16, 24 px images."""
    text = dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=CONTEXT,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=HF_SIZE,
        patch_size=8,
    )
    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()


def _ours_model():
    """clip-tiny (seed 0) with a 16-token text context."""
    from clipcond.models import ClipTwoTower, model_config_from_dict

    data = yaml.safe_load((REPO / "configs/models/clip-tiny.yaml").read_text())
    data["text"]["context_length"] = CONTEXT
    torch.manual_seed(0)
    return ClipTwoTower(model_config_from_dict(data)).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The tiny CLIPs saved: "ours" by `save_clip`; "hf" a transformers folder of the model alone;
    "hf_full" the same model with a tokenizer (pad "!", 77 tokens) and a preprocessor (shorter
    side to 40, crop 24) saved beside it."""
    from clipcond.models import save_clip

    root = tmp_path_factory.mktemp("metrics_clips")
    ours = save_clip(_ours_model(), root / "ours")
    _hf_model().save_pretrained(root / "hf")
    full = shutil.copytree(root / "hf", root / "hf_full")
    clip_tokenizer(model_max_length=77, pad_token="!").save_pretrained(full)
    PIL_PROCESSOR(size={"shortest_edge": 40}, crop_size={"height": HF_SIZE, "width": HF_SIZE}).save_pretrained(full)
    return {"ours": ours, "hf": root / "hf", "hf_full": full}


@pytest.fixture(scope="module")
def hf_model(folders) -> CLIPModel:
    return CLIPModel.from_pretrained(folders["hf"]).eval()


@pytest.fixture(scope="module")
def ours_model(folders):
    from clipcond.models import load_clip

    return load_clip(folders["ours"]).eval()


def _noise(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


IMAGES = [_noise(48, 75, 0), _noise(40, 41, 1), _noise(77, 33, 2)]  # wide, almost square, tall
PROMPTS = ["a red circle", "two blue squares to the left of a green triangle", "a lighthouse"]


def _reference_pixels(image: Image.Image, size: int, shortest: int | None = None) -> torch.Tensor:
    """(3, size, size): the shorter side resized to `shortest` (default `size`) with PIL's bicubic,
    the longer side to the floor of its scaled length, the centre square cut (offset floored),
    scaled to [0, 1] and normalised with CLIP's mean and std, in float64."""
    shortest = shortest or size
    image = image.convert("RGB")
    width, height = image.size
    scale = shortest / min(width, height)
    new = (shortest, int(height * scale)) if width <= height else (int(width * scale), shortest)
    resized = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    array = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
    return torch.from_numpy(((array - MEAN) / STD).transpose(2, 0, 1)).float()


def _feature(output) -> torch.Tensor:
    # transformers 4 returns the projected features, transformers 5 an output holding them
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _hf_reference(model, images, prompts, tokenizer=None, processor=None, context=CONTEXT) -> torch.Tensor:
    """Cosine of each pair from transformers alone: one prompt at a time (no padding), cut to `context`."""
    tokenizer = tokenizer or clip_tokenizer()
    size = model.config.vision_config.image_size
    processor = processor or PIL_PROCESSOR(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    with torch.no_grad():
        pixels = processor(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"]
        image = _feature(model.get_image_features(pixel_values=pixels.to(model.dtype))).float()
        rows = [tokenizer(p, truncation=True, max_length=context, return_tensors="pt") for p in prompts]
        text = torch.cat([_feature(model.get_text_features(input_ids=row["input_ids"])).float() for row in rows])
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return (image * text).sum(dim=-1)


def _ids(prompt: str) -> list[int]:
    return clip_tokenizer()(prompt)["input_ids"]


def _ours_reference(model, images, token_rows: list[list[int]]) -> torch.Tensor:
    """encode_image on the pixels written here, encode_text one row at a time, then the cosine."""
    with torch.no_grad():
        image = model.encode_image(torch.stack([_reference_pixels(i, OURS_SIZE) for i in images]))
        text = torch.cat([model.encode_text(torch.tensor([row])) for row in token_rows])
    return torch.nn.functional.cosine_similarity(image, text, dim=-1)


def _words(count: int) -> str:
    return " ".join(["a"] * count)  # "a" is one token: `count` words make count + 2 ids


# ---------------------------------------------------------------------------- names


def test_the_metric_names_and_the_judge_legend() -> None:
    assert METRICS == {
        "judge": "shapes judge: the image holds the prompt's objects, colours, counts and relation (shapes prompts only)",
        "clip_score": "cosine of the CLIP image and prompt embeddings, in [-1, 1]",
    }
    assert JUDGE_VALUES == {
        "objects_found": "fraction of the scene's objects found with their colour and shape",
        "objects": "every object found with its colour and shape (binding right; extra objects do not fail it)",
        "colour": "every object's colour present",
        "shape": "every object's shape present",
        "count": "as many objects of each colour and shape as asked",
        "relation": "the relation holds (prompts with a relation only)",
        "exact": "all objects found, nothing extra, relation true",
    }


KNOWN = "known metrics: ['clip_score', 'judge']"


@pytest.mark.parametrize("names", [[], (), ""])
def test_no_metric_is_refused_whole(names) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(f'metrics must name at least one metric; {KNOWN}')}$"):
        check_metrics(names)


@pytest.mark.parametrize(
    "names, unknown",
    [
        (["fid"], ["fid"]),
        (["judge", "fid", "clip_score", "Judge"], ["fid", "Judge"]),
        (("bleu", "clip"), ["bleu", "clip"]),
    ],
)
def test_unknown_metrics_are_listed_in_order_with_the_known_ones_sorted(names, unknown) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(f'unknown metric(s) {unknown!r}; {KNOWN}')}$"):
        check_metrics(names)


@pytest.mark.parametrize("names", [["judge"], ["clip_score"], ("clip_score", "judge"), ["judge", "judge"]])
def test_known_metrics_are_accepted(names) -> None:
    assert check_metrics(names) is None


# ---------------------------------------------------------------------------- judge

RED_CIRCLE = ShapeObject("circle", "red", "large", 0.25, 0.3)
BLUE_SQUARE = ShapeObject("square", "blue", "large", 0.75, 0.3)
GREEN_TRIANGLE = ShapeObject("triangle", "green", "large", 0.5, 0.75)
ALL_TRUE = {"objects_found": 1.0, "objects": True, "colour": True, "shape": True, "count": True, "exact": True}


def _checked(values: dict) -> dict:
    """`values` after checking their types: a float fraction, the rest bools."""
    assert type(values["objects_found"]) is float
    assert all(type(value) is bool for key, value in values.items() if key != "objects_found"), values
    return values


def test_a_rendered_scene_with_a_relation_passes_every_value() -> None:
    scene = Scene((RED_CIRCLE, BLUE_SQUARE), (0, "left of", 1))
    assert _checked(shapes_judge_metrics(render_scene(scene, 64), scene)) == {**ALL_TRUE, "relation": True}
    assert set(JUDGE_VALUES) == {**ALL_TRUE, "relation": True}.keys()


def test_a_scene_without_a_relation_gets_no_relation_value() -> None:
    scene = Scene((RED_CIRCLE, BLUE_SQUARE))
    assert _checked(shapes_judge_metrics(render_scene(scene, 64), scene)) == ALL_TRUE


def test_one_of_two_objects_found_is_half_and_fails_everything_else() -> None:
    asked = Scene((RED_CIRCLE, BLUE_SQUARE), (0, "left of", 1))
    values = shapes_judge_metrics(render_scene(Scene((RED_CIRCLE,)), 64), asked)
    assert _checked(values) == {
        "objects_found": 0.5,
        "objects": False,
        "colour": False,
        "shape": False,
        "count": False,
        "relation": False,
        "exact": False,
    }


def test_two_of_three_objects_found_is_two_thirds() -> None:
    asked = Scene((RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE))
    values = shapes_judge_metrics(render_scene(Scene((RED_CIRCLE, GREEN_TRIANGLE)), 64), asked)
    assert _checked(values) == {
        "objects_found": 2 / 3,
        "objects": False,
        "colour": False,
        "shape": False,
        "count": False,
        "exact": False,
    }


def test_an_extra_object_fails_exact_alone() -> None:
    asked = Scene((RED_CIRCLE, BLUE_SQUARE), (0, "left of", 1))
    shown = Scene((RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE), (0, "left of", 1))
    values = shapes_judge_metrics(render_scene(shown, 64), asked)
    assert _checked(values) == {**ALL_TRUE, "relation": True, "exact": False}


def _painted(boxes: list[tuple[int, int, int, int]], colour: str, as_float: bool) -> np.ndarray:
    """A white 64 x 64 (H, W, 3) array with each box (top, left, bottom, right) filled with `colour`."""
    array = np.full((64, 64, 3), 255, dtype=np.uint8)
    for top, left, bottom, right in boxes:
        array[top:bottom, left:right] = COLOURS[colour]
    return array.astype(np.float64) / 255.0 if as_float else array


@pytest.mark.parametrize("as_float", [False, True])
def test_hand_painted_arrays_are_judged(as_float) -> None:
    one = Scene((ShapeObject("square", "red", "large", 0.5, 0.5),))
    square = (20, 20, 44, 44)  # 24 px: a large square's 0.36 of 64
    assert _checked(shapes_judge_metrics(_painted([square], "red", as_float), one)) == ALL_TRUE
    two = _painted([(6, 6, 26, 26), (38, 38, 58, 58)], "red", as_float)  # two red squares for one asked
    assert _checked(shapes_judge_metrics(two, one)) == {**ALL_TRUE, "count": False, "exact": False}
    blue = _painted([square], "blue", as_float)
    assert _checked(shapes_judge_metrics(blue, one)) == {
        "objects_found": 0.0,
        "objects": False,
        "colour": False,
        "shape": True,
        "count": False,
        "exact": False,
    }


# ---------------------------------------------------------------------------- pixels


def test_the_default_preprocessing_is_the_pil_backend_at_the_image_size() -> None:
    processor = metrics._image_processor(20)
    assert type(processor) is PIL_PROCESSOR
    assert processor.size == {"shortest_edge": 20} and processor.crop_size == {"height": 20, "width": 20}


def test_the_pil_backend_is_chosen_whatever_clip_image_processor_is(monkeypatch, folders, hf_model) -> None:
    """transformers 5 with torchvision makes `CLIPImageProcessor` a torchvision-backed class,
    which resamples otherwise: both the default and a saved preprocessor must be the PIL one."""

    class NotThisOne:
        def __init__(self, *args, **kwargs):
            raise AssertionError("CLIPImageProcessor was used")

        from_pretrained = __init__

    monkeypatch.setattr(transformers, "CLIPImageProcessor", NotThisOne)
    assert type(metrics._image_processor(32)) is PIL_PROCESSOR
    assert type(clip_scorer(hf_model).image_processor) is PIL_PROCESSOR
    assert type(load_clip_scorer(folders["hf_full"]).image_processor) is PIL_PROCESSOR


def test_pixel_values_are_clip_preprocessing_for_any_shape_and_mode(hf_model, ours_model) -> None:
    """The processor computes in float32 from the same PIL bicubic resize as the reference here
    (float64): what differs is float32 rounding of the scale and normalisation, under 3e-7 (seen:
    2.4e-7), so 1e-6 holds; a one-pixel shift of the resize or the crop gives differences of order 1."""
    for model, size in ((hf_model, HF_SIZE), (ours_model, OURS_SIZE)):
        got = clip_scorer(model).pixel_values(IMAGES)
        assert got.dtype == torch.float32 and got.shape == (3, 3, size, size)
        expected = torch.stack([_reference_pixels(image, size) for image in IMAGES])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    grey, rgba = IMAGES[0].convert("L"), IMAGES[1].convert("RGBA")
    got = clip_scorer(ours_model).pixel_values([grey, rgba])
    expected = torch.stack([_reference_pixels(grey.convert("RGB"), 32), _reference_pixels(rgba.convert("RGB"), 32)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_images_are_read_as_rgb_even_by_a_processor_that_does_not_convert(hf_model) -> None:
    processor = CLIPProcessor(
        image_processor=PIL_PROCESSOR(
            size={"shortest_edge": HF_SIZE}, crop_size={"height": HF_SIZE, "width": HF_SIZE}, do_convert_rgb=False
        ),
        tokenizer=clip_tokenizer(model_max_length=CONTEXT),
    )
    grey = IMAGES[0].convert("L")
    got = clip_scorer(hf_model, processor).pixel_values([grey])
    torch.testing.assert_close(got, _reference_pixels(grey, HF_SIZE)[None], atol=1e-6, rtol=0)


def test_features_are_the_tensor_or_the_outputs_pooler_output() -> None:
    features = torch.ones(2, 3)
    assert metrics._features(features) is features
    assert metrics._features(SimpleNamespace(pooler_output=features)) is features


# ---------------------------------------------------------------------------- CLIP score


def test_clip_score_of_a_transformers_clip_equals_transformers_directly(hf_model, folders) -> None:
    expected = _hf_reference(hf_model, IMAGES, PROMPTS)
    got = clip_score(IMAGES, PROMPTS, hf_model)
    assert got.shape == (3,) and got.dtype == torch.float32 and got.device.type == "cpu"
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        clip_score(IMAGES, PROMPTS, load_clip_scorer(folders["hf"])), expected, atol=1e-6, rtol=0
    )
    # pair k with k: reversing both reverses the scores, and no pair is scored across
    torch.testing.assert_close(clip_score(IMAGES[::-1], PROMPTS[::-1], hf_model), expected.flip(0), atol=1e-6, rtol=0)
    crossed = _hf_reference(hf_model, IMAGES, PROMPTS[1:] + PROMPTS[:1])
    assert (crossed - expected).abs().min() > 1e-4


def test_clip_score_of_a_two_tower_equals_its_encoders_by_hand(ours_model, folders) -> None:
    expected = _ours_reference(ours_model, IMAGES, [_ids(p) for p in PROMPTS])
    got = clip_score(IMAGES, PROMPTS, ours_model)
    assert got.shape == (3,) and got.dtype == torch.float32 and got.device.type == "cpu"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        clip_score(IMAGES, PROMPTS, load_clip_scorer(folders["ours"])), expected, atol=1e-5, rtol=0
    )


def test_a_model_in_training_mode_is_scored_in_eval_mode(folders) -> None:
    """clip-tiny's ResNet tower has batch norms: in training mode they would use the batch's statistics."""
    from clipcond.models import load_clip

    model = load_clip(folders["ours"]).train()
    expected = _ours_reference(load_clip(folders["ours"]).eval(), IMAGES, [_ids(p) for p in PROMPTS])
    torch.testing.assert_close(clip_score(IMAGES, PROMPTS, model), expected, atol=1e-5, rtol=0)
    hf = CLIPModel.from_pretrained(folders["hf"]).train()
    assert not clip_scorer(hf).model.training and not load_clip_scorer(folders["hf"]).model.training


def test_a_bfloat16_model_gets_bfloat16_pixels_and_gives_float32_scores(folders) -> None:
    model = CLIPModel.from_pretrained(folders["hf"]).to(torch.bfloat16).eval()
    got = clip_score(IMAGES, PROMPTS, model)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _hf_reference(model, IMAGES, PROMPTS), atol=2e-2, rtol=0)


def test_truncated_is_per_prompt_and_starts_one_token_over_the_context(ours_model) -> None:
    assert len(_ids(_words(CONTEXT - 2))) == CONTEXT
    scorer = clip_scorer(ours_model)
    prompts = ["a red circle", _words(CONTEXT - 2), _words(CONTEXT - 1), _words(40)]
    assert scorer.truncated(prompts) == [False, False, True, True]
    assert scorer.truncated(tuple(prompts[:2])) == [False, False]


LONG = "a small red circle to the left of a large blue square above a green triangle beside two purple squares"


@pytest.mark.parametrize("kind", ["ours", "hf"])
def test_a_long_prompt_is_warned_of_and_scored_as_its_start(kind, ours_model, hf_model) -> None:
    model = {"ours": ours_model, "hf": hf_model}[kind]
    ids = _ids(LONG)
    assert len(ids) > CONTEXT
    kept = ids[: CONTEXT - 1] + [EOS]  # BOS and the first 14 tokens, then EOS
    short = clip_tokenizer().decode(kept[1:-1])
    assert _ids(short) == kept
    prompts = [LONG, "a red circle", LONG + " and more"]
    with pytest.warns(UserWarning) as record:
        got = clip_score(IMAGES, prompts, model)
    assert [str(w.message) for w in record] == [
        f"2 prompt(s) are longer than the CLIP context ({CONTEXT} tokens) and were truncated for CLIP score"
    ]
    # reported where clip_score was called, not in metrics.py (the caller here; under mutmut its
    # trampoline, one frame between, so the exact caller is not asserted)
    assert not record[0].filename.endswith("metrics.py")
    expected = clip_score(IMAGES, [short, "a red circle", short], model)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    if kind == "ours":
        rows = [kept, _ids("a red circle"), kept]
        torch.testing.assert_close(got, _ours_reference(model, IMAGES, rows), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(got, _hf_reference(model, IMAGES, prompts), atol=1e-6, rtol=0)


def test_a_prompt_of_exactly_the_context_is_not_warned_of(ours_model) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_score(IMAGES[:2], [_words(CONTEXT - 2), "a"], ours_model)


def test_mismatched_lengths_are_refused_whole(ours_model) -> None:
    with pytest.raises(ValueError, match=r"^images \(2\) and prompts \(3\) must be as many$"):
        clip_score(IMAGES[:2], PROMPTS, ours_model)
    with pytest.raises(ValueError, match=r"^images \(0\) and prompts \(1\) must be as many$"):
        clip_score([], PROMPTS[:1], ours_model)


def test_no_pairs_give_an_empty_float_tensor(ours_model) -> None:
    for model in (ours_model, clip_scorer(ours_model)):
        got = clip_score([], [], model)
        assert got.shape == (0,) and got.dtype == torch.float32 and got.device.type == "cpu"


def test_a_scorer_passed_in_is_used_as_it_is(ours_model) -> None:
    default = clip_scorer(ours_model)
    wider = PIL_PROCESSOR(size={"shortest_edge": 48}, crop_size={"height": 32, "width": 32})
    scorer = ClipScorer(ours_model, default.tokenizer, wider, CONTEXT)
    with torch.no_grad():
        image = ours_model.encode_image(torch.stack([_reference_pixels(i, 32, shortest=48) for i in IMAGES]))
        text = torch.cat([ours_model.encode_text(torch.tensor([_ids(p)])) for p in PROMPTS])
    expected = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    got = clip_score(IMAGES, PROMPTS, scorer)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - clip_score(IMAGES, PROMPTS, ours_model)).abs().max() > 1e-4


def test_a_processor_given_with_a_transformers_clip_is_used(hf_model) -> None:
    image_processor = PIL_PROCESSOR(size={"shortest_edge": 40}, crop_size={"height": HF_SIZE, "width": HF_SIZE})
    tokenizer = clip_tokenizer(model_max_length=77)  # longer than the model's context: the scorer cuts at 16
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    scorer = clip_scorer(hf_model, processor)
    assert scorer.tokenizer is tokenizer and scorer.image_processor is image_processor
    assert scorer.context_length == CONTEXT
    expected = torch.stack([_reference_pixels(i, HF_SIZE, shortest=40) for i in IMAGES])
    torch.testing.assert_close(scorer.pixel_values(IMAGES), expected, atol=1e-6, rtol=0)
    prompts = [LONG, PROMPTS[1], PROMPTS[2]]
    with pytest.warns(UserWarning, match=r"^1 prompt\(s\) are longer"):
        got = clip_score(IMAGES, prompts, hf_model, processor)
    torch.testing.assert_close(
        got, _hf_reference(hf_model, IMAGES, prompts, processor=image_processor), atol=1e-6, rtol=0
    )
    assert (scorer.pixel_values(IMAGES) - clip_scorer(hf_model).pixel_values(IMAGES)).abs().max() > 0.1


# ---------------------------------------------------------------------------- clip_scorer


def test_clip_scorer_reads_context_and_image_size_from_each_model_kind(hf_model, ours_model) -> None:
    from clipcond.tokenization import CLIPTokenizerWithTextCleaning

    for model, size in ((hf_model, HF_SIZE), (ours_model, OURS_SIZE)):
        scorer = clip_scorer(model)
        assert scorer.model is model and scorer.context_length == CONTEXT
        assert type(scorer.tokenizer) is CLIPTokenizerWithTextCleaning and scorer.tokenizer.model_max_length == CONTEXT
        assert scorer.tokenizer.pad_token == "<|endoftext|>"
        assert scorer.image_processor.size == {"shortest_edge": size}
        assert scorer.image_processor.crop_size == {"height": size, "width": size}


class _TextOnly:
    """Has `get_text_features`, but its config has no vision tower."""

    config = SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=77))

    def get_text_features(self, **kwargs):
        raise AssertionError


@pytest.mark.parametrize(
    "model, name", [(torch.nn.Linear(2, 2), "Linear"), (_TextOnly(), "_TextOnly"), (None, "NoneType")]
)
def test_clip_scorer_refuses_another_model_whole(model, name) -> None:
    message = f"model must be a clipcond ClipTwoTower or a transformers CLIPModel, got {name}"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        clip_scorer(model)
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        clip_score(IMAGES[:1], PROMPTS[:1], model)


# ---------------------------------------------------------------------------- load_clip_scorer


def test_a_folder_with_no_clip_is_refused_whole(tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    message = (
        f"{tmp_path} is not a CLIP folder: expected clip_config.yaml (clipcond.models.save_clip) "
        "or config.json (transformers CLIPModel)"
    )
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        load_clip_scorer(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        load_clip_scorer(str(tmp_path))


def test_a_transformers_folder_without_tokenizer_files_gets_the_defaults(folders) -> None:
    from clipcond.tokenization import CLIPTokenizerWithTextCleaning

    scorer = load_clip_scorer(str(folders["hf"]))
    assert isinstance(scorer.model, CLIPModel) and scorer.context_length == CONTEXT
    assert type(scorer.tokenizer) is CLIPTokenizerWithTextCleaning and scorer.tokenizer.model_max_length == CONTEXT
    assert scorer.image_processor.size == {"shortest_edge": HF_SIZE}
    assert scorer.image_processor.crop_size == {"height": HF_SIZE, "width": HF_SIZE}


def test_a_transformers_folder_with_tokenizer_files_uses_the_saved_ones(folders, hf_model) -> None:
    scorer = load_clip_scorer(folders["hf_full"])
    assert scorer.context_length == CONTEXT and not scorer.model.training
    assert scorer.tokenizer.pad_token == "!" and scorer.tokenizer.model_max_length == 77
    padded = scorer.tokenizer(["a", "a red circle"], padding="longest")["input_ids"]
    assert padded[0] == [BOS, _ids("a")[1], EOS, 0, 0]  # "!" is id 0
    assert scorer.image_processor.size == {"shortest_edge": 40}
    expected = torch.stack([_reference_pixels(i, HF_SIZE, shortest=40) for i in IMAGES])
    torch.testing.assert_close(scorer.pixel_values(IMAGES), expected, atol=1e-6, rtol=0)
    processor = PIL_PROCESSOR(size={"shortest_edge": 40}, crop_size={"height": HF_SIZE, "width": HF_SIZE})
    prompts = [LONG, PROMPTS[1], PROMPTS[2]]
    with pytest.warns(UserWarning, match=r"^1 prompt\(s\)"):
        got = clip_score(IMAGES, prompts, scorer)
    torch.testing.assert_close(got, _hf_reference(hf_model, IMAGES, prompts, processor=processor), atol=1e-6, rtol=0)


def test_a_saved_preprocessor_with_another_crop_is_the_one_used(folders, tmp_path) -> None:
    folder = shutil.copytree(folders["hf_full"], tmp_path / "clip")
    PIL_PROCESSOR(size={"shortest_edge": 30}, crop_size={"height": 20, "width": 20}).save_pretrained(folder)
    scorer = load_clip_scorer(folder)
    assert scorer.image_processor.crop_size == {"height": 20, "width": 20}
    got = scorer.pixel_values(IMAGES[:1])
    torch.testing.assert_close(got, _reference_pixels(IMAGES[0], 20, shortest=30)[None], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["ours", "hf"])
def test_the_model_is_moved_to_the_device_asked(kind, folders) -> None:
    scorer = load_clip_scorer(folders[kind], device="meta")
    assert {p.device.type for p in scorer.model.parameters()} == {"meta"}
    assert {p.device.type for p in load_clip_scorer(folders[kind]).model.parameters()} == {"cpu"}


def test_a_damaged_transformers_folder_is_refused_before_loading(folders, tmp_path, monkeypatch) -> None:
    folder = shutil.copytree(folders["hf"], tmp_path / "clip")
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    loads = []
    monkeypatch.setattr(CLIPModel, "from_pretrained", lambda *a, **k: loads.append(a))
    named = (
        f"the CLIP at {folder} has damaged files (cut short, or overwritten?): {weights} cannot be read as safetensors"
    )
    # then safetensors' own words in brackets
    with pytest.raises(ValueError, match=f"^{re.escape(named)} \\(.+\\); nothing was loaded$"):
        load_clip_scorer(folder)
    assert loads == []


class _Transformers4Processor(PIL_PROCESSOR):
    """What `CLIPImageProcessor` is in transformers 4, which has no `CLIPImageProcessorPil`."""


def test_without_a_pil_processor_class_clip_image_processor_is_used(monkeypatch, folders) -> None:
    transformers_4 = SimpleNamespace(CLIPModel=CLIPModel, CLIPImageProcessor=_Transformers4Processor)
    monkeypatch.setitem(sys.modules, "transformers", transformers_4)
    assert type(metrics._image_processor(20)) is _Transformers4Processor
    scorer = load_clip_scorer(folders["hf_full"])
    assert type(scorer.image_processor) is _Transformers4Processor
    assert scorer.image_processor.size == {"shortest_edge": 40}


def test_a_saved_tokenizer_whose_merges_are_cut_is_refused_naming_the_folder(folders, tmp_path) -> None:
    """Saved as a generic fast tokenizer, its tables are not read by the folder check before
    loading (`bpe_tables_read`), so they are checked once it is loaded."""
    folder = shutil.copytree(folders["hf_full"], tmp_path / "clip")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    assert load_clip_scorer(folder).tokenizer("a red circle")["input_ids"] == _ids("a red circle")
    state = json.loads((folder / "tokenizer.json").read_text())
    state["model"]["merges"] = state["model"]["merges"][:-100]
    (folder / "tokenizer.json").write_text(json.dumps(state))
    unmade = f"the tokenizer of {folder} has 100 vocabulary entries that no merge rule makes ("
    with pytest.raises(ValueError, match=f"^{re.escape(unmade)}"):
        load_clip_scorer(folder)


def test_the_truncation_warning_points_at_the_callers_line(ours_model) -> None:
    """The warning names this file, the caller's, not metrics.py nor pytest's (left out of the
    mutation entry: mutmut's trampoline adds a frame between)."""
    with pytest.warns(UserWarning) as record:
        clip_score(IMAGES[:1], [LONG], ours_model)
    assert record[0].filename == __file__
