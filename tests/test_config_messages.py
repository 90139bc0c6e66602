"""`clipcond.config`'s refusals, whole, on a small config made for the test: every kind of
field the loader takes (a section, an optional section, a free-form mapping, lists, a tuple, a
union, a `Literal`, numbers, a path key), and `--set` overrides on it.

test_config.py checks the shipped configs and that each refusal names its key and file; these
check each message word for word (what a user reads), the edges of the quoting limits, and the
override parser's splitting, so that a message losing its file, its key or its reason fails here.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import yaml

from clipcond.config import (
    QUOTE_LIMIT,
    NotYaml,
    apply_overrides,
    config_from_dict,
    load_config,
    quoted,
    read_yaml,
)


@dataclasses.dataclass
class Inner:
    size: int = 1
    name: str = "x"


@dataclasses.dataclass
class Checked:
    """A section whose own check refuses a negative `count`."""

    count: int = 0

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")


@dataclasses.dataclass
class Sample:
    lr: float
    mode: Literal["a", "b"] = "a"
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: Inner | None = None
    checked: Checked = dataclasses.field(default_factory=Checked)
    free: dict[str, Any] | None = None
    words: list[str] = dataclasses.field(default_factory=list)
    anything: typing.List = dataclasses.field(default_factory=list)  # noqa: UP006 - a list of no item type
    pair: tuple[int, ...] = ()
    either: int | str = 0
    old_union: Union[int, str] = 0  # noqa: UP007 - typing.Union spelled as older code does
    either_or_none: None | int | str = None
    number_or_none: float | None | Literal["auto"] = None
    output_dir: str = "out"


@dataclasses.dataclass
class TopChecked:
    lr: float = 1.0

    def __post_init__(self) -> None:
        if self.lr > 10:
            raise ValueError(f"lr must be <= 10, got {self.lr}")


@dataclasses.dataclass
class SelfNamed:
    """A section whose check names the section itself, as the model configs' towers do
    ("text.vocab_size must ...", "text: width ... is not divisible ...")."""

    count: int = 0
    where: str = "named"

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"{self.where}.count must be >= 0, got {self.count}")
        if self.count > 9:
            raise ValueError(f"{self.where}: count {self.count} is over 9")
        if self.count == 5:
            raise ValueError(f"{self.where} (five): count 5 is refused")


@dataclasses.dataclass
class HoldsSelfNamed:
    named: SelfNamed = dataclasses.field(default_factory=SelfNamed)
    name: SelfNamed = dataclasses.field(default_factory=SelfNamed)


@dataclasses.dataclass
class TopNamesKey:
    """A top-level check that names its key itself, as a suite file's does."""

    lr: float = 1.0

    def __post_init__(self) -> None:
        if self.lr > 10:
            raise ValueError(f"key `lr`: must be <= 10, got {self.lr}")


@dataclasses.dataclass
class Unsupported:
    tags: set[str] = dataclasses.field(default_factory=set)


def refusal(data: Any, cls: type = Sample, source: str | None = None) -> str:
    """The message of `config_from_dict`'s refusal (its default source, "<dict>", when None)."""
    with pytest.raises(ValueError) as refused:
        config_from_dict(cls, data) if source is None else config_from_dict(cls, data, source=source)
    return str(refused.value)


# ----------------------------------------------------------------------------- loading


def test_a_value_that_is_no_mapping_is_refused_at_the_top_level_naming_the_class() -> None:
    assert refusal([1]) == "<dict>: top level: expected a mapping for Sample, got list"
    assert (
        refusal({"lr": 1, "inner": 3}, source="c.yaml") == "c.yaml: key `inner`: expected a mapping for Inner, got int"
    )


def test_unknown_and_missing_keys_name_the_dotted_key_and_the_known_ones() -> None:
    assert refusal({"lr": 1, "bogus": 2}, source="c.yaml") == (
        "c.yaml: key `bogus`: unknown key for Sample; known keys: ['anything', 'checked', 'either', "
        "'either_or_none', 'free', 'inner', 'lr', 'maybe', 'mode', 'number_or_none', 'old_union', 'output_dir', "
        "'pair', 'words']"
    )
    assert refusal({"lr": 1, "inner": {"zzz": 1}}) == (
        "<dict>: key `inner.zzz`: unknown key for Inner; known keys: ['name', 'size']"
    )
    assert refusal({}, source="c.yaml") == "c.yaml: key `lr`: required key is missing for Sample"


def test_a_key_longer_than_the_quote_limit_is_cut() -> None:
    for length, shown in ((QUOTE_LIMIT, "k" * QUOTE_LIMIT), (QUOTE_LIMIT + 1, "k" * QUOTE_LIMIT + "...")):
        message = refusal({"lr": 1, "k" * length: 1})
        assert message.startswith(f"<dict>: key `{shown}`: unknown key for Sample; known keys: "), message


def test_a_sections_own_check_is_named_by_its_key_or_at_the_top_by_its_class() -> None:
    assert refusal({"lr": 1, "checked": {"count": -1}}) == "<dict>: checked: count must be >= 0, got -1"
    assert refusal({"lr": 11}, cls=TopChecked) == "<dict>: TopChecked: lr must be <= 10, got 11.0"
    # a top-level check that names its key says where without the class's name
    assert refusal({"lr": 11}, cls=TopNamesKey) == "<dict>: key `lr`: must be <= 10, got 11.0"


