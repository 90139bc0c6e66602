"""The runner's parts on stand-ins (no diffusion model): which settings a result's key holds and
which it leaves out, the fingerprint, which result lines a resume keeps and which it drops,
stale images, batching by conditioning length, the pipeline call's arguments, the measured
lines, and a whole pending run drawn by a stand-in pipeline, re-run, grown and shrunk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch
from PIL import Image

from clipcond.lab import runner
from clipcond.lab.config import ExperimentConfig, SetupConfig
from clipcond.lab.metrics import shapes_judge_metrics
from clipcond.lab.results import RESULTS_NAME, append_results, read_results, save_image
from clipcond.lab.suites import PromptSuite, SuitePrompt, TextPrompt
from clipcond.shapes.prompt_suite import scene_from_spec

RED_CIRCLE = SuitePrompt("single", "a red circle", scene_from_spec([("red", "circle")]))
TEXT = TextPrompt("free", "a photo of a cat")


def _suite(name="s", prompts=(RED_CIRCLE, TEXT), digest="d1") -> PromptSuite:
    return PromptSuite(name=name, path=Path(f"/suites/{name}.yaml"), prompts=tuple(prompts), digest=digest)


def _config(tmp_path: Path, **overrides) -> ExperimentConfig:
    settings = dict(
        name="exp",
        suites=["/suites/s.yaml"],
        setups=[SetupConfig("a", "/models/a"), SetupConfig("b", "/models/b", steps=3, guidance_scale=2.0)],
        seeds=[0, 1],
        output_dir=str(tmp_path / "run"),
        steps=5,
        guidance_scale=4.0,
    )
    return ExperimentConfig(**{**settings, **overrides})


DIGESTS = {"a": "pa", "b": "pb"}


def _keys(config, suites=None, digests=None, clip=None) -> list[str]:
    return [job.key for job in runner.plan_jobs(config, suites or [_suite()], digests or DIGESTS, clip)]


# ---- plan_jobs ---------------------------------------------------------------------------------


def test_jobs_come_in_order_setup_suite_entry_seed_each_with_its_image_path(tmp_path) -> None:
    config = _config(tmp_path)
    jobs = runner.plan_jobs(config, [_suite("s"), _suite("t", prompts=(TEXT,))], DIGESTS, None)
    order = [(job.setup.name, job.suite, job.index, job.entry.prompt, job.seed) for job in jobs]
    assert order == [
        ("a", "s", 0, "a red circle", 0),
        ("a", "s", 0, "a red circle", 1),
        ("a", "s", 1, "a photo of a cat", 0),
        ("a", "s", 1, "a photo of a cat", 1),
        ("a", "t", 0, "a photo of a cat", 0),
        ("a", "t", 0, "a photo of a cat", 1),
        ("b", "s", 0, "a red circle", 0),
        ("b", "s", 0, "a red circle", 1),
        ("b", "s", 1, "a photo of a cat", 0),
        ("b", "s", 1, "a photo of a cat", 1),
        ("b", "t", 0, "a photo of a cat", 0),
        ("b", "t", 0, "a photo of a cat", 1),
    ]
    assert jobs[0].setup is config.setups[0] and jobs[-1].setup is config.setups[1]
    assert jobs[3].image == "images/a/s/1-1.png" and jobs[11].image == "images/b/t/0-1.png"
    keys = [job.key for job in jobs]
    assert len(set(keys)) == len(keys)
    assert all(len(key) == 64 and int(key, 16) >= 0 for key in keys)


def test_the_key_leaves_out_batch_size_output_dir_paths_and_the_order_of_metrics(tmp_path) -> None:
    base = _config(tmp_path, metrics=["judge", "clip_score"], clip_score_model="/clip")
    same = [
        _config(tmp_path, metrics=["judge", "clip_score"], clip_score_model="/clip", batch_size=1),
        _config(tmp_path / "elsewhere", metrics=["judge", "clip_score"], clip_score_model="/clip"),
        _config(tmp_path, metrics=["clip_score", "judge"], clip_score_model="/other-clip"),
        _config(
            tmp_path,
            metrics=["judge", "clip_score"],
            clip_score_model="/clip",
            suites=["/elsewhere/s.yaml"],
            setups=[SetupConfig("a", "/moved/a"), SetupConfig("b", "/moved/b", steps=3, guidance_scale=2.0)],
        ),
    ]
    expected = _keys(base, clip="c")
    for config in same:
        assert _keys(config, clip="c") == expected
    moved_suite = dataclasses.replace(_suite(), path=Path("/elsewhere/s.yaml"), digest="another file")
    assert _keys(base, suites=[moved_suite], clip="c") == expected


def _changed_keys(tmp_path, change) -> list[bool]:
    """For each job of the plan, whether `change` (config, suites, digests, clip) -> (...) changes its key."""
    config, suites, digests, clip = _config(tmp_path), [_suite()], dict(DIGESTS), None
    before = _keys(config, suites, digests, clip)
    after = _keys(*change(config, suites, digests, clip))
    return [one != other for one, other in zip(before, after)]


def _setup_a(config, **changes):
    return dataclasses.replace(config, setups=[dataclasses.replace(config.setups[0], **changes), config.setups[1]])


@pytest.mark.parametrize(
    "change,which",
    [
        # setup a's own settings: its 4 jobs only
        (lambda c, s, d, k: (_setup_a(c, name="a2"), s, {**d, "a2": "pa"}, k), "a"),
        (lambda c, s, d, k: (c, s, {**d, "a": "pa2"}, k), "a"),
        (lambda c, s, d, k: (_setup_a(c, native=True), s, d, k), "a"),
        (lambda c, s, d, k: (_setup_a(c, steps=6), s, d, k), "a"),
        (lambda c, s, d, k: (_setup_a(c, guidance_scale=4.5), s, d, k), "a"),
        # the experiment's steps and guidance reach setup a, whose own b overrides
        (lambda c, s, d, k: (dataclasses.replace(c, steps=7), s, d, k), "a"),
        (lambda c, s, d, k: (dataclasses.replace(c, guidance_scale=1.5), s, d, k), "a"),
        # steps=5 and guidance 4.0 written out: the same values, the same keys
        (lambda c, s, d, k: (_setup_a(c, steps=5, guidance_scale=4.0), s, d, k), ""),
        # every job
        (lambda c, s, d, k: (dataclasses.replace(c, height=32), s, d, k), "ab"),
        (lambda c, s, d, k: (dataclasses.replace(c, width=32), s, d, k), "ab"),
        (lambda c, s, d, k: (c, [dataclasses.replace(s[0], name="s2")], d, k), "ab"),
        (
            lambda c, s, d, k: (
                dataclasses.replace(c, metrics=["judge", "clip_score"], clip_score_model="/c"),
                s,
                d,
                k,
            ),
            "ab",
        ),
        (lambda c, s, d, k: (c, s, d, "clip digest"), "ab"),
    ],
)
def test_each_setting_a_result_depends_on_changes_the_keys_of_the_jobs_it_reaches(tmp_path, change, which) -> None:
    changed = _changed_keys(tmp_path, change)
    assert changed == [name in which for name in "aaaabbbb"]


def test_an_entrys_prompt_category_objects_or_relation_changes_its_keys_only(tmp_path) -> None:
    config = _config(tmp_path, setups=[SetupConfig("a", "/models/a")], seeds=[0])
    base = _keys(config)
    next_to = SuitePrompt(
        "rel", "a red circle", scene_from_spec([("red", "circle"), ("blue", "square")], (0, "left of", 1))
    )
    swapped = SuitePrompt(
        "rel", "a red circle", scene_from_spec([("red", "circle"), ("blue", "square")], (0, "above", 1))
    )
    for entry in (
        TextPrompt("single", "a red circle"),  # no objects
        SuitePrompt("other", "a red circle", RED_CIRCLE.scene),
        SuitePrompt("single", "a red  circle", RED_CIRCLE.scene),
        SuitePrompt("single", "a red circle", scene_from_spec([("blue", "circle")])),
    ):
        keys = _keys(config, suites=[_suite(prompts=(entry, TEXT))])
        assert keys[0] != base[0] and keys[1] == base[1]
    assert _keys(config, suites=[_suite(prompts=(next_to,))]) != _keys(config, suites=[_suite(prompts=(swapped,))])
    # the same entry at another index is another image
    moved = _keys(config, suites=[_suite(prompts=(TEXT, RED_CIRCLE))])
    assert not set(moved) & set(base)


def test_the_lab_version_is_in_every_key(tmp_path, monkeypatch) -> None:
    config = _config(tmp_path)
    before = _keys(config)
    monkeypatch.setattr(runner, "LAB_VERSION", runner.LAB_VERSION + 1)
    assert all(one != other for one, other in zip(before, _keys(config)))


# ---- experiment.json's record ------------------------------------------------------------------


def _record(config, suites=None, digests=None, clip=None) -> dict:
    return runner._experiment_record(config, suites or [_suite()], digests or DIGESTS, clip)


def test_the_record_holds_identity_paths_prompts_and_seeds(tmp_path) -> None:
    config = _config(tmp_path, metrics=["clip_score"], clip_score_model="/clip")
    record = _record(config, clip="cd")
    assert set(record) == {"fingerprint", "settings", "setups", "suites", "clip_digest", "lab_version", "paths",
                           "suite_prompts", "seeds"}  # fmt: skip
    assert record["settings"] == {
        "name": "exp",
        "seeds": [0, 1],
        "steps": 5,
        "guidance_scale": 4.0,
        "height": None,
        "width": None,
        "metrics": ["clip_score"],
    }
    assert record["setups"] == [
        {"name": "a", "pipeline_digest": "pa", "native": False, "steps": 5, "guidance_scale": 4.0, "height": None,
         "width": None},
        {"name": "b", "pipeline_digest": "pb", "native": False, "steps": 3, "guidance_scale": 2.0, "height": None,
         "width": None},
    ]  # fmt: skip
    assert record["suites"] == [{"name": "s", "digest": "d1"}]
    assert (record["clip_digest"], record["lab_version"], record["seeds"]) == ("cd", runner.LAB_VERSION, [0, 1])
    assert record["paths"] == {
        "suites": {"s": "/suites/s.yaml"},
        "pipelines": {"a": "/models/a", "b": "/models/b"},
        "clip_score_model": "/clip",
    }
    assert record["suite_prompts"] == {
        "s": [
            {"category": "single", "prompt": "a red circle", "objects": [["red", "circle"]], "relation": None},
            {"category": "free", "prompt": "a photo of a cat", "objects": None, "relation": None},
        ]
    }
    json.dumps(record)  # experiment.json holds it as JSON


def test_the_fingerprint_leaves_out_paths_and_batch_size_and_holds_the_rest(tmp_path) -> None:
    config = _config(tmp_path)
    fingerprint = _record(config)["fingerprint"]
    for same in (
        _record(dataclasses.replace(config, batch_size=2, output_dir="/elsewhere", suites=["/x.yaml"])),
        _record(dataclasses.replace(config, setups=[dataclasses.replace(s, pipeline="/moved") for s in config.setups])),
        _record(config, suites=[dataclasses.replace(_suite(), path=Path("/moved.yaml"))]),
    ):
        assert same["fingerprint"] == fingerprint
    for other in (
        _record(dataclasses.replace(config, seeds=[0, 1, 2])),
        _record(dataclasses.replace(config, steps=6)),
        _record(dataclasses.replace(config, name="exp2")),
        _record(config, suites=[_suite(digest="d2")]),
        _record(config, suites=[_suite(name="s2")]),
        _record(config, digests={"a": "pa", "b": "pb2"}),
        _record(config, clip="cd"),
        _record(_setup_a(config, native=True)),
    ):
        assert other["fingerprint"] != fingerprint


@pytest.mark.parametrize("text", [None, "", "{not json", "[1, 2]", '"text"'])
def test_an_unreadable_or_non_object_experiment_json_reads_as_empty(tmp_path, text) -> None:
    path = tmp_path / "experiment.json"
    if text is not None:
        path.write_text(text)
    assert runner._read_json(path) == {}


def test_an_experiment_json_object_is_read_whole(tmp_path) -> None:
    path = tmp_path / "experiment.json"
    path.write_text('{"fingerprint": "f", "file_digests": {"x": [1, 2, "h"]}}')
    assert runner._read_json(path) == {"fingerprint": "f", "file_digests": {"x": [1, 2, "h"]}}


# ---- which result lines a resume keeps ---------------------------------------------------------


def _line(job) -> dict:
    return {
        "key": job.key,
        "setup": job.setup.name,
        "suite": job.suite,
        "index": job.index,
        "category": job.entry.category,
        "prompt": job.entry.prompt,
        "seed": job.seed,
        "image": job.image,
        "metrics": {},
    }


@pytest.fixture
def drawn(tmp_path):
    """A run folder whose results.jsonl holds one line per job of a 2-setup plan (4 jobs), images saved."""
    config = _config(tmp_path, suites=["/suites/s.yaml"], seeds=[0])
    jobs = runner.plan_jobs(config, [_suite(prompts=(TEXT, RED_CIRCLE))], DIGESTS, None)
    output = Path(config.output_dir)
    output.mkdir()
    for job in jobs:
        save_image(Image.new("RGB", (4, 4), (job.index * 40, 0, 0)), output, job.image)
    append_results(output / RESULTS_NAME, [_line(job) for job in jobs])
    return output, jobs


def test_a_results_file_of_this_plan_is_kept_whole(drawn) -> None:
    output, jobs = drawn
    kept, dropped = runner._valid_results(output, jobs)
    assert (list(kept), dropped) == ([job.key for job in jobs], 0)
    assert kept[jobs[2].key] == _line(jobs[2])


def test_no_results_file_keeps_nothing_and_drops_nothing(tmp_path) -> None:
    jobs = runner.plan_jobs(_config(tmp_path), [_suite()], DIGESTS, None)
    assert runner._valid_results(tmp_path, jobs) == ({}, 0)


@pytest.mark.parametrize(
    "damage",
    [
        "stale key",
        "duplicate line",
        "torn line",
        "image missing",
        "image damaged",
        "seed edited",
        "image edited",
        "category edited",
        "prompt edited",
        "index edited",
        "suite edited",
        "setup edited",
    ],
)
def test_a_line_this_plan_would_not_write_is_dropped_and_counted(drawn, damage) -> None:
    output, jobs = drawn
    path = output / RESULTS_NAME
    lines = [_line(job) for job in jobs]
    victim = jobs[1]
    edits = {
        "seed edited": ("seed", 7),
        "image edited": ("image", "images/a/s/0-0.png"),
        "category edited": ("category", "other"),
        "prompt edited": ("prompt", "a dog"),
        "index edited": ("index", 0),
        "suite edited": ("suite", "t"),
        "setup edited": ("setup", "b"),
    }
    if damage == "stale key":
        lines[1]["key"] = "0" * 64
    elif damage in edits:
        name, value = edits[damage]
        lines[1][name] = value
        if name in ("seed", "index", "suite", "setup"):  # keep the line well formed: image matches its fields
            lines[1]["image"] = (
                f"images/{lines[1]['setup']}/{lines[1]['suite']}/{lines[1]['index']}-{lines[1]['seed']}.png"
            )
    elif damage == "image missing":
        (output / victim.image).unlink()
    elif damage == "image damaged":
        (output / victim.image).write_bytes((output / victim.image).read_bytes()[:20])
    path.unlink()
    append_results(path, lines)
    if damage == "duplicate line":
        append_results(path, [lines[1]])
    if damage == "torn line":
        with open(path, "a") as handle:
            handle.write('{"key": "')
    written = path.read_bytes()
    kept, dropped = runner._valid_results(output, jobs)
    if damage in ("duplicate line", "torn line"):
        assert (list(kept), dropped) == ([job.key for job in jobs], 1)
    else:
        assert (list(kept), dropped) == ([job.key for job in jobs if job is not victim], 1)
    assert path.read_bytes() == written  # only counted: `_keep_results` writes


def test_keeping_results_rewrites_only_when_a_line_is_dropped_or_the_last_is_torn(drawn) -> None:
    output, jobs = drawn
    path = output / RESULTS_NAME
    kept, _ = runner._valid_results(output, jobs)
    before = path.read_bytes()
    path.touch()
    mtime = path.stat().st_mtime_ns
    runner._keep_results(output, kept, 0)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    # a torn last line, nothing else dropped: rewritten without it
    path.write_bytes(before + b'{"key": "x')
    runner._keep_results(output, kept, 0)
    assert path.read_bytes() == before
    # a dropped line: only the kept ones are written, one per line
    fewer = {key: kept[key] for key in list(kept)[:2]}
    runner._keep_results(output, fewer, 2)
    assert [line["key"] for line in read_results(path)[0]] == list(fewer)
    assert path.read_bytes().count(b"\n") == 2


def test_keeping_results_leaves_an_empty_or_missing_file_alone(tmp_path) -> None:
    runner._keep_results(tmp_path, {}, 0)
    assert not (tmp_path / RESULTS_NAME).exists()
    (tmp_path / RESULTS_NAME).write_bytes(b"")
    runner._keep_results(tmp_path, {}, 0)
    assert (tmp_path / RESULTS_NAME).read_bytes() == b""


def test_images_the_plan_no_longer_holds_are_removed_with_their_emptied_folders(drawn) -> None:
    output, jobs = drawn
    planned = {job.image for job in jobs}
    extra = ["images/a/s/5-0.png", "images/gone/s/0-0.png", "images/gone/deep/er/0-0.png"]
    for name in extra:
        save_image(Image.new("RGB", (2, 2)), output, name)
    (output / "images/a/notes.txt").write_text("mine")
    assert runner._remove_stale_images(output, jobs) == 3
    left = {str(path.relative_to(output)) for path in (output / "images").rglob("*") if path.is_file()}
    assert left == planned | {"images/a/notes.txt"}
    assert not (output / "images/gone").exists()
    assert runner._remove_stale_images(output, jobs) == 0


# ---- batching and the pipeline call ------------------------------------------------------------


class _Conditioner:
    def __init__(self, lengths):
        self.lengths, self.asked = lengths, []

    def encode(self, prompts):
        self.asked.append(list(prompts))
        return NS(tokens=torch.zeros(len(prompts), self.lengths[prompts[0]], 3))


def _jobs_for(prompts, seeds, tmp_path):
    config = _config(tmp_path, setups=[SetupConfig("a", "/models/a")], seeds=list(seeds))
    entries = tuple(TextPrompt("c", prompt) for prompt in prompts)
    return runner.plan_jobs(config, [_suite(prompts=entries)], DIGESTS, None)


def test_batches_hold_one_conditioning_length_and_at_most_batch_size_jobs(tmp_path) -> None:
    jobs = _jobs_for(["short", "long one", "short too", "long two"], [0, 1], tmp_path)
    conditioner = _Conditioner({"short": 77, "short too": 77, "long one": 154, "long two": 154})
    batches = runner._batches(NS(conditioner=conditioner), jobs, 3)
    assert [[(job.entry.prompt, job.seed) for job in batch] for batch in batches] == [
        [("short", 0), ("short", 1), ("short too", 0)],
        [("short too", 1)],
        [("long one", 0), ("long one", 1), ("long two", 0)],
        [("long two", 1)],
    ]
    assert conditioner.asked == [["short"], ["long one"], ["short too"], ["long two"]]  # each prompt once


def test_a_native_pipeline_batches_in_plan_order_without_encoding(tmp_path) -> None:
    jobs = _jobs_for(["one", "two", "three"], [0], tmp_path)
    assert runner._conditioning_length(NS(), "anything") == 0
    assert runner._batches(NS(), jobs, 2) == [jobs[:2], jobs[2:]]
    assert runner._batches(NS(conditioner=None), jobs, 8) == [jobs]


class _Pipe:
    """Draws a flat image per prompt; records each call's arguments."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return NS(images=[Image.new("RGB", (8, 8), (255, 255, 255)) for _ in kwargs["prompt"]])


