"""The xDS type state has one owner: named transitions, typed events, explicit fast paths.

Scripts of transitions on :class:`TypeState` (no stream, no I/O), and a check of the
protocol cores' source that they never write a state field themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path

from xds_snapshots import snapshot

from junction.xds.events import Ack, Nack, Sent, StaleNonce, Subscribed, Unsubscribed
from junction.xds.protocol import Output
from junction.xds.resources import CLUSTER, ENDPOINT, ROUTE, Resource, digest_versions
from junction.xds.type_state import Inflight, TypeState
from junction.xds.view import compute_view

XDS = Path(__file__).resolve().parents[2] / "junction" / "xds"
CORES = ("protocol.py", "protocol_sotw.py", "protocol_delta.py")
MUTATORS = {
    "add",
    "append",
    "clear",
    "difference_update",
    "discard",
    "extend",
    "pop",
    "remove",
    "setdefault",
    "update",
}


def _foreign_writes(tree: ast.AST) -> list[str]:
    """Stores, deletes and mutating calls on anything but a core's own ``self.x``."""

    def foreign(node: ast.expr) -> bool:
        # ``self.x`` is the core's own attribute; ``ts.x``, ``st.sub.x``, ``self.node.x``
        # are the state types' fields.
        if isinstance(node, ast.Attribute):
            return not (isinstance(node.value, ast.Name) and node.value.id == "self")
        if isinstance(node, ast.Subscript):
            return foreign(node.value)
        return False

    bad: list[str] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        for target in targets:
            parts = target.elts if isinstance(target, ast.Tuple) else [target]
            bad.extend(f"line {p.lineno}: {ast.unparse(p)}" for p in parts if foreign(p))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in MUTATORS
            and foreign(node.func.value)
        ):
            bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    return bad


def test_the_protocol_cores_write_no_state_field() -> None:
    found = {f: _foreign_writes(ast.parse((XDS / f).read_text())) for f in CORES}
    assert {f: w for f, w in found.items() if w} == {}


def test_the_source_check_sees_a_field_write() -> None:
    sample = "ts.acked_version = 'x'\nst.client.pop('a')\ndel st.client['b']\nself.n = 1\n"
    assert _foreign_writes(ast.parse(sample)) == [
        "line 1: ts.acked_version",
        "line 3: st.client['b']",
        "line 2: st.client.pop('a')",
    ]


def _inflight(nonce: str, resources: dict[str, Resource], *, restore: bool = False) -> Inflight:
    version = digest_versions({n: r.version for n, r in resources.items()})
    return Inflight(nonce, version, resources, (), "test", "v1", restore)


def test_a_sotw_script_of_transitions_returns_its_events() -> None:
    snap = snapshot({"a": 1, "b": 1})
    clusters = dict(snap.of_type(CLUSTER))
    ts = TypeState(CLUSTER)
    st = ts.claim(owner=1)
    ts.adopt("")
    assert ts.subscribe_sotw([], first=True) == [Subscribed(CLUSTER, (), True)]
    assert st.sub.wildcard
    sent = ts.record_send(_inflight("n1", clusters), at=5.0)
    assert sent == Sent(CLUSTER, snap.versions[CLUSTER], "n1", 2, 0, False)
    assert st.awaiting and ts.pending.keys() == {"a", "b"} and ts.sent_at == 5.0
    assert ts.on_ack("n1", delta=False) == Ack(CLUSTER, snap.versions[CLUSTER], "n1")
    assert ts.acked_version == snap.versions[CLUSTER] and not ts.pending and not st.awaiting
    # A NACK poisons the version and asks for the ACKed content back.
    only_a = {"a": clusters["a"]}
    ts.record_send(_inflight("n2", only_a), at=6.0)
    nack = ts.on_nack("n2", "bad", at=7.0, kept_version=ts.acked_version, delta=False)
    assert isinstance(nack, Nack) and nack.error_detail == "bad"
    assert nack.version in ts.poisoned_versions
    assert ts.nack is not None and ts.nack.at == 7.0
    assert st.take_restore() == set() and st.take_restore() is None
    assert ts.subscribe_sotw(["a"], first=False) == [
        Subscribed(CLUSTER, ("a",), False),
        Unsubscribed(CLUSTER, (), True),
    ]
    assert ts.acked_versions.keys() == {"a"}


