"""The ceilings: a bare Autobahn WebSocket relay and a bare twisted.web
login endpoint pair, on dkserver's own TLS stack, in one process.

No auth, no persistence, no rate limits: a client names itself in the query
string (``/ws?id=u1``) and every text frame ``{"to": "u2", ...}`` is relayed
as-is to ``u2``'s connections (``"to": "broadcast"`` goes to everyone else).
TLS settings and WebSocket options are dkserver's own
(:func:`dkserver.tls.load_context_factory`,
:func:`dkserver.ws.factory.websocket_options`), on the same reactor, so the
relay rate measured against it is what the stack itself can do here.

With ``--login-port``, the same process and reactor also serve HTTPS
keep-alive on that port, with the same TLS settings, through a plain
``twisted.web.server.Site`` (form parsing and the access log off, as
dkserver's site has them) and one leaf resource, :class:`LoginCeiling`.
It answers the shapes of docs/protocol.md section 2 and does only the work
the protocol cannot avoid:

* ``POST /auth/register`` ``{"user_id", "public_key"}``: decodes the key
  once into a dict in memory (no validation beyond base64 and length);
* ``POST /auth/login`` ``{"user_id"}``: 32 random bytes (``secrets``),
  base64, kept in a dict with a 60 s expiry; ``{"challenge": ...}``;
* ``POST /auth/login?verify=true`` ``{"user_id", "signature"}``: pops the
  challenge (single use), checks its expiry, verifies the Ed25519 signature
  of its text with the user's decoded key (PyNaCl), and answers
  ``{"token": ...}``, an HS256 JWT with dkserver's claims (``user_id``,
  ``exp``, ``iat``, ``jti``, ``iss``; header ``kid``), encoded by hand
  (orjson, base64url, ``hmac``).

JSON bodies are parsed with orjson; responses carry the protocol's security
headers and ``Content-Type``.  Nothing of dkserver's: no database, no rate
limits, no logging, no metrics, no Klein, no Deferreds.

    python -m bench.ceiling --port 9443 [--login-port 9444] --cert c.pem --key k.pem
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import secrets
import sys
import time

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from twisted.web.resource import Resource
from twisted.web.server import Site

#: The headers every dkserver HTTPS response carries (docs/protocol.md).
HEADERS = (
    (b"Content-Type", b"application/json"),
    (b"Strict-Transport-Security", b"max-age=63072000"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Frame-Options", b"DENY"),
)


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


class LoginCeiling(Resource):
    """Register, challenge and verify with nothing but the protocol's work."""

    isLeaf = True

    def __init__(self, secret: bytes, ttl: float = 60.0) -> None:
        super().__init__()
        self.secret = secret
        self.ttl = ttl
        self.keys: dict[str, VerifyKey] = {}
        self.challenges: dict[str, tuple[str, float]] = {}
        kid = hashlib.sha256(b"dkserver kid\0" + secret).hexdigest()[:16]
        self.jwt_head = _b64url(
            orjson.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"})
        )

    def _answer(self, request, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        for name, value in HEADERS:
            request.responseHeaders.setRawHeaders(name, [value])
        return body

    def _error(self, request, status: int, message: str) -> bytes:
        return self._answer(
            request, status, orjson.dumps({"error": True, "message": message})
        )

    def render_POST(self, request) -> bytes:
        try:
            body = orjson.loads(request.content.read())
            user_id = body["user_id"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return self._error(request, 400, "Bad request")
        if request.path == b"/auth/register":
            try:
                raw = base64.b64decode(body["public_key"], validate=True)
                self.keys[user_id] = VerifyKey(raw)
            except (KeyError, ValueError, TypeError, CryptoError):
                return self._error(request, 400, "Bad public key")
            request.setResponseCode(201)
            return b"User registered successfully"
        if request.path != b"/auth/login":
            return self._error(request, 404, "Not found")
        if request.args.get(b"verify", [b""])[0].lower() != b"true":
            challenge = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
            self.challenges[user_id] = (challenge, time.monotonic() + self.ttl)
            return self._answer(request, 200, orjson.dumps({"challenge": challenge}))
        entry = self.challenges.pop(user_id, None)
        if entry is None or time.monotonic() >= entry[1]:
            return self._error(request, 400, "No challenge outstanding")
        key = self.keys.get(user_id)
        try:
            signature = base64.b64decode(body["signature"], validate=True)
            if key is None:
                raise CryptoError("unknown user")
            key.verify(entry[0].encode("ascii"), signature)
        except (KeyError, ValueError, TypeError, CryptoError):
            return self._error(request, 401, "Invalid signature")
        return self._answer(request, 200, orjson.dumps({"token": self.token(user_id)}))

    def token(self, user_id: str) -> str:
        now = time.time()
        claims = {
            "user_id": user_id,
            "exp": int(now + 86400),
            "iat": int(now * 1000) / 1000,
            "jti": secrets.token_urlsafe(16),
            "iss": "dkserver",
        }
        signing = self.jwt_head + b"." + _b64url(orjson.dumps(claims))
        mac = hmac.new(self.secret, signing, hashlib.sha256).digest()
        return (signing + b"." + _b64url(mac)).decode("ascii")


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


class QuietSite(Site):
    """twisted.web's Site without its access log line per request."""

    def log(self, request) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--login-port", type=int, help="also serve the login ceiling here"
    )
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
    if args.login_port:
        # Listened on first: the runner waits for --port, then uses both.
        site = QuietSite(
            LoginCeiling(secrets.token_bytes(32)), parsePOSTFormSubmission=False
        )
        SSL4ServerEndpoint(
            reactor, args.login_port, options, interface=args.host
        ).listen(site)
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
