"""Memory, time and fidelity of a T5 text encoder in float32, bfloat16 and torchao int8.

A randomly initialised T5 encoder of T5-v1.1-base shape (d_model 768, d_ff 2048, gated GELU,
12 layers, 12 heads, vocabulary 32128; built from its config, nothing downloaded) is saved
once in float32 and loaded back through transformers in each variant:

    fp32        dtype=torch.float32
    bf16        dtype=torch.bfloat16
    int8        dtype=torch.float32 + TorchAoConfig(Int8WeightOnlyConfig())
    int8-bf16   dtype=torch.bfloat16 + TorchAoConfig(Int8WeightOnlyConfig())

Memory is measured per variant in its own Python process, so that one's memory does not count
for another: the resident set read from /proc/self/status, `VmRSS` after the imports (the
base), after loading and after one encode, and `VmHWM` (the peak resident set of the process)
at the end, each less the base; `weights` is the bytes of the stored tensors (quantized ones by
their inner tensors, `clipcond.fingerprint.stored_tensors`). The resident set of two identical
processes differs by up to half (how much freed memory the allocator keeps), so each variant
runs in `MEMORY_RUNS` fresh processes, in rounds whose order rotates, and each figure is their
median with the range. Time: all variants loaded in one
process, `TextConditioner.encode` (cache off, PixArt recipe: T5 only, 120 tokens, attention
mask) on a batch of prompts, medians of `--repeats` rounds whose order rotates. Fidelity is the
cosine between each variant's token states and float32's, per token over the unmasked tokens
(mean and minimum).

    python benchmarks/bench_quantized_encoder.py --repeats 10 --output benchmarks/results/quantized_encoder.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_paths import default_output, write_result  # noqa: E402

VARIANTS = ("fp32", "bf16", "int8", "int8-bf16")
MEMORY_RUNS = 3  # fresh processes per variant for the memory figures
MEMORY_FIGURES = ("loaded_mib", "encoded_mib", "peak_mib")
PROMPTS = [
    "a photo of a red circle to the left of a blue square on a wooden table, soft light",
    "an astronaut riding a horse on the moon, (detailed:1.2) oil painting, [blurry]",
    "a lighthouse at dusk above the sea, two small boats below it, warm colours",
    "three green triangles next to a large yellow star, flat vector illustration",
]


def t5_v11_base_config():
    """The shape of google/t5-v1_1-base's encoder (its config.json, read by hand)."""
    from transformers import T5Config

    return T5Config(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def prepare(folder: Path) -> None:
    """Save the random float32 encoder and a T5-style tokenizer (trained on the prompts) in `folder`."""
    import torch
    from transformers import T5EncoderModel

    from clipcond.training.t5.tokenizer import train_t5_tokenizer

    torch.manual_seed(0)
    T5EncoderModel(t5_v11_base_config()).eval().save_pretrained(folder)
    words = " ".join(PROMPTS).replace(",", " ").split()
    train_t5_tokenizer([*PROMPTS, *words], vocab_size=200, sentinels=0, model_max_length=512).save_pretrained(folder)


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def load(variant: str, folder: Path):
    """The encoder of `variant` loaded from `folder` as a user would, and its tokenizer."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    dtype = torch.bfloat16 if variant.endswith("bf16") else torch.float32
    kwargs = {}
    if "int8" in variant:
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        kwargs["quantization_config"] = TorchAoConfig(quant_type=Int8WeightOnlyConfig())
    model = T5EncoderModel.from_pretrained(folder, dtype=dtype, device_map="cpu", **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def measure_memory(variant: str, folder: Path, states_path: Path) -> dict:
    """Load `variant` and encode the prompts once in this (fresh) process; save the token
    states to `states_path`; the memory figures as a dict."""
    import torch
    import torchao  # noqa: F401 (imported by every variant, so that the bases agree)

    from clipcond import TextConditioner
    from clipcond.fingerprint import stored_tensors

    base = _resident_kib("VmRSS")
    model, tokenizer = load(variant, folder)
    loaded = _resident_kib("VmRSS")
    parts = {
        id(part): part
        for name, tensor in model.state_dict(keep_vars=True).items()
        for _, part in stored_tensors(name, tensor)
    }  # by object: the tied embedding (`shared`, `encoder.embed_tokens`) once
    weights = sum(part.numel() * part.element_size() for part in parts.values())
    embeds = TextConditioner("pixart", t5=(model, tokenizer), cache_size=0).encode(PROMPTS)
    torch.save({"tokens": embeds.tokens.float(), "mask": embeds.mask}, states_path)
    return {
        "variant": variant,
        "weights_mib": weights / 2**20,
        "loaded_mib": (loaded - base) / 1024,
        "encoded_mib": (_resident_kib("VmRSS") - base) / 1024,
        "peak_mib": (_resident_kib("VmHWM") - base) / 1024,
    }


def measure_in_children(variants: list[str], folder: Path, scratch: Path) -> tuple[dict, dict, bool]:
    """`measure_memory` of each variant in `MEMORY_RUNS` child processes, in rounds whose order
    rotates. Returns ({variant: [row per run]}, {variant: token states of the first run},
    whether every run of a variant gave the same token states)."""
    import torch

    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    states: dict[str, dict] = {}
    same = True
    for run in range(MEMORY_RUNS):
        shift = run % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            path = scratch / f"{variant}-{run}.pt"
            child = [sys.executable, __file__, "--measure", variant, "--folder", str(folder), "--states", str(path)]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(runs[variant][-1], flush=True)
            found = torch.load(path)
            first = states.setdefault(variant, found)
            same = same and torch.equal(found["tokens"], first["tokens"])
    return runs, states, same


def memory_summary(runs: list[dict]) -> dict:
    """One variant's runs as one row: `weights_mib` (the same in every run), and each of
    `MEMORY_FIGURES` as (median, min, max)."""
    weights = {round(run["weights_mib"], 3) for run in runs}
    if len(weights) != 1:
        raise SystemExit(f"stored weights differ between runs of {runs[0]['variant']}: {sorted(weights)} MiB")
    row = {"variant": runs[0]["variant"], "weights_mib": runs[0]["weights_mib"]}
    for figure in MEMORY_FIGURES:
        values = [run[figure] for run in runs]
        row[figure] = (statistics.median(values), min(values), max(values))
    return row


def encode_times(variants: list[str], folder: Path, repeats: int) -> dict[str, float]:
    """Median seconds of one `encode` of the prompts per variant, all loaded in this process and
    timed in rounds whose order rotates (`median_timing.median_seconds`)."""
    from median_timing import median_seconds

    from clipcond import TextConditioner

    sides = []
    for variant in variants:
        model, tokenizer = load(variant, folder)
        conditioner = TextConditioner("pixart", t5=(model, tokenizer), cache_size=0)
        conditioner.encode(PROMPTS)  # warm-up
        sides.append((variant, conditioner))

    def timed(conditioner) -> float:
        start = time.perf_counter()
        conditioner.encode(PROMPTS)
        return time.perf_counter() - start

    return median_seconds(sides, timed, repeats)


def token_cosines(states: dict, reference: dict) -> tuple[float, float]:
    """(mean, min) cosine between the unmasked token states of `states` and `reference`."""
    import torch

    keep = reference["mask"].bool()  # (batch, length)
    cosine = torch.nn.functional.cosine_similarity(states["tokens"].double(), reference["tokens"].double(), dim=-1)
    chosen = cosine[keep]
    return float(chosen.mean()), float(chosen.min())


def table_row(row: dict, times: dict[str, float], cosine: tuple[float, float]) -> str:
    """One variant's line of the table: `row` from `memory_summary` (each memory figure as its
    median and range), its encode time and ratio to float32's, its (mean, min) cosine."""
    variant = row["variant"]
    memory = " | ".join(
        f"{median:.1f} ({least:.0f}-{most:.0f})" for median, least, most in map(row.get, MEMORY_FIGURES)
    )
    return (
        f"| {variant} | {row['weights_mib']:.1f} | {memory} | {1000 * times[variant]:.1f} | "
        f"{times[variant] / times['fp32']:.3f} | {cosine[0]:.6f} | {cosine[1]:.6f} |"
    )


