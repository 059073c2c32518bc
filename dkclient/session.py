"""The WebSocket half: one logical session that survives reconnects.

A :class:`Session` keeps one connection to ``/ws`` open.  When it drops, the
session reconnects with exponential backoff and jitter (logging in again when
the upgrade answers 401), so a long-running ``dk listen`` or ``dk
serve-forward`` rides out server restarts.  Received frames are verified and
decrypted by :meth:`Client.open_frame` (in a worker thread: it may fetch a
sender's key over REST) and handed out in order; the server delivers at least
once, so ids already handed out are skipped.  Forward requests are answered
by an optional handler on the connection they came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from dkclient.account import AuthError, Client, Message, document_request_type
from dkclient.api import ApiError, ClientError, Unreachable

log = logging.getLogger("dk.session")

#: The server refuses frames over 1 MiB; what we accept has some headroom.
MAX_INCOMING = 4 * 2**20
MAX_OUTGOING = 2**20
#: A connection that lasted this long resets the backoff.
STABLE_AFTER = 10.0

ForwardHandler = Callable[[Message], Awaitable[str]]


class SessionClosed(ClientError):
    """The session ended (closed by us, or dropped with reconnect off)."""


class Backoff:
    """Exponential backoff with "equal jitter": a delay in [cap/2, cap]."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return cap / 2 + self.rng() * cap / 2

    def reset(self) -> None:
        self.attempt = 0


