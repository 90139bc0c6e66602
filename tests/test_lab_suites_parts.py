"""The lab's suite files on their own: `TextPrompt`'s checks, every refusal of an entry and of a
file whole (the file, the entry ``prompts[k]`` and the key named), the edges of each check (a
plural shape named, a count of one kind, the relation's indices at 0 and n - 1, booleans and
floats as indices), a suite's name from its key or its file, the digest of the file's bytes,
and `prompt_spec` of both kinds of entry.

test_lab.py runs whole experiments from suite files; these pin each rule one at a time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from clipcond.lab.suites import SAFE_NAME, PromptSuite, TextPrompt, load_suite, prompt_spec
from clipcond.shapes.prompt_suite import SuitePrompt
from clipcond.shapes.scene import Scene, ShapeObject

TWO = "a red circle and a blue square"


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def entry_yaml(**keys: str) -> str:
    """A one-entry suite; `keys` are the entry's YAML values as written (category and prompt
    default to a valid text entry)."""
    fields = {"category": "c", "prompt": f'"{TWO}"', **keys}
    lines = [f"    {key}: {value}" for key, value in fields.items()]
    lines[0] = "  - " + lines[0].lstrip()
    return "prompts:\n" + "\n".join(lines) + "\n"


def refusal(tmp_path: Path, text: str, name: str = "suite.yaml") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(ValueError) as error:
        load_suite(path)
    return str(error.value).removeprefix(f"{path}: ")


# ------------------------------------------------------------------ TextPrompt


def test_a_text_prompt_holds_a_category_and_a_prompt_and_no_scene() -> None:
    entry = TextPrompt("free_text", "a lighthouse at dusk")
    assert (entry.category, entry.prompt, entry.scene) == ("free_text", "a lighthouse at dusk", None)


@pytest.mark.parametrize(
    "category, prompt, message",
    [
        ("", "p", "category must be a non-empty str, got ''"),
        (3, "p", "category must be a non-empty str, got 3"),
        ("c", " \n", "prompt must be a non-empty str, got ' \\n'"),
        ("c", None, "prompt must be a non-empty str, got None"),
    ],
)
def test_a_text_prompts_refusals(category, prompt, message) -> None:
    with pytest.raises(ValueError) as error:
        TextPrompt(category, prompt)
    assert str(error.value) == message


def test_a_text_prompt_refuses_a_scene() -> None:
    scene = Scene((ShapeObject("circle", "red", "small", 0.5, 0.5),))
    with pytest.raises(ValueError) as error:
        TextPrompt("c", "p", scene)
    assert str(error.value) == "a TextPrompt has no scene; use SuitePrompt for a prompt with a scene"


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["a", "A9", "9", "binding_v2", "x-y.z", "a.b.c"])
def test_safe_names(name: str) -> None:
    assert SAFE_NAME.match(name)


@pytest.mark.parametrize("name", ["", "_a", "-a", ".a", "a b", "a/b", "a\\b", "é", "a:b"])
def test_unsafe_names(name: str) -> None:
    assert not SAFE_NAME.match(name)


# ------------------------------------------------------------------ loading


def test_a_suite_reads_both_kinds_of_entry_in_file_order(tmp_path: Path) -> None:
    text = (
        "name: mine\n"
        "description: anything at all\n"
        "prompts:\n"
        "  - category: free_text\n"
        '    prompt: "a lighthouse at dusk"\n'
        "  - category: binding\n"
        f'    prompt: "{TWO}"\n'
        "    objects: [[red, circle], [blue, square]]\n"
        "    relation: [0, left of, 1]\n"
        "  - category: counting\n"
        '    prompt: "two green triangles"\n'
        "    objects: [[green, triangle], [green, triangle]]\n"
    )
    path = write(tmp_path, text)
    suite = load_suite(str(path))
    assert isinstance(suite, PromptSuite)
    assert (suite.name, suite.path) == ("mine", path)
    assert suite.digest == hashlib.sha256(text.encode("utf-8")).hexdigest()
    first, second, third = suite.prompts
    assert first == TextPrompt("free_text", "a lighthouse at dusk")
    assert isinstance(second, SuitePrompt) and (second.category, second.prompt) == ("binding", TWO)
    assert [o.pair for o in second.scene.objects] == [("red", "circle"), ("blue", "square")]
    assert second.scene.relation == (0, "left of", 1)
    assert isinstance(third, SuitePrompt) and third.scene.relation is None
    assert [o.pair for o in third.scene.objects] == [("green", "triangle")] * 2


def test_the_name_defaults_to_the_files_stem(tmp_path: Path) -> None:
    assert load_suite(write(tmp_path, entry_yaml(), "binding-v2.yaml")).name == "binding-v2"


def test_a_file_stem_that_is_no_name_needs_a_name_key(tmp_path: Path) -> None:
    assert refusal(tmp_path, entry_yaml(), "my suite.yaml") == (
        "the file name 'my suite' is not a suite name; add a `name:` key"
    )
    assert load_suite(write(tmp_path, "name: ok\n" + entry_yaml(), "my suite.yaml")).name == "ok"


def test_a_name_key_that_is_no_folder_name_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path, "name: a/b\n" + entry_yaml()) == (
        "key `name`: 'a/b' is not a folder name (letters, digits, '_', '-', '.')"
    )


def test_a_missing_file_and_an_empty_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_suite(tmp_path / "none.yaml")
    assert str(error.value) == f"suite file not found: {tmp_path / 'none.yaml'}"
    with pytest.raises(FileNotFoundError):
        load_suite(tmp_path)  # a folder is no suite file
    assert refusal(tmp_path, "") == "key `prompts`: required key is missing for _SuiteSpec"
    assert refusal(tmp_path, "prompts: []\n") == "key `prompts`: the suite holds no prompt"


def test_the_digest_changes_with_any_byte(tmp_path: Path) -> None:
    one = load_suite(write(tmp_path, entry_yaml(), "a.yaml")).digest
    other = load_suite(write(tmp_path, entry_yaml() + "# a comment\n", "b.yaml")).digest
    assert one != other and len(one) == 64


# ------------------------------------------------------------------ an entry's refusals


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"category": '" "'}, "key `category`: must be a non-empty string"),
        ({"category": '"(all)"'}, "key `category`: '(all)' is the report's name for every category together"),
        ({"prompt": '"  "'}, "key `prompt`: must be a non-empty string"),
        ({"relation": "[0, left of, 1]"}, "key `relation`: needs `objects` (a relation joins two of them)"),
        (
            {"objects": "[]"},
            "key `objects`: must list at least one [colour, shape] (or leave it out for a text prompt)",
        ),
        ({"objects": "[[red]]"}, "key `objects[0]`: expected [colour, shape], got ['red']"),
        (
            {"objects": "[[red, circle], [blue, square, big]]"},
            "key `objects[1]`: expected [colour, shape], got ['blue', 'square', 'big']",
        ),
        (
            {"objects": "[[pink, circle]]"},
            "key `objects[0]`: unknown colour 'pink'; known: ['red', 'yellow', 'green', 'cyan', 'blue', 'purple']",
        ),
        (
            {"objects": "[[red, star]]"},
            "key `objects[0]`: unknown shape 'star'; known: ['circle', 'square', 'triangle']",
        ),
        (
            {"objects": "[[red, circle], [green, square]]"},
            f"key `objects[1]`: the prompt '{TWO}' does not name 'green' and 'square'",
        ),
        (
            {"objects": "[[red, circle], [blue, triangle]]"},
            f"key `objects[1]`: the prompt '{TWO}' does not name 'blue' and 'triangle'",
        ),
    ],
)
def test_an_entrys_refusals_name_the_file_the_entry_and_the_key(tmp_path: Path, keys, message) -> None:
    assert refusal(tmp_path, entry_yaml(**keys)) == f"prompts[0]: {message}"


def test_a_later_entry_is_named_by_its_index(tmp_path: Path) -> None:
    text = entry_yaml() + "  - category: c\n    prompt: p\n    objects: [[red, circle]]\n"
    assert refusal(tmp_path, text) == "prompts[1]: key `objects[0]`: the prompt 'p' does not name 'red' and 'circle'"


def test_colour_and_shape_are_whole_words_of_the_prompt_any_case_a_shape_also_plural(tmp_path: Path) -> None:
    ok = {
        "A RED Circle": "[[red, circle]]",
        "three red circles": "[[red, circle]]",
        "red, (circle)!": "[[red, circle]]",
    }
    for prompt, objects in ok.items():
        suite = load_suite(write(tmp_path, entry_yaml(prompt=f'"{prompt}"', objects=objects)))
        assert [o.pair for o in suite.prompts[0].scene.objects] == [("red", "circle")]
    refused = {
        "a reddish circle": "'red' and 'circle'",
        "a red circular thing": "'red' and 'circle'",
        "a red circless": "'red' and 'circle'",
    }
    for prompt, named in refused.items():
        assert refusal(tmp_path, entry_yaml(prompt=f'"{prompt}"', objects="[[red, circle]]")) == (
            f"prompts[0]: key `objects[0]`: the prompt '{prompt}' does not name {named}"
        )


RELATION_WORDS = "expected [i, relation, j] with relation one of ['left of', 'right of', 'above', 'below']"


@pytest.mark.parametrize(
    "relation, message",
    [
        ("[0, left of]", f"{RELATION_WORDS}, got [0, 'left of']"),
        ("[0, left of, 1, 2]", f"{RELATION_WORDS}, got [0, 'left of', 1, 2]"),
        ("[0, beside, 1]", f"{RELATION_WORDS}, got [0, 'beside', 1]"),
        ("[0, left of, 2]", "i and j must be two different object indices in [0, 2), got [0, 'left of', 2]"),
        ("[-1, left of, 1]", "i and j must be two different object indices in [0, 2), got [-1, 'left of', 1]"),
        ("[1, left of, 1]", "i and j must be two different object indices in [0, 2), got [1, 'left of', 1]"),
        ("[0.0, left of, 1]", "i and j must be two different object indices in [0, 2), got [0.0, 'left of', 1]"),
        ("[0, left of, true]", "i and j must be two different object indices in [0, 2), got [0, 'left of', True]"),
        ("['0', left of, 1]", "i and j must be two different object indices in [0, 2), got ['0', 'left of', 1]"),
    ],
)
def test_a_relations_refusals(tmp_path: Path, relation: str, message: str) -> None:
    text = entry_yaml(objects="[[red, circle], [blue, square]]", relation=relation)
    assert refusal(tmp_path, text) == f"prompts[0]: key `relation`: {message}"


@pytest.mark.parametrize("relation", ["[0, left of, 1]", "[1, above, 0]", "[0, below, 1]", "[1, right of, 0]"])
def test_a_relation_between_the_first_and_last_objects_is_taken(tmp_path: Path, relation: str) -> None:
    text = entry_yaml(objects="[[red, circle], [blue, square]]", relation=relation)
    i, name, j = relation.strip("[]").split(", ")
    assert load_suite(write(tmp_path, text)).prompts[0].scene.relation == (int(i), name, int(j))


def test_a_relation_must_name_an_object_of_one_of_a_kind(tmp_path: Path) -> None:
    prompt = '"two red circles and a blue square"'
    objects = "[[red, circle], [red, circle], [blue, square]]"
    for relation, k in (("[0, left of, 2]", 0), ("[2, left of, 1]", 1)):
        assert refusal(tmp_path, entry_yaml(prompt=prompt, objects=objects, relation=relation)) == (
            f"prompts[0]: key `relation`: objects[{k}] (red circle) is not the only one of its colour and shape, "
            "so the judge cannot tell which one the relation means"
        )
    # the others of a kind may be there, as long as the relation's two are each one of a kind
    objects = "[[red, circle], [green, triangle], [green, triangle], [blue, square]]"
    prompt = '"a red circle left of a blue square, two green triangles"'
    suite = load_suite(write(tmp_path, entry_yaml(prompt=prompt, objects=objects, relation="[0, left of, 3]")))
    assert suite.prompts[0].scene.relation is not None


def test_a_scene_the_shapes_world_cannot_hold_is_refused_naming_the_entry(tmp_path: Path) -> None:
    objects = "[[red, circle], [red, circle], [red, circle], [red, circle], [red, circle]]"
    message = refusal(tmp_path, entry_yaml(prompt='"five red circles"', objects=objects))
    assert message.startswith("prompts[0]: ")
    assert "5" in message and "4" in message  # five objects, four at most


def test_an_unknown_key_of_an_entry_is_refused_by_name(tmp_path: Path) -> None:
    assert refusal(tmp_path, entry_yaml(colour="red")).startswith("key `prompts[0].colour`: unknown key for _EntrySpec")


# ------------------------------------------------------------------ prompt_spec


def test_prompt_spec_of_a_text_prompt_and_of_a_scene() -> None:
    assert prompt_spec(TextPrompt("free_text", "a lighthouse")) == {
        "category": "free_text",
        "prompt": "a lighthouse",
        "objects": None,
        "relation": None,
    }


def test_prompt_spec_of_suite_entries_read_back(tmp_path: Path) -> None:
    text = entry_yaml(objects="[[red, circle], [blue, square]]", relation="[1, above, 0]")
    text += "  - category: d\n    prompt: a red circle\n    objects: [[red, circle]]\n"
    first, second = load_suite(write(tmp_path, text)).prompts
    assert prompt_spec(first) == {
        "category": "c",
        "prompt": TWO,
        "objects": [["red", "circle"], ["blue", "square"]],
        "relation": [1, "above", 0],
    }
    assert prompt_spec(second) == {
        "category": "d",
        "prompt": "a red circle",
        "objects": [["red", "circle"]],
        "relation": None,
    }


@pytest.mark.parametrize(
    "raw",
    [b"prompts: [\n", b"name: a\nname: b\nprompts: []\n", b"name: \xff\n"],
    ids=["not-yaml", "key-twice", "not-utf8"],
)
def test_a_file_that_is_not_yaml_is_refused_naming_it(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "suite.yaml"
    path.write_bytes(raw)
    with pytest.raises(ValueError) as error:
        load_suite(path)
    assert str(error.value).startswith(f"{path}: ")
