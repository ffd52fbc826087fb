"""loadtest/canary_bench.py, cheaply: a tiny run end to end, the copy of the old rule on
known cases, and the section writer. The figures are the benchmark's business."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "loadtest" / "canary_bench.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("canary_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("canary_bench", module)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_run_writes_its_section(tmp_path: Path) -> None:
    bench = _bench()
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\nkept\n")
    argv = ["--runs", "2", "--workers", "1", "--only", "+5 points", "--out", str(doc)]
    assert bench.main(argv) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\n## Other\nkept\n")
    assert text.count(bench.START) == 1 and text.count(bench.END) == 1
    assert "| +5 points (1 % -> 6 %), 10 % first step | new |" in text
    assert "| +5 points (1 % -> 6 %), 10 % first step | old |" in text
    assert "rolled back within two intervals" in text
    assert bench.main(argv) == 0  # a second run replaces the section, keeps the rest
    assert doc.read_text().count(bench.START) == 1 and "## Other\nkept\n" in doc.read_text()


def test_the_old_rule_copy() -> None:
    bench = _bench()
    policy = bench.OldPolicy((1, 5, 100))
    # Under min-requests: never judged.
    assert bench.old_violations((99, 99, 900.0), (1000, 0, 10.0), policy) == []
    # 2 % against 0.5 %: over max-error-increase (1 point), not over max-error-rate.
    assert bench.old_violations((100, 2, 10.0), (1000, 5, 10.0), policy) == ["max-error-increase"]
    # p99 1.5x the baseline's and more than 5 ms slower: a violation; 4 ms slower: not.
    assert bench.old_violations((100, 0, 16.0), (100, 0, 10.0), policy) == ["max-p99-ratio"]
    assert bench.old_violations((200, 0, 14.0), (200, 0, 9.0), policy) == []
    assert bench.old_violations((100, 6, None), (10, 0, None), policy) == ["max-error-rate"]


def test_the_histogram_quantiles_within_one_percent() -> None:
    bench = _bench()
    rng = np.random.default_rng(3)
    values = rng.lognormal(np.log(20.0), 0.5, 5000)
    hist = bench.Histogram()
    hist.add(values[:2500])
    hist.add(values[2500:])
    for q in (0.5, 0.99):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(hist.quantile(q) - exact) <= 0.011 * exact
    assert bench.Histogram().quantile(0.99) is None
