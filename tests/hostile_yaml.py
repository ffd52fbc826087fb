"""Hostile YAML documents shared by the unit and integration tests."""

from __future__ import annotations


def billion_laughs(levels: int = 8, width: int = 9, head: str = "") -> str:
    """``levels`` of ``width`` aliases each (8 x 9: ~1 KB of text, 9^8 leaves expanded),
    after ``head`` (e.g. a valid config, so the aliases are the only problem)."""
    lines = [head.rstrip("\n")] if head else []
    lines.append('lol0: &lol0 ["lol"]')
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"
