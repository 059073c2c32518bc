"""A real WSS test client (Autobahn on Twisted) and frame builders.

``connect()`` opens ``wss://localhost:<port>/ws?token=...`` against a
:class:`~tests.support.server.RunningServer`, trusting its self-signed cert.
``upgrade_status()`` sends a raw upgrade request and returns the HTTP status.
"""

from __future__ import annotations

import base64
import json
import os
import time
from urllib.parse import quote

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import deferLater

from tests.support.envelope import (
    encrypt_for,
    format_rfc3339,
    rfc3339_unix_nanos,
    sign_message,
    verify_message,
)

DEFAULT_MAX_SIZE = 4 * 2**20


class HandshakeRefused(Exception):
    """The server answered the upgrade request with a non-101 status."""

    def __init__(self, status_code: int | None, reason: str = "") -> None:
        super().__init__(f"WebSocket upgrade refused: {status_code} {reason}")
        self.status_code = status_code
        self.reason = reason


class ConnectionClosed(Exception):
    """recv() on a connection that closed with no unread frame left."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"connection closed: {code} {reason}")
        self.code = code
        self.reason = reason


def _tls(server):
    # A server reached another way (tests.support.proxied.Via) says how.
    own = getattr(server, "tls_endpoint", None)
    if own is not None:
        return own()
    return SSL4ClientEndpoint(
        reactor,
        "127.0.0.1",
        server.https_port,
        optionsForClientTLS("localhost", trustRoot=server.trust),
        timeout=5,
    )


def _ws_path(token: str | None) -> str:
    return "/ws" if token is None else f"/ws?token={quote(token, safe='')}"


def _token_user_id(token: str) -> str | None:
    """The unverified ``user_id`` claim of a JWT (None if unreadable)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        )
        return claims.get("user_id")
    except (IndexError, ValueError, AttributeError):
        return None


async def _with_timeout(d: defer.Deferred, seconds: float, what: str):
    d.addTimeout(seconds, reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise TimeoutError(f"{what}: nothing after {seconds} s")


class _Protocol(WebSocketClientProtocol):
    client: WsClient

    def onOpen(self) -> None:
        self.client._on_open()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client._on_frame(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._on_close(wasClean, code, reason)


class _Factory(WebSocketClientFactory):
    protocol = _Protocol
    client: WsClient

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        proto.client = self.client
        self.client.protocol = proto
        return proto


class WsClient:
    """One open WebSocket connection; frames are queued as they arrive."""

    def __init__(self, user_id: str | None = None) -> None:
        self.user_id = user_id
        self.protocol: _Protocol | None = None
        self.received: list = []  # every frame: parsed JSON (text) or bytes
        self.raw: list[tuple[bytes, bool]] = []  # (payload, is_binary)
        self.opened = False
        self.closed = False
        self.was_clean: bool | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._unread: list[tuple[bytes, bool]] = []
        self._waiters: list[defer.Deferred] = []
        self._open_d: defer.Deferred = defer.Deferred()
        self._close_waiters: list[defer.Deferred] = []

    # --- protocol callbacks ---
    def _on_open(self) -> None:
        self.opened = True
        if not self._open_d.called:
            self._open_d.callback(self)

    def _on_frame(self, payload: bytes, is_binary: bool) -> None:
        self.raw.append((payload, is_binary))
        if is_binary:
            self.received.append(payload)
        else:
            try:
                self.received.append(json.loads(payload))
            except ValueError:
                self.received.append(payload.decode("utf-8", "replace"))
        if self._waiters:
            self._waiters.pop(0).callback((payload, is_binary))
        else:
            self._unread.append((payload, is_binary))

    def _on_close(self, was_clean: bool, code: int | None, reason: str | None):
        if self.closed:
            return
        self.closed = True
        self.was_clean = was_clean
        remote = self.protocol.remoteCloseCode if self.protocol else None
        self.close_code = remote if remote is not None else code
        remote_reason = self.protocol.remoteCloseReason if self.protocol else None
        self.close_reason = remote_reason if remote is not None else reason
        if not self._open_d.called:
            self._open_d.errback(self._refusal())
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(ConnectionClosed(self.close_code, self.close_reason))
        closers, self._close_waiters = self._close_waiters, []
        for d in closers:
            d.callback((self.close_code, self.close_reason))

    def _refusal(self) -> Exception:
        line = getattr(self.protocol, "http_status_line", None)
        if line:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) != 101:
                return HandshakeRefused(int(parts[1]), " ".join(parts[2:]))
        return ConnectionError(f"WebSocket not opened: {self.close_reason}")

    # --- sending ---
    def send_json(self, obj) -> None:
        self.send_text(json.dumps(obj))

    def send_text(self, text: str) -> None:
        self.protocol.sendMessage(text.encode("utf-8"), isBinary=False)

    def send_bytes(self, data: bytes, binary: bool = True) -> None:
        """Send ``data`` as one frame as is (binary, or text when binary=False)."""
        self.protocol.sendMessage(data, isBinary=binary)

    # --- receiving ---
    async def recv_raw(self, timeout: float = 5.0) -> tuple[bytes, bool]:
        """The next frame as ``(payload, is_binary)``."""
        if self._unread:
            return self._unread.pop(0)
        if self.closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)

        def forget(result):
            if d in self._waiters:
                self._waiters.remove(d)
            return result

        d.addTimeout(timeout, reactor)
        d.addErrback(forget)
        try:
            return await d
        except defer.TimeoutError:
            raise TimeoutError(f"no frame within {timeout} s")

    async def recv(self, timeout: float = 5.0) -> dict:
        """The next frame, parsed as JSON."""
        payload, _ = await self.recv_raw(timeout)
        return json.loads(payload)

    async def recv_all(self, count: int, timeout: float = 5.0) -> list[dict]:
        return [await self.recv(timeout) for _ in range(count)]

    async def expect_silence(self, seconds: float = 0.3) -> None:
        """Assert that no frame arrives within ``seconds``."""
        before = len(self.raw)
        await deferLater(reactor, seconds, lambda: None)
        assert len(self.raw) == before, f"unexpected frames: {self.received[before:]}"

    # --- closing and flow control ---
    def close(self, code: int = 1000, reason: str | None = None) -> None:
        if not self.closed:
            self.protocol.sendClose(code=code, reason=reason)

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        """``(code, reason)`` of the close; the server's code when it sent one."""
        if self.closed:
            return self.close_code, self.close_reason
        d: defer.Deferred = defer.Deferred()
        self._close_waiters.append(d)
        return await _with_timeout(d, timeout, "wait_closed")

    def pause_reading(self) -> None:
        self.protocol.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.protocol.transport.resumeProducing()

    def abort(self) -> None:
        self.protocol.transport.abortConnection()


