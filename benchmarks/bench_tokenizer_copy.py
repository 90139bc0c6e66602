"""Time of `copy.deepcopy` of clipcond's CLIP tokenizer against that of transformers' own
`CLIPTokenizer` built from the same vocabulary and merges (the peer: what a pipeline holding a
plain transformers tokenizer copies), in the same process.

Each round copies each side once (the order rotates, `median_timing`) after one untimed copy per
side; the ratio is ours / transformers'. Both copies tokenize the same; ours also decodes as the
original does (`clipcond.tokenizer_copy`).

    python benchmarks/bench_tokenizer_copy.py --repeats 21       # writes runs/benchmarks/tokenizer_copy.md
    python benchmarks/bench_tokenizer_copy.py --repeats 21 --output benchmarks/results/tokenizer_copy.md
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from median_timing import median_seconds
from result_paths import default_output, write_result


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21, help="timed copies per side (default 21)")
    parser.add_argument(
        "--output",
        type=Path,
        default=default_output("tokenizer_copy.md"),
        help="the markdown table (default: runs/benchmarks/tokenizer_copy.md)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers import CLIPTokenizer

    from clipcond.tokenization import clip_tokenizer, load_clip_bpe

    vocab, merges = load_clip_bpe()
    sides = [("clipcond", clip_tokenizer()), ("transformers", CLIPTokenizer(vocab=vocab, merges=list(merges)))]
    prompt = "a photo of an astronaut riding a horse on mars"
    assert sides[0][1](prompt).input_ids == sides[1][1](prompt).input_ids

    def timed(tokenizer) -> float:
        start = time.perf_counter()
        copy.deepcopy(tokenizer)
        return time.perf_counter() - start

    for _, tokenizer in sides:
        timed(tokenizer)
    seconds = median_seconds(sides, timed, args.repeats)
    ratio = seconds["clipcond"] / seconds["transformers"]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# copy.deepcopy of a CLIP tokenizer ({when}, {os.cpu_count()} CPU cores, median of {args.repeats})\n\n"
        "| side | seconds |\n|---|---|\n"
        f"| clipcond `clip_tokenizer()` | {seconds['clipcond']:.4f} |\n"
        f"| transformers `CLIPTokenizer` (same vocabulary) | {seconds['transformers']:.4f} |\n\n"
        f"ours / transformers': **{ratio:.2f}**\n"
    )
    print(text)
    write_result(args.output, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
