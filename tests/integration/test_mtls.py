"""mTLS for xDS with a real Envoy and a CA made in the test: a good certificate connects;
none, an expired one, or one from another CA is refused; an impersonated node id is
refused (``--require-node-identity``), and the real node is unaffected throughout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import eventually
from envoy.service.discovery.v3 import ads_pb2_grpc
from tls_certs import Authority, Pem
from xds_snapshots import request

from junction.app import ControlPlane, Settings
from junction.envoy_process import EnvoyProcess
from junction.xds.bootstrap import BootstrapOptions, bootstrap
from junction.xds.resources import CLUSTER
from junction.xds.tls import TlsFiles

pytestmark = pytest.mark.slow
BOUND = 30.0  # seconds: a bound on every wait, not a performance goal

CONFIG = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route: {domain: [example.com], cluster: {web-api-go: {prefix: [/]}}}
cluster: {loadbalancer: {web-api-go: {}}}
"""


@dataclass
class Pki:
    ca: Authority
    server: Pem
    edge_a: Pem
    edge_b: Pem
    expired: Pem
    stranger: Pem


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Authority(tmp_path, "junction")
    other = Authority(tmp_path, "other")
    return Pki(
        ca=ca,
        server=ca.issue("server", dns=("localhost",), ips=("127.0.0.1",)),
        edge_a=ca.issue("edge-a", dns=("edge-a",)),
        edge_b=ca.issue("edge-b", dns=("edge-b",)),
        expired=ca.issue("old", dns=("edge-a",), expired=True),
        stranger=other.issue("edge-a", dns=("edge-a",)),
    )


@pytest.fixture
async def plane(tmp_path: Path, pki: Pki) -> AsyncIterator[ControlPlane]:
    config, instances = tmp_path / "c.yaml", tmp_path / "i.yaml"
    config.write_text(CONFIG)
    instances.write_text("services: {web-api-go: [{address: 127.0.0.1, port: 9}]}\n")
    cp = ControlPlane(
        Settings(
            config_path=str(config),
            instances_path=str(instances),
            http_port=0,
            xds_port=0,
            tls=TlsFiles(str(pki.server.cert), str(pki.server.key), str(pki.ca.pem)),
            require_node_identity=True,
            health_nodes=("edge-a",),
            state_dir=str(tmp_path / "state"),
        )
    )
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


def envoy(cp: ControlPlane, pki: Pki, pem: Pem, node_id: str) -> EnvoyProcess:
    assert cp.xds_port is not None
    opts = BootstrapOptions(
        node_id=node_id,
        xds_port=cp.xds_port,
        admin_port=0,
        als_port=None,
        extproc_port=None,
        extproc_http_port=None,
        tls=TlsFiles(str(pem.cert), str(pem.key), str(pki.ca.pem)),
    )
    return EnvoyProcess(bootstrap(opts))


def synced(cp: ControlPlane, node_id: str) -> bool:
    node = cp.cache.node(node_id)
    return node is not None and node.synced


async def refused_by_handshake(cp: ControlPlane, pki: Pki, pem: Pem | None) -> grpc.StatusCode:
    """A gRPC client presenting ``pem`` (None: no certificate) asks for clusters."""
    root = pki.ca.pem.read_bytes()
    creds = (
        grpc.ssl_channel_credentials(root)
        if pem is None
        else grpc.ssl_channel_credentials(root, pem.key.read_bytes(), pem.cert.read_bytes())
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{cp.xds_port}", creds) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the handshake fails: no stream
            await asyncio.wait_for(call.write(request(CLUSTER, node="edge-a")), BOUND)
            await asyncio.wait_for(call.read(), BOUND)
        return info.value.code()


async def test_good_certificate_connects_and_everything_else_is_refused(
    plane: ControlPlane, pki: Pki
) -> None:
    async with envoy(plane, pki, pki.edge_a, "edge-a"):
        await eventually(lambda: synced(plane, "edge-a"), timeout=BOUND)
        assert (await plane.status.verdict()).status in (200, 503)
        assert plane.cache.health_problems(None, ("edge-a",)) == []
        for pem in (None, pki.expired, pki.stranger):
            code = await refused_by_handshake(plane, pki, pem)
            assert code == grpc.StatusCode.UNAVAILABLE, (pem, code)
        # A certificate of the right CA naming edge-b cannot speak for edge-a.
        async with envoy(plane, pki, pki.edge_b, "edge-a"):
            await eventually(
                lambda: plane.xds_refused().get("impersonation", 0) >= 1, timeout=BOUND
            )
        node = plane.cache.node("edge-a")
        assert node is not None and node.synced and node.streams == ("sotw/ads",)
        assert [n.node_id for n in plane.cache.nodes()] == ["edge-a"]


async def test_an_impersonating_grpc_client_gets_permission_denied(
    plane: ControlPlane, pki: Pki
) -> None:
    root = pki.ca.pem.read_bytes()
    creds = grpc.ssl_channel_credentials(
        root, pki.edge_b.key.read_bytes(), pki.edge_b.cert.read_bytes()
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{plane.xds_port}", creds) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(request(CLUSTER, node="edge-a"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), BOUND)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'edge-a' is not named by the client certificate" in str(info.value.details())
        assert "edge-b" in str(info.value.details())
        # Its own name is fine.
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(request(CLUSTER, node="edge-b"))
        response = await asyncio.wait_for(call.read(), BOUND)
        assert response.type_url == CLUSTER
        call.cancel()
    assert plane.cache.node("edge-a") is None
