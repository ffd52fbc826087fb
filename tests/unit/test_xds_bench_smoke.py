"""loadtest/xds_bench.py's pure parts, cheaply: the synthetic input, one build, the report.

No Envoy and no timing assertions: the figures are the benchmark's business; this only
keeps its generator and report writer working as the code under them changes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from junction.catalog.model import Catalog, Health
from junction.config.load import load_config
from junction.xds.resources import CLUSTER, ENDPOINT, ROUTE
from junction.xds.translate import translate
from junction.xds.validate import check_snapshot

BENCH = Path(__file__).resolve().parents[2] / "loadtest" / "xds_bench.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("xds_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("xds_bench", module)
    spec.loader.exec_module(module)
    return module


def test_synthetic_config_and_catalog_translate_to_a_publishable_snapshot() -> None:
    bench = _bench()
    config = load_config(bench.synthetic_config(12), "bench")
    services = bench.synthetic_instances(12, 4)
    assert config.cluster_names() == tuple(bench.service_name(i) for i in range(12))
    snap = translate(config, Catalog(services))
    assert check_snapshot(snap) == []
    assert snap.counts() == {
        "Cluster": 12,
        "ClusterLoadAssignment": 12,
        "Listener": 1,
        "RouteConfiguration": 1,
    }
    cla = snap.of_type(ENDPOINT)["svc-0003"].message
    assert sum(len(loc.lb_endpoints) for loc in cla.endpoints) == 4
    assert {loc.locality.zone for loc in cla.endpoints} == {"zone-a", "zone-b", "zone-c"}
    # One weighted pair (12 // 10 = 1): svc-0000 and svc-0001 share a prefix 90/10.
    [vhost] = snap.of_type(ROUTE)["junction_routes"].message.virtual_hosts
    weighted = [r for r in vhost.routes if r.route.HasField("weighted_clusters")]
    assert len(weighted) == 1 and weighted[0].match.prefix == "/pair-0"
    assert len(snap.of_type(CLUSTER)) == 12


def test_flip_first_changes_one_instance_and_flips_back() -> None:
    bench = _bench()
    instances = bench.synthetic_instances(1, 3)["svc-0000"]
    once = bench.flip_first(instances)
    assert once[0].health is Health.UNHEALTHY and once[1:] == instances[1:]
    assert bench.flip_first(once) == instances


def test_the_report_replaces_only_its_own_section(tmp_path: Path) -> None:
    bench = _bench()
    path = tmp_path / "benchmarks.md"
    other = "<!-- extproc-bench:start -->\nTHEIRS\n<!-- extproc-bench:end -->\n"
    path.write_text("# Benchmarks\n\n" + other)
    bench.write_section(path, f"{bench.START}\nfirst\n{bench.END}\n")
    bench.write_section(path, f"{bench.START}\nsecond\n{bench.END}\n")
    text = path.read_text()
    assert other in text and "second" in text and "first" not in text
    assert text.count(bench.START) == 1
    assert bench.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert bench.percentile([1.0, 2.0, 3.0], 0.5) == 2.0
