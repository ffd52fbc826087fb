"""YAML parsing that remembers where things are.

PyYAML's composed node tree keeps the line of every key and value; we keep it beside the
plain data so validation errors can say ``line 12: route.cluster.web-api-go.weight: ...``.
Duplicate keys are rejected: PyYAML silently keeps the last one, and a pasted duplicate
cluster entry must not quietly change routing.

A document is bounded before anything walks its data (every sidecar reads the same KV key,
so one hostile write reaches every instance): at most :data:`MAX_DOCUMENT_BYTES` of text,
and at most :data:`MAX_EXPANDED_NODES` nodes once aliases are expanded. Composing YAML
keeps an alias as a reference to its anchored node, so a "billion laughs" (8 levels of 9
aliases in 1 KB) composes in microseconds; it is every later walk (duplicate keys,
construction, validation) that would visit 9^8 nodes. The expanded count is computed on
the composed tree with one visit per distinct node, so the check itself is cheap, and an
alias that refers to its own ancestor (a recursive document) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from junction.config.errors import ConfigError, Problem, format_path

__all__ = ["MAX_DOCUMENT_BYTES", "MAX_EXPANDED_NODES", "Document", "parse_yaml"]

#: A config of 1000 clusters with health checks is ~200 KB; Consul KV values are at most
#: 512 KB by default (Consul's ``kv_max_value_size``).
MAX_DOCUMENT_BYTES = 1024 * 1024
#: That 1000-cluster config is ~25,000 nodes; validating a million takes about a second.
MAX_EXPANDED_NODES = 1_000_000

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
    """Parse ``text``; raise :class:`ConfigError` for syntax errors, duplicate keys, and
    documents beyond the bounds (:data:`MAX_DOCUMENT_BYTES`, :data:`MAX_EXPANDED_NODES`)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise ConfigError(
            origin,
            [Problem("", f"document is {size:,} bytes; the limit is {MAX_DOCUMENT_BYTES:,}")],
        )
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(origin, [Problem("", f"invalid YAML: {problem}", line)]) from None
    bound = _expansion_problem(root, MAX_EXPANDED_NODES) if root is not None else None
    if bound is not None:
        raise ConfigError(origin, [bound])
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


# ---- bounds -------------------------------------------------------------------------------


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_sizes(root: yaml.Node) -> dict[int, int] | yaml.Node:
    """Nodes under each distinct node, aliases expanded (by ``id``), one visit per distinct
    node (iterative: no recursion limit); or the node where an alias refers back to one of
    its own ancestors."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    get = sizes.get
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            # A scalar is one node (not stored: most nodes are scalars).
            sizes[key] = 1 + sum(get(id(c), 1) for c in _children(node))
        elif key in open_:
            return node  # reached again below itself: a recursive alias
        elif key not in sizes:
            open_.add(key)
            stack.append((node, True))
            stack.extend(
                (c, False)
                for c in _children(node)
                if not isinstance(c, yaml.ScalarNode) and id(c) not in sizes
            )
    return sizes


def _expansion_problem(root: yaml.Node, limit: int) -> Problem | None:
    """None when the document expands to at most ``limit`` nodes; else a problem naming
    the deepest path that alone exceeds the limit (where the aliases pile up)."""
    if isinstance(root, yaml.ScalarNode):
        return None
    sizes = _expanded_sizes(root)
    if isinstance(sizes, yaml.Node):
        return Problem(
            "", "an alias refers to a node that contains it (recursive)", sizes.start_mark.line + 1
        )
    total = sizes[id(root)]
    if total <= limit:
        return None
    node, path, line = root, list[str | int](), root.start_mark.line + 1
    while True:
        step = _oversized_child(node, sizes, limit)
        if step is None:
            break
        part, node, line = step
        path.append(part)
    return Problem(
        format_path(path),
        f"expands to {sizes.get(id(node), 1):,} YAML nodes through aliases (the whole document to "
        f"{total:,}); the limit is {limit:,}",
        line,
    )


def _oversized_child(
    node: yaml.Node, sizes: dict[int, int], limit: int
) -> tuple[str | int, yaml.Node, int] | None:
    """The first child over ``limit``: its path part, itself, and the line it is used on
    (a key's line, or its sequence's: an alias's own mark is its anchor's)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if sizes.get(id(value), 1) > limit:
                return str(key.value), value, key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            if sizes.get(id(item), 1) > limit:
                return i, item, node.start_mark.line + 1
    return None
