"""The PROXY protocol (v1 and v2) in front of TLS, for a TCP load balancer.

Behind a balancer every connection comes from the balancer's address, so the
per-IP limits would count all clients as one.  A balancer in TCP mode
(HAProxy's ``send-proxy``/``send-proxy-v2``) writes one header naming the
client before the TLS bytes; Twisted's wrapper parses it and makes
``getPeer()`` return the client, for every layer above (TLS, twisted.web's
``getClientAddress()``, the WebSocket protocol after the upgrade).

The header is trusted as sent: whoever can connect can claim any address, so
the listener must be reachable from the balancer only.  Twisted's wrapper
drops a connection without a valid header silently; here that is logged
(one line), since it is what a balancer without ``send-proxy`` looks like.
A v1 header with a malformed port (a ``ValueError`` Twisted does not catch)
or an address that is not an IP is dropped the same way, not logged as a
traceback or taken as a limit key.
"""

from __future__ import annotations

from ipaddress import ip_address

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper,
    HAProxyWrappingFactory,
)
from zope.interface import implementer

from dkserver.peers import peer_host


def _checked(info: ProxyInfo | None) -> ProxyInfo | None:
    """The header's addresses as the limits should key on them.

    Twisted's v1 parser takes any word for an address, and its v2 parser
    spells out every IPv6 group (``2001:db8:0:0:0:0:0:7``, where HAProxy's v1
    writes ``2001:db8::7``: one client, two limit keys).
    """
    source = getattr(info, "source", None)
    if not isinstance(source, IPv4Address | IPv6Address):
        return info  # not parsed yet, LOCAL/UNKNOWN (the balancer), or UNIX
    try:
        host = ip_address(source.host)
    except ValueError:
        raise InvalidProxyHeader() from None
    if isinstance(source, IPv6Address):
        source = IPv6Address(source.type, host.compressed, source.port)
    return ProxyInfo(info.header, source, info.destination)


class _ProxyHeaderProtocol(HAProxyProtocolWrapper):
    log = Logger()
    _info: ProxyInfo | None = None

    # Twisted's wrapper assigns the parsed header here inside the ``try`` that
    # turns InvalidProxyHeader into a dropped connection, before any byte
    # reaches TLS: the one place to check it.
    @property
    def _proxyInfo(self) -> ProxyInfo | None:
        return self._info

    @_proxyInfo.setter
    def _proxyInfo(self, info: ProxyInfo | None) -> None:
        self._info = _checked(info)

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        try:
            super().dataReceived(data)
        except ValueError:
            if self._proxyInfo is not None:
                raise  # from the protocol above, not from the header
            self.loseConnection()
        if self._proxyInfo is None and self.disconnecting:
            self.log.warn(
                "dropped a connection from {peer}: no valid PROXY protocol header",
                peer=peer_host(self.transport.getPeer()),
            )


class _ProxyHeaderFactory(HAProxyWrappingFactory):
    protocol = _ProxyHeaderProtocol


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """Listen on ``wrapped``; every connection starts with a PROXY header."""

    def __init__(self, wrapped: IStreamServerEndpoint) -> None:
        self._wrapped = wrapped

    def listen(self, factory: Factory) -> Deferred:
        return self._wrapped.listen(_ProxyHeaderFactory(factory))
