"""Clients that speak as a load balancer would: a PROXY header, then TLS.

:func:`v1_header` and :func:`v2_header` build the PROXY protocol headers
(https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt) that HAProxy's
``send-proxy`` and ``send-proxy-v2`` write.  :class:`Via` is what
``tests.support.client`` and ``tests.support.ws`` expect of a server (``http``,
``url()``, ``https_port``, ``trust``, ``tls_endpoint()``), for one way of
reaching it: with a header written first, and/or from a chosen loopback
source address (Linux routes all of 127/8 on ``lo``).
"""

from __future__ import annotations

import ipaddress
import struct

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1_header(src: str, src_port: int, dst: str = "127.0.0.1", dst_port=443) -> bytes:
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` (``send-proxy``)."""
    family = "TCP6" if ipaddress.ip_address(src).version == 6 else "TCP4"
    return f"PROXY {family} {src} {dst} {src_port} {dst_port}\r\n".encode()


def v2_header(src: str, src_port: int, dst: str = "127.0.0.1", dst_port=443) -> bytes:
    """The binary v2 header, command PROXY over TCP (``send-proxy-v2``)."""
    source, dest = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version != dest.version:
        dest = ipaddress.ip_address("::1" if source.version == 6 else "127.0.0.1")
    family = 0x21 if source.version == 6 else 0x11  # AF_INET6/AF_INET, STREAM
    body = source.packed + dest.packed + struct.pack("!HH", src_port, dst_port)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def v2_local_header() -> bytes:
    """v2 command LOCAL: the balancer's own connection (its health checks)."""
    return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)


class _HeaderFirst(ProtocolWrapper):
    def makeConnection(self, transport) -> None:
        transport.write(self.factory.header)
        super().makeConnection(transport)


class _HeaderFirstFactory(WrappingFactory):
    protocol = _HeaderFirst

    def __init__(self, wrapped, header: bytes) -> None:
        super().__init__(wrapped)
        self.header = header


@implementer(IStreamClientEndpoint)
class HeaderFirstEndpoint:
    """Connect through ``wrapped``, writing ``header`` before anything else."""

    def __init__(self, wrapped: IStreamClientEndpoint, header: bytes) -> None:
        self._wrapped = wrapped
        self._header = header

    def connect(self, factory):
        d = self._wrapped.connect(_HeaderFirstFactory(factory, self._header))
        return d.addCallback(lambda wrapper: wrapper.wrappedProtocol)


class Via:
    """A server (``https_port``, ``trust``) reached one particular way."""

    def __init__(
        self,
        server,
        *,
        header: bytes | None = None,
        source: str | None = None,
        port: int | None = None,
        persistent: bool = True,
    ) -> None:
        self.https_port = port if port is not None else server.https_port
        self.trust = server.trust
        self.header = header
        self.source = source
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.http = HTTPClient(
            Agent.usingEndpointFactory(reactor, _Endpoints(self), pool=self.pool)
        )

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def url(self, path: str) -> str:
        return self.base + path

    def tcp_endpoint(self) -> IStreamClientEndpoint:
        bind = (self.source, 0) if self.source else None
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.https_port, timeout=5, bindAddress=bind
        )
        if self.header is not None:
            endpoint = HeaderFirstEndpoint(endpoint, self.header)
        return endpoint

    def tls_endpoint(self) -> IStreamClientEndpoint:
        return wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=self.trust), self.tcp_endpoint()
        )

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, via: Via) -> None:
        self._via = via

    def endpointForURI(self, uri):
        return self._via.tls_endpoint()