@pytest.mark.parametrize("size", [(None, None), (24, None), (None, 40), (24, 40)])
def test_the_pipeline_gets_the_setups_sampling_settings_and_a_generator_per_seed(tmp_path, size) -> None:
    config = _config(tmp_path, seeds=[3, 2**40 + 5], height=size[0], width=size[1])
    jobs = runner.plan_jobs(config, [_suite()], DIGESTS, None)
    pipe = _Pipe()
    for batch, steps, guidance in ((jobs[:2], 5, 4.0), (jobs[5:7], 3, 2.0)):
        images = runner._generate(pipe, config, batch)
        assert len(images) == 2 and all(isinstance(image, Image.Image) for image in images)
        call = pipe.calls[-1]
        expected = {"prompt", "num_inference_steps", "guidance_scale", "generator", "output_type"}
        expected |= {name for name, value in zip(("height", "width"), size) if value is not None}
        assert set(call) == expected
        assert call["prompt"] == [job.entry.prompt for job in batch]
        assert (call["num_inference_steps"], call["guidance_scale"], call["output_type"]) == (steps, guidance, "pil")
        assert [generator.initial_seed() for generator in call["generator"]] == [job.seed for job in batch]
        assert (call.get("height"), call.get("width")) == size
    # each generator fresh: its first draw is the seed's first draw
    first = pipe.calls[0]["generator"][1]
    assert torch.equal(
        torch.randn(3, generator=first), torch.randn(3, generator=torch.Generator().manual_seed(2**40 + 5))
    )


