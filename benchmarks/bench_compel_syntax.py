"""Reading compel's syntax: clipcond's parser against compel's own, as ratios measured in one run.

    python benchmarks/bench_compel_syntax.py --repeats 5     # writes runs/benchmarks/compel_syntax.md
    python benchmarks/bench_compel_syntax.py --repeats 5 --output benchmarks/results/compel_syntax.md
                                                             # update the recorded result

Sides, on one core of whatever machine runs it:

1. the prompts below, each read once, by `clipcond.compel_syntax.parse_compel_prompt` / by
   `compel.Compel.parse_prompt_string`, the call `Compel(...)(prompt)` makes (it builds compel's
   pyparsing grammar each time) / by one `PromptParser` kept across prompts (its grammar
   built once). Goal: ours faster than both (ratio < 1);
2. one prompt whose words sit in `depth` nested brackets with a weight, `depth` 1 to
   `--max-depth`: compel's time grows with each level (backtracking; bare brackets,
   ``((((a))))``, 3 to 4.5 times per level), ours stays linear in the prompt's length. Each depth is timed `--repeats` times while compel's side takes under a
   second, once beyond.

Both parsers must agree on the prompts' CLIP tokens and weights (`tests/test_compel_syntax.py`);
here only the time is measured.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from median_timing import median_seconds
from result_paths import add_output_argument, publish, ratio_table, run_line

PROMPTS = [
    "a red fox+ in the (deep snow)1.2, (blurry)0.5",
    "portrait of a (young woman)++ with (long red hair)1.3, (freckles)-, soft light, 85mm, (bokeh)0.8",
    '"a castle on a hill"+ at (sunset)1.4, ((dramatic clouds)+ over the sea)1.1, oil painting',
    "((masterpiece)1.2, (best quality)+), (a cat)++ sitting on a (wooden chair)-- next to a window",
    "a plain prompt without any weights, just words and commas, as most prompts are",
    "(a (small (green)+ frog)1.1 on a (lily pad)0.9)1.2 in a pond, (reflections)+, macro photo",
]


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side (default 5)")
    parser.add_argument("--max-depth", type=int, default=6, help="deepest bracket nesting timed (default 6)")
    add_output_argument(parser, "compel_syntax.md", "report")
    return parser


def nested(depth: int) -> str:
    """A prompt whose words sit in `depth` brackets, each with a weight."""
    return "(" * depth + "a red fox in the snow" + ")1.1" * depth + " at dawn"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.max_depth < 1:
        parser.error(f"--repeats and --max-depth must be >= 1, got {args.repeats} and {args.max_depth}")

    from compel import Compel
    from compel.prompt_parser import PromptParser

    from clipcond.compel_syntax import parse_compel_prompt

    kept = PromptParser()

    def reading(parse):
        def run(prompts: list[str]) -> float:
            start = time.perf_counter()
            for prompt in prompts:
                parse(prompt)
            return time.perf_counter() - start

        return run

    ours, theirs, theirs_kept = (
        reading(parse_compel_prompt),
        reading(Compel.parse_prompt_string),
        reading(kept.parse_conjunction),
    )
    seconds = median_seconds(
        [("ours", ours), ("compel", theirs), ("compel, parser kept", theirs_kept)],
        lambda run: run(PROMPTS),
        args.repeats,
    )
    rows = [
        (f"the {len(PROMPTS)} prompts / Compel.parse_prompt_string", seconds["ours"], seconds["compel"], "< 1"),
        (
            f"the {len(PROMPTS)} prompts / one PromptParser kept",
            seconds["ours"],
            seconds["compel, parser kept"],
            "< 1",
        ),
    ]
    for depth in range(1, args.max_depth + 1):
        prompt = [nested(depth)]
        once = theirs_kept(prompt)
        repeats = args.repeats if once < 1.0 else 1
        measured = median_seconds(
            [("ours", ours), ("compel", theirs_kept)], lambda run, prompt=prompt: run(prompt), repeats
        )
        rows.append((f"{depth} nested brackets / one PromptParser kept", measured["ours"], measured["compel"], "< 1"))

    command = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Reading compel's syntax: clipcond's parser / compel's",
        "",
        f"{run_line('bench_compel_syntax.py', command)} Medians of {args.repeats} rotating rounds (one round where "
        "compel's side takes a second or more).",
        "",
        *ratio_table(rows, peer="compel", digits=6, ratio_digits=5),
    ]
    publish(args.output, lines)


if __name__ == "__main__":
    main()
