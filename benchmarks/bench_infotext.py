"""Reading the fields line of a PNG's ``parameters`` text (`generate --parameters-from`): time of
`clipcond.pipelines.png_parameters._field_pairs` against A1111's field pattern searched with
Python's ``re.findall`` (what A1111's reader does), which give the same pairs, as ratios
measured in one run.

    python benchmarks/bench_infotext.py --repeats 5   # writes runs/benchmarks/infotext.md
    python benchmarks/bench_infotext.py --repeats 5 --output benchmarks/results/infotext.md
                                                      # update the recorded result

Lines:

- a typical A1111 fields line (12 fields, 230 characters): the pattern is faster, and both take
  microseconds, nothing beside loading a model;
- lines of ``"a "`` repeated, with no colon (a prompt written on one line without fields, or a
  hostile text), of 2,000 to 16,000 characters: the pattern's search starts at every position
  and runs to the end of the words from each, so its time grows with the square of the length;
  ours grows linearly. A 1 MB chunk (PIL's limit) would take the pattern hours.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time

from median_timing import median_seconds
from result_paths import add_output_argument, publish, ratio_table, run_line

# A1111's field pattern (its `re_param`), as the reader searches a line with it
A1111_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
TYPICAL = (
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Hires upscale: 2, Lora hashes: "style: 1a2b", '
    "Version: v1.10.1"
)
LENGTHS = (2_000, 4_000, 8_000, 16_000)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side (default 5)")
    add_output_argument(parser, "infotext.md", "report")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    from clipcond.pipelines.png_parameters import _field_pairs

    def timed(read, line: str, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            read(line)
        return (time.perf_counter() - start) / calls

    rows = []
    lines_read = [("typical A1111 fields line", TYPICAL, 2000)] + [
        (f"{length:,} characters of words, no colon", "a " * (length // 2), 1) for length in LENGTHS
    ]
    for name, line, calls in lines_read:
        if _field_pairs(line) != A1111_FIELD.findall(line):
            raise SystemExit(f"the pairs differ on the {name}")
        sides = [("ours", _field_pairs), ("a1111", A1111_FIELD.findall)]
        seconds = median_seconds(sides, lambda read, line=line, calls=calls: timed(read, line, calls), args.repeats)
        goal = "ours under 0.001 s" if calls > 1 else "ratio halving with each doubling (linear against quadratic)"
        rows.append((name, seconds["ours"], seconds["a1111"], goal))
    command = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Reading a PNG's parameters fields line",
        "",
        f"{run_line('bench_infotext.py', command)} Medians of {args.repeats} rotating rounds, seconds per line read "
        "(the typical line: mean of 2000 reads a round). Ours: `png_parameters._field_pairs`; reference: A1111's field "
        "pattern with `re.findall`; both give the same pairs on every line (checked before timing).",
        "",
        *ratio_table(rows, peer="A1111's pattern", digits=6, ratio_digits=4),
        "",
        "The pattern's time grows with the square of a line without fields (each doubling about x4); ours with its "
        "length (each doubling about x2).",
    ]
    publish(args.output, lines)


if __name__ == "__main__":
    main()
