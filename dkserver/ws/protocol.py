"""One WebSocket session: authenticated before the upgrade, then a thin
adapter between Autobahn's callbacks and the :class:`~dkserver.ws.hub.Hub`.

Incoming frames are parsed and submitted to the group writer synchronously,
in arrival order; the writer commits and calls back in that order, so a
sender's messages are stored and relayed in the order sent.
On open the session streams its backlog (pending direct messages, then
undelivered broadcasts) before any live message, and a live message that is
also in the backlog is sent once.
"""

from __future__ import annotations

import heapq
import uuid
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import Disconnected
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dkserver import tls_bio
from dkserver.auth.revocation import close_code
from dkserver.peers import peer_host
from dkserver.store import StoreUnavailable
from dkserver.store.quota import PendingQuotaExceeded
from dkserver.ws import frames, lazylog, masking, sendnow
from dkserver.ws.hub import Hub, stored_payload
from dkserver.ws.outbox import Outbox
from dkserver.ws.wholeframes import WholeFrameReader

# Client frames are unmasked with a cheaper masker than Autobahn's (see
# dkserver.ws.masking): every connection of this process is ours.
masking.install()
# Autobahn's per-connection debug line, formatted only when written.
lazylog.install()

#: Close code for a reader too slow to keep up (its messages stay pending).
CLOSE_TOO_SLOW = 4008
#: Close code sent on shutdown when the library refuses 1001.
CLOSE_GOING_AWAY = 1001
#: FIN, opcode 0 (continuation), no payload: ends a message split for a ping.
_FINAL_EMPTY_FRAGMENT = b"\x80\x00"
#: A message with its proof ping up to this size goes out in one TLS record
#: (at most 2**14 bytes of plaintext).
_ONE_RECORD = 2**14
#: A message the backlog scan read may still be on its way live: its commit
#: is visible to the scan before the publish that follows it arrives (another
#: node's publish through Redis; on one node, the writer's callback can run
#: after the read's).  So the newest RECENT_LIMIT ids a backlog sent are
#: remembered for RECENT_WINDOW seconds, and their live copy is dropped.  The
#: newest, because ids commit in id order: only the last ones to commit can
#: still be in transit.
RECENT_LIMIT = 256
RECENT_WINDOW = 15.0
#: An idle connection's (read-only) headers and query parameters.
_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
#: An idle connection's backlog ids (a set only while a backlog is sent).
_NO_IDS: frozenset[int] = frozenset()