async def connect(
    server,
    token: str,
    *,
    origin: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout: float = 5.0,
) -> WsClient:
    """Open a WebSocket as the token's user; raises HandshakeRefused on non-101."""
    client = WsClient(_token_user_id(token))
    url = f"wss://localhost:{server.https_port}{_ws_path(token)}"
    factory = _Factory(url, origin=origin)
    factory.client = client
    factory.setProtocolOptions(
        maxFramePayloadSize=max_size,
        maxMessagePayloadSize=max_size,
        openHandshakeTimeout=timeout,
        closeHandshakeTimeout=2,
        autoPingInterval=0,
    )
    await _tls(server).connect(factory)
    return await _with_timeout(client._open_d, timeout + 1, "WebSocket open")


class _StatusProbe(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = b""
        self.status: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n" in self.buffer and not self.status.called:
            line = self.buffer.split(b"\r\n", 1)[0].decode("latin-1")
            self.transport.loseConnection()
            self.status.callback(int(line.split()[1]))

    def connectionLost(self, reason) -> None:
        if not self.status.called:
            self.status.errback(ConnectionError(f"no HTTP status line: {reason}"))


async def upgrade_status(
    server,
    token: str | None,
    origin: str | None = None,
    timeout: float = 5.0,
    extensions: str | None = None,
) -> int:
    """HTTP status of a raw WebSocket upgrade request (101 on success)."""
    headers = [
        f"GET {_ws_path(token)} HTTP/1.1",
        f"Host: localhost:{server.https_port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        headers.append(f"Origin: {origin}")
    if extensions is not None:
        headers.append(f"Sec-WebSocket-Extensions: {extensions}")
    probe = _StatusProbe(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
    await connectProtocol(_tls(server), probe)
    return await _with_timeout(probe.status, timeout, "upgrade_status")


# --- frames -------------------------------------------------------------------

_last_nanos = 0


def now_timestamp(offset_minutes: int = -180) -> str:
    """Now as RFC 3339 with 9 fraction digits at a non-UTC offset.

    Strictly increasing across calls, and never a whole microsecond, so a
    server that rounds to microseconds breaks the signature.
    """
    global _last_nanos
    nanos = max(time.time_ns(), _last_nanos + 1)
    if nanos % 1000 == 0:
        nanos += 1
    _last_nanos = nanos
    return format_rfc3339(nanos, offset_minutes)


def signed_frame(identity, to: str, content: str, timestamp: str | None = None):
    """A client frame ``{from, to, timestamp, content, signature}``."""
    timestamp = timestamp or now_timestamp()
    nanos = rfc3339_unix_nanos(timestamp)
    return {
        "from": identity.user_id,
        "to": to,
        "timestamp": timestamp,
        "content": content,
        "signature": sign_message(
            identity.signing_key, identity.user_id, to, nanos, content
        ),
    }


def direct_frame(
    identity, to: str, plaintext: str, recipient_public_b64: str, timestamp=None
) -> dict:
    """An encrypted, signed direct message to ``to``."""
    content = encrypt_for(recipient_public_b64, plaintext)
    return signed_frame(identity, to, content, timestamp)


def broadcast_frame(identity, text: str, timestamp: str | None = None) -> dict:
    """A signed, unencrypted broadcast."""
    return signed_frame(identity, "broadcast", text, timestamp)


def verify_frame(frame: dict, sender_public_b64: str) -> bool:
    """Check a received frame's signature over its exact timestamp instant."""
    return verify_message(
        sender_public_b64,
        frame["from"],
        frame["to"],
        rfc3339_unix_nanos(frame["timestamp"]),
        frame["content"],
        frame.get("signature", ""),
    )