class _Scorer:
    def embed_images(self, images):
        return torch.tensor([[float(image.getpixel((0, 0))[0]) / 255, 1.0] for image in images])

    def embed_texts(self, prompts):
        return torch.tensor([[float(len(prompt)), 0.5] for prompt in prompts])

    def truncated(self, prompts):
        return [len(prompt) > 12 for prompt in prompts]


def test_measured_lines_hold_the_jobs_fields_judge_only_for_scenes_and_the_clip_score(tmp_path) -> None:
    config = _config(tmp_path, metrics=["judge", "clip_score"], clip_score_model="/clip", seeds=[4])
    jobs = runner.plan_jobs(config, [_suite()], DIGESTS, None)[:2]  # the red circle, then the text prompt
    images = [Image.new("RGB", (32, 32), (255, 255, 255)), Image.new("RGB", (32, 32), (51, 0, 0))]
    lines = runner._measure(images, jobs, config, _Scorer())
    assert lines[0] == {
        "key": jobs[0].key,
        "setup": "a",
        "suite": "s",
        "index": 0,
        "category": "single",
        "prompt": "a red circle",
        "seed": 4,
        "image": "images/a/s/0-4.png",
        "metrics": {**shapes_judge_metrics(images[0], RED_CIRCLE.scene), "clip_score": 12.0 + 0.5},
        "clip_truncated": False,
    }
    assert lines[1]["metrics"] == {"clip_score": pytest.approx(0.2 * 16 + 0.5)}
    assert lines[1]["clip_truncated"] is True and lines[1]["category"] == "free"


