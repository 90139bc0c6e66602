"""The command lines of the scripts in benchmarks/ and scripts/.

Every script's `--help` runs; every flag parses through the script's own `build_parser()` as its
help says (a table below holds one representative command line per flag, and a test fails when
a flag is missing from it); default outputs lie under runs/ (git-ignored), so only an explicit
path replaces a recorded result. No benchmark runs here except the tiny one marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    str(path.relative_to(REPO))
    for folder in ("benchmarks", "scripts")
    for path in (REPO / folder).glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)

# script -> [(argv, {attribute: value parsed from argv})]; together they name every flag.
COMMAND_LINES: dict[str, list[tuple[list[str], dict]]] = {
    "benchmarks/bench_clip_step.py": [
        (
            ["--model", "configs/models/clip-tiny-vit.yaml", "--batch", "8", "--seq", "12", "--steps", "3"],
            {"model": "configs/models/clip-tiny-vit.yaml", "batch": 8, "seq": 12, "steps": 3},
        ),
        (
            ["--warmup", "0", "--repeats", "5", "--device", "cuda", "--mixed-precision", "bf16"],
            {"warmup": 0, "repeats": 5, "device": "cuda", "mixed_precision": "bf16"},
        ),
        (["--output", "out/step.md", "--side", "peer"], {"output": Path("out/step.md"), "side": "peer"}),
        (["--output=out/step.md", "--batch=4"], {"output": Path("out/step.md"), "batch": 4}),
        (["--peer", "open_clip", "--peak-tflops", "989.4"], {"peer": "open_clip", "peak_tflops": 989.4}),
    ],
    "benchmarks/bench_cold_start.py": [
        (
            ["--repeats", "3", "--steps", "10", "--output", "out/cold.md"],
            {"repeats": 3, "steps": 10, "output": Path("out/cold.md")},
        ),
    ],
    "benchmarks/bench_compel_syntax.py": [
        (
            ["--repeats", "3", "--max-depth", "4", "--output", "out/compel.md"],
            {"repeats": 3, "max_depth": 4, "output": Path("out/compel.md")},
        ),
    ],
    "benchmarks/bench_infotext.py": [
        (["--repeats", "3", "--output", "out/infotext.md"], {"repeats": 3, "output": Path("out/infotext.md")}),
    ],
    "benchmarks/bench_lora_tags.py": [
        (
            ["--steps", "4", "--repeats", "3", "--output", "out/tags.md"],
            {"steps": 4, "repeats": 3, "output": Path("out/tags.md")},
        ),
    ],
    "benchmarks/bench_conditioner.py": [
        (["--repeats", "3", "--output", "out/cond.md"], {"repeats": 3, "output": Path("out/cond.md")}),
        (["--out", "out/cond.md"], {"output": Path("out/cond.md")}),
        (["--rows", "emphasis", "cache"], {"rows": ["emphasis", "cache"]}),
    ],
    "benchmarks/bench_load.py": [
        (
            ["--repeats", "3", "--rows", "sd-small", "sd-sd15", "--output", "out/load.md"],
            {"repeats": 3, "rows": ["sd-small", "sd-sd15"], "output": Path("out/load.md")},
        ),
    ],
    "benchmarks/bench_pipeline.py": [
        (
            ["--steps", "2", "--repeats", "3", "--size", "sd15", "--device", "cuda:1", "--dtype", "bfloat16"],
            {"steps": 2, "repeats": 3, "size": "sd15", "device": "cuda:1", "dtype": "bfloat16"},
        ),
        (["--output", "out/pipe.md"], {"output": Path("out/pipe.md")}),
        (["--family", "sdxl", "--sdxl-size", "full"], {"family": "sdxl", "sdxl_size": "full"}),
    ],
    "benchmarks/bench_tokenizer_copy.py": [
        (["--repeats", "3", "--output", "out/copy.md"], {"repeats": 3, "output": Path("out/copy.md")}),
    ],
    "benchmarks/bench_prompt_language.py": [
        (
            ["--steps", "5", "--repeats", "2", "--output", "out/lang.md"],
            {"steps": 5, "repeats": 2, "output": Path("out/lang.md")},
        ),
    ],
    "benchmarks/bench_train_diffusion.py": [
        (
            ["--image-size", "32", "--batch", "4", "--steps", "6", "--warmup", "1", "--repeats", "2", "--lr", "1e-3"],
            {"image_size": 32, "batch": 4, "steps": 6, "warmup": 1, "repeats": 2, "lr": 1e-3},
        ),
        (
            ["--seed", "3", "--threads", "2", "--work-dir", "out/work", "--output", "out/td.md", "--phases"],
            {"seed": 3, "threads": 2, "work_dir": Path("out/work"), "output": Path("out/td.md"), "phases": True},
        ),
        (["--size", "sd15", "--mixed-precision", "bf16"], {"size": "sd15", "mixed_precision": "bf16"}),
    ],
    "benchmarks/bench_quantized_encoder.py": [
        (
            ["--repeats", "3", "--variants", "fp32", "int8", "--output", "out/quant.md"],
            {"repeats": 3, "variants": ["fp32", "int8"], "output": Path("out/quant.md")},
        ),
        (
            ["--measure", "int8-bf16", "--folder", "out/t5", "--states", "out/int8.pt"],
            {"measure": "int8-bf16", "folder": Path("out/t5"), "states": Path("out/int8.pt")},
        ),
    ],
    "benchmarks/clip_tiny_shapes.py": [
        (
            ["--reuse", "--train-seconds", "380.5", "--images-per-class", "20", "--output", "out/tiny.md"],
            {"reuse": True, "train_seconds": 380.5, "images_per_class": 20, "output": Path("out/tiny.md")},
        ),
    ],
    "benchmarks/prompt_language_grid.py": [
        (
            ["--seed", "1", "--steps", "10", "--output", "out/grid.png"],
            {"seed": 1, "steps": 10, "output": Path("out/grid.png")},
        ),
    ],
    "benchmarks/peer_differences.py": [(["--output", "out/differences.md"], {"output": Path("out/differences.md")})],
    "benchmarks/make_suites.py": [
        (["--output-dir", "out/suites"], {"output_dir": Path("out/suites"), "check": False}),
        (["--check"], {"check": True}),
    ],
    "benchmarks/reliability.py": [
        (
            ["--only", "checkpoint", "--only", "lock", "--kills", "2", "--seed", "7"],
            {"only": ["checkpoint", "lock"], "kills": 2, "seed": 7},
        ),
        (
            ["--work-dir", "out/work", "--output", "out/rel.md"],
            {"work_dir": Path("out/work"), "output": Path("out/rel.md"), "only": None, "kills": 3},
        ),
    ],
    "benchmarks/shapes_model_judge.py": [
        (
            ["--model", "runs/m/pipeline", "--steps", "10", "--scheduler", "DDPMScheduler", "--batch", "16"],
            {"model": "runs/m/pipeline", "steps": 10, "scheduler": "DDPMScheduler", "batch": 16},
        ),
        (
            ["--checkpoint", "runs/m/checkpoints/step-1", "--config", "configs/diffusion/shapes-tiny.yaml"],
            {"checkpoint": "runs/m/checkpoints/step-1", "config": "configs/diffusion/shapes-tiny.yaml"},
        ),
        (
            ["--guidance", "3", "5", "7.5", "--category", "single", "--category", "relation"],
            {"guidance": [3.0, 5.0, 7.5], "category": ["single", "relation"]},
        ),
        (["--output", "out/judge.md", "--grid", ""], {"output": Path("out/judge.md"), "grid": ""}),
        (["--grid", "out/grid.png"], {"grid": "out/grid.png"}),
    ],
    "benchmarks/shapes_model_position_probe.py": [
        (
            ["--model", "a=runs/a/pipeline", "--model", "b=runs/b/pipeline", "--timesteps", "999,500"],
            {"model": [("a", "runs/a/pipeline"), ("b", "runs/b/pipeline")], "timesteps": [999, 500]},
        ),
        (
            ["--noises", "8", "--scenes", "20", "--seed", "3", "--output", "out/probe.md"],
            {"noises": 8, "scenes": 20, "seed": 3, "output": Path("out/probe.md")},
        ),
        ([], {"timesteps": [999, 975], "output": None}),
    ],
    "benchmarks/text_tower_relations.py": [
        (
            ["--model", "clip=runs/a/pipeline", "--model", "t5=runs/b/pipeline", "--pairs", "4", "--seed", "1"],
            {"model": ["clip=runs/a/pipeline", "t5=runs/b/pipeline"], "pairs": 4, "seed": 1},
        ),
        (["--output", "out/rel.md"], {"output": Path("out/rel.md")}),
    ],
    "scripts/bundle_shapes_model.py": [
        (["runs/m/pipeline"], {"pipeline": Path("runs/m/pipeline")}),
        (["runs/m/pipeline", "--output", "out/bundle"], {"output": Path("out/bundle")}),
    ],
}

# command lines each parser must refuse (exit status 2, before any work)
REJECTED: dict[str, list[list[str]]] = {
    "benchmarks/bench_clip_step.py": [
        ["--device", "tpu"],
        ["--mixed-precision", "fp8"],
        ["--batch", "x"],
        ["--peer", "timm"],
        ["--peak-tflops", "fast"],
    ],
    "benchmarks/bench_cold_start.py": [["--repeats", "x"], ["--steps", "2.5"]],
    "benchmarks/bench_load.py": [["--rows", "sd3-small"], ["--repeats", "x"]],
    "benchmarks/bench_tokenizer_copy.py": [["--repeats", "x"]],
    "benchmarks/bench_compel_syntax.py": [["--max-depth", "x"], ["--repeats", "1.5"]],
    "benchmarks/bench_infotext.py": [["--repeats", "x"]],
    "benchmarks/bench_lora_tags.py": [["--steps", "x"], ["--repeats", "1.5"]],
    "benchmarks/bench_pipeline.py": [
        ["--size", "huge"],
        ["--dtype", "int8"],
        ["--family", "sd3"],
        ["--sdxl-size", "sd15"],
    ],
    "benchmarks/bench_train_diffusion.py": [
        ["--batch", "x"],
        ["--lr", "fast"],
        ["--size", "sdxl"],
        ["--mixed-precision", "fp8"],
    ],
    "benchmarks/bench_quantized_encoder.py": [["--variants", "int4"], ["--repeats", "x"]],
    "benchmarks/make_suites.py": [["--check", "--output-dir", "out/suites"]],
    "benchmarks/reliability.py": [["--only", "everything"], ["--kills", "x"]],
    "benchmarks/shapes_model_position_probe.py": [
        ["--model", "no-name"],
        ["--timesteps", "1000"],
        ["--timesteps", "a"],
    ],
    "scripts/bundle_shapes_model.py": [[]],
}

# script -> (argv that reaches the defaults, the attributes that name files or folders it writes)
OUTPUT_DEFAULTS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "benchmarks/bench_clip_step.py": ([], ("output",)),
    "benchmarks/bench_cold_start.py": ([], ("output",)),
    "benchmarks/bench_compel_syntax.py": ([], ("output",)),
    "benchmarks/bench_conditioner.py": ([], ("output",)),
    "benchmarks/bench_load.py": ([], ("output",)),
    "benchmarks/bench_infotext.py": ([], ("output",)),
    "benchmarks/bench_lora_tags.py": ([], ("output",)),
    "benchmarks/bench_pipeline.py": ([], ("output",)),
    "benchmarks/bench_prompt_language.py": ([], ("output",)),
    "benchmarks/bench_tokenizer_copy.py": ([], ("output",)),
    "benchmarks/bench_train_diffusion.py": ([], ("output", "work_dir")),
    "benchmarks/bench_quantized_encoder.py": ([], ("output",)),
    "benchmarks/clip_tiny_shapes.py": ([], ("output",)),
    "benchmarks/make_suites.py": ([], ("output_dir",)),
    "benchmarks/peer_differences.py": ([], ("output",)),
    "benchmarks/prompt_language_grid.py": ([], ("output",)),
    "benchmarks/reliability.py": ([], ("output", "work_dir")),
    "benchmarks/shapes_model_judge.py": ([], ("output", "grid")),
    "benchmarks/shapes_model_position_probe.py": ([], ()),  # prints; writes only an explicit --output
    "benchmarks/text_tower_relations.py": ([], ("output",)),
    "scripts/bundle_shapes_model.py": (["runs/m/pipeline"], ("output",)),
}

_LOADED: dict[str, ModuleType] = {}


def load_script(relative: str) -> ModuleType:
    """Import a script as a module (nothing runs: each one only acts under `__main__`), with its
    folder on sys.path for its sibling imports, as `python benchmarks/x.py` has it."""
    if relative not in _LOADED:
        path = REPO / relative
        sys.path.insert(0, str(path.parent))
        try:
            spec = importlib.util.spec_from_file_location(f"_cli_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        _LOADED[relative] = module
    return _LOADED[relative]


def option_strings(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}


def test_the_tables_cover_every_script() -> None:
    assert len(SCRIPTS) == 21
    assert set(COMMAND_LINES) == set(SCRIPTS) == set(OUTPUT_DEFAULTS)
    assert set(REJECTED) <= set(SCRIPTS)


@pytest.fixture(scope="module")
def help_texts() -> dict[str, subprocess.CompletedProcess]:
    # all at once: most of the time is each interpreter importing torch
    running = {
        script: subprocess.Popen(
            [sys.executable, str(REPO / script), "--help"], cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for script in SCRIPTS
    }
    done = {}
    for script, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        done[script] = subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(), stderr.decode())
    return done


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_and_lists_every_flag(script: str, help_texts) -> None:
    result = help_texts[script]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    parser = load_script(script).build_parser()
    shown = {o for a in parser._actions if a.help != "==SUPPRESS==" for o in a.option_strings} - {"-h", "--help"}
    for option in shown:
        assert option in result.stdout, option


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_parses_as_documented(script: str) -> None:
    parser = load_script(script).build_parser()
    used = set()
    for argv, expected in COMMAND_LINES[script]:
        parsed = vars(parser.parse_args(argv))
        assert {key: parsed[key] for key in expected} == expected, argv
        used |= {item.split("=", 1)[0] for item in argv if item.startswith("--")}
    assert option_strings(parser) <= used, f"flags without a command line here: {option_strings(parser) - used}"
    for argv in REJECTED.get(script, []):
        with pytest.raises(SystemExit) as refused:
            parser.parse_args(argv)
        assert refused.value.code == 2, argv


@pytest.mark.parametrize("script", SCRIPTS)
def test_default_outputs_lie_under_runs(script: str) -> None:
    argv, attributes = OUTPUT_DEFAULTS[script]
    parsed = load_script(script).build_parser().parse_args(argv)
    for attribute in attributes:
        path = Path(getattr(parsed, attribute)).resolve()
        assert path.is_relative_to(REPO / "runs"), f"{script} --{attribute} defaults to {path}"
    assert "runs/" in (REPO / ".gitignore").read_text().splitlines()


def test_clip_step_workers_get_the_settings_but_not_the_output(tmp_path, monkeypatch) -> None:
    # Regression: the parent dropped "--output" from its argv but forwarded the path after it, and
    # each worker died on "unrecognized arguments". The workers' parser sees their command here.
    module = load_script("benchmarks/bench_clip_step.py")
    workers = []

    def fake_run(command, **kwargs):
        worker = module.build_parser().parse_args(command[2:])
        workers.append(worker)
        speed, memory = (100.0, 30.0) if worker.side == "ours" else (50.0, 60.0)
        result = {"samples_per_second": speed, "peak_rss_increase_mib": memory, "weights_mib": 6.0, "peak_reset": True}
        result |= {"parameters": 1000, "flops_per_sample": 3e9}
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(result) + "\n", stderr="")

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    output = tmp_path / "nested" / "clip_step.md"
    argv = ["--output", str(output), "--repeats", "2", "--batch", "8", "--seq", "12"]
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks/bench_clip_step.py"), *argv])
    module.main()
    assert [worker.side for worker in workers] == ["ours", "peer", "peer", "ours"]  # sides alternate
    assert all((worker.batch, worker.seq) == (8, 12) and worker.output != output for worker in workers)
    table = output.read_text()
    assert "ratio ours/peer: **2.000**" in table and "training memory ratio: **0.500**" in table
    assert f"--output {output}" in table  # the command is recorded with the result
    assert "| ours | 100.0 | 30.0 | 6.0 | 3 | 0.3 |" in table  # 3 GFLOP x 100 samples/s
    assert "MFU" not in table  # no peak on the CPU unless given


def test_train_diffusion_sides_read_the_manifest_in_the_same_order(tmp_path) -> None:
    """Ours must not shuffle: the peer reads the manifest in order, and the loss tables compare
    the two sides step by step on the same samples (ours shuffled by default until 2026-11-30)."""
    module = load_script("benchmarks/bench_train_diffusion.py")
    args = module.build_parser().parse_args([])
    for embeddings in (None, tmp_path / "embeddings"):
        config = module.our_config(args, tmp_path / "sd", tmp_path / "manifest.jsonl", tmp_path / "run", embeddings)
        assert config.data.shuffle is False


def test_clip_step_mfu_is_counted_flops_times_throughput_over_the_peak() -> None:
    module = load_script("benchmarks/bench_clip_step.py")
    args = module.build_parser().parse_args(["--peer", "open_clip", "--device", "cuda", "--mixed-precision", "bf16"])
    side = {"peak_rss_increase_mib": 1.0, "weights_mib": 1.0, "peak_reset": True, "parameters": 7}
    side |= {"peak_gpu_increase_mib": 1.0, "device_name": "NVIDIA H200"}
    runs = {
        "ours": [side | {"samples_per_second": 2000.0, "flops_per_sample": 4.4e10}],
        "peer": [side | {"samples_per_second": 1000.0, "flops_per_sample": 4.4e10}],
    }
    table = "\n".join(module.report(args, runs, ""))
    assert "MFU against 989.4 TFLOP/s" in table  # the H200's data-sheet bf16 figure
    assert "| 88 | 8.9% |" in table and "| 44 | 4.4% |" in table  # 4.4e10 * 2000 = 88 TFLOP/s
    assert "open_clip's own training loop" in table and "goal >= 1.1" in table
    args.mixed_precision = "no"  # float32 on a GPU: no tensor-core figure applies unless given
    assert "MFU" not in "\n".join(module.report(args, runs, ""))
    args.peak_tflops = 100.0
    assert "| 88 | 88.0% |" in "\n".join(module.report(args, runs, ""))


def test_clip_step_builds_open_clips_own_vit_b_32_from_our_config() -> None:
    # open_clip's model_configs/ViT-B-32-quickgelu.json (open_clip_torch 3.3), with the defaults of
    # its CLIPVisionCfg (head_width 64, mlp_ratio 4) and CLIPTextCfg (mlp_ratio 4) written out
    import yaml

    from clipcond.models import model_config_from_dict

    module = load_script("benchmarks/bench_clip_step.py")
    config = model_config_from_dict(yaml.safe_load((REPO / "configs/models/clip-vit-b-32.yaml").read_text()))
    assert module.open_clip_sizes(config) == {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 224,
            "layers": 12,
            "width": 768,
            "patch_size": 32,
            "head_width": 64,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 512,
            "heads": 8,
            "layers": 12,
            "mlp_ratio": 4.0,
        },
    }


def test_median_seconds_rotates_the_order() -> None:
    median_seconds = load_script("benchmarks/median_timing.py").median_seconds
    calls = []

    def timed(side: str) -> float:
        calls.append(side)
        return {"a": 1.0, "b": 2.0, "c": 3.0}[side] * len(calls)

    median = median_seconds([("a", "a"), ("b", "b"), ("c", "c")], timed, 3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert median == {"a": 6.0, "b": 8.0, "c": 15.0}  # a at calls 1, 6, 8; b at 2, 4, 9; c at 3, 5, 7
    with pytest.raises(ValueError, match="repeats"):
        median_seconds([("a", "a")], timed, 0)


def test_conditioner_sides_alternate_and_outputs_are_compared() -> None:
    import torch

    module = load_script("benchmarks/bench_conditioner.py")
    calls = []
    module.compare(lambda: calls.append("ours"), lambda: calls.append("peer"), repeats=3, warmup=1)
    assert calls == ["ours", "peer", "ours", "peer", "peer", "ours", "ours", "peer"]
    a = torch.zeros(2, 3)
    assert module.outputs_note(a, a.clone()).startswith("equal")
    assert module.outputs_note(a, a + 0.5) == "DIFFER: max abs diff 5.0e-01"
    assert module.outputs_note(a, torch.zeros(2, 4), "another formula").startswith("differ by design (another formula)")


def test_bundle_refuses_to_replace_a_folder_that_is_not_a_pipeline(tmp_path) -> None:
    module = load_script("scripts/bundle_shapes_model.py")
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("{}")
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as refused:
        module.main([str(pipeline), "--output", str(precious)])
    assert refused.value.code == 2
    assert (precious / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_clip_step_runs_end_to_end_with_a_separate_output_value(tmp_path) -> None:
    output = tmp_path / "clip_step.md"
    command = [sys.executable, str(REPO / "benchmarks/bench_clip_step.py"), "--model"]
    command += [str(REPO / "configs/models/clip-tiny-vit.yaml"), "--batch", "4", "--steps", "1", "--warmup", "0"]
    command += ["--repeats", "1", "--output", str(output)]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    assert "| ours |" in output.read_text() and "| peer |" in output.read_text()
