"""The ceiling: a bare Autobahn WebSocket relay on dkserver's own TLS stack.

No auth, no persistence, no rate limits: a client names itself in the query
string (``/ws?id=u1``) and every text frame ``{"to": "u2", ...}`` is relayed
as-is to ``u2``'s connections (``"to": "broadcast"`` goes to everyone else).
TLS settings and WebSocket options are dkserver's own
(:func:`dkserver.tls.load_context_factory`,
:func:`dkserver.ws.factory.websocket_options`), on the same reactor, so the
relay rate measured against it is what the stack itself can do here.

    python -m bench.ceiling --port 9443 --cert c.pem --key k.pem
"""

from __future__ import annotations

import argparse
import sys

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol


class RelayProtocol(WebSocketServerProtocol):
    peer_id = ""

    def onConnect(self, request):
        ids = request.params.get("id") or [""]
        self.peer_id = ids[0]
        return None

    def onOpen(self) -> None:
        self.factory.peers.setdefault(self.peer_id, []).append(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            to = orjson.loads(payload).get("to")
        except (orjson.JSONDecodeError, AttributeError):
            return
        peers = self.factory.peers
        if to == "broadcast":
            prepared = self.factory.prepareMessage(payload, isBinary=False)
            for uid, conns in peers.items():
                if uid != self.peer_id:
                    for conn in conns:
                        conn.sendPreparedMessage(prepared)
            return
        for conn in peers.get(to, ()):
            conn.sendMessage(payload, isBinary=False)

    def onClose(self, wasClean, code, reason) -> None:
        conns = self.factory.peers.get(self.peer_id)
        if conns and self in conns:
            conns.remove(self)
            if not conns:
                del self.factory.peers[self.peer_id]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint

    from dkserver.config import Config
    from dkserver.tls import load_context_factory
    from dkserver.ws.factory import websocket_options

    factory = WebSocketServerFactory(url=None, server="ceiling", reactor=reactor)
    factory.protocol = RelayProtocol
    factory.peers = {}
    factory.setProtocolOptions(**websocket_options(Config()))
    options = load_context_factory(args.cert, args.key)
    # Same listen backlog as dkserver (Twisted's default).
    endpoint = SSL4ServerEndpoint(reactor, args.port, options, interface=args.host)
    d = endpoint.listen(factory)

    def listening(port):
        print(f"ceiling relay listening on {args.host}:{args.port}", flush=True)

    def failed(failure):
        print(f"ceiling relay could not listen: {failure.value}", file=sys.stderr)
        reactor.stop()

    d.addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main()
