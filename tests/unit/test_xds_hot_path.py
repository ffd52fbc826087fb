"""What the hot-path shortcuts of a one-instance change must not change (loadtest/xds_bench.py
measures their speed; these tests only pin that the answers stay the same)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from junction.catalog.model import Catalog, Instance
from junction.config.load import load_config
from junction.xds.incremental import IncrementalTranslator
from junction.xds.names import ROUTE_CONFIG_NAME
from junction.xds.protocol_state import Subscription, selection, version_of
from junction.xds.resources import ADS_ORDER, CLUSTER, ENDPOINT, ROUTE, Snapshot
from junction.xds.translate import translate
from junction.xds.validate import check_snapshot
from junction.xds.view import Holding, compute_view

CONFIG = """
listener:
  listen: {address: 127.0.0.1, port: 8000}
route:
  domain: ["example.com"]
  cluster:
    a: {prefix: ["/a"]}
    b: {prefix: ["/b"]}
cluster:
  loadbalancer: {a: {}, b: {}}
"""


def _catalog(b_address: str = "10.0.0.2") -> Catalog:
    return Catalog({"a": (Instance("10.0.0.1", 80),), "b": (Instance(b_address, 80),)})


def test_check_snapshot_sees_a_problem_in_the_one_resource_that_changed() -> None:
    config = load_config(CONFIG, "test")
    translator = IncrementalTranslator()
    good = translator.translate(config, _catalog())
    assert check_snapshot(good) == []
    bad = translator.translate(config, _catalog("db.internal"))
    # Only b's assignment is a new object; a's are reused and were checked before.
    assert bad.of_type(ENDPOINT)["a"] is good.of_type(ENDPOINT)["a"]
    assert check_snapshot(bad) == [
        "ClusterLoadAssignment 'b': endpoint address 'db.internal' is not an IP"
    ]
    assert check_snapshot(translator.translate(config, _catalog())) == []


def test_check_snapshot_rechecks_another_object_with_the_same_name_and_version() -> None:
    config = load_config(CONFIG, "test")
    good = IncrementalTranslator().translate(config, _catalog())
    assert check_snapshot(good) == []
    res = good.of_type(CLUSTER)["a"]
    other = type(res.message)()
    other.CopyFrom(res.message)
    other.name = "not-a"
    forged = replace(res, message=other)  # same key, payload and version; another message
    clusters = {"a": forged, "b": good.of_type(CLUSTER)["b"]}
    bad = Snapshot({t: dict(good.of_type(t)) for t in good.resources} | {CLUSTER: clusters})
    problems = check_snapshot(bad)
    assert "Cluster 'a': the message is named 'not-a'" in problems
    assert "Cluster 'a': payload and message differ" in problems


def test_check_snapshot_rechecks_a_remembered_route_table_against_new_clusters() -> None:
    config = load_config(CONFIG, "test")
    good = IncrementalTranslator().translate(config, _catalog())
    assert check_snapshot(good) == []
    # The same RouteConfiguration object (already checked), but cluster b is gone.
    without_b = Snapshot(
        {t: {n: r for n, r in good.of_type(t).items() if n != "b"} for t in good.resources}
    )
    assert without_b.of_type(ROUTE) == good.of_type(ROUTE)
    problems = check_snapshot(without_b)
    assert len(problems) == 1
    assert "route '/b': cluster 'b' is not in CDS" in problems[0]


# ---- the xDS core -------------------------------------------------------------------------


def test_a_type_version_is_version_of_its_resources_by_key() -> None:
    snap = IncrementalTranslator().translate(load_config(CONFIG, "test"), _catalog())
    for t in ADS_ORDER:
        assert snap.versions[t] == version_of(snap.of_type(t))
    # Filed under another key than its name (check_snapshot refuses it; versions still agree).
    odd = Snapshot({CLUSTER: {"alias": snap.of_type(CLUSTER)["a"]}})
    assert odd.versions[CLUSTER] == version_of(odd.of_type(CLUSTER))


def test_selection_is_select_and_version_of_whether_or_not_it_covers_everything() -> None:
    snap = IncrementalTranslator().translate(load_config(CONFIG, "test"), _catalog())
    resources = snap.of_type(ENDPOINT)
    for sub in (
        Subscription(wildcard=True),
        Subscription(names={"a", "b"}),
        Subscription(names={"a", "b", "c"}),
        Subscription(names={"b"}),
        Subscription(),
    ):
        chosen, version = selection(sub, resources, snap.versions[ENDPOINT])
        assert dict(chosen) == sub.select(resources)
        assert list(chosen) == list(sub.select(resources))  # same (sorted) order
        assert version == version_of(sub.select(resources))


def test_view_serves_the_targets_own_mappings_unless_something_is_retained() -> None:
    snap = IncrementalTranslator().translate(load_config(CONFIG, "test"), _catalog())
    everything = {t: Holding(acked=dict(snap.of_type(t))) for t in ADS_ORDER}
    view = compute_view(snap, everything)
    assert view.of_type(CLUSTER) is snap.of_type(CLUSTER)
    assert view.of_type(ENDPOINT) is snap.of_type(ENDPOINT)
    assert view.converged


def test_route_readiness_follows_the_targets_clusters_for_the_same_route() -> None:
    """The route's needs are remembered per (route version, target CDS version): the same
    route object against another cluster set must be judged afresh."""
    snap = IncrementalTranslator().translate(load_config(CONFIG, "test"), _catalog())
    everything = {t: Holding(acked=dict(snap.of_type(t))) for t in ADS_ORDER}
    assert ROUTE_CONFIG_NAME in compute_view(snap, everything).of_type(ROUTE)
    # Same route table, but the target lost cluster b: the route must wait (not be sent).
    without_b = Snapshot(
        {t: {n: r for n, r in snap.of_type(t).items() if n != "b"} for t in snap.resources}
    )
    view = compute_view(without_b, everything)
    assert ROUTE_CONFIG_NAME in view.waiting_of(ROUTE)
    # And with b's endpoints not ACKed yet, it waits too.
    no_b_eds = dict(everything)
    no_b_eds[ENDPOINT] = Holding(acked={"a": snap.of_type(ENDPOINT)["a"]})
    assert ROUTE_CONFIG_NAME in compute_view(snap, no_b_eds).waiting_of(ROUTE)
    assert ROUTE_CONFIG_NAME in compute_view(snap, everything).of_type(ROUTE)


# ---- sharing unchanged types between snapshots ---------------------------------------------


def test_snapshot_replace_is_the_whole_build_sharing_the_unchanged_types() -> None:
    config = load_config(CONFIG, "test")
    first = IncrementalTranslator().translate(config, _catalog())
    whole = IncrementalTranslator().translate(config, _catalog("10.0.0.9"))
    replaced = first.replace(
        {ENDPOINT: dict(whole.of_type(ENDPOINT))}, origin="o", config_version="v"
    )
    assert replaced.version == whole.version and replaced.versions == whole.versions
    assert {t: dict(replaced.of_type(t)) for t in ADS_ORDER} == {
        t: dict(whole.of_type(t)) for t in ADS_ORDER
    }
    assert (replaced.origin, replaced.config_version) == ("o", "v")
    assert replaced.of_type(CLUSTER) is first.of_type(CLUSTER)
    assert first.replace({}).version == first.version
    with pytest.raises(ValueError, match="not a served type URL"):
        first.replace({"type.googleapis.com/nope": {}})


def test_incremental_translation_equals_translate_change_after_change() -> None:
    config = load_config(CONFIG, "test")
    translator = IncrementalTranslator()
    for address in ("10.0.0.2", "10.0.0.3", "10.0.0.3", "10.0.0.2"):
        got = translator.translate(config, _catalog(address))
        want = translate(config, _catalog(address))
        assert got.version == want.version
        assert {t: dict(got.of_type(t)) for t in ADS_ORDER} == {
            t: dict(want.of_type(t)) for t in ADS_ORDER
        }


def test_check_snapshot_sees_an_assignment_gone_beside_remembered_clusters() -> None:
    good = IncrementalTranslator().translate(load_config(CONFIG, "test"), _catalog())
    assert check_snapshot(good) == []
    only_b = good.replace({ENDPOINT: {"b": good.of_type(ENDPOINT)["b"]}})
    assert only_b.of_type(CLUSTER) is good.of_type(CLUSTER)  # the clusters' facts are reused
    assert check_snapshot(only_b) == ["Cluster 'a': no ClusterLoadAssignment named 'a' for its EDS"]
