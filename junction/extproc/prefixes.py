"""Envoy's prefix route matching, in time independent of the number of routes.

Envoy tries a virtual host's routes in order and takes the first whose ``prefix`` the path
starts with (``RouteMatch.prefix``: a byte prefix, not a path segment: ``/api`` matches
``/apiary``). Junction orders routes longest prefix first, so the first match is the
longest matching prefix; :class:`PrefixIndex` keeps the first-in-order rule anyway, so it
is exact for any order.

A radix tree compiled once per table: each edge is a byte string, children are keyed by
their first byte, and a lookup walks the path once, doing one dict lookup and one
``startswith`` per branching point on the way (a handful), instead of one ``startswith``
per route.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["PrefixIndex"]

T = TypeVar("T")


class _Node(Generic[T]):
    __slots__ = ("edges", "rank", "value")

    def __init__(self) -> None:
        #: first byte -> (the edge's label, the child at its end)
        self.edges: dict[int, tuple[bytes, _Node[T]]] = {}
        #: The route ending exactly here (the earliest in order), and its position.
        self.value: T | None = None
        self.rank = -1


class PrefixIndex(Generic[T]):
    """``(prefix, value)`` pairs in Envoy's route order; :meth:`match` is Envoy's pick."""

    __slots__ = ("_root",)

    def __init__(self, routes: Iterable[tuple[bytes, T]]) -> None:
        self._root: _Node[T] = _Node()
        for rank, (prefix, value) in enumerate(routes):
            node = self._insert(prefix)
            if node.value is None:  # a repeated prefix never matches in Envoy: first wins
                node.value, node.rank = value, rank

    def _insert(self, prefix: bytes) -> _Node[T]:
        node, pos = self._root, 0
        while pos < len(prefix):
            edge = node.edges.get(prefix[pos])
            if edge is None:
                child: _Node[T] = _Node()
                node.edges[prefix[pos]] = (prefix[pos:], child)
                return child
            label, child = edge
            common = _common(label, prefix, pos)
            if common < len(label):  # split the edge where prefix and label part
                middle: _Node[T] = _Node()
                middle.edges[label[common]] = (label[common:], child)
                node.edges[prefix[pos]] = (label[:common], middle)
                child = middle
            node, pos = child, pos + common
        return node

    def match(self, path: bytes) -> T | None:
        """The value of the first route (in order) whose prefix ``path`` starts with."""
        node = self._root
        best, rank = node.value, node.rank if node.value is not None else 1 << 62
        pos, end = 0, len(path)
        while pos < end:
            edge = node.edges.get(path[pos])
            if edge is None:
                break
            label, node = edge
            if not path.startswith(label, pos):
                break
            pos += len(label)
            if node.value is not None and node.rank < rank:
                best, rank = node.value, node.rank
        return best


def _common(label: bytes, prefix: bytes, pos: int) -> int:
    """Length of the common start of ``label`` and ``prefix[pos:]``."""
    n = min(len(label), len(prefix) - pos)
    i = 0
    while i < n and label[i] == prefix[pos + i]:
        i += 1
    return i
