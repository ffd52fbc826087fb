"""YAML parsing that remembers where things are.

PyYAML's composed node tree keeps the line of every key and value; we keep it beside the
plain data so validation errors can say ``line 12: route.cluster.web-api-go.weight: ...``.
Duplicate keys are rejected: PyYAML silently keeps the last one, and a pasted duplicate
cluster entry must not quietly change routing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from junction.config.errors import ConfigError, Problem, format_path

__all__ = ["Document", "parse_yaml"]

# libyaml's parser when PyYAML was built with it: 7x faster on a 1000-cluster document
# (37 ms against 262 ms; docs/benchmarks.md), the same nodes and marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Document:
    """Parsed YAML: the plain data and the node tree that knows the lines."""

    data: Any
    root: yaml.Node | None

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """1-based line of the deepest node on ``path`` that exists (None: empty document)."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        # A problem with a key (unknown, duplicate) is on the key's line;
                        # a problem with a value on the value's.
                        line = value.start_mark.line + 1
                        node = value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def parse_yaml(text: str, origin: str) -> Document:
    """Parse ``text``; raise :class:`ConfigError` for syntax errors and duplicate keys."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(origin, [Problem("", f"invalid YAML: {problem}", line)]) from None
    problems: list[Problem] = []
    _check_duplicates(root, [], problems)
    if problems:
        raise ConfigError(origin, problems)
    if root is None:
        return Document(None, None)
    loader = yaml.SafeLoader("")
    try:
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:  # e.g. an unhashable key
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(origin, [Problem("", f"invalid YAML: {exc}", line)]) from None
    finally:
        loader.dispose()
    return Document(data, root)


def _check_duplicates(
    node: yaml.Node | None, path: list[str | int], problems: list[Problem]
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                dotted = format_path([*path, name])
                problems.append(Problem(dotted, "duplicate key", key.start_mark.line + 1))
            seen.add(name)
            _check_duplicates(value, [*path, name], problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, [*path, i], problems)
