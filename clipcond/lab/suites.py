"""Prompt suites as YAML files: the prompts of an experiment, what each one tests, and (for
shapes-world prompts) the scene the image must show.

A suite file (``configs/suites/*.yaml``)::

    name: binding            # optional, defaults to the file's stem; letters, digits, "_", "-", "."
    description: ...         # optional free text, ignored
    prompts:
      - category: binding    # what the prompt tests; the report pools images per category
        prompt: "a red circle and a blue square"
        objects: [[red, circle], [blue, square]]   # one [colour, shape] per object; repeat for a count
        relation: null                              # or [0, "left of", 1]: objects[0] is left of objects[1]
      - category: free_text
        prompt: "a lighthouse at dusk"              # no `objects`: a text-only prompt

With `objects`, the entry becomes a `SuitePrompt` whose scene is built by `scene_from_spec`
(the shapes judge scores it); without, a `TextPrompt` that only prompt-level metrics (CLIP
score) apply to. Colours, shapes and relations are the words of `clipcond.shapes.vocab`, and
every object's colour and shape must appear in the prompt (a guard against a prompt and a
scene that disagree). Any malformed entry is a `ValueError` naming the file, the entry
(``prompts[3]``) and the key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcond.config import config_from_dict
from clipcond.lab.summary import ALL_CATEGORIES
from clipcond.shapes.prompt_suite import SuitePrompt, scene_from_spec
from clipcond.shapes.vocab import COLOURS, RELATIONS, SHAPES
from clipcond.yaml_reading import read_yaml

# Names of suites and setups become folder names.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TextPrompt:
    """A prompt without a scene (not from the shapes world): only CLIP score applies.

    Attributes:
        category: what the prompt tests.
        prompt: the text given to the pipeline.
        scene: always None (so code can read `entry.scene` of any suite entry).
    """

    category: str
    prompt: str
    scene: None = None

    def __post_init__(self) -> None:
        if not isinstance(self.category, str) or not self.category:
            raise ValueError(f"category must be a non-empty str, got {self.category!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"prompt must be a non-empty str, got {self.prompt!r}")
        if self.scene is not None:
            raise ValueError("a TextPrompt has no scene; use SuitePrompt for a prompt with a scene")


LabPrompt = SuitePrompt | TextPrompt


@dataclass(frozen=True)
class PromptSuite:
    """One suite file, loaded.

    Attributes:
        name: the suite's name (a folder name under the experiment's images).
        path: the file it was read from.
        prompts: the entries in file order; an entry's index is its position here.
        digest: sha256 of the file's bytes (a changed file changes the results' keys).
    """

    name: str
    path: Path
    prompts: tuple[LabPrompt, ...]
    digest: str


@dataclass
class _EntrySpec:
    """One entry of `prompts` as written; checked here, turned into a prompt by `_to_prompt`."""

    category: str
    prompt: str
    objects: list[list[str]] | None = None
    relation: list[Any] | None = None

    def __post_init__(self) -> None:
        if not self.category.strip():
            raise ValueError("key `category`: must be a non-empty string")
        if self.category == ALL_CATEGORIES:
            raise ValueError(f"key `category`: {ALL_CATEGORIES!r} is the report's name for every category together")
        if not self.prompt.strip():
            raise ValueError("key `prompt`: must be a non-empty string")
        if self.objects is None:
            if self.relation is not None:
                raise ValueError("key `relation`: needs `objects` (a relation joins two of them)")
            return
        if not self.objects:
            raise ValueError(
                "key `objects`: must list at least one [colour, shape] (or leave it out for a text prompt)"
            )
        words = set(re.findall(r"[a-z]+", self.prompt.lower()))
        for k, item in enumerate(self.objects):
            key = f"objects[{k}]"
            if len(item) != 2:
                raise ValueError(f"key `{key}`: expected [colour, shape], got {item!r}")
            colour, shape = item
            if colour not in COLOURS:
                raise ValueError(f"key `{key}`: unknown colour {colour!r}; known: {list(COLOURS)}")
            if shape not in SHAPES:
                raise ValueError(f"key `{key}`: unknown shape {shape!r}; known: {list(SHAPES)}")
            if colour not in words or not {shape, shape + "s"} & words:
                raise ValueError(f"key `{key}`: the prompt {self.prompt!r} does not name {colour!r} and {shape!r}")
        if self.relation is not None:
            relation = self.relation
            if len(relation) != 3 or relation[1] not in RELATIONS:
                raise ValueError(
                    f"key `relation`: expected [i, relation, j] with relation one of {list(RELATIONS)}, got {relation!r}"
                )
            i, j = relation[0], relation[2]
            n = len(self.objects)
            if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < n for k in (i, j)) or i == j:
                raise ValueError(
                    f"key `relation`: i and j must be two different object indices in [0, {n}), got {relation!r}"
                )
            for k in (i, j):
                if self.objects.count(self.objects[k]) > 1:
                    raise ValueError(
                        f"key `relation`: objects[{k}] ({' '.join(self.objects[k])}) is not the only one of its colour "
                        "and shape, so the judge cannot tell which one the relation means"
                    )


@dataclass
class _SuiteSpec:
    prompts: list[_EntrySpec]
    name: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("key `prompts`: the suite holds no prompt")
        if self.name is not None and not SAFE_NAME.match(self.name):
            raise ValueError(f"key `name`: {self.name!r} is not a folder name (letters, digits, '_', '-', '.')")


def _to_prompt(spec: _EntrySpec) -> LabPrompt:
    if spec.objects is None:
        return TextPrompt(spec.category, spec.prompt)
    objects = [(colour, shape) for colour, shape in spec.objects]
    relation = None if spec.relation is None else (spec.relation[0], spec.relation[1], spec.relation[2])
    return SuitePrompt(spec.category, spec.prompt, scene_from_spec(objects, relation))


def load_suite(path: str | Path) -> PromptSuite:
    """Read and check one suite file (format in the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed file or entry; the message names the file, the entry
            (``prompts[k]``) and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file not found: {path}")
    raw = path.read_bytes()
    data = read_yaml(raw, str(path))  # not YAML, a key given twice, not UTF-8: a ValueError naming the file
    spec = config_from_dict(_SuiteSpec, data if data is not None else {}, source=str(path))
    if spec.name is None and not SAFE_NAME.match(path.stem):
        raise ValueError(f"{path}: the file name {path.stem!r} is not a suite name; add a `name:` key")
    prompts = []
    for k, entry in enumerate(spec.prompts):
        try:
            prompts.append(_to_prompt(entry))
        except (TypeError, ValueError) as error:  # the scene itself is impossible (e.g. relation indices)
            raise ValueError(f"{path}: prompts[{k}]: {error}") from error
    return PromptSuite(
        name=spec.name or path.stem, path=path, prompts=tuple(prompts), digest=hashlib.sha256(raw).hexdigest()
    )


def prompt_spec(entry: LabPrompt) -> dict[str, Any]:
    """What an entry asks for, as plain JSON data: category, prompt, objects ([colour, shape]
    pairs, or None for a text prompt) and relation ([i, name, j] or None)."""
    scene = entry.scene
    return {
        "category": entry.category,
        "prompt": entry.prompt,
        "objects": None if scene is None else [list(o.pair) for o in scene.objects],
        "relation": None if scene is None or scene.relation is None else list(scene.relation),
    }


__all__ = ["LabPrompt", "PromptSuite", "SAFE_NAME", "TextPrompt", "load_suite", "prompt_spec"]
