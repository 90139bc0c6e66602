"""`clipcond eval-clip`'s own work on the tiny CLIP with the evaluations stood in for (their
numbers are test_clip_evaluation_parts.py's): the options, every refusal before the model
loads, which pairs reach retrieval for each source, what reaches the zero-shot evaluation, the
JSON printed and written, and a file another run wrote meanwhile kept."""

from __future__ import annotations

import argparse
import io
import json
from itertools import islice
from pathlib import Path

import pytest
import torch
from lab_helpers import save_tiny_clip
from PIL import Image
from shards import captions_of, write_shard, write_shards

from clipcond.errors import RunFailed, UsageError
from clipcond.training.clip import eval_command


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("eval"))


@pytest.fixture
def stand_ins(monkeypatch):
    """The two evaluations recorded; retrieval takes the first 3 pairs it is given."""
    import clipcond.training.clip.evaluation as evaluation

    seen: dict = {}

    def pair_retrieval(clip, tokenizer, pairs, limit=1000):
        seen["retrieval"] = dict(clip=clip, tokenizer=tokenizer, pairs=list(islice(pairs, 3)), limit=limit)
        if seen.get("too_few"):
            raise evaluation.TooFewPairs("1 usable image-caption pair; retrieval needs at least 2")
        return {"image_to_text_r1": 0.5}

    def shapes_zero_shot(clip, tokenizer, images_per_class, seed):
        seen["zero_shot"] = dict(clip=clip, tokenizer=tokenizer, images_per_class=images_per_class, seed=seed)
        return {"top1": 0.25}

    monkeypatch.setattr(evaluation, "pair_retrieval", pair_retrieval)
    monkeypatch.setattr(evaluation, "shapes_zero_shot", shapes_zero_shot)
    return seen


def test_the_options_and_their_defaults() -> None:
    args = _args("--model", "m")
    assert vars(args) == {
        "model": "m",
        "images_per_class": 50,
        "seed": 12345,
        "webdataset": None,
        "manifest": None,
        "pairs": 1000,
        "output": None,
        "force": False,
    }


def test_every_option_says_what_it_does_in_the_help(capsys) -> None:
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    helps = {action.dest: action.help for action in parser._actions if action.dest != "help"}
    assert set(helps) == {"model", "images_per_class", "seed", "webdataset", "manifest", "pairs", "output", "force"}
    assert all(isinstance(text, str) and len(text) > 20 for text in helps.values()), helps
    assert "--webdataset PATTERN [PATTERN ...]" in parser.format_help()
    with pytest.raises(SystemExit):
        eval_command.main(["--help"])
    assert "evaluate a saved CLIP" in capsys.readouterr().out


def test_the_model_is_required_and_several_patterns_are_one_list(capsys) -> None:
    with pytest.raises(SystemExit):
        _args("--seed", "1")
    assert "the following arguments are required: --model" in capsys.readouterr().err
    assert _args("--model", "m", "--webdataset", "a.tar", "b-{0..1}.tar").webdataset == ["a.tar", "b-{0..1}.tar"]


@pytest.mark.parametrize("option", ["--model", "--manifest", "--output"])
def test_a_path_no_file_system_takes_is_named_with_its_option(option, clip_dir) -> None:
    argv = ["--model", str(clip_dir), option, "bad\0name"]
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args(*argv[2 if option == "--model" else 0 :]))
    assert str(caught.value).startswith(f"{option} ") and "NUL byte" in str(caught.value)


def test_an_empty_shard_pattern_is_refused_with_the_option(tmp_path) -> None:
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(tmp_path), "--webdataset", "a.tar::"))
    assert str(caught.value).startswith("--webdataset: expected a shard pattern")


def test_webdataset_and_manifest_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit):
        _args("--model", "m", "--webdataset", "a.tar", "--manifest", "m.jsonl")
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--images-per-class", "0"], ["--pairs", "1"], ["--pairs", "-5"]])
def test_too_few_images_or_pairs_are_refused_first(argv, tmp_path) -> None:
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(tmp_path / "missing"), *argv))
    assert str(caught.value) == "--images-per-class must be >= 1 and --pairs >= 2"


def test_the_least_images_and_pairs_are_taken(clip_dir, stand_ins, capsys) -> None:
    assert eval_command.run(_args("--model", str(clip_dir), "--images-per-class", "1", "--pairs", "2")) == 0
    assert stand_ins["zero_shot"]["images_per_class"] == 1 and stand_ins["retrieval"]["limit"] == 2


def test_a_model_that_is_no_folder_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "missing", tmp_path / "file"):
        with pytest.raises(UsageError) as caught:
            eval_command.run(_args("--model", str(path)))
        assert str(caught.value) == f"--model: no such folder {path}"


def test_a_folder_without_a_clip_is_named_with_the_option(tmp_path) -> None:
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(tmp_path)))
    assert str(caught.value).startswith(f"--model {tmp_path}: cannot load a CLIP: ")


