"""A deliberately cheap client side: HTTPS keep-alive and WebSocket over asyncio.

Both are plain :class:`asyncio.Protocol` subclasses on ``loop.create_connection``
with an :class:`ssl.SSLContext`; there is no per-message coroutine, so a relay
client costs a few microseconds of Python per frame.  Client frames are masked
(RFC 6455 §5.3) with a fresh random key each; hot-path frames are built and
masked *before* a timed phase (see :func:`client_frame`), so sending is one
``transport.write``.

Also here: deterministic bench identities (Ed25519 keys derived from the user
id, so any process can rebuild any user's key) and PROTOCOL.md's message
signature.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
import time
from collections.abc import Callable
from urllib.parse import quote

import orjson
from nacl.signing import SigningKey

try:  # C implementation shipped with the ``websockets`` package
    from websockets.speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - depends on the environment
    _apply_mask_c = None


def _apply_mask_py(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` (one big-int XOR)."""
    n = len(data)
    if not n:
        return b""
    reps = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(reps, "big")).to_bytes(
        n, "big"
    )


apply_mask = _apply_mask_c or _apply_mask_py
MASK_IMPL = "websockets.speedups" if _apply_mask_c else "python-int-xor"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One complete, masked client frame (FIN set)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + apply_mask(payload, mask)


# --- identities and signatures -----------------------------------------------


def signing_key(user_id: str) -> SigningKey:
    """The bench user's key, derived from its id (bench users only!)."""
    return SigningKey(hashlib.sha256(b"dkbench:" + user_id.encode()).digest())


def public_key_b64(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode()


def rfc3339(ns: int) -> str:
    """UTC RFC 3339 with nine fraction digits (exact to the nanosecond)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def signed_message(
    key: SigningKey, from_: str, to: str, content: str, ns: int | None = None
) -> bytes:
    """A client message object (JSON bytes) signed as PROTOCOL.md says:
    Ed25519 over ``from|to|<unix nanos>|content``."""
    ns = time.time_ns() if ns is None else ns
    sig = key.sign(f"{from_}|{to}|{ns}|{content}".encode()).signature
    return orjson.dumps(
        {
            "from": from_,
            "to": to,
            "timestamp": rfc3339(ns),
            "content": content,
            "signature": base64.b64encode(sig).decode(),
        }
    )


def client_context(cafile: str | None) -> ssl.SSLContext:
    """Trust the bench server's self-signed certificate (or, without one, do
    not verify at all: loopback only)."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --- WebSocket ---------------------------------------------------------------


class WsClosed(Exception):
    pass


