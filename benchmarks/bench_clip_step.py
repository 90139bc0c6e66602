"""Training throughput and peak memory of our contrastive step against transformers' CLIPModel.

Both sides train the same network from the same weights on the same batches:

- ours: `clipcond.training.clip.loop.ContrastiveStep` (the loop's own step: ContrastiveModel,
  `clip_loss`, AdamW without decay on gains/biases/temperature, fused kernel, warm-up+cosine);
- peer: `transformers.CLIPModel(return_loss=True)` + `torch.optim.AdamW` (defaults), the
  usual hand-written loop.

Each measurement runs in a fresh process (so peak RSS belongs to one side only), sides
alternate, and the median of the repeats is reported as a ratio ours / peer. Memory is the
training memory: each side reads its baseline after its model is built, on its device, with
its optimizer made (the peer's process also holds the source `ClipTwoTower` its weights are
copied from, kept alive so that no freed memory is reused by training), resets the peak RSS to
it, and reports the peak above it: gradients, optimizer state, activations and temporaries,
not the weights.

    python benchmarks/bench_clip_step.py                 # CPU, the default size; writes runs/benchmarks/clip_step.md
    python benchmarks/bench_clip_step.py --output benchmarks/results/clip_step.md   # update the recorded result
    python benchmarks/bench_clip_step.py --device cuda --model configs/models/clip-vit-b-32.yaml --batch 256 --mixed-precision bf16
                                                         # when a GPU is lent
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from result_paths import default_output, write_result

DEFAULT_MODEL = {
    "embed_dim": 256,
    "text": {"width": 256, "layers": 4, "heads": 4, "context_length": 77},
    "vision": {"kind": "vit", "image_size": 64, "vit": {"patch_size": 8, "width": 256, "layers": 4, "heads": 4}},
}


def _batches(count: int, batch: int, image_size: int, seq: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        ids = torch.randint(1, 49000, (batch, seq), generator=generator)
        ids[:, 0] = 49406
        ids[:, -1] = 49407
        pixels = torch.randn(batch, 3, image_size, image_size, generator=generator)
        yield {"input_ids": ids.to(device), "pixel_values": pixels.to(device)}


def worker(args: argparse.Namespace) -> dict:
    """Train `args.steps` steps on one side and report samples/s and the training memory."""
    import torch
    import yaml
    from accelerate import Accelerator
    from transformers import CLIPModel

    from clipcond.models import ClipTwoTower, build_clip_model, model_config_from_dict
    from clipcond.training.clip.config import TrainClipConfig
    from clipcond.training.clip.loop import ContrastiveStep, make_optimizer
    from clipcond.training.clip.model_setup import ContrastiveModel

    torch.manual_seed(0)
    model_data = yaml.safe_load(Path(args.model).read_text()) if args.model else DEFAULT_MODEL
    model_config = model_config_from_dict(model_data)
    clip = ClipTwoTower(model_config)
    image_size = model_config.vision.image_size
    batches = list(_batches(args.warmup + args.steps, args.batch, image_size, args.seq, "cpu"))
    device = torch.device(args.device)
    run_config = TrainClipConfig(model="-", steps=args.warmup + args.steps, warmup_steps=10, lr=1e-4)

    # 1. each side's model on its device and its optimizer: all before the baseline
    if args.side == "ours":
        accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
        model = ContrastiveModel(clip).train()
        optimizer, scheduler = make_optimizer(model, run_config)
        prepared, optimizer = accelerator.prepare(model, optimizer)
        step = ContrastiveStep(accelerator, prepared, optimizer, scheduler)
        trained = model

        def train_step(batch):
            loss = step.backward(batch)
            step.update()
            return loss
    else:
        peer: CLIPModel = build_clip_model(model_config)
        peer.load_state_dict(clip.clip_state_dict())  # `clip` stays alive: see the module docstring
        peer.to(device).train()
        optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
        trained = peer

        def train_step(batch):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = peer(**batch, return_loss=True).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

    def synchronise():
        if args.device == "cuda":
            torch.cuda.synchronize()

    # 2. the baseline: what the process holds with the model built, before any training
    synchronise()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    peak_reset = reset_peak_rss()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # 3. warm-up and timed steps
    for batch in batches[: args.warmup]:
        train_step({k: v.to(device) for k, v in batch.items()})
    synchronise()
    start = time.perf_counter()
    for batch in batches[args.warmup :]:
        loss = train_step({k: v.to(device) for k, v in batch.items()})
    synchronise()
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    result = {
        "side": args.side,
        "samples_per_second": args.batch * args.steps / elapsed,
        "peak_rss_increase_mib": peak_kib / 1024,
        "weights_mib": sum(p.numel() * p.element_size() for p in trained.parameters()) / 2**20,
        "peak_reset": peak_reset,
        "final_loss": float(loss),
    }
    if args.device == "cuda":
        result["peak_gpu_increase_mib"] = (torch.cuda.max_memory_allocated() - gpu_before) / 2**20
    return result


def reset_peak_rss() -> bool:
    """Lower this process's peak RSS (ru_maxrss) to its current RSS (Linux: /proc/self/clear_refs),
    so a peak reached while building a model (a state-dict conversion, say) cannot hide training
    memory below it. Returns False where the kernel offers no reset; the peak then counts from start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (and of its per-side worker processes)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        help="a ViT CLIP model YAML (the peer, transformers CLIPModel, has no ResNet tower; "
        "default: a 256-wide, 4-layer ViT CLIP at 64 px)",
    )
    parser.add_argument("--batch", type=int, default=64, help="samples per step (default 64)")
    parser.add_argument("--seq", type=int, default=20, help="caption length in tokens (default 20)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per side (default 3)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--side", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--output",
        type=Path,
        default=default_output("clip_step.md"),
        help="the markdown table (default: runs/benchmarks/clip_step.md; "
        "give benchmarks/results/clip_step.md to update the recorded result)",
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject sizes the benchmark cannot run, before any process starts."""
    for name, least in (("batch", 1), ("seq", 2), ("steps", 1), ("repeats", 1)):  # a caption holds bos and eos
        if getattr(args, name) < least:
            parser.error(f"--{name} must be >= {least}, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.model and not Path(args.model).is_file():
        parser.error(f"--model {args.model}: no such file")


def worker_command(args: argparse.Namespace, side: str) -> list[str]:
    """The command line of one side's worker process, rebuilt from the parsed settings (only
    what the worker reads: never the parent's argv, whose flags may take separate values)."""
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        *(["--model", str(args.model)] if args.model else []),
        *("--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)),
        *("--warmup", str(args.warmup), "--device", args.device, "--mixed-precision", args.mixed_precision),
        *("--side", side),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.side:
        print(json.dumps(worker(args)))
        return

    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for repeat in range(args.repeats):
        for side in ("ours", "peer") if repeat % 2 == 0 else ("peer", "ours"):
            out = subprocess.run(worker_command(args, side), capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the {side} worker failed (exit {out.returncode}):\n{out.stderr}")
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(side, runs[side][-1], flush=True)
    keys = ("samples_per_second", "peak_rss_increase_mib", "weights_mib", "peak_gpu_increase_mib")
    median = {
        side: {key: statistics.median(r[key] for r in results) for key in keys if key in results[0]}
        for side, results in runs.items()
    }
    on_gpu = args.device == "cuda"
    gpu_cell = lambda m: f" {m['peak_gpu_increase_mib']:.1f} |" if on_gpu else ""  # noqa: E731
    speed_ratio = median["ours"]["samples_per_second"] / median["peer"]["samples_per_second"]
    memory_ratio = median["ours"]["peak_rss_increase_mib"] / median["peer"]["peak_rss_increase_mib"]
    lines = [
        "# Contrastive training step: clipcond vs transformers CLIPModel(return_loss=True) + AdamW",
        "",
        f"device {args.device}, mixed precision {args.mixed_precision}, batch {args.batch}, caption {args.seq} tokens, "
        f"{args.steps} timed steps after {args.warmup} warm-up, median of {args.repeats} fresh processes per side",
        f"model: {args.model or 'default (ViT 256 wide, 4 layers, 64 px, patch 8; text 256 wide, 4 layers)'}",
        f"command: `python benchmarks/bench_clip_step.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "training memory: peak RSS above each side's baseline, read after its model was built and its optimizer "
        "made, with the peak reset to it"
        + ("" if all(r["peak_reset"] for results in runs.values() for r in results) else " (NOT reset on this system)")
        + " (weights excluded, listed apart)",
        "",
        "| side | samples/s | peak RSS increase while training (MiB) | model weights (MiB) |"
        + (" peak GPU memory increase while training (MiB) |" if on_gpu else ""),
        "|---|---|---|---|" + ("---|" if on_gpu else ""),
        *(
            f"| {side} | {m['samples_per_second']:.1f} | {m['peak_rss_increase_mib']:.1f} | {m['weights_mib']:.1f} |"
            + gpu_cell(m)
            for side, m in median.items()
        ),
        "",
        f"samples/s ratio ours/peer: **{speed_ratio:.3f}** (goal >= 1.0); training memory ratio: **{memory_ratio:.3f}** "
        "(goal <= 1.0)",
        "",
    ]
    write_result(args.output, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
