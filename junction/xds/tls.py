"""Mutual TLS for the gRPC services Envoy calls (xDS, access logs), both ends.

Server side: :meth:`TlsFiles.server_credentials` -- client certificates required
(``grpc.ssl_server_credentials(..., require_client_auth=True)``), so only an Envoy holding
a certificate of the given CA gets a handshake at all. :func:`peer_identities` reads the
client certificate's subject alternative names from a call's auth context, for
``--require-node-identity`` (a node id must be one of them, so one Envoy cannot speak for
another).

Envoy side: :func:`upstream_tls_socket` is the ``envoy.transport_sockets.tls``
transport socket (``UpstreamTlsContext``: Envoy's certificate and key, the CA that must
have signed the server's, ALPN ``h2`` for gRPC) that ``junction bootstrap --tls-*`` puts
on the ``junction_xds`` and ``junction_als`` clusters. Files are named, not inlined:
Envoy reads them itself, and rotating them needs no new bootstrap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import any_pb2

from junction.xds.errors import XdsError

__all__ = [
    "Impersonation",
    "TlsError",
    "TlsFiles",
    "check_identity",
    "peer_identities",
    "upstream_tls_socket",
]

_TLS_SOCKET = "envoy.transport_sockets.tls"


class TlsError(XdsError):
    """A TLS file cannot be read (the message names the flag and the file)."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this end's certificate chain and key, and the CA its peers must chain to."""

    cert: str
    key: str
    ca: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert, key, ca) bytes; :class:`TlsError` naming the first unreadable one."""
        out = []
        for flag, path in (
            ("--tls-cert", self.cert),
            ("--tls-key", self.key),
            ("--tls-ca", self.ca),
        ):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise TlsError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None
            if b"-----BEGIN " not in data:
                raise TlsError(f"{flag} {path}: not a PEM file")
            out.append(data)
        return out[0], out[1], out[2]

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate signed by ``ca``."""
        cert, key, ca = self.read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )


def peer_identities(auth_context: Mapping[str, Sequence[bytes]]) -> frozenset[str]:
    """The subject alternative names of the peer's verified certificate (DNS names, URIs,
    IPs, as gRPC reports them); empty without TLS."""
    return frozenset(
        v.decode("utf-8", "replace") for v in auth_context.get("x509_subject_alternative_name", ())
    )


def upstream_tls_socket(files: TlsFiles, server_name: str = "") -> base_pb2.TransportSocket:
    """Envoy's TLS transport socket for a gRPC cluster of Junction's: present
    ``files.cert``/``files.key``, accept only a server certificate chaining to
    ``files.ca`` (and, with ``server_name``, send it as SNI)."""
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificates=[
                common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(filename=files.cert),
                    private_key=base_pb2.DataSource(filename=files.key),
                )
            ],
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=files.ca)
            ),
            alpn_protocols=["h2"],  # gRPC is HTTP/2
        ),
        sni=server_name,
    )
    packed = any_pb2.Any()
    packed.Pack(context, deterministic=True)
    return base_pb2.TransportSocket(name=_TLS_SOCKET, typed_config=packed)


class Impersonation(XdsError):
    """A node id that the client certificate does not name (``--require-node-identity``)."""


def check_identity(request: Any, identities: frozenset[str]) -> None:
    """Checked before the core sees the request: an impersonating stream must not touch
    the real node's state (claiming its types would supersede the real stream)."""
    node_id = request.node.id if request.HasField("node") else ""
    if node_id and node_id not in identities:
        names = ", ".join(sorted(identities)) or "none"
        raise Impersonation(
            f"node id {node_id!r} is not named by the client certificate "
            f"(subject alternative names: {names})"
        )