def test_without_a_scorer_or_the_judge_the_lines_carry_no_metric(tmp_path) -> None:
    config = _config(tmp_path, metrics=["clip_score"], clip_score_model="/clip", seeds=[4])
    jobs = runner.plan_jobs(config, [_suite()], DIGESTS, None)[:2]
    lines = runner._measure([Image.new("RGB", (8, 8))] * 2, jobs, config, None)
    assert [line["metrics"] for line in lines] == [{}, {}]
    assert all("clip_truncated" not in line for line in lines)


# ---- a whole pending run on stand-ins ----------------------------------------------------------


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """Two pipeline folders of one file each; `setup_pipeline` gives a recording `_Pipe` and
    `check_loadable` records what it is asked."""
    for name in ("a", "b"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "weights.bin").write_bytes(name.encode() * 10)
    pipes, checked = {}, []

    def setup_pipeline(setup, device):
        pipes.setdefault(setup.name, []).append(_Pipe())
        return pipes[setup.name][-1]

    monkeypatch.setattr(runner, "setup_pipeline", setup_pipeline)
    monkeypatch.setattr(runner, "check_loadable", lambda folder, what: checked.append(what))
    setups = [SetupConfig("a", str(tmp_path / "models/a")), SetupConfig("b", str(tmp_path / "models/b"), steps=2)]
    config = _config(tmp_path, setups=setups, seeds=[0, 1], batch_size=3)
    return NS(config=config, pipes=pipes, checked=checked, suites=[_suite()], output=Path(config.output_dir))