@pytest.mark.parametrize("kind", ["value", "safetensors"])
def test_a_clip_that_cannot_be_read_is_named_with_the_option(kind, tmp_path, monkeypatch) -> None:
    from safetensors import SafetensorError

    import clipcond.models as models

    error = ValueError("a config value is wrong") if kind == "value" else SafetensorError("header too large")

    def load_clip(folder):
        raise error

    monkeypatch.setattr(models, "load_clip", load_clip)
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(tmp_path)))
    assert str(caught.value) == f"--model {tmp_path}: cannot load a CLIP: {error}"


def test_a_missing_manifest_or_shard_is_refused_before_the_model_loads(tmp_path, monkeypatch) -> None:
    import clipcond.models as models

    monkeypatch.setattr(models, "load_clip", lambda folder: pytest.fail("loaded"))
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(tmp_path), "--manifest", str(tmp_path / "m.jsonl")))
    assert str(caught.value) == f"--manifest: no such file {tmp_path / 'm.jsonl'}"
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(tmp_path), "--webdataset", str(tmp_path / "s-{0..1}.tar")))
    assert "--webdataset" in str(caught.value)


def test_an_output_inside_the_model_or_an_existing_one_without_force_is_refused(clip_dir, tmp_path) -> None:
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(clip_dir), "--output", str(clip_dir / "metrics.json")))
    assert (
        str(caught.value)
        == f"--output {clip_dir / 'metrics.json'} is inside --model {clip_dir}; write the metrics elsewhere"
    )
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(UsageError, match="--output"):
        eval_command.run(_args("--model", str(clip_dir), "--output", str(tmp_path / "m.json")))
    assert (tmp_path / "m.json").read_text() == "{}"


def test_shapes_pairs_of_the_seed_and_the_models_image_size_reach_retrieval(clip_dir, stand_ins, capsys) -> None:
    from clipcond.models import load_clip
    from clipcond.shapes import ShapesStream

    eval_command.run(_args("--model", str(clip_dir), "--seed", "7", "--images-per-class", "3", "--pairs", "50"))
    clip = load_clip(clip_dir)
    expected = list(islice(ShapesStream(seed=7, image_size=clip.config.vision.image_size, split="all"), 3))
    pairs = stand_ins["retrieval"]["pairs"]
    assert [caption for _, caption in pairs] == [sample.caption for sample in expected]
    assert [image.tobytes() for image, _ in pairs] == [sample.image.tobytes() for sample in expected]
    assert stand_ins["retrieval"]["limit"] == 50
    assert stand_ins["zero_shot"]["images_per_class"] == 3 and stand_ins["zero_shot"]["seed"] == 7
    for evaluation in ("retrieval", "zero_shot"):
        tokenizer = stand_ins[evaluation]["tokenizer"]
        assert tokenizer.context_length == clip.config.text.context_length
    assert stand_ins["retrieval"]["clip"] is stand_ins["zero_shot"]["clip"]


def test_shapes_images_take_the_image_size_of_the_model(stand_ins, tmp_path, capsys) -> None:
    import dataclasses

    from clipcond.models import ClipTwoTower, load_model_config, save_clip

    config = load_model_config(Path(__file__).parents[1] / "configs/models/clip-tiny-vit.yaml")
    config = dataclasses.replace(
        config,
        vision=dataclasses.replace(config.vision, image_size=24),
        text=dataclasses.replace(config.text, context_length=20),
    )
    torch.manual_seed(0)
    folder = save_clip(ClipTwoTower(config), tmp_path / "clip24")
    eval_command.run(_args("--model", str(folder), "--images-per-class", "1", "--pairs", "4"))
    assert {image.size for image, _ in stand_ins["retrieval"]["pairs"]} == {(24, 24)}
    for evaluation in ("retrieval", "zero_shot"):
        tokenizer = stand_ins[evaluation]["tokenizer"]
        assert tokenizer.context_length == 20 and tokenizer.tokenizer.model_max_length == 20
        assert tokenizer.ids("a red circle") == [49406, 320, 736, 7117, 49407]  # CLIP's real ids


def test_a_bfloat16_clip_is_evaluated_in_float32(clip_dir, stand_ins, tmp_path, capsys) -> None:
    from clipcond.models import load_clip, save_clip

    saved = save_clip(load_clip(clip_dir).to(torch.bfloat16), tmp_path / "bf16")
    assert load_clip(saved).logit_scale.dtype == torch.bfloat16
    eval_command.run(_args("--model", str(saved), "--images-per-class", "1", "--pairs", "4"))
    dtypes = {parameter.dtype for parameter in stand_ins["zero_shot"]["clip"].parameters()}
    assert dtypes == {torch.float32}


def _png(colour) -> bytes:
    encoded = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(encoded, format="PNG")
    return encoded.getvalue()


def test_a_manifests_pairs_reach_retrieval(clip_dir, stand_ins, tmp_path, capsys) -> None:
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        (tmp_path / name).write_bytes(_png(colour))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "caption": "red"}\n{"image": "b.png", "caption": "blue"}\n')
    eval_command.run(_args("--model", str(clip_dir), "--manifest", str(manifest)))
    pairs = stand_ins["retrieval"]["pairs"]
    assert [caption for _, caption in pairs] == ["red", "blue"]
    assert [image.getpixel((0, 0)) for image, _ in pairs] == [(255, 0, 0), (0, 0, 255)]