def report(
    rows: list[dict],
    times: dict[str, float],
    cosines: dict[str, tuple[float, float]],
    same_states: bool,
    repeats: int,
    command: str,
) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    import torch
    import torchao
    import transformers

    lines = [
        "# Quantized T5 encoder: memory, time and fidelity",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(torch threads {torch.get_num_threads()}), load average {load[0]:.1f} / {load[1]:.1f} at the end; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, torchao {torchao.__version__}; {now}.",
        "",
        "A random T5 encoder of T5-v1.1-base shape (768 wide, d_ff 2048 gated GELU, 12 layers, 12 heads, "
        "vocabulary 32128: 110M parameters, the embedding counted once), saved in float32 and loaded through "
        f"transformers. Memory, per variant in {MEMORY_RUNS} fresh processes (/proc/self/status, less `VmRSS` "
        "after the imports), the median and (in brackets) the range: `resident after load` and `after encode` "
        "are `VmRSS` after `from_pretrained` and after one encode, `peak` is `VmHWM` (the process's peak "
        "resident set) at the end; `weights`: bytes of the stored "
        "tensors (quantized ones by their inner tensors, the tied embedding once). float32 weights are "
        "memory-mapped from the safetensors file, so they count as resident only once touched (the embedding "
        "rows of unused tokens never are). `encode`: median seconds of "
        f"`TextConditioner.encode` on {len(PROMPTS)} prompts (PixArt recipe: 120 T5 tokens, mask; cache off), "
        f"all variants loaded in one process and timed in {repeats} rounds whose order rotates. `cosine`: per "
        "token against float32, over the unmasked tokens (token states "
        + ("identical" if same_states else "NOT identical")
        + f" in the {MEMORY_RUNS} processes of each variant).",
        "",
        "| variant | weights (MiB) | resident after load (MiB) | after encode (MiB) | peak (MiB) | encode (ms) | vs fp32 | cosine vs fp32, mean | min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [table_row(row, times, cosines[row["variant"]]) for row in rows]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The options of the benchmark (and the hidden ones of its per-variant child processes)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timing rounds, each encodes once per variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="what to compare")
    parser.add_argument(
        "--output", type=Path, default=default_output("quantized_encoder.md"), help="markdown table to write"
    )
    parser.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--states", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.measure:
        print(json.dumps(measure_memory(args.measure, args.folder, args.states)))
        return 0
    if "fp32" not in args.variants:
        parser.error("--variants must include fp32, the reference of the cosines")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "t5"
        prepare(folder)
        runs, states, same_states = measure_in_children(args.variants, folder, Path(scratch))
        rows = [memory_summary(runs[variant]) for variant in args.variants]
        cosines = {variant: token_cosines(states[variant], states["fp32"]) for variant in args.variants}
        times = encode_times(args.variants, folder, args.repeats)
        print(times, flush=True)
    command = "python benchmarks/bench_quantized_encoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(rows, times, cosines, same_states, args.repeats, command.strip())
    print(f"wrote {write_result(args.output, text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