def test_a_delta_nack_puts_the_client_back_on_its_acked_versions() -> None:
    snap = snapshot({"a": 1})
    old = snap.of_type(CLUSTER)["a"]
    new = snapshot({"a": 1}, lb={"a": 1}).of_type(CLUSTER)["a"]
    ts = TypeState(CLUSTER)
    st = ts.claim(owner=1)
    ts.adopt_initial({"a": old.version}, {"a": old})
    assert ts.acked == {"a": old} and st.client == {"a": old.version}
    ts.subscribe_delta([], [], first=True)
    st.record_delta({"a": new}, set(), set())
    ts.record_send(_inflight("n1", {"a": new}), at=1.0)
    ts.on_nack("n1", "no", at=2.0, kept_version=ts.acked_version, delta=True)
    assert st.client == {"a": old.version}
    assert ("a", new.version) in ts.poisoned_resources
    assert st.take_restore() == {"a"}


def test_release_only_by_the_owning_stream() -> None:
    ts = TypeState(ROUTE)
    ts.claim(owner=1)
    newer = ts.claim(owner=2)
    ts.release(1)
    assert ts.stream is newer and ts.owned_by(1) is None
    ts.release(2)
    assert ts.stream is None


def test_held_token_changes_with_every_change_of_what_the_node_holds() -> None:
    snap = snapshot({"a": 1})
    ts = TypeState(CLUSTER)
    ts.claim(owner=1)
    tokens = [ts.held_token()]
    ts.adopt("")
    tokens.append(ts.held_token())
    ts.record_send(_inflight("n1", dict(snap.of_type(CLUSTER))), at=0.0)
    tokens.append(ts.held_token())
    ts.on_ack("n1", delta=False)
    tokens.append(ts.held_token())
    ts.learn(dict(snap.of_type(CLUSTER)))
    tokens.append(ts.held_token())
    ts.subscribe_sotw(["b"], first=False)  # "a" is dropped: no longer held
    tokens.append(ts.held_token())
    assert len(set(tokens)) == len(tokens)
    # Nothing held changes: the token stands (the view is reused).
    ts.subscribe_sotw(["b"], first=False)
    ts.retarget("s", "t", frozenset())
    ts.request_rewarm(["x"])
    assert ts.held_token() == tokens[-1]


def test_snapshot_owns_its_mappings_by_identity_only() -> None:
    snap = snapshot({"a": 1, "b": 1})
    own = snap.of_type(CLUSTER)
    assert snap.owns(CLUSTER, own)
    assert not snap.owns(CLUSTER, dict(own))  # equal content, but a copy: rehash it
    assert not snap.owns(ENDPOINT, own)
    # An unchanged view hands out the snapshot's own mappings, so the cores skip rehashing.
    view = compute_view(snap, {})
    assert snap.owns(CLUSTER, view.of_type(CLUSTER))
    assert snap.owns(ENDPOINT, view.of_type(ENDPOINT))


def test_versions_of_is_remembered_per_mapping_object() -> None:
    snap = snapshot({"a": 1, "b": 1})
    st = TypeState(CLUSTER).claim(owner=1)
    first = st.versions_of(snap.of_type(CLUSTER))
    assert st.versions_of(snap.of_type(CLUSTER)) is first
    other = snapshot({"a": 1, "b": 1}, lb={"a": 1, "b": 1}).of_type(CLUSTER)
    assert st.versions_of(other) is not first
    assert st.versions_of(other) == {n: r.version for n, r in other.items()}


def test_the_core_says_when_a_node_changed() -> None:
    assert Output(events=(Ack(CLUSTER, "v", "n"),)).node_changed
    assert not Output(events=(StaleNonce(CLUSTER, "n", "m"),)).node_changed
    assert not Output().node_changed