def _drawn_images(pipes) -> int:
    return sum(len(call["prompt"]) for calls in pipes.values() for pipe in calls for call in pipe.calls)


def _pending(s, config=None, suites=None) -> None:
    s.output.mkdir(exist_ok=True)
    runner._run_pending(config or s.config, suites or s.suites, s.output, "cpu", show_progress=False)


def test_a_pending_run_draws_measures_and_records_every_image_once(stand_ins, capsys) -> None:
    s = stand_ins
    _pending(s)
    lines, unreadable = read_results(s.output / RESULTS_NAME, strict=True)
    jobs = runner.plan_jobs(s.config, s.suites, DIGESTS, None)
    assert unreadable == 0 and len(lines) == len(jobs) == 8
    assert [(line["setup"], line["index"], line["seed"]) for line in lines] == [
        (job.setup.name, job.index, job.seed) for job in jobs
    ]
    assert [len(call["prompt"]) for call in s.pipes["a"][0].calls] == [3, 1]  # batch_size 3
    assert s.pipes["b"][0].calls[0]["num_inference_steps"] == 2
    assert s.checked == ["setup a: pipeline", "setup b: pipeline"]
    record = json.loads((s.output / "experiment.json").read_text())
    assert (
        record["name"] == "exp"
        and record["fingerprint"]
        == runner._experiment_record(
            s.config, s.suites, {name: record["setups"][i]["pipeline_digest"] for i, name in enumerate("ab")}, None
        )["fingerprint"]
    )
    assert sorted(record["file_digests"]) == [
        str((Path(setup.pipeline) / "weights.bin").resolve()) for setup in s.config.setups
    ]
    assert capsys.readouterr().err == ""

    # again: nothing drawn, nothing checked, no pipeline made
    s.checked.clear()
    _pending(s)
    assert _drawn_images(s.pipes) == 8 and s.checked == [] and len(s.pipes["a"]) == 1
    assert capsys.readouterr().err == ""


