"""Delta xDS NACKs the main script does not cover: a rejected removal, and a NACK that
says nothing. Driven by scripted DeltaDiscoveryRequests, as in test_protocol_delta.py."""

from __future__ import annotations

from test_protocol_delta import Script, only, updated
from xds_snapshots import delta_request, snapshot

from junction.xds.protocol import Ack, Nack
from junction.xds.resources import CLUSTER, ENDPOINT


def test_a_nacked_removal_restores_the_resource_and_is_not_retried() -> None:
    good = snapshot({"A": 50, "B": 50}, extra_clusters=("C",))
    s = Script()
    s.connect(good)
    assert set(s.holds(CLUSTER)) == {"A", "B", "C"}
    gone = snapshot({"A": 50, "B": 50}, config_version="v2")  # C removed, nothing else
    cds = only(s.update(gone), CLUSTER)
    assert updated(cds) == {} and list(cds.removed_resources) == ["C"]

    out = s.ack(CLUSTER, gone, error="cluster C: still in use")
    [nack] = [e for e in out.events if isinstance(e, Nack)]
    assert (nack.version, nack.error_detail, nack.config_version) == (
        cds.system_version_info,
        "cluster C: still in use",
        "v2",
    )
    # The node may have half-applied the removal: C comes back at its ACKed version.
    restore = only(out, CLUSTER)
    assert updated(restore) == {"C": good.of_type(CLUSTER)["C"].version}
    assert list(restore.removed_resources) == []
    out = s.ack(CLUSTER, gone)
    assert [e for e in out.events if isinstance(e, Ack)]
    assert out.responses == ()
    # The same target again: the rejected removal is not retried in a loop.
    assert s.update(gone).responses == ()
    assert set(s.holds(CLUSTER)) == {"A", "B", "C"}
    assert set(s.holds(ENDPOINT)) == {"A", "B", "C"}  # C's endpoints were never removed
    assert not s.synced(gone)
    # A new target may remove it again.
    later = snapshot({"A": 50, "B": 50}, lb={"B": 1}, config_version="v3")
    cds, eds = s.update(later).responses  # B's endpoints follow to rewarm it
    assert cds.type_url == CLUSTER and eds.type_url == ENDPOINT
    assert set(updated(cds)) == {"B"} and list(cds.removed_resources) == ["C"]


def test_a_nack_with_an_empty_message_is_still_a_nack() -> None:
    good = snapshot({"A": 50, "B": 50})
    s = Script()
    s.connect(good)
    bad = snapshot({"A": 50, "B": 50}, lb={"B": 2}, config_version="v2")
    cds, _ = s.update(bad).responses
    s.ack(ENDPOINT, bad)
    # error_detail present, message empty (google.rpc.Status with only a code).
    out = s.ack(CLUSTER, bad, error="")
    [nack] = [e for e in out.events if isinstance(e, Nack)]
    assert nack.error_detail == "rejected (code 3, no message)"
    assert nack.version == cds.system_version_info
    assert not [e for e in out.events if isinstance(e, Ack)]
    assert s.holds(CLUSTER) == {n: r.version for n, r in good.of_type(CLUSTER).items()}
    assert not s.synced(bad)


def test_a_request_without_error_detail_is_an_ack() -> None:
    # The converse: an empty error_detail field is a NACK only when it is present.
    snap = snapshot({"A": 100})
    s = Script()
    cds = only(s.send(delta_request(CLUSTER), snap))
    out = s.ack(CLUSTER, snap)
    assert out.events == (Ack(CLUSTER, cds.system_version_info, cds.nonce),)