def ws_url(server: str, token: str) -> str:
    parts = urllib.parse.urlsplit(server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = urllib.parse.urlencode({"token": token})
    return urllib.parse.urlunsplit(
        (scheme, parts.netloc, parts.path + "/ws", query, "")
    )


class Session:
    """A reconnecting WebSocket session of ``client``'s user.

    Use as ``async with Session(client) as s:`` then ``await s.receive()`` /
    ``async for message in s`` and ``await s.send_direct(to, text)``.
    """

    def __init__(
        self,
        client: Client,
        *,
        forward_handler: ForwardHandler | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        open_timeout: float = 15.0,
        seen: Iterable[int] = (),
    ) -> None:
        self.client = client
        self.forward_handler = forward_handler
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.open_timeout = open_timeout
        #: Ids of messages already handed out (the server delivers at least once).
        self.seen: set[int] = set(seen)
        self.connects = 0
        self._queue: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._failure: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle --

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect once (raising if that fails), then keep the session up."""
        ws = await self._open()
        self._task = asyncio.create_task(self._run(ws))

    async def close(self, linger: float = 0.0) -> None:
        """Close cleanly.  ``linger`` first keeps reading that long, so the
        server's delivery-proof ping for what we received gets its pong."""
        if linger > 0 and self._ws is not None:
            await asyncio.sleep(linger)
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except (TimeoutError, asyncio.CancelledError, Exception):
                self._task.cancel()
        for task in list(self._tasks):
            task.cancel()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def _open(self) -> ClientConnection:
        """One connection attempt; a 401 upgrade logs in again once."""
        for attempt in (1, 2):
            token = await asyncio.to_thread(self.client.token)
            url = ws_url(self.client.server, token)
            ssl_arg = self.client.ssl_context if url.startswith("wss:") else None
            try:
                ws = await connect(
                    url,
                    ssl=ssl_arg,
                    max_size=MAX_INCOMING,
                    open_timeout=self.open_timeout,
                    user_agent_header="dk-python",
                )
            except InvalidStatus as e:
                status = e.response.status_code
                body = (e.response.body or b"").decode("utf-8", "replace")
                if status == 401 and attempt == 1:
                    await asyncio.to_thread(self.client.invalidate_token)
                    continue
                if status == 401:
                    raise AuthError(f"WebSocket refused after login: {body}") from None
                raise ApiError(status, _error_text(body), url.split("?")[0]) from None
            except (TimeoutError, OSError, InvalidHandshake) as e:
                raise Unreachable(
                    f"cannot open the WebSocket to {self.client.server}: {e}"
                ) from None
            self._ws = ws
            self.connects += 1
            self._connected.set()
            return ws
        raise AssertionError("unreachable")

    async def _run(self, ws: ClientConnection) -> None:
        while True:
            opened = time.monotonic()
            try:
                await self._read(ws)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug in processing must not hang receivers
                log.exception("reading from the server failed")
                self._fail(e)
                return
            finally:
                self._connected.clear()
                self._ws = None
            if self._closing or not self.reconnect:
                self._fail(SessionClosed("the session is closed"))
                return
            if time.monotonic() - opened >= STABLE_AFTER:
                self.backoff.reset()
            log.warning("connection to %s lost; reconnecting", self.client.server)
            ws = await self._reconnect()
            if ws is None:
                return

    async def _reconnect(self) -> ClientConnection | None:
        while not self._closing:
            delay = self.backoff.next_delay()
            log.info("reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)
            if self._closing:
                break
            try:
                return await self._open()
            except AuthError as e:
                self._fail(e)
                return None
            except ClientError as e:
                log.warning("reconnect failed: %s", e)
        self._fail(SessionClosed("the session is closed"))
        return None

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
            self._queue.put_nowait(error)

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("ignoring a frame that is not JSON")
                    continue
                if not isinstance(frame, dict):
                    continue
                msg_id = frame.get("id")
                if isinstance(msg_id, int) and msg_id > 0 and msg_id in self.seen:
                    continue
                message = await asyncio.to_thread(self.client.open_frame, frame)
                if message.kind == "forward" and self.forward_handler is not None:
                    task = asyncio.create_task(self._answer(ws, message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    continue
                if isinstance(msg_id, int) and msg_id > 0:
                    self.seen.add(msg_id)
                self._queue.put_nowait(message)

    async def _answer(self, ws: ClientConnection, request: Message) -> None:
        assert self.forward_handler is not None
        content = request.frame.get("content")
        if isinstance(content, str) and document_request_type(content):
            # dk keeps no documents: say so rather than leave the caller
            # waiting for the server's timeout.
            frame = self.client.document_answer_frame(
                "register_document_error",
                "this client (dk serve-forward) does not store documents",
            )
            await self._send_answer(ws, frame)
            return
        try:
            answer = await self.forward_handler(request)
        except Exception as e:
            log.exception("forward handler failed")
            answer = f"error: {e}"
        await self._send_answer(ws, self.client.forward_answer_frame(answer))

    async def _send_answer(self, ws: ClientConnection, frame: dict) -> None:
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            log.warning("connection closed before the forward answer was sent")

    # -- receiving --

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message; TimeoutError after ``timeout`` seconds without one.

        Raises :class:`SessionClosed` (or the fatal error) once the session
        has ended and every received message was handed out.
        """
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # keep raising for later callers
            raise item
        return item

    def drain(self) -> list[Message]:
        """Messages received but not yet handed out (without waiting)."""
        out = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)
                break
            out.append(item)
        return out

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive()
            except SessionClosed:
                return

    # -- sending --

    async def send_frame(self, frame: dict, timeout: float = 30.0) -> None:
        """Send a message object, waiting (up to ``timeout``) for a connection."""
        data = json.dumps(frame, ensure_ascii=False)
        if len(data.encode()) > MAX_OUTGOING:
            raise ClientError(
                f"message too large: {len(data.encode())} bytes encoded; "
                f"the server accepts frames up to {MAX_OUTGOING} bytes"
            )
        deadline = time.monotonic() + timeout
        retried = False
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                await asyncio.wait_for(
                    self._connected.wait(), max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                raise Unreachable(
                    f"not connected to {self.client.server} after {timeout:g} s"
                ) from None
            ws = self._ws
            if ws is None:
                await asyncio.sleep(0.05)
                continue
            try:
                await ws.send(data)
                return
            except ConnectionClosed:
                # Not written: safe to send once more on the next connection.
                if retried or not self.reconnect:
                    raise SessionClosed("connection closed while sending") from None
                retried = True
                self._connected.clear()

    async def send_direct(self, to: str, text: str) -> dict:
        """Encrypt ``text`` for ``to``, sign and send it; returns the frame."""
        frame = await asyncio.to_thread(self.client.direct_frame, to, text)
        await self.send_frame(frame)
        return frame

    async def broadcast(self, text: str) -> dict:
        frame = await asyncio.to_thread(self.client.broadcast_frame, text)
        await self.send_frame(frame)
        return frame


def _error_text(body: str) -> str:
    try:
        obj = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(obj, dict) and isinstance(obj.get("message"), str):
        return obj["message"]
    return body.strip()