class WsClient(asyncio.Protocol):
    """A minimal RFC 6455 client.

    ``on_message(payload)`` is called per complete text/binary message and
    ``on_batch()`` once after each ``data_received`` chunk (so a caller can
    answer a burst of frames with one write).
    """

    def __init__(
        self,
        path: str,
        host: str = "localhost",
        on_message: Callable[[bytes], None] | None = None,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.host = host
        self.on_message = on_message or (lambda _p: None)
        self.on_batch = on_batch
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.status: int | None = None
        self._buf = bytearray()
        self._handshaking = True
        self._fragments: list[bytes] = []
        self._drained: asyncio.Future | None = None
        self._key = base64.b64encode(os.urandom(16)).decode()

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {self._key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode("latin-1")
        )

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._handshaking:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail(ConnectionError("oversized handshake response"))
                return
            line = bytes(buf[: buf.find(b"\r\n")])
            parts = line.split()
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            del buf[: end + 4]
            if self.status != 101:
                self._fail(ConnectionError(f"upgrade refused: {line!r}"))
                return
            self._handshaking = False
            if not self.opened.done():
                self.opened.set_result(self)
        pos = 0
        size = len(buf)
        on_message = self.on_message
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            hdr = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            masked = b1 & 0x80
            if masked:
                hdr += 4
            if size - pos < hdr + n:
                break
            payload = bytes(buf[pos + hdr : pos + hdr + n])
            if masked:  # servers do not mask, but be lenient
                payload = apply_mask(payload, bytes(buf[pos + hdr - 4 : pos + hdr]))
            pos += hdr + n
            opcode = b0 & 0x0F
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if b0 & 0x80:
                    on_message(payload)
                else:
                    self._fragments = [payload]
            elif opcode == OP_CONT:
                self._fragments.append(payload)
                if b0 & 0x80:
                    on_message(b"".join(self._fragments))
                    self._fragments = []
            elif opcode == OP_PING:
                self.transport.write(client_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self._close_code = code
                self.transport.write(client_frame(payload[:2], OP_CLOSE))
                self.transport.close()
                break
        if pos:
            del buf[:pos]
        if self.on_batch is not None:
            self.on_batch()

    def connection_lost(self, exc) -> None:
        err = exc or WsClosed(getattr(self, "_close_code", None))
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before open: {err}"))
        if not self.closed.done():
            self.closed.set_result(getattr(self, "_close_code", None))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # -- API
    def write(self, data: bytes) -> None:
        """Write pre-built frame bytes."""
        self.transport.write(data)

    def send(self, payload: bytes) -> None:
        self.transport.write(client_frame(payload))

    async def drain(self) -> None:
        if self._drained is not None and not self._drained.done():
            await self._drained

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(client_frame(b"\x03\xe8", OP_CLOSE))
            except Exception:
                pass
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def ws_connect(
    port: int,
    path: str,
    ctx: ssl.SSLContext,
    on_message: Callable[[bytes], None] | None = None,
    on_batch: Callable[[], None] | None = None,
    timeout: float = 30.0,
) -> WsClient:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(
            lambda: WsClient(path, "localhost", on_message, on_batch),
            "127.0.0.1",
            port,
            ssl=ctx,
            server_hostname="localhost",
            ssl_handshake_timeout=timeout,
        ),
        timeout,
    )
    await asyncio.wait_for(proto.opened, timeout)
    return proto


def dk_path(token: str) -> str:
    return "/ws?token=" + quote(token, safe="")


def ceiling_path(user_id: str) -> str:
    return "/ws?id=" + quote(user_id, safe="")


# --- HTTPS keep-alive -------------------------------------------------------------


class HttpClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.transport = None
        self._buf = bytearray()
        self._waiter: asyncio.Future | None = None
        self._lost: BaseException | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self._lost = exc or ConnectionError("connection closed")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is None or self._waiter.done():
            return
        parsed = _parse_response(self._buf)
        if parsed is not None:
            status, body, used = parsed
            del self._buf[:used]
            self._waiter.set_result((status, body))

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout=30.0,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        if self._lost is not None:
            raise ConnectionError(str(self._lost))
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head.encode() + b"\r\n" + (body or b""))
        return await asyncio.wait_for(self._waiter, timeout)

    async def post_json(self, path: str, obj) -> tuple[int, object]:
        status, body = await self.request("POST", path, orjson.dumps(obj))
        try:
            return status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return status, body.decode("utf-8", "replace")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse_response(buf: bytearray) -> tuple[int, bytes, int] | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    pos = end + 4
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(buf) < pos + n:
            return None
        return status, bytes(buf[pos : pos + n]), pos + n
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            n = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if len(buf) < eol + 2 + n + 2:
                return None
            chunks.append(bytes(buf[eol + 2 : eol + 2 + n]))
            pos = eol + 2 + n + 2
            if n == 0:
                # (no trailers from twisted.web)
                return status, b"".join(chunks), pos
    return status, b"", pos


async def http_connect(
    port: int, ctx: ssl.SSLContext, timeout=30.0, source_ip: str | None = None
) -> HttpClient:
    """``source_ip``: another loopback address (127.0.0.2...) to connect
    from, so the server sees a client IP of its own (per-IP limits)."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(
            HttpClient,
            "127.0.0.1",
            port,
            ssl=ctx,
            server_hostname="localhost",
            local_addr=None if source_ip is None else (source_ip, 0),
        ),
        timeout,
    )
    return proto


async def register(http: HttpClient, user_id: str, key: SigningKey) -> int:
    status, _ = await http.post_json(
        "/auth/register",
        {"user_id": user_id, "username": user_id, "public_key": public_key_b64(key)},
    )
    return status


async def login(http: HttpClient, user_id: str, key: SigningKey) -> str:
    """Challenge, then verify with the signature over the challenge's text."""
    status, body = await http.post_json("/auth/login", {"user_id": user_id})
    if status != 200:
        raise RuntimeError(f"login challenge for {user_id}: {status} {body}")
    challenge = body["challenge"]
    sig = base64.b64encode(key.sign(challenge.encode()).signature).decode()
    status, body = await http.post_json(
        "/auth/login?verify=true", {"user_id": user_id, "signature": sig}
    )
    if status != 200:
        raise RuntimeError(f"login verify for {user_id}: {status} {body}")
    return body["token"]