def test_a_sections_check_that_names_the_section_is_not_named_twice() -> None:
    assert refusal({"named": {"count": -1}}, cls=HoldsSelfNamed) == "<dict>: named.count must be >= 0, got -1"
    assert refusal({"named": {"count": 10}}, cls=HoldsSelfNamed) == "<dict>: named: count 10 is over 9"
    assert refusal({"named": {"count": 5}}, cls=HoldsSelfNamed) == "<dict>: named (five): count 5 is refused"
    # the key "name" is only the start of the section the message names: the key stays
    assert refusal({"name": {"count": 10}}, cls=HoldsSelfNamed) == "<dict>: name: named: count 10 is over 9"
    assert refusal({"name": {"count": -1}}, cls=HoldsSelfNamed) == "<dict>: name: named.count must be >= 0, got -1"
    assert refusal({"name": {"count": 5}}, cls=HoldsSelfNamed) == "<dict>: name: named (five): count 5 is refused"


def test_an_optional_section_gives_its_inner_keys_error() -> None:
    assert config_from_dict(Sample, {"lr": 1, "maybe": None}).maybe is None
    assert config_from_dict(Sample, {"lr": 1, "maybe": {"size": 3}}).maybe == Inner(size=3)
    assert refusal({"lr": 1, "maybe": {"size": "x"}}, source="c.yaml") == (
        "c.yaml: key `maybe.size`: expected an integer, got 'x'"
    )


def test_a_union_tries_each_option_and_names_the_union() -> None:
    assert config_from_dict(Sample, {"lr": 1, "either": "x", "old_union": 3}).either == "x"
    assert config_from_dict(Sample, {"lr": 1, "either_or_none": "x"}).either_or_none == "x"
    assert config_from_dict(Sample, {"lr": 1, "either_or_none": 4}).either_or_none == 4
    assert refusal({"lr": 1, "either": [1]}, source="c.yaml") == "c.yaml: key `either`: expected int | str, got [1]"
    assert refusal({"lr": 1, "old_union": 1.5}) == "<dict>: key `old_union`: expected int | str, got 1.5"
    assert refusal({"lr": 1, "number_or_none": "x"}) == (
        "<dict>: key `number_or_none`: expected float | None | Literal['auto'], got 'x'"
    )


def test_literals_lists_tuples_and_mappings() -> None:
    assert refusal({"lr": 1, "mode": "c"}) == "<dict>: key `mode`: expected one of ['a', 'b'], got 'c'"
    assert refusal({"lr": 1, "words": "abc"}, source="c.yaml") == "c.yaml: key `words`: expected a list, got str 'abc'"
    assert refusal({"lr": 1, "words": ["a", 2]}) == "<dict>: key `words[1]`: expected a string, got 2"
    assert refusal({"lr": 1, "free": [1]}, source="c.yaml") == "c.yaml: key `free`: expected a mapping, got list"
    loaded = config_from_dict(Sample, {"lr": 1, "pair": [1, 2], "anything": [1, "a", None], "words": ("a",)})
    assert loaded.pair == (1, 2) and isinstance(loaded.pair, tuple)
    assert loaded.anything == [1, "a", None] and loaded.words == ["a"] and isinstance(loaded.words, list)


def test_numbers() -> None:
    assert refusal({"lr": "1e999"}, source="c.yaml") == "c.yaml: key `lr`: expected a finite number, got '1e999'"
    assert refusal({"lr": "fast"}, source="c.yaml") == "c.yaml: key `lr`: expected a number, got 'fast'"
    assert refusal({"lr": True}) == "<dict>: key `lr`: expected a number, got True"
    assert refusal({"lr": 1, "inner": {"size": 1.0}}) == "<dict>: key `inner.size`: expected an integer, got 1.0"


def test_a_field_type_the_loader_does_not_know_is_a_programming_error() -> None:
    with pytest.raises(TypeError) as refused:
        config_from_dict(Unsupported, {"tags": ["a"]})
    assert str(refused.value) == "config type set[str] at key `tags` is not supported by clipcond.config"


