"""Junction's layers point one way: no import cycle, no private name across modules.

Walks the AST of every ``junction/**.py`` (imports inside functions and under
``TYPE_CHECKING`` count too: a cycle hidden by a lazy import is still a cycle) and checks

- no cycle between modules;
- no cycle between the top-level units (``junction.config``, ``junction.xds``, ...,
  ``junction.app``), so the layers can be learnt bottom-up
  (config -> catalog -> translation/decisions -> services -> app/cli);
- no ``_private`` name imported from, or read off, another Junction module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "junction"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(
    module: str, tree: ast.Module, known: Mapping[str, object], is_package: bool
) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for every Junction import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            if source not in known:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:  # `from junction.x import module`
                    yield sub, None, node.lineno
                else:
                    yield source, alias.name, node.lineno


def _graph(trees: Mapping[str, ast.Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in trees}
    for module, tree in trees.items():
        is_package = (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()
        for target, _, _ in _imports(module, tree, trees, is_package):
            if target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _unit(module: str) -> str:
    """``junction.xds.server`` -> ``junction.xds``; ``junction.app`` stays itself."""
    return ".".join(module.split(".")[:2])


def _private_uses(trees: Mapping[str, ast.Module]) -> list[str]:
    found = []
    for module, tree in trees.items():
        is_package = (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in trees and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, is_package, node)
                for alias in node.names:
                    if f"{source}.{alias.name}" in trees:
                        aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        for target, name, line in _imports(module, tree, trees, is_package):
            if name is not None and name.startswith("_") and target != module:
                found.append(f"{module}:{line} imports {name} from {target}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(found)


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(_graph(_modules())) == []


def test_no_import_cycle_between_top_level_units() -> None:
    units: dict[str, set[str]] = {}
    for module, targets in _graph(_modules()).items():
        units.setdefault(_unit(module), set()).update(
            _unit(t) for t in targets if _unit(t) != _unit(module)
        )
    assert _cycles(units) == []


#: The top-level units, lowest first: each may import only units before it (README,
#: "Layout"). A unit not listed here is held only to the no-cycle rule.
ORDER = (
    "junction.errors",
    "junction.admin",
    "junction.metrics",
    "junction.sequential",
    "junction.names",
    "junction.tasks",
    "junction.envoy_admin",
    "junction.envoy_process",
    "junction.config",
    "junction.catalog",
    "junction.als",
    "junction.canary",
    "junction.drain",
    "junction.extproc",
    "junction.xds",
    "junction.status",
    "junction.loop",
    "junction.app",
    "junction.cli",
    "junction.__main__",
)


def test_units_import_only_units_below_them() -> None:
    rank = {unit: i for i, unit in enumerate(ORDER)}
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in _graph(_modules()).items()
        for target in targets
        if _unit(module) in rank
        and _unit(target) in rank
        and rank[_unit(target)] > rank[_unit(module)]
    )
    assert upward == []


def test_no_private_name_across_modules() -> None:
    assert _private_uses(_modules()) == []


def test_the_checks_see_a_cycle_and_a_private_import() -> None:
    trees = {
        "junction.a": ast.parse("from junction.b import _hidden\n"),
        "junction.b": ast.parse("import junction.a as a\nx = a._secret\n"),
    }
    assert _cycles(_graph(trees)) == [["junction.a", "junction.b"]]
    assert _private_uses(trees) == [
        "junction.a:1 imports _hidden from junction.b",
        "junction.b:2 uses junction.a._secret",
    ]
