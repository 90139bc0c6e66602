"""Training throughput and peak memory of our contrastive step against transformers' CLIPModel.

Both sides train the same network from the same weights on the same batches:

- ours: `clipcond.training.clip_loop.ContrastiveStep` (the loop's own step: ContrastiveModel,
  `clip_loss`, AdamW without decay on gains/biases/temperature, fused kernel, warm-up+cosine);
- peer: `transformers.CLIPModel(return_loss=True)` + `torch.optim.AdamW` (defaults), the
  usual hand-written loop.

Each measurement runs in a fresh process (so peak RSS belongs to one side only), sides
alternate, and the median of the repeats is reported as a ratio ours / peer.

    python benchmarks/bench_clip_step.py                 # CPU, the default size
    python benchmarks/bench_clip_step.py --device cuda --model configs/models/clip-vit-b-32.yaml \
        --batch 256 --mixed-precision bf16               # when a GPU is lent
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
    """Train `args.steps` steps on one side and report samples/s and peak memory."""
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
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_config = TrainClipConfig(model="-", steps=args.warmup + args.steps, warmup_steps=10, lr=1e-4)

    if args.side == "ours":
        accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
        model = ContrastiveModel(clip).train()
        optimizer, scheduler = make_optimizer(model, run_config)
        prepared, optimizer = accelerator.prepare(model, optimizer)
        step = ContrastiveStep(accelerator, prepared, optimizer, scheduler)

        def train_step(batch):
            loss = step.backward(batch)
            step.update()
            return loss
    else:
        peer: CLIPModel = build_clip_model(model_config)
        peer.load_state_dict(clip.clip_state_dict())
        peer.to(device).train()
        optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)

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
        "final_loss": float(loss),
    }
    if args.device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model YAML (default: a 256-wide, 4-layer ViT CLIP at 64 px)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=20, help="caption length in tokens")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--side", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "clip_step.md"))
    args = parser.parse_args()
    if args.side:
        print(json.dumps(worker(args)))
        return

    forwarded = [a for a in sys.argv[1:] if not a.startswith("--output")]
    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for repeat in range(args.repeats):
        for side in ("ours", "peer") if repeat % 2 == 0 else ("peer", "ours"):
            out = subprocess.run(
                [sys.executable, __file__, *forwarded, "--side", side], capture_output=True, text=True, check=True
            )
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(side, runs[side][-1], flush=True)
    median = {
        side: {
            key: statistics.median(r[key] for r in results) for key in ("samples_per_second", "peak_rss_increase_mib")
        }
        for side, results in runs.items()
    }
    speed_ratio = median["ours"]["samples_per_second"] / median["peer"]["samples_per_second"]
    memory_ratio = median["ours"]["peak_rss_increase_mib"] / median["peer"]["peak_rss_increase_mib"]
    lines = [
        "# Contrastive training step: clipcond vs transformers CLIPModel(return_loss=True) + AdamW",
        "",
        f"device {args.device}, mixed precision {args.mixed_precision}, batch {args.batch}, caption {args.seq} tokens, "
        f"{args.steps} timed steps after {args.warmup} warm-up, median of {args.repeats} fresh processes per side",
        f"model: {args.model or 'default (ViT 256 wide, 4 layers, 64 px, patch 8; text 256 wide, 4 layers)'}",
        "",
        "| side | samples/s | peak RSS increase (MiB) |",
        "|---|---|---|",
        *(
            f"| {side} | {m['samples_per_second']:.1f} | {m['peak_rss_increase_mib']:.1f} |"
            for side, m in median.items()
        ),
        "",
        f"samples/s ratio ours/peer: **{speed_ratio:.3f}** (goal >= 1.0); peak memory ratio: **{memory_ratio:.3f}** (goal <= 1.0)",
        "",
    ]
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
