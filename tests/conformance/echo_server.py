"""An echo WebSocket server on dkserver's TLS stack, for the conformance run.

Run as ``python -m tests.conformance.echo_server CERT KEY``.  It builds the
same stack dkserver serves ``/ws`` on -- ``load_context_factory`` (a
self-signed certificate is generated when neither file exists),
``TLSMemoryBIOFactory(context, False, DkSite(...))`` with DkSite's limits
from ``Config()``, and a ``WebSocketServerFactory`` configured with exactly
``websocket_options(Config())``, and dkserver's frame reader
(``WholeFrameReader``) -- but the protocol echoes every message instead of
speaking dkserver's messaging protocol.  The resource is mounted
at ``/ws`` by this script only.

kosoku 0.1.0 is built without TLS ("TLS support not compiled in"), so the
script also listens on a plaintext loopback port that relays every byte, in
both directions and unchanged, to the TLS port over a verified TLS
connection (the generated certificate is the trust root).  The relay closes
each side when the other closes, so who dropped the TCP connection first is
preserved for the close verdicts.

Prints one line of JSON, ``{"tls_port": N, "relay_port": M}``, once both
ports listen, then runs until killed.
"""

from __future__ import annotations

import json
import sys

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, ssl
from twisted.protocols import portforward
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource

from dkserver.config import Config
from dkserver.tls import load_context_factory
from dkserver.web.site import DkSite
from dkserver.ws.factory import websocket_options
from dkserver.ws.wholeframes import WholeFrameReader


class EchoProtocol(WholeFrameReader, WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class EchoFactory(WebSocketServerFactory):
    protocol = EchoProtocol

    def __init__(self, config: Config) -> None:
        # As DkWebSocketFactory: url=None, server="dkserver".
        super().__init__(url=None, server="dkserver", reactor=reactor)
        self.setProtocolOptions(**websocket_options(config))


def build_site(config: Config) -> DkSite:
    """DkSite with the limits DkService gives it, /ws the echo resource."""
    root = Resource()
    root.putChild(b"ws", WebSocketResource(EchoFactory(config)))
    return DkSite(
        root,
        max_body=config.max_body,
        idle_timeout=config.http_timeout,
        request_deadline=config.http_timeout * 2,
        reactor=reactor,
    )


class _TLSProxyClient(portforward.ProxyClient):
    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        super().connectionMade()


class _TLSProxyClientFactory(portforward.ProxyClientFactory):
    protocol = _TLSProxyClient


class _TLSProxyServer(portforward.ProxyServer):
    """portforward.ProxyServer, but the outgoing leg is TLS."""

    clientProtocolFactory = _TLSProxyClientFactory

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self.transport.setTcpNoDelay(True)
        client = self.clientProtocolFactory()
        client.setServer(self)
        reactor.connectSSL(
            self.factory.host, self.factory.port, client, self.factory.tls_options
        )


class TLSRelayFactory(portforward.ProxyFactory):
    protocol = _TLSProxyServer

    def __init__(self, host: str, port: int, tls_options) -> None:
        super().__init__(host, port)
        self.tls_options = tls_options


def main(cert_path: str, key_path: str) -> None:
    config = Config(cert_path=cert_path, key_path=key_path)
    context = load_context_factory(config.cert_path, config.key_path)
    tls_port = reactor.listenTCP(
        0,
        TLSMemoryBIOFactory(context, False, build_site(config)),
        interface="127.0.0.1",
    )
    with open(config.cert_path, "rb") as f:
        trust = ssl.Certificate.loadPEM(f.read())
    client_tls = ssl.optionsForClientTLS("localhost", trustRoot=trust)
    relay_port = reactor.listenTCP(
        0,
        TLSRelayFactory("127.0.0.1", tls_port.getHost().port, client_tls),
        interface="127.0.0.1",
    )
    print(
        json.dumps(
            {
                "tls_port": tls_port.getHost().port,
                "relay_port": relay_port.getHost().port,
            }
        ),
        flush=True,
    )
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
