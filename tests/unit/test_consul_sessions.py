"""ConsulDouble's sessions and locks, driven by py-consul, behave as Consul documents them.

Each test names the documented behaviour it checks (api-docs/session, api-docs/kv,
docs/automate/session). Time passes through the double's clock (``advance``), never by
sleeping, so TTLs are Consul's real ones (10 s minimum).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import consul
import consul.aio
import pytest
from consul.callback import CB
from consul_double import ConsulDouble

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

WAIT = 5.0  # bound on every await; the double answers in milliseconds


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble() as d:
        yield d


@pytest.fixture
async def client(double: ConsulDouble) -> AsyncIterator[consul.aio.Consul]:
    c = consul.aio.Consul(host="127.0.0.1", port=double.port)
    try:
        yield c
    finally:
        await c.close()


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, WAIT)


async def raw_create(client: consul.aio.Consul, body: dict[str, Any]) -> str:
    """``PUT /v1/session/create`` with a body py-consul's helper cannot express."""
    sid: str = await bounded(
        client.http.put(CB.json(is_id=True), "/v1/session/create", data=json.dumps(body))
    )
    return sid


async def test_create_info_list_renew_destroy(client: consul.aio.Consul) -> None:
    sid = await bounded(client.session.create(name="leader", ttl=10, lock_delay=3))
    _, info = await bounded(client.session.info(sid))
    assert info["ID"] == sid and info["Name"] == "leader" and info["Node"] == "consul-double"
    assert info["TTL"] == "10s" and info["Behavior"] == "release"  # the default behavior
    assert info["LockDelay"] == 3_000_000_000  # a Go duration: nanoseconds
    assert info["NodeChecks"] == ["serfHealth"]  # the default check
    _, listed = await bounded(client.session.list())
    assert [s["ID"] for s in listed] == [sid]
    _, on_node = await bounded(client.session.node("consul-double"))
    assert [s["ID"] for s in on_node] == [sid]
    renewed = await bounded(client.session.renew(sid))
    assert renewed["ID"] == sid and renewed["TTL"] == "10s"
    assert await bounded(client.session.destroy(sid)) is True
    _, gone = await bounded(client.session.info(sid))
    assert gone is None
    with pytest.raises(consul.NotFound, match=f"Session id '{sid}' not found"):
        await bounded(client.session.renew(sid))
    assert await bounded(client.session.destroy(sid)) is True  # destroying twice is fine