def test_a_new_seed_draws_only_its_images_and_a_lowered_one_removes_them(stand_ins, capsys) -> None:
    s = stand_ins
    _pending(s)
    more = dataclasses.replace(s.config, seeds=[0, 1, 2])
    _pending(s, more)
    assert _drawn_images(s.pipes) == 8 + 4
    assert [call["generator"][0].initial_seed() for call in s.pipes["a"][1].calls] == [2]
    assert capsys.readouterr().err == ""
    fewer = dataclasses.replace(s.config, seeds=[0])
    _pending(s, fewer)
    err = capsys.readouterr().err
    assert (
        f"{s.output / RESULTS_NAME}: dropped 8 result line(s) (the experiment changed since the last run); kept 4"
        in err
    )
    assert f"{s.output / 'images'}: removed 8 image(s) the experiment no longer has" in err
    assert len(read_results(s.output / RESULTS_NAME)[0]) == 4
    assert sorted(path.name for path in (s.output / "images").rglob("*.png")) == ["0-0.png"] * 2 + ["1-0.png"] * 2


def test_an_edited_line_is_redrawn_and_named_as_such(stand_ins, capsys) -> None:
    s = stand_ins
    _pending(s)
    path = s.output / RESULTS_NAME
    text = path.read_text().splitlines()
    edited = json.loads(text[2])
    edited["prompt"] = "something else"
    path.write_text("\n".join([*text[:2], json.dumps(edited), *text[3:]]) + "\n")
    s.checked.clear()
    _pending(s)
    err = capsys.readouterr().err
    assert err == (f"{path}: dropped 1 result line(s) (torn, edited, duplicate, or image unreadable); kept 7\n")
    assert _drawn_images(s.pipes) == 9 and s.checked == [f"setup {edited['setup']}: pipeline"]
    assert len(read_results(path, strict=True)[0]) == 8


def test_a_changed_pipeline_file_redraws_its_setup_and_the_cache_forgets_removed_files(stand_ins) -> None:
    s = stand_ins
    folder = Path(s.config.setups[1].pipeline)
    (folder / "extra.bin").write_bytes(b"x")
    _pending(s)
    (folder / "extra.bin").unlink()
    _pending(s)
    assert len(s.pipes["a"]) == 1 and len(s.pipes["b"]) == 2  # only b's images again
    record = json.loads((s.output / "experiment.json").read_text())
    assert str((folder / "extra.bin").resolve()) not in record["file_digests"]
    assert len(record["file_digests"]) == 2


def test_the_clip_scorer_is_loaded_only_when_an_image_is_pending(stand_ins, monkeypatch) -> None:
    s = stand_ins
    clip = s.output.parent / "clip"
    clip.mkdir()
    (clip / "model.bin").write_bytes(b"clip")
    loaded = []

    def load_clip_scorer(folder, device):
        loaded.append((folder, device))
        return _Scorer()

    monkeypatch.setattr(runner, "load_clip_scorer", load_clip_scorer)
    config = dataclasses.replace(s.config, metrics=["clip_score"], clip_score_model=str(clip))
    _pending(s, config)
    assert loaded == [(str(clip), "cpu")]
    assert all("clip_score" in line["metrics"] for line in read_results(s.output / RESULTS_NAME)[0])
    _pending(s, config)
    assert loaded == [(str(clip), "cpu")]


# ---- run_experiment around the pending run -----------------------------------------------------