def test_webdataset_pairs_reach_retrieval_and_their_skips_are_reported(clip_dir, stand_ins, tmp_path, capsys) -> None:
    shards = write_shards(tmp_path, "wds", 2, per_shard=2)
    write_shard(tmp_path / "wds-000002.tar", [("broken", b"not a png", b"a caption")])
    pattern = str(tmp_path / "wds-{000000..000002}.tar")
    eval_command.run(_args("--model", str(clip_dir), "--webdataset", pattern))
    assert [caption for _, caption in stand_ins["retrieval"]["pairs"]] == captions_of(shards, per_shard=2)[:3]
    assert [image.size for image, _ in stand_ins["retrieval"]["pairs"]] == [(24, 20)] * 3
    # the stand-in read 3 of the 5 samples; the whole stream, read on, counts the broken one
    stand_ins.pop("retrieval")
    stand_ins["too_few"] = True
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(clip_dir), "--webdataset", pattern))
    assert str(caught.value).startswith("--webdataset: 1 usable image-caption pair; retrieval needs at least 2 (")


def test_webdataset_skips_reach_the_printed_metrics(clip_dir, stand_ins, tmp_path, monkeypatch, capsys) -> None:
    import clipcond.training.clip.evaluation as evaluation

    write_shards(tmp_path, "wds", 1, per_shard=2)
    write_shard(tmp_path / "wds-000001.tar", [("broken", b"not a png", b"a caption")])

    def read_all(clip, tokenizer, pairs, limit=1000):
        return {"pairs": len(list(pairs))}

    monkeypatch.setattr(evaluation, "pair_retrieval", read_all)
    eval_command.run(_args("--model", str(clip_dir), "--webdataset", str(tmp_path / "wds-{000000..000001}.tar")))
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["retrieval"] == {"pairs": 2}
    assert sum(metrics["skipped"].values()) == 1, metrics["skipped"]


def test_too_few_pairs_names_the_source_and_its_skips(clip_dir, stand_ins, tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(_png((1, 2, 3)))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "caption": "one"}\n{"image": "gone.png", "caption": "two"}\n')
    stand_ins["too_few"] = True
    with pytest.raises(UsageError) as caught:
        eval_command.run(_args("--model", str(clip_dir), "--manifest", str(manifest)))
    message = str(caught.value)
    assert message.startswith(
        f"--manifest {manifest}: 1 usable image-caption pair; retrieval needs at least 2 (skipped samples: 1 ("
    )
    assert "zero_shot" not in stand_ins  # refused before the zero-shot work
    stand_ins.pop("retrieval")
    with pytest.raises(UsageError, match=r"^shapes: 1 usable .* \(skipped samples: 0\)$"):
        eval_command.run(_args("--model", str(clip_dir)))


def test_the_metrics_are_printed_and_written_as_json(clip_dir, stand_ins, tmp_path, capsys) -> None:
    output = tmp_path / "deeper" / "still" / "metrics.json"
    assert eval_command.run(_args("--model", str(clip_dir), "--output", str(output))) == 0
    expected = {"zero_shot": {"top1": 0.25}, "retrieval": {"image_to_text_r1": 0.5}, "skipped": {}}
    printed = capsys.readouterr().out
    assert json.loads(printed) == expected and printed == json.dumps(expected, indent=2) + "\n"
    assert output.read_text() == printed
    # --force replaces it
    output.write_text("old")
    eval_command.run(_args("--model", str(clip_dir), "--output", str(output), "--force"))
    assert json.loads(output.read_text()) == expected


def test_a_file_written_there_during_the_evaluation_is_kept(clip_dir, stand_ins, tmp_path, monkeypatch, capsys) -> None:
    import clipcond.training.clip.evaluation as evaluation

    output = tmp_path / "metrics.json"
    zero_shot = evaluation.shapes_zero_shot

    def meanwhile(*args):
        output.write_text("another run's")
        return zero_shot(*args)

    monkeypatch.setattr(evaluation, "shapes_zero_shot", meanwhile)
    with pytest.raises(RunFailed) as caught:
        eval_command.run(_args("--model", str(clip_dir), "--output", str(output)))
    assert str(caught.value) == (
        f"--output {output} was written by something else during the evaluation; it is kept and the metrics are "
        "only printed above: pass --force to replace it, or choose another --output"
    )
    assert output.read_text() == "another run's" and json.loads(capsys.readouterr().out)["zero_shot"] == {"top1": 0.25}


def test_the_module_runs_as_a_script(monkeypatch, capsys) -> None:
    monkeypatch.setattr(eval_command, "run", lambda args: 4 if args.debug and args.model == "m" else 1)
    assert eval_command.main(["--model", "m", "--debug"]) == 4
    with pytest.raises(SystemExit):
        eval_command.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: eval_clip ")
