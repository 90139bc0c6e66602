"""benchmarks/bench_quantized_encoder.py's memory figures: each variant runs in several fresh
processes (their resident sets differ by up to half between identical runs), in rounds whose
order rotates, and the table gives the median with the range. The children are faked here:
what is tested is how their rows become the table, not the measurement."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "_bench_quantized_memory", REPO / "benchmarks/bench_quantized_encoder.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_each_variant_runs_in_several_children_and_the_table_gives_median_and_range(tmp_path, monkeypatch) -> None:
    bench = load_benchmark()
    calls: list[str] = []
    resident = {"fp32": [100.0, 160.0, 110.0], "int8": [500.0, 800.0, 520.0]}  # per run, as measured

    def fake_run(command, **kwargs):
        parsed = bench.build_parser().parse_args(command[2:])
        run = sum(variant == parsed.measure for variant in calls)
        calls.append(parsed.measure)
        torch.save({"tokens": torch.ones(1, 2, 3), "mask": torch.ones(1, 2)}, parsed.states)
        value = resident[parsed.measure][run]
        row = {"variant": parsed.measure, "weights_mib": 7.0, "loaded_mib": value}
        row |= {"encoded_mib": value + 1, "peak_mib": value + 2}
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(row) + "\n", stderr="")

    with monkeypatch.context() as patched:
        patched.setattr(bench.subprocess, "run", fake_run)
        runs, states, same = bench.measure_in_children(["fp32", "int8"], tmp_path / "t5", tmp_path)
    assert bench.MEMORY_RUNS == 3
    assert calls == ["fp32", "int8", "int8", "fp32", "fp32", "int8"]  # the order rotates each round
    assert same and torch.equal(states["int8"]["tokens"], torch.ones(1, 2, 3))
    rows = [bench.memory_summary(runs[variant]) for variant in ("fp32", "int8")]
    # median of three: the middle value sorted
    assert rows[1]["loaded_mib"] == (520.0, 500.0, 800.0)
    assert rows[0]["peak_mib"] == (112.0, 102.0, 162.0)
    line = bench.table_row(rows[1], {"fp32": 0.5, "int8": 0.55}, (0.9, 0.8))
    assert (
        line
        == "| int8 | 7.0 | 520.0 (500-800) | 521.0 (501-801) | 522.0 (502-802) | 550.0 | 1.100 | 0.900000 | 0.800000 |"
    )