@pytest.fixture
def reported(stand_ins, monkeypatch):
    """`stand_ins` with the suites check and the report recorded instead of run."""
    import clipcond.lab.report as report

    calls = []
    monkeypatch.setattr(runner, "check_experiment", lambda config: calls.append("check") or stand_ins.suites)
    monkeypatch.setattr(report, "check_report_dependencies", lambda: calls.append("dependencies"))

    def write_report(output):
        assert (Path(output) / "run.lock").exists()  # still under the run's lock
        calls.append(("report", Path(output)))

    monkeypatch.setattr(report, "write_report", write_report)
    return NS(**vars(stand_ins), calls=calls)


def test_run_experiment_checks_draws_then_reports_and_returns_the_folder(reported) -> None:
    s = reported
    assert runner.run_experiment(s.config, show_progress=False, device=None) == s.output
    assert s.calls == ["check", "dependencies", ("report", s.output)]
    assert _drawn_images(s.pipes) == 8
    assert not (s.output / "run.lock").exists()  # released
    s.calls.clear()
    assert runner.run_experiment(s.config, show_progress=False, write_report=False) == s.output
    assert s.calls == ["check"] and _drawn_images(s.pipes) == 8


def test_run_experiment_refuses_another_experiments_folder_before_drawing(reported) -> None:
    s = reported
    runner.run_experiment(s.config, show_progress=False, write_report=False)
    renamed = dataclasses.replace(s.config, name="other")
    with pytest.raises(ValueError, match="holds the run of experiment 'exp', not 'other'"):
        runner.run_experiment(renamed, show_progress=False)
    assert s.calls == ["check", "check"]  # neither the report's check nor a drawing


def test_run_experiment_resolves_the_device_before_any_file(reported, monkeypatch) -> None:
    s = reported
    with pytest.raises(ValueError, match="meta"):
        runner.run_experiment(s.config, show_progress=False, device="meta")
    assert not s.output.exists()
    devices = []
    original = runner.setup_pipeline
    monkeypatch.setattr(
        runner, "setup_pipeline", lambda setup, device: devices.append(device) or original(setup, device)
    )
    runner.run_experiment(s.config, show_progress=False, write_report=False)
    assert devices == ["cuda" if torch.cuda.is_available() else "cpu"] * 2


# ---- keys and fingerprints are stored: they must not change between releases -----------------


def test_a_key_is_the_sha256_of_its_documented_fields_and_stays_what_earlier_runs_stored(tmp_path) -> None:
    import hashlib

    config = _config(tmp_path, metrics=["judge", "clip_score"], clip_score_model="/clip")
    jobs = runner.plan_jobs(config, [_suite()], DIGESTS, "cdigest")
    # written out by hand, in another key order: the hash reads keys sorted
    fields = {
        "lab_version": 1,
        "clip_digest": "cdigest",
        "metrics": ["clip_score", "judge"],
        "seed": 0,
        "entry": {"relation": None, "objects": [["red", "circle"]], "prompt": "a red circle", "category": "single"},
        "index": 0,
        "suite": "s",
        "setup": {"width": None, "height": None, "guidance_scale": 4.0, "steps": 5, "native": False,
                  "pipeline_digest": "pa", "name": "a"},
    }  # fmt: skip
    assert jobs[0].key == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    # the keys results.jsonl files hold today: a change here drops every user's results
    assert jobs[0].key == "43066471040015dc1275f94b2583bd256a4122ba8832e21c84578965605f665e"
    assert jobs[-1].key == "3a750f5156148e9f11d84d3c4d2df95b4bb6764764c8179110ca2d454db9f608"
    record = runner._experiment_record(config, [_suite()], DIGESTS, "cdigest")
    assert record["fingerprint"] == "3baf45051340d500087afb3d0bc9769b570f8a2a8740bdfc3d9e0fca42016a9e"


# ---- the file-hash cache, the CLIP's digest and the progress bar -------------------------------


def _hashed_files(monkeypatch) -> list[Path]:
    import clipcond.lab.digests as digests

    read = []
    original = digests._file_sha256
    monkeypatch.setattr(digests, "_file_sha256", lambda path: read.append(Path(path)) or original(path))
    return read


@pytest.fixture
def with_clip(stand_ins, monkeypatch):
    """`stand_ins` measuring clip_score with a stand-in scorer of a one-file CLIP folder."""
    clip = stand_ins.output.parent / "clip"
    clip.mkdir()
    (clip / "model.bin").write_bytes(b"clip")
    loaded = []

    def load_clip_scorer(folder, device):
        loaded.append(folder)
        return _Scorer()

    monkeypatch.setattr(runner, "load_clip_scorer", load_clip_scorer)
    config = dataclasses.replace(stand_ins.config, metrics=["clip_score"], clip_score_model=str(clip))
    return NS(**{**vars(stand_ins), "config": config}, clip=clip, loaded=loaded)


def test_unchanged_model_files_are_not_read_again_on_a_resume(with_clip, monkeypatch) -> None:
    s = with_clip
    read = _hashed_files(monkeypatch)
    _pending(s)
    assert sorted(path.name for path in read) == ["model.bin", "weights.bin", "weights.bin"]
    record = json.loads((s.output / "experiment.json").read_text())
    assert sorted(Path(name).name for name in record["file_digests"]) == ["model.bin", "weights.bin", "weights.bin"]
    read.clear()
    _pending(s)
    assert read == []


