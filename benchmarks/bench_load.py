"""Time to load a saved pipeline folder: `CLIPConditionedPipeline.from_pretrained` /
diffusers' `StableDiffusionPipeline.from_pretrained` (and `StableDiffusionXLPipeline`'s) on the
very same folder, saved by diffusers' pipeline as the hub's folders are.

Our load does what diffusers' does and, before it, checks the folder (`saved_folder_checks`:
`model_index.json`, every JSON file a component's loader reads, the header of every
safetensors file of the weights variant asked for, a slow tokenizer's `merges.txt` against its
`vocab.json`, a CLIP, T5 or tokenizers-backed tokenizer's vocabulary files, and the BPE tables
of each CLIP tokenizer, from its `tokenizer.json` or else its `vocab.json` and `merges.txt`:
`clipcond.bpe_tables`) and, after it, the BPE tables of a loaded tokenizer whose tables that
check did not read (none in these folders). Those checks cost about the same on any folder (the tokenizer files are CLIP's whole vocabulary
whatever the model's size), so the ratio is largest on small models; the rows give both ends:

- `small`: `bench_pipeline.py`'s CPU-sized SD and SDXL components (random weights);
- `sd15`: Stable Diffusion 1.5's shapes (860M-parameter UNet, its VAE, the ViT-L/14 text
  encoder; random weights), saved as float16 (the hub's `fp16` variant) and loaded with
  `variant="fp16", torch_dtype=torch.float16`, about 2 GB on disk.

Each folder is timed in two layouts: as saved (transformers 5 writes each tokenizer's
`tokenizer.json` beside `vocab.json` and `merges.txt`, and a fast tokenizer reads it alone) and
as the hub's Stable Diffusion 1.5 and SDXL folders hold their tokenizers (`vocab.json` and
`merges.txt` only: the tokenizer is built from them). A folder is saved once per row; each
round loads it with each side once (the order rotates, `median_timing`), after one untimed
load per side so that both read it from the page cache. Also given: the seconds of the checks
alone (`check_pipeline_folder` on the folder, and the BPE check of the loaded tokenizers that
`from_pretrained` checks after the load), measured the same way.

    python benchmarks/bench_load.py --repeats 7                    # writes runs/benchmarks/load.md
    python benchmarks/bench_load.py --repeats 7 --output benchmarks/results/load.md
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

from median_timing import median_seconds
from result_paths import add_output_argument, write_result


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed loads per side and row (default 7)")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=["sd-small", "sdxl-small", "sd-sd15"],
        default=["sd-small", "sdxl-small", "sd-sd15"],
        help="which folders (default: all three)",
    )
    add_output_argument(parser, "load.md", "table")
    return parser


def saved_folder(row: str, root: Path) -> tuple[Path, type, dict]:
    """Save `row`'s pipeline with diffusers' own class into `root`; returns (the folder, that
    class, the `from_pretrained` keywords both sides load it with)."""
    import torch
    from bench_pipeline import components, sdxl_components
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family, size = row.split("-")
    folder = root / row
    if family == "sdxl":
        peer_class = StableDiffusionXLPipeline
        pipe = peer_class(**sdxl_components("small"))
    else:
        peer_class = StableDiffusionPipeline
        pipe = peer_class(
            **components(size), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    if size == "sd15":
        pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
        return folder, peer_class, {"variant": "fp16", "torch_dtype": torch.float16}
    pipe.save_pretrained(folder)
    return folder, peer_class, {}


def load_rows(row: str, repeats: int) -> list[str]:
    """The table rows of one folder, as saved and with the hub's tokenizer files."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the peer's notes on our config keys: none, it saved the folder
    with tempfile.TemporaryDirectory(prefix="bench_load_") as root:
        folder, peer_class, kwargs = saved_folder(row, Path(root))
        lines = [layout_row(f"{row}, as saved", folder, peer_class, kwargs, repeats)]
        for tokenizer_file in folder.glob("tokenizer*/tokenizer.json"):
            tokenizer_file.unlink()
        lines.append(layout_row(f"{row}, hub tokenizers", folder, peer_class, kwargs, repeats))
    return lines


def layout_row(name: str, folder: Path, peer_class: type, kwargs: dict, repeats: int) -> str:
    """The table row of `folder` as it is now: seconds per load of each side, the ratio, the
    difference and the checks' seconds."""
    from clipcond import CLIPConditionedPipeline
    from clipcond.bpe_tables import check_bpe_tables
    from clipcond.file_damage import bpe_tables_read
    from clipcond.pipelines.saved_folder_checks import check_pipeline_folder

    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())

    def timed_load(side: type) -> float:
        gc.collect()
        start = time.perf_counter()
        pipe = side.from_pretrained(folder, **kwargs)
        seconds = time.perf_counter() - start
        del pipe
        return seconds

    sides = [("ours", CLIPConditionedPipeline), ("peer", peer_class)]
    for _, side in sides:  # untimed: the files in the page cache for both
        timed_load(side)
    median = median_seconds(sides, timed_load, repeats)

    components = CLIPConditionedPipeline._get_signature_keys(CLIPConditionedPipeline)[0]
    loaded = peer_class.from_pretrained(folder, **kwargs)
    tokenizers = [  # those checked after the load: those the folder check read the tables of are not
        getattr(loaded, name)
        for name in ("tokenizer", "tokenizer_2")
        if getattr(loaded, name, None) and not bpe_tables_read(folder / name)
    ]

    def timed_checks(part: str) -> float:
        start = time.perf_counter()
        if part == "folder":
            check_pipeline_folder(folder, components, variant=kwargs.get("variant"))
        else:
            for tokenizer in tokenizers:
                check_bpe_tables(tokenizer, "benchmark")
        return time.perf_counter() - start

    checks = median_seconds([("folder", "folder"), ("bpe", "bpe")], timed_checks, repeats)
    ours, peer = median["ours"], median["peer"]
    return (
        f"| {name} ({size / 2**20:,.1f} MiB) | {ours:.3f} | {peer:.3f} | **{ours / peer:.3f}** | {ours - peer:+.3f} "
        f"| {checks['folder']:.3f} | {checks['bpe']:.3f} ({len(tokenizers)}) |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    load_before = os.getloadavg()[0]
    rows = [line for row in args.rows for line in load_rows(row, args.repeats)]
    lines = [
        "# Loading a saved pipeline folder: ours / diffusers'",
        "",
        f"`python benchmarks/bench_load.py --repeats {args.repeats}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{os.cpu_count()} CPU cores, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after)",
        "",
        "Median seconds of `from_pretrained` over rounds whose order rotates, the folder saved by diffusers' pipeline "
        "and read from the page cache. The last two columns time our checks alone: the folder's files "
        "(`check_pipeline_folder`, which reads the BPE tables of each CLIP tokenizer, from its tokenizer.json or else "
        "its vocab.json and merges.txt) and the BPE tables of the loaded tokenizers checked after the load, those whose "
        "tables the folder check did not read (their count in brackets).",
        "",
        "| folder | ours s | diffusers s | ours / diffusers | difference s | folder check s | BPE check s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    print(f"wrote {write_result(args.output, text)}")


if __name__ == "__main__":
    main()
