"""Reading YAML safely: no Python objects, no key given twice, no value that holds itself.

`read_yaml(text, source)` is PyYAML's safe loader with three refusals more, each a `ValueError`
naming `source`: a key given twice in one mapping (the safe loader keeps the last one silently,
so an edit above a forgotten line would do nothing), a key that is a list or a mapping, and a
value that holds itself (an alias inside its own anchor, ``a: &x [*x]``). Text YAML cannot read
(a tab indent, a ``!!python`` tag, two documents) is a `NotYaml`, naming the line and column.
Configs (`clipcond.config`), ``--set`` values and experiment suites are read through it.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

from clipcond.quoting import quoted


class _Refused(ValueError):
    """What the strict loader refuses beyond PyYAML's own errors; `read_yaml` names the source."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (the
    safe loader keeps the last one silently, so an edit above a forgotten line does nothing),
    and so is a key that is a list or a mapping (YAML's ``? [a, b]``: no config has one), and an
    alias met while the node its anchor names is still being read (``a: &x [*x]``: a value that
    holds itself), refused as the document is composed, before any value is built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open_anchors: set[str] = set()  # anchors whose nodes are being composed (PyYAML refuses a reused one)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise _Refused(
                    "an alias (`*name`) stands inside the value its anchor (`&name`) names, so that value holds "
                    "itself; clipcond reads no value without end"
                )
            return super().compose_node(parent, index)
        # a node without an anchor adds None, which no alias names
        self._open_anchors.add(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.discard(event.anchor)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):
                raise _Refused(
                    f"line {line}: a key must be a plain value (a name or a number), got the "
                    f"{type(key).__name__} {quoted(key)}"
                )
            if key in seen:
                raise _Refused(f"line {line}: the key {quoted(key)} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class NotYaml(ValueError):
    """Text that YAML cannot read (a tab where YAML wants spaces, an unclosed bracket, a
    ``!!python`` tag, several documents in one file); the message names the source and, where
    YAML gives it, the line and column."""


def _not_yaml(error: yaml.YAMLError, source: str) -> NotYaml:
    """`error` as one `NotYaml` line: ``<source>: line L, column C: <what YAML found>``."""
    if isinstance(error, yaml.reader.ReaderError):  # its own message names "<unicode string>"
        # `character` is an int: PyYAML's reader gives the code point (or, for undecodable bytes, the byte)
        return NotYaml(
            f"{source}: not valid YAML: the character #x{error.character:04x} at character {error.position + 1}: "
            f"{error.reason}"
        )
    if not isinstance(error, yaml.MarkedYAMLError):
        return NotYaml(f"{source}: not valid YAML: {' '.join(str(error).split())}")
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = " ".join(part for part in (error.context, error.problem) if part)
    if "'\\t'" in problem:
        problem += " (YAML indents with spaces, not tabs)"
    return NotYaml(f"{source}: not valid YAML: {where}{' '.join(problem.split())}")


def read_yaml(text: str | bytes, source: str) -> Any:
    """The YAML document `text` (from `source`, named in errors), read safely: no Python
    objects, no key twice in a mapping.

    Raises:
        NotYaml: (a ValueError) not YAML, or a tag YAML's safe loader does not build (``!!python``);
            the message names `source`, and the line and column where YAML gives them.
        ValueError: not UTF-8, nested too deeply to read, a key given twice, a key that is a
            list or a mapping, or a value that holds itself (an alias inside its own anchor); the
            message names `source` (and the line of the key).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except _Refused as error:
        raise ValueError(f"{source}: {error}") from error
    except yaml.YAMLError as error:
        raise _not_yaml(error, source) from error
    except RecursionError as error:
        raise ValueError(f"{source}: nested too deeply to read") from error


__all__ = ["NotYaml", "read_yaml"]