@pytest.mark.parametrize("cache", ['"not a mapping"', "[1, 2]", "null"])
def test_a_file_digests_entry_that_is_no_mapping_is_read_again_not_trusted(with_clip, monkeypatch, cache) -> None:
    s = with_clip
    _pending(s)
    path = s.output / "experiment.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "file_digests": json.loads(cache)}))
    read = _hashed_files(monkeypatch)
    _pending(s)
    assert len(read) == 3 and _drawn_images(s.pipes) == 8  # read again; the same digests: nothing redrawn


def test_a_changed_clip_redraws_and_rescores_every_image_and_is_recorded(with_clip) -> None:
    from clipcond.lab.digests import folder_digest

    s = with_clip
    _pending(s)
    (s.clip / "model.bin").write_bytes(b"another clip")
    _pending(s)
    assert _drawn_images(s.pipes) == 16 and s.loaded == [str(s.clip)] * 2
    record = json.loads((s.output / "experiment.json").read_text())
    assert record["clip_digest"] == folder_digest(s.clip)


def test_a_clip_that_cannot_load_is_named_and_keeps_every_result(with_clip, monkeypatch) -> None:
    from clipcond.lab.loading import ModelLoadFailed

    s = with_clip
    _pending(s, s.config)
    before = (s.output / RESULTS_NAME).read_bytes()

    def broken(folder, device):
        raise OSError("model.bin: unexpected end of file")

    monkeypatch.setattr(runner, "load_clip_scorer", broken)
    (s.clip / "model.bin").write_bytes(b"cut")
    with pytest.raises(ModelLoadFailed) as caught:
        _pending(s)
    assert str(caught.value).startswith(
        f"clip_score_model {s.clip} cannot be loaded (model.bin: unexpected end of file)"
    )
    assert (s.output / RESULTS_NAME).read_bytes() == before


def test_the_pipeline_folder_is_what_is_checked(stand_ins, monkeypatch) -> None:
    s = stand_ins
    asked = []
    monkeypatch.setattr(runner, "check_loadable", lambda folder, what: asked.append((folder, what)))
    _pending(s)
    assert asked == [(setup.pipeline, f"setup {setup.name}: pipeline") for setup in s.config.setups]


def test_the_progress_bar_counts_images_from_those_already_done(stand_ins, capsys) -> None:
    s = stand_ins
    s.output.mkdir()
    runner._run_pending(s.config, s.suites, s.output, "cpu", show_progress=True)
    err = capsys.readouterr().err
    assert "experiment exp: " in err and "8/8" in err and "image/s" in err
    more = dataclasses.replace(s.config, seeds=[0, 1, 2])
    runner._run_pending(more, s.suites, s.output, "cpu", show_progress=True)
    err = capsys.readouterr().err
    assert "8/12" in err and "12/12" in err and "0/12" not in err


def test_batches_are_grouped_by_the_setups_own_conditioner(stand_ins, monkeypatch) -> None:
    s = stand_ins
    asked = []

    class Conditioned(_Pipe):
        def __init__(self):
            super().__init__()
            self.conditioner = NS(encode=lambda prompts: asked.append(prompts) or NS(tokens=torch.zeros(1, 77, 2)))

    monkeypatch.setattr(runner, "setup_pipeline", lambda setup, device: Conditioned())
    _pending(s)
    assert sorted(map(tuple, asked)) == [("a photo of a cat",)] * 2 + [("a red circle",)] * 2


def test_run_experiment_makes_a_nested_output_dir_and_switches_library_bars_as_asked(
    reported, monkeypatch, capsys
) -> None:
    from diffusers.utils import logging as diffusers_logging

    s = reported
    nested = dataclasses.replace(s.config, output_dir=str(s.output / "deeper" / "run"))
    seen = []
    original = runner.setup_pipeline
    monkeypatch.setattr(
        runner,
        "setup_pipeline",
        lambda setup, device: seen.append(diffusers_logging.is_progress_bar_enabled()) or original(setup, device),
    )
    assert runner.run_experiment(nested, show_progress=False, write_report=False) == Path(nested.output_dir)
    assert (Path(nested.output_dir) / RESULTS_NAME).is_file()
    assert seen == [False, False] and diffusers_logging.is_progress_bar_enabled()
    assert "experiment exp" not in capsys.readouterr().err
    seen.clear()
    runner.run_experiment(dataclasses.replace(nested, seeds=[5]), write_report=False)  # default: bars shown
    assert seen == [True, True] and "experiment exp: " in capsys.readouterr().err


def test_run_experiment_checks_the_config_it_is_given(reported, monkeypatch) -> None:
    s = reported
    given = []
    monkeypatch.setattr(runner, "check_experiment", lambda config: given.append(config) or s.suites)
    runner.run_experiment(s.config, show_progress=False, write_report=False)
    assert given == [s.config]