class DkServerProtocol(WholeFrameReader, WebSocketServerProtocol):
    # Autobahn's own ``log`` (txaio) must stay: its disabled debug calls are
    # no-ops, while a twisted Logger would build and publish an event for each
    # of the several debug calls Autobahn makes per frame (~3 µs each).
    dklog = Logger()

    #: Set by the upgrade resource before the handshake is processed.
    user_id: str = ""
    #: The ``iat`` of the token the connection was opened with.
    token_iat: float | None = None
    hub: Hub
    _gone = False
    #: Frames received but not yet handled; past the limit reading pauses.
    _inflight = 0
    _reading_paused = False
    #: Ids the last backlog sent whose live copy may still arrive (see
    #: RECENT_LIMIT); None while there are none (most connections).
    _recent: set[int] | None = None
    _recent_expiry: Any = None

    #: Autobahn's _connectionMade gives each connection ~30 attributes whose
    #: value is None or False until the connection does something, and the
    #: handshake ~15 more; onOpen and the end of the backlog drop those still
    #: equal to these class-level defaults (_compact).
    _IDLE_DEFAULTS = {
        "_perMessageCompress": None,
        "trackedTimings": None,
        "triggered": False,
        "wasMaxFramePayloadSizeExceeded": False,
        "wasMaxMessagePayloadSizeExceeded": False,
        "closedByMe": False,
        "failedByMe": False,
        "droppedByMe": False,
        "wasClean": False,
        "wasNotCleanReason": None,
        "wasServerConnectionDropTimeout": False,
        "wasOpenHandshakeTimeout": False,
        "wasCloseHandshakeTimeout": False,
        "wasServingFlashSocketPolicyFile": False,
        "localCloseCode": None,
        "localCloseReason": None,
        "remoteCloseCode": None,
        "remoteCloseReason": None,
        "openHandshakeTimeoutCall": None,
        "closeHandshakeTimeoutCall": None,
        "autoPingTimeoutCall": None,
        "autoPingPending": None,
        "autoPingPendingSent": None,
        "http_request_data": None,
        "http_response_data": None,
        "_wskey": None,
        "http_status_line": None,
        "websocket_protocol_in_use": None,
        "current_frame": None,
        "inside_message": False,
        "_backlog_done": False,
        "_gone": False,
        # The handshake's request fields and negotiation (_release_handshake),
        # and per-connection state at its resting value.
        "http_request_uri": None,
        "http_request_path": None,
        "http_request_host": None,
        "http_headers": _NO_FIELDS,
        "http_request_params": _NO_FIELDS,
        "websocket_protocols": (),
        "websocket_extensions": (),
        "websocket_extensions_in_use": (),
        "websocket_origin": "",
        "websocket_version": 13,
        "send_state": WebSocketServerProtocol.SEND_STATE_GROUND,
        "data": b"",
        "autoPingPendingSeq": 0,
        "_backlog_ids": _NO_IDS,
    }

    #: Autobahn's queue of chopped or synced writes (see sendData).  Only
    #: those two kinds ever enter it, and dkserver sends neither, so an idle
    #: connection reads this empty class-level tuple instead of holding an
    #: empty deque of its own (~760 B); sendData creates the deque if needed.
    send_queue: deque | tuple = ()

    def _compact(self) -> None:
        """Rebuild the instance dict without the attributes that equal their
        class-level default: a dict does not shrink when entries go, and
        fewer than ~43 entries halve its table (~0.8 KiB per connection).
        Autobahn's empty send_queue goes too (the class-level one replaces it)."""
        defaults = self._IDLE_DEFAULTS
        missing = object()
        self.__dict__ = {
            name: value
            for name, value in self.__dict__.items()
            if defaults.get(name, missing) is not value
            and not (name == "send_queue" and not value)
        }

    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        # Autobahn appends to send_queue only here: for a chopped or synced
        # write, or behind one still queued (then the deque exists already).
        if (sync or chopsize) and "send_queue" not in self.__dict__:
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    def _release_handshake(self) -> None:
        """Autobahn keeps the handshake's raw request, response and headers
        (for its test suite), its key, request line and fields (the URI holds
        the token); an open connection reads none of them (~6 KiB)."""
        self.http_request_data = self.http_response_data = None
        self._wskey = self.http_status_line = None
        self.http_request_uri = self.http_request_path = None
        self.http_request_host = None
        self.http_headers = self.http_request_params = _NO_FIELDS
        self.websocket_protocols = self.websocket_extensions = ()
        if not self.websocket_extensions_in_use:
            self.websocket_extensions_in_use = ()

    def onConnect(self, request):
        # Token and Origin were checked before the upgrade (dkserver.ws.upgrade).
        return None

    def onOpen(self) -> None:
        self.hub = self.factory.hub
        self.session_id = uuid.uuid4().hex
        self._held: list[tuple[Any, Any]] = []
        self._backlog_done = False
        self._gone = False
        self.outbox = Outbox(
            write=self._write_prepared,
            ping=self._send_proof_ping,
            write_with_proof=self._write_with_proof,
            clock=self.hub.proof_clock,
            on_confirmed=self.hub.confirm,
            on_overflow=self._too_slow,
            limit=self.factory.queue_limit,
            proof_burst=self.factory.proof_burst,
            proof_interval=self.factory.proof_interval,
            proof_budget=self.factory.proof_budget,
        )
        # twisted.web's HTTP channel is still the transport's producer; it is
        # done with this connection, and dropping it frees its buffers.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self.outbox, True)
        self._release_handshake()
        self._compact()
        # The TLS and TCP transports' instance dicts are sized for more
        # attributes than they hold (13 and 17 in a table for 42): rebuilt,
        # each takes the next smaller table (~370 B each).
        for layer in (self.transport, getattr(self.transport, "transport", None)):
            if getattr(layer, "__dict__", None) is not None:
                layer.__dict__ = dict(layer.__dict__)
        # The 101 response into TLS now, then TLS's memory BIOs, grown by the
        # handshake, swapped for empty ones (~1.6 KiB).
        self._flush_transport()
        tls_bio.release_buffers(self.transport)
        self.hub.bus.add(self)
        self.hub.writer.start_session(self.session_id, self.user_id, self.hub.time_ns())
        self.dklog.info(
            "user {user_id} connected from {client_ip}",
            user_id=self.user_id,
            client_ip=peer_host(self.transport.getPeer()),
        )
        # Revoked between the token check and now: the watch that closes
        # open connections did not see this one yet.
        revocations = self.factory.revocations
        refusal = revocations.refusal(self.user_id, self.token_iat)
        if refusal is not None:
            self.revoke(*close_code(refusal))
            return
        d = Deferred.fromCoroutine(self._send_backlog())
        d.addErrback(self._backlog_failed)

    # -- outgoing --------------------------------------------------------------

    def _write_prepared(self, prepared: Any) -> bool:
        # Autobahn's sendPreparedMessage does not check the state; no data
        # frame may follow our close frame (RFC 6455 §5.5.1).
        if self.state != self.STATE_OPEN:
            return False
        try:
            if self.send_queue:
                self.sendPreparedMessage(prepared)  # behind Autobahn's own queue
            else:
                # Compression is off, so the prepared frame is final: write it
                # directly, skipping sendData's per-call debug-log arguments.
                self.transport.write(prepared.payloadHybi)
        except Disconnected:
            self.outbox.close()
            return False
        return True

    def _send_proof_ping(self, payload: bytes) -> None:
        """The outbox's proof ping, sent with the frames it follows."""
        self.sendPing(payload)
        self._flush_transport()

    def _write_with_proof(self, prepared: Any, payload: bytes) -> bool:
        """Write a message with the proof ping inside it (Outbox._send_proof):
        the frame without FIN, the ping and an empty final continuation frame,
        the last two in one TLS record; then send it to the socket at once."""
        if self.state != self.STATE_OPEN:
            return False
        try:
            if self.send_queue:  # behind Autobahn's own queue: no split
                self.sendPreparedMessage(prepared)
                self.sendPing(payload)
                return True
            data = prepared.payloadHybi
            end = b"\x89" + bytes((len(payload),)) + payload + _FINAL_EMPTY_FRAGMENT
            first = bytes((data[0] & 0x7F,))
            if len(data) + len(end) <= _ONE_RECORD:
                # One TLS record for all three, written past the transport's
                # small-write buffer (which costs a callLater per connection).
                self._write_record(b"".join((first, memoryview(data)[1:], end)))
            else:
                self.transport.write(first + data[1:])
                self._flush_transport()
                self.transport.write(end)
                self._flush_transport()
            self._send_now()
        except Disconnected:
            self.outbox.close()
            return False
        return True

    def _write_record(self, data: bytes) -> None:
        """``data`` as one TLS record now, after what the transport holds;
        straight to the socket when it holds nothing (dkserver.ws.sendnow)."""
        transport = self.transport
        if getattr(transport, "_aggregator", None) is None:
            transport.write(data)
            return
        transport._aggregator.flush()
        sendnow.write_now(transport, data)

    def _send_now(self) -> None:
        """Hand what the TCP transport holds to the kernel now rather than
        at the reactor's next write event: a fan-out's first recipients
        start reading while the server is still encrypting for the rest.
        Only when that cannot reenter us (no paused producer to resume) or
        end the connection (not disconnecting); an error is left for the
        reactor, which still has the socket registered for writing."""
        tcp = getattr(self.transport, "transport", self.transport)
        if (
            getattr(tcp, "_tempDataLen", 0)
            and tcp.connected
            and not tcp.disconnecting
            and not tcp._writeDisconnecting
            and not tcp.producerPaused
        ):
            tcp.doWrite()

    def _flush_transport(self) -> None:
        """Twisted's TLS transport (``BufferingTLSTransport``) holds small
        writes for a ``callLater(0)`` of its own; a ping written after that
        flush ran would leave a reactor iteration after the frames before it,
        and one written with them could share a TLS record boundary badly.
        Flushing puts it in the same TCP write as those frames, in a record of
        its own."""
        aggregator = getattr(self.transport, "_aggregator", None)
        if aggregator is not None:
            aggregator.flush()

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's dataReceived formats debug-log arguments on every call
        # even with debug logging off; the work itself is _dataReceived.
        self._dataReceived(data)

    def onPong(self, payload: bytes) -> None:
        self.outbox.on_pong(payload)

    def deliver(self, prepared: Any, ack: Any) -> None:
        """A live message for this connection (from the bus)."""
        if self._gone:
            return
        if not self._backlog_done:
            if len(self._held) >= self.outbox.limit:
                self._too_slow()
                return
            self._held.append((prepared, ack))
            return
        recent = self._recent
        if recent and ack is not None and ack[1] in recent:
            recent.discard(ack[1])  # the backlog already sent it
            return
        self.outbox.send(prepared, ack)

    def send_system(self, text: str) -> None:
        if not self._gone:
            self.outbox.send(self.hub.prepare(frames.system_frame(self.user_id, text)))

    async def _send_backlog(self, skip: frozenset = frozenset()) -> None:
        """The stored backlog, then the live messages held meanwhile; ``skip``:
        the ``(kind, id, user)`` of acks already on their way (a rescan)."""
        live = self.hub.bus.when_live(self.user_id)
        if live is not None:
            await live  # subscribed before the scan: nothing falls between
            if self._gone:
                return
        sent = 0
        self._backlog_ids = set()
        async for message, ack in self.hub.backlog_pages(self.user_id):
            if self._gone:
                return
            if skip and ack[:3] in skip:
                continue
            if not self.outbox.has_room():
                if not await self.outbox.wait_writable():
                    return
            self._backlog_ids.add(message.id)
            self.outbox.send(self.hub.prepare(stored_payload(message)), ack)
            sent += 1
        if self._gone:
            return
        self._backlog_done = True
        held, self._held = self._held, []
        for prepared, ack in held:
            if ack is not None and ack[1] in self._backlog_ids:
                continue  # already sent from the backlog
            self.outbox.send(prepared, ack)
        sent_ids, self._backlog_ids = self._backlog_ids, _NO_IDS
        if sent_ids:
            self._remember_recent(sent_ids)
        self._compact()  # idle from here on, most connections
        if sent:
            self.dklog.info(
                "sent {count} stored messages to {user_id}",
                count=sent,
                user_id=self.user_id,
            )
        if self._rescan_wanted:
            self._rescan_wanted = False
            self.rescan()

    #: A rescan was asked for while a backlog was being sent.
    _rescan_wanted = False

    def _remember_recent(self, ids: set[int]) -> None:
        """Keep the newest of the ids a backlog sent, for live copies still
        in transit (RECENT_LIMIT)."""
        if len(ids) > RECENT_LIMIT:
            ids = set(heapq.nlargest(RECENT_LIMIT, ids))
        if self._recent:
            ids |= self._recent
        self._recent = ids
        expiry = self._recent_expiry
        if expiry is not None and expiry.active():
            expiry.reset(RECENT_WINDOW)
        else:
            self._recent_expiry = self.hub.clock.callLater(
                RECENT_WINDOW, self._forget_recent
            )

    def _forget_recent(self) -> None:
        self._recent = None
        self._recent_expiry = None

    def rescan(self) -> None:
        """Live messages may have been lost (the bus lost its subscription):
        send what is still stored for us, except what is already on its way,
        holding live messages meanwhile as on connect."""
        if self._gone or not hasattr(self, "outbox"):
            return
        if not self._backlog_done:
            self._rescan_wanted = True
            return
        self._backlog_done = False
        d = Deferred.fromCoroutine(self._rescan())
        d.addErrback(self._backlog_failed)

    async def _rescan(self) -> None:
        # Deliveries confirmed but not yet committed would read as pending.
        await self.hub.writer.flush()
        # By (kind, id, user): a live ack from another node has no store time.
        await self._send_backlog(frozenset(a[:3] for a in self.outbox.in_flight()))

    def _backlog_failed(self, failure) -> None:
        if failure.check(StoreUnavailable):
            self.dklog.warn(
                "backlog for {user_id} not sent: {reason}",
                user_id=self.user_id,
                reason=failure.getErrorMessage(),
            )
        else:
            self.dklog.failure(
                "backlog for {user_id} failed", failure, user_id=self.user_id
            )
        self.dropConnection(abort=True)

    def _too_slow(self) -> None:
        if self._gone:
            return
        self.dklog.warn(
            "closing {user_id}'s connection: too slow to keep up", user_id=self.user_id
        )
        self.outbox.stop()  # written frames can still be confirmed by the close reply
        self._held = []
        self.sendClose(
            CLOSE_TOO_SLOW, "client too slow; undelivered messages stay pending"
        )
        self.hub.clock.callLater(2.0, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.transport is not None and not self._gone:
            self.dropConnection(abort=True)

    def revoke(self, code: int, reason: str) -> None:
        """The account was banned or deleted, or the token revoked: close
        with ``code``; what is still queued stays pending."""
        if self._gone or self.state != self.STATE_OPEN:
            return
        self.dklog.warn(
            "security event connection_revoked ({reason}) for user {user_id!r}",
            reason=reason,
            user_id=self.user_id,
            audit=True,
        )
        self.outbox.stop()
        self._held.clear()
        self.sendClose(code, reason)
        self.hub.clock.callLater(2.0, self._abort_if_open)

    def going_away(self) -> None:
        """Shutdown: close with 1001 "going away"."""
        if self._gone or self.state != self.STATE_OPEN:
            return
        # Nothing is written after the close frame: what is queued, or arrives
        # later, stays pending; the close reply confirms what went before.
        self.outbox.stop()
        self._held.clear()
        self.sendCloseFrame(code=CLOSE_GOING_AWAY, reasonUtf8=b"server shutting down")

    # -- incoming --------------------------------------------------------------

    def onMessageEnd(self) -> None:
        """Autobahn's version also fires a "message" event for observers,
        creating and chaining a future per message; dkserver registers no
        observers, so that is ~10 % of the reactor's time for nothing."""
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def onMessage(self, payload: bytes, isBinary: bool, checked: bool = False):
        hub = self.hub
        if not checked:
            allowed = hub.limits.try_take(self.user_id)
            if allowed is not True or self._rate_checks:
                self._after_rate_check(payload, isBinary, allowed)
                return
        if isBinary:
            self.send_system("Binary frames are not supported; send JSON text")
            return
        try:
            message = frames.parse_client_frame(payload, self.user_id, hub.time_ns())
        except frames.FrameError as e:
            if e.spoofed:
                self.dklog.warn(
                    "security event spoofed_sender from user {user_id}",
                    user_id=self.user_id,
                    audit=True,
                )
            self.send_system(str(e))
            return
        if frames.is_forward_response(message):
            if not hub.forward.answer(self, message.content):
                self.send_system("No forward request is waiting for an answer")
            return
        # Submitted synchronously, in arrival order: the writer commits and
        # calls back in that order, so a sender's messages stay in order.
        # (Inline rather than self._frame_in(): this is the hot path.)
        self._inflight += 1
        hub.unhandled_frames += 1
        if self._inflight >= self.factory.inbox_limit and not self._reading_paused:
            self._pause_reading()
        hub.accept(self, message)

    # A bucket shared between nodes answers through a Deferred (one Redis
    # round trip).  Checks are sent at once, in arrival order; each frame waits
    # in _rate_checks until its own and every earlier frame's answer is in, so
    # frames are still handled -- stored, relayed -- in the order they came.
    # Waiting frames count as in flight (backpressure, and shutdown waits).
    _rate_checks: deque | tuple = ()

    def _after_rate_check(self, payload: bytes, isBinary: bool, allowed) -> None:
        if allowed is False and not self._rate_checks:
            self._rate_limited()
            return
        if not self._rate_checks:
            self._rate_checks = deque()
        entry = [payload, isBinary, allowed if isinstance(allowed, bool) else None]
        self._rate_checks.append(entry)
        self._frame_in()
        if entry[2] is None:
            allowed.addCallbacks(
                self._rate_answered,
                self._rate_check_failed,
                callbackArgs=(entry,),
                errbackArgs=(entry,),
            )

    def _frame_in(self) -> None:
        self._inflight += 1
        self.hub.unhandled_frames += 1
        if self._inflight >= self.factory.inbox_limit and not self._reading_paused:
            self._pause_reading()

    def _pause_reading(self) -> None:
        """Backpressure on a fast sender: stop reading until we catch up."""
        self._reading_paused = True
        if not self._gone:  # a frame whose rate check came back after close
            self.transport.pauseProducing()

    def _rate_check_failed(self, failure, entry: list) -> None:
        # Shared limits fall back to this node's own on a Redis error and do
        # not fail; should one, the frame passes (messages fail open).
        self.dklog.failure(
            "rate check for {user_id} failed", failure, user_id=self.user_id
        )
        self._rate_answered(True, entry)

    def _rate_answered(self, allowed: bool, entry: list) -> None:
        entry[2] = bool(allowed)
        checks = self._rate_checks
        while checks and checks[0][2] is not None:
            payload, isBinary, ok = checks.popleft()
            self._handled()
            if ok:
                self.onMessage(payload, isBinary, checked=True)
            else:
                self._rate_limited()

    def _rate_limited(self) -> None:
        self.hub.metrics.rate_limited.inc()
        self.send_system(frames.RATE_LIMITED)

    def accepted(self, error: str | None) -> None:
        """The hub stored (and relayed) a message of ours, or refused it."""
        self._handled()
        if error:
            self.send_system(error)

    def accept_failed(self, failure) -> None:
        self._handled()
        if failure.check(PendingQuotaExceeded):
            self.hub.metrics.quota_refused.inc()
            self.send_system(str(failure.value))
            return
        if not failure.check(StoreUnavailable):  # the writer logs an outage once
            self.dklog.failure(
                "message from {user_id} failed", failure, user_id=self.user_id
            )
        self.send_system("Internal error: message not stored; please resend")

    def _handled(self) -> None:
        self._inflight -= 1
        self.hub.unhandled_frames -= 1
        if self._reading_paused and self._inflight <= self.factory.inbox_limit // 2:
            self._reading_paused = False
            if not self._gone:
                self.transport.resumeProducing()

    # -- teardown ----------------------------------------------------------------

    #: What Hub.reserve counted against the connection limits; released once.
    reservation: Any = None

    def connectionLost(self, reason) -> None:
        try:
            super().connectionLost(reason)
        finally:
            if self.reservation is not None:
                self.factory.hub.release(self.reservation)
                self.reservation = None

    def onClose(self, wasClean: bool, code: int, reason: str) -> None:
        if self._gone or not hasattr(self, "hub"):
            self._gone = True
            return
        self._gone = True
        if wasClean and self.closedByMe:
            # The peer answered our close frame, so it read everything before it.
            self.outbox.confirm_all()
        self.outbox.close()
        self._held.clear()
        if self._recent_expiry is not None and self._recent_expiry.active():
            self._recent_expiry.cancel()
        self._recent = self._recent_expiry = None
        self.hub.bus.remove(self)
        self.hub.forward.connection_lost(self)
        self.hub.writer.end_session(self.session_id, self.hub.time_ns())
        self.dklog.info(
            "user {user_id} disconnected ({code})", user_id=self.user_id, code=code
        )


for _name, _value in DkServerProtocol._IDLE_DEFAULTS.items():
    setattr(DkServerProtocol, _name, _value)
