"""Write the lab's prompt suites, configs/suites/*.yaml, from the shapes world's vocabulary.

    python benchmarks/make_suites.py                               # write runs/suites/*.yaml
    python benchmarks/make_suites.py --output-dir configs/suites   # rewrite the shipped suites
    python benchmarks/make_suites.py --check      # exit 1 if a file in configs/suites/ differs from what this writes

Deterministic: no randomness, every choice is an ordered walk over `train_pairs()`. Only
colour-shape combinations seen in training are used, so the suites measure prompt following,
not composition of held-out combinations. Edit this script, not the YAML files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

from clipcond.shapes import RELATIONS, train_pairs
from clipcond.shapes.prompt_suite import RELATION_WORDS

REPO = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO / "configs" / "suites"
DEFAULT_OUTPUT_DIR = REPO / "runs" / "suites"
_COUNT_WORDS = {2: "two", 3: "three"}

# Words about the picture only: no colour of the shapes world, no shape, no size, no count.
LONG_PREFIX = (
    "a clean flat illustration in a minimal vector style, drawn with crisp sharp edges and even flat fills, "
    "on a plain bright white background that covers the whole canvas from edge to edge, evenly lit with soft "
    "light, like a diagram printed in a schoolbook about simple geometry, seen straight from the front, with "
    "plenty of empty space all around it, carefully composed and easy to read at a glance, and in the middle "
    "of this picture there is"
)


def _name(pair: tuple[str, str]) -> str:
    return f"{pair[0]} {pair[1]}"


def _entry(category: str, prompt: str, objects: list[tuple[str, str]], relation: list | None = None) -> dict:
    return {"category": category, "prompt": prompt, "objects": [list(o) for o in objects], "relation": relation}


def _two_colour_pairs(count: int) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """`count` ordered pairs of seen objects that differ in colour and in shape and whose swap
    (colours exchanged) is also seen; picked greedily so colours and shapes are used evenly."""
    seen = set(train_pairs())
    candidates = [
        (a, b)
        for a, b in itertools.permutations(train_pairs(), 2)
        if a[0] != b[0] and a[1] != b[1] and (b[0], a[1]) in seen and (a[0], b[1]) in seen
    ]
    uses: Counter = Counter()
    chosen: list[tuple[tuple[str, str], tuple[str, str]]] = []
    for _ in range(min(count, len(candidates))):
        # least-used colours first, then least-used shapes in each position; min keeps the first of equals
        best = min((c for c in candidates if c not in chosen), key=lambda pair: _uses(uses, pair))
        chosen.append(best)
        uses.update(_words(best))
    return chosen


def _words(pair: tuple[tuple[str, str], tuple[str, str]]) -> list[str]:
    (colour_a, shape_a), (colour_b, shape_b) = pair
    return [colour_a, colour_b, f"first {shape_a}", f"second {shape_b}"]


def _uses(uses: Counter, pair: tuple[tuple[str, str], tuple[str, str]]) -> tuple[int, int]:
    colour_a, colour_b, first, second = _words(pair)
    return (uses[colour_a] + uses[colour_b], uses[first] + uses[second])


def single() -> list[dict]:
    return [_entry("single", f"a {_name(pair)}", [pair]) for pair in train_pairs()]


def binding(count: int = 12) -> list[dict]:
    entries = []
    for a, b in _two_colour_pairs(count):
        swapped = ((b[0], a[1]), (a[0], b[1]))
        for first, second in ((a, b), swapped):
            entries.append(_entry("binding", f"a {_name(first)} and a {_name(second)}", [first, second]))
    return entries


def spatial(per_relation: int = 6) -> list[dict]:
    chosen = _two_colour_pairs(per_relation)
    entries = []
    for relation in RELATIONS:
        for a, b in chosen:
            prompt = f"a {_name(a)} {RELATION_WORDS[relation]} a {_name(b)}"
            entries.append(_entry(relation.replace(" ", "_"), prompt, [a, b], [0, relation, 1]))
    return entries


def counting() -> list[dict]:
    return [
        _entry(_COUNT_WORDS[n], f"{_COUNT_WORDS[n]} {colour} {shape}s", [(colour, shape)] * n)
        for n in _COUNT_WORDS
        for colour, shape in train_pairs()
    ]


def long() -> list[dict]:
    entries = [_entry("long_single", f"{LONG_PREFIX} a {_name(pair)}", [pair]) for pair in train_pairs()]
    for a, b in _two_colour_pairs(6):
        entries.append(
            _entry(
                "long_relation", f"{LONG_PREFIX} a {_name(a)} to the left of a {_name(b)}", [a, b], [0, "left of", 1]
            )
        )
    return entries


# (category, template): "seen" wordings are frames of the training captions, "unseen" ones are not.
PARAPHRASES = (
    ("seen_wording", "there is a {colour} {shape}"),
    ("seen_wording", "a drawing of a {colour} {shape}"),
    ("unseen_wording", "a {colour} {shape} is shown"),
    ("unseen_wording", "a {shape} that is {colour}"),
    ("unseen_wording", "one {shape}, coloured {colour}"),
)


def paraphrase() -> list[dict]:
    pairs = train_pairs()[::2]
    return [
        _entry(category, template.format(colour=colour, shape=shape), [(colour, shape)])
        for colour, shape in pairs
        for category, template in PARAPHRASES
    ]


SUITES = {
    "single": ("Single objects, every colour-shape combination seen in training.", single),
    "binding": ("Two objects of two colours; each prompt is followed by its swap (colours exchanged).", binding),
    "spatial": ("Two objects and a relation; six pairs under each of the four relations.", spatial),
    "counting": ("Two or three identical objects, for every seen combination.", counting),
    "long": ("Prompts over 77 CLIP tokens: a description of the drawing first, the objects last.", long),
    "paraphrase": ("One object in training-caption wordings (seen) and other wordings (unseen).", paraphrase),
}


def render(name: str) -> str:
    """The YAML text of one suite (values written as JSON, which YAML reads as is)."""
    description, build = SUITES[name]
    lines = [
        "# Generated by benchmarks/make_suites.py; edit the script, not this file.",
        f"name: {name}",
        f"description: {json.dumps(description)}",
        "prompts:",
    ]
    for entry in build():
        lines.append(f"  - category: {entry['category']}")
        lines.append(f"    prompt: {json.dumps(entry['prompt'])}")
        lines.append(f"    objects: {json.dumps(entry['objects'])}")
        if entry["relation"] is not None:
            lines.append(f"    relation: {json.dumps(entry['relation'])}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this generator."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="where to write the suites (default: runs/suites; give configs/suites to rewrite the shipped ones)",
    )
    mode.add_argument(
        "--check", action="store_true", help="compare configs/suites/ with what this writes instead of writing"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stale = []
    for name in SUITES:
        path = (SUITES_DIR if args.check else args.output_dir) / f"{name}.yaml"
        text = render(name)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"differs from benchmarks/make_suites.py: {path}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