def test_load_config_reads_a_file_an_empty_one_as_every_default(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(FileNotFoundError) as refused:
        load_config(Inner, missing)
    assert str(refused.value) == f"config file not found: {missing}"
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(Inner, tmp_path / "empty.yaml") == Inner()
    (tmp_path / "one.yaml").write_text("size: 4\n")
    assert load_config(Inner, tmp_path / "one.yaml") == Inner(size=4)


# ----------------------------------------------------------------------------- quoting and YAML


def test_quoted_keeps_a_repr_of_the_limit_and_cuts_a_longer_one() -> None:
    exact = "x" * (QUOTE_LIMIT - 2)  # its repr, with the quotes, is QUOTE_LIMIT characters
    assert quoted(exact) == repr(exact)
    assert len(quoted("x" * 10_000)) == QUOTE_LIMIT  # reprlib cuts one string in its middle
    words = ["y" * 30] * 7  # a list whose repr is QUOTE_LIMIT + 35 characters: cut at the limit
    assert quoted(words) == repr(words)[:QUOTE_LIMIT] + "..."
    fits = ["y" * 26] * 6  # 180 characters
    assert quoted(fits) == repr(fits)
    assert quoted(list(range(20))) == "[0, 1, 2, 3, 4, 5, 6, 7, ...]"  # 8 items per level
    assert quoted([[[[1]]]]) == "[[[[...]]]]"  # 3 levels deep


def test_a_character_yaml_refuses_is_named_by_its_code_and_place() -> None:
    with pytest.raises(NotYaml) as refused:
        read_yaml("a: b\x07", "c.yaml")
    assert str(refused.value) == (
        "c.yaml: not valid YAML: the character #x0007 at character 5: special characters are not allowed"
    )


@pytest.mark.parametrize(
    "text",
    # at the top, nested, and first in the file with other keys after it
    ["a: &x [*x]", "&x {b: *x}", "a: {b: &x [1, {c: *x}]}", "a: &x [*x]\nb: 1", "a: &x [*x]\nb: [1]"],
)
def test_a_value_holding_itself_is_refused_however_deep(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        read_yaml(text, "c.yaml")
    assert str(refused.value) == (
        "c.yaml: an alias (`*name`) stands inside the value its anchor (`&name`) names, so that value holds itself; "
        "clipcond reads no value without end"
    )


def test_aliases_shared_without_a_cycle_are_read() -> None:
    shared = read_yaml("a: &x {b: [1, &y [2]]}\nc: [*x, *y, *y]", "c.yaml")
    assert shared == {"a": {"b": [1, [2]]}, "c": [{"b": [1, [2]]}, [2], [2]]}
    bomb = read_yaml("[&l0 [a, a], &l1 [*l0, *l0], &l2 [*l1, *l1], &l3 [*l2, *l2]]", "c.yaml")
    assert bomb[3] == [[[["a", "a"]] * 2] * 2] * 2
    # 40 levels: 2**40 leaves if the aliases were expanded; YAML's nodes and values are shared instead
    levels = ["&l0 [a, a]"] + [f"&l{level} [*l{level - 1}, *l{level - 1}]" for level in range(1, 40)]
    assert len(read_yaml(f"[{', '.join(levels)}]", "c.yaml")) == 40


def test_yaml_errors_without_a_place_read_as_one_line() -> None:
    from clipcond.yaml_reading import _not_yaml

    assert str(_not_yaml(yaml.YAMLError("no\n  place   here"), "c.yaml")) == "c.yaml: not valid YAML: no place here"
    unplaced = yaml.MarkedYAMLError(context="while reading", problem="found  nothing")
    assert str(_not_yaml(unplaced, "c.yaml")) == "c.yaml: not valid YAML: while reading found nothing"


# ----------------------------------------------------------------------------- --set overrides


def test_an_override_splits_at_the_first_equals_sign_and_an_empty_value_is_an_empty_string() -> None:
    base = Sample(lr=1.0)
    assert apply_overrides(base, ["output_dir=a=b"]).output_dir == "a=b"
    assert apply_overrides(base, ["output_dir="]).output_dir == ""
    assert apply_overrides(base, ["inner.size=3", "lr=2"]) == Sample(lr=2.0, inner=Inner(size=3))


def test_override_refusals_in_full() -> None:
    base = Sample(lr=1.0)

    def refused(assignment: str, config: Sample = base) -> str:
        with pytest.raises(ValueError) as error:
            apply_overrides(config, [assignment], source="--set")
        return str(error.value)

    assert refused("novalue") == "--set: expected KEY=VALUE, got 'novalue'"
    assert refused("lr.x.y=1") == "--set: key `lr`: is not a section of this config"
    assert refused("inner.size.x=1") == "--set: key `inner.size`: is not a section of this config"
    assert refused("maybe.size=1") == "--set: key `maybe`: is not a section of this config"  # None: no section yet
    assert refused("inner.zzz=1") == "--set: key `inner.zzz`: unknown key; expected one of ['name', 'size']"
    with_maybe = Sample(lr=1.0, maybe=Inner())
    assert refused("maybe.zzz=1", with_maybe) == "--set: key `maybe.zzz`: unknown key; expected one of ['name', 'size']"
    assert apply_overrides(with_maybe, ["maybe.size=5"]).maybe == Inner(size=5)
    message = refused("words=[a")
    assert message.startswith("--set: key `words`: cannot read '[a' as YAML: line "), message
    assert "not valid YAML" not in message and "--set words" not in message


def test_a_free_form_mapping_takes_new_keys_at_every_depth() -> None:
    base = Sample(lr=1.0, free={"block": {"depth": 1, "inner": {}}})
    changed = apply_overrides(base, ["free.block.width=8", "free.new=x", "free.block.inner.deep=2"])
    assert changed.free == {"block": {"depth": 1, "inner": {"deep": 2}, "width": 8}, "new": "x"}
    assert typing.get_type_hints(Sample)["free"] == dict[str, Any] | None  # the case this test is about