async def test_the_ttl_is_never_cut_short_and_runs_out_by_twice_the_ttl(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    # Consul: not invalidated before the TTL; the server's timer is TTL x 2.
    sid = await bounded(client.session.create(ttl=10))
    double.advance(19.5)
    assert (await bounded(client.session.renew(sid)))["ID"] == sid  # renewing resets it
    double.advance(19.5)
    _, info = await bounded(client.session.info(sid))
    assert info is not None
    double.advance(0.6)
    _, info = await bounded(client.session.info(sid))
    assert info is None
    with pytest.raises(consul.NotFound):
        await bounded(client.session.renew(sid))


async def test_acquire_release_session_field_and_lock_index(client: consul.aio.Consul) -> None:
    a = await bounded(client.session.create(ttl=10))
    b = await bounded(client.session.create(ttl=10))
    key = "junction-state/leader/web"
    assert await bounded(client.kv.put(key, "replica-a", acquire=a)) is True
    _, entry = await bounded(client.kv.get(key))
    assert (entry["Session"], entry["LockIndex"], entry["Value"]) == (a, 1, b"replica-a")
    assert await bounded(client.kv.put(key, "replica-b", acquire=b)) is False  # held by a
    assert await bounded(client.kv.put(key, "again", acquire=a)) is True  # a holds it already
    _, entry = await bounded(client.kv.get(key))
    assert (entry["Session"], entry["LockIndex"], entry["Value"]) == (a, 1, b"again")
    assert await bounded(client.kv.put(key, "plain")) is True  # a plain write keeps the lock
    _, entry = await bounded(client.kv.get(key))
    assert entry["Session"] == a
    assert await bounded(client.kv.put(key, "x", release=b)) is False  # b does not hold it
    assert await bounded(client.kv.put(key, "released", release=a)) is True
    _, entry = await bounded(client.kv.get(key))
    assert "Session" not in entry and entry["LockIndex"] == 1
    # Released (not invalidated): no lock-delay, b takes it at once; LockIndex counts locks.
    assert await bounded(client.kv.put(key, "replica-b", acquire=b)) is True
    _, entry = await bounded(client.kv.get(key))
    assert (entry["Session"], entry["LockIndex"]) == (b, 2)
    assert await bounded(client.kv.put("other", "x", release=a)) is False  # no such key
    with pytest.raises(consul.ConsulException, match="invalid session"):
        await bounded(client.kv.put(key, "x", acquire="00000000-0000-0000-0000-000000000000"))


async def test_invalidation_releases_the_lock_behind_a_lock_delay(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    a = await bounded(client.session.create(ttl=10, lock_delay=15))
    b = await bounded(client.session.create(ttl=10))
    key = "lock"
    assert await bounded(client.kv.put(key, "a", acquire=a)) is True
    _, held = await bounded(client.kv.get(key))
    assert await bounded(client.session.destroy(a)) is True
    _, entry = await bounded(client.kv.get(key))
    # Behavior release: the key stays, unlocked, its ModifyIndex raised and value kept.
    assert "Session" not in entry and entry["Value"] == b"a"
    assert entry["ModifyIndex"] > held["ModifyIndex"]
    assert await bounded(client.kv.put(key, "b", acquire=b)) is False  # lock-delay runs
    double.advance(14.9)
    assert await bounded(client.session.renew(b))
    assert await bounded(client.kv.put(key, "b", acquire=b)) is False
    double.advance(0.2)
    assert await bounded(client.kv.put(key, "b", acquire=b)) is True


async def test_ttl_expiry_with_delete_behavior_deletes_the_key(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    sid = await bounded(client.session.create(ttl=10, behavior="delete", lock_delay=0))
    assert await bounded(client.kv.put("ephemeral", "x", acquire=sid)) is True
    double.advance(20.1)
    _, entry = await bounded(client.kv.get("ephemeral"))
    assert entry is None


async def test_a_blocking_query_on_the_lock_key_wakes_when_the_holder_expires(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    sid = await bounded(client.session.create(ttl=10))
    assert await bounded(client.kv.put("lock", "x", acquire=sid)) is True
    index, _ = await bounded(client.kv.get("lock"))
    blocked = asyncio.create_task(client.kv.get("lock", index=index, wait="5m"))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    double.advance(20.1)  # no request needed: the double's timer invalidates the session
    new_index, entry = await bounded(blocked)
    assert int(new_index) > int(index) and "Session" not in entry


async def test_a_blocking_wait_runs_on_the_doubles_clock(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    await bounded(client.kv.put("k", "v"))
    index, _ = await bounded(client.kv.get("k"))
    blocked = asyncio.create_task(client.kv.get("k", index=index, wait="60s"))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    double.advance(61)
    same_index, _ = await bounded(blocked)
    assert same_index == index


async def test_a_critical_check_invalidates_the_session_and_refuses_new_ones(
    double: ConsulDouble, client: consul.aio.Consul
) -> None:
    sid = await bounded(client.session.create())
    assert await bounded(client.kv.put("lock", "x", acquire=sid)) is True
    double.set_check("serfHealth", "critical")
    _, info = await bounded(client.session.info(sid))
    assert info is None
    _, entry = await bounded(client.kv.get("lock"))
    assert "Session" not in entry
    with pytest.raises(consul.ConsulException, match="Check 'serfHealth' is in critical state"):
        await bounded(client.session.create())
    # An explicit empty list: no checks at all, the session lives by its TTL alone.
    ttl_only = await raw_create(client, {"NodeChecks": [], "TTL": "10s"})
    _, info = await bounded(client.session.info(ttl_only))
    assert info["NodeChecks"] == []


async def test_bad_sessions_are_refused_with_consuls_messages(client: consul.aio.Consul) -> None:
    with pytest.raises(consul.ConsulException, match="Invalid Session TTL"):
        await raw_create(client, {"TTL": "5s"})  # below the server's session_ttl_min (10s)
    with pytest.raises(consul.ConsulException, match="Invalid Session TTL"):
        await raw_create(client, {"TTL": "25h"})
    with pytest.raises(consul.ConsulException, match="Session TTL 'soon' invalid"):
        await raw_create(client, {"TTL": "soon"})
    with pytest.raises(consul.ConsulException, match="Invalid Behavior setting 'keep'"):
        await raw_create(client, {"Behavior": "keep"})
    with pytest.raises(consul.ConsulException, match="Missing check 'nope' registration"):
        await raw_create(client, {"NodeChecks": ["nope"]})
    with pytest.raises(consul.ConsulException, match="Missing node registration"):
        await raw_create(client, {"Node": "elsewhere"})
    # LockDelay as Consul's handler reads it: a Go duration, or a bare number (seconds
    # below 1000, nanoseconds above).
    for raw, ns in (("250ms", 250_000_000), (2, 2_000_000_000), (5e8, 500_000_000)):
        sid = await raw_create(client, {"LockDelay": raw})
        _, info = await bounded(client.session.info(sid))
        assert info["LockDelay"] == ns


async def test_a_lower_session_ttl_min_allows_short_ttls() -> None:
    # Consul servers take session_ttl_min; integration tests use it for short take-overs.
    async with ConsulDouble(session_ttl_min=1.0) as d:
        c = consul.aio.Consul(host="127.0.0.1", port=d.port)
        try:
            sid = await raw_create(c, {"TTL": "2s", "LockDelay": "500ms"})
            _, info = await bounded(c.session.info(sid))
            assert info["TTL"] == "2s"
            with pytest.raises(consul.ConsulException, match="Invalid Session TTL"):
                await raw_create(c, {"TTL": "500ms"})
        finally:
            await c.close()
