"""The messaging hub: shared state of all WebSocket sessions, and the rules.

Per-connection state lives on the protocol; everything shared (who is
connected, rate buckets, the writer, the forward broker) lives here, so the
protocol stays a thin adapter between Autobahn and these rules.
"""

from __future__ import annotations

import time
from typing import Any

from autobahn.websocket.protocol import WebSocketServerFactory
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.logger import Logger
from twisted.python.failure import Failure

from dkserver import timestamps
from dkserver.metrics import Metrics
from dkserver.ratelimit import BucketRegistry, settled
from dkserver.store import Store
from dkserver.store.backlog import FirstPageReads
from dkserver.store.messages import NewMessage, StoredMessage
from dkserver.store.writer import GroupWriter
from dkserver.ws import frames
from dkserver.ws.caps import ConnectionCounts
from dkserver.ws.forward import ForwardBroker, ForwardTimeout
from dkserver.ws.sessions import LiveBus

#: Rows fetched per query while sending a backlog on connect.
BACKLOG_PAGE = 500


class _SoonCall:
    """A :meth:`TurnClock.callLater` with no delay; the part of
    ``IDelayedCall`` the outbox uses (active, getTime, cancel, reset)."""

    __slots__ = ("_clock", "_later", "args", "f", "kw", "pending", "time")

    def __init__(self, clock: Any, time: float, f, args, kw) -> None:
        self._clock = clock
        self.time = time
        self.f, self.args, self.kw = f, args, kw
        self.pending = True
        #: The reactor's call, once reset() moved this one to later.
        self._later: Any = None

    def active(self) -> bool:
        later = self._later
        return self.pending if later is None else later.active()

    def getTime(self) -> float:
        return self.time if self._later is None else self._later.getTime()

    def cancel(self) -> None:
        if self._later is not None:
            self._later.cancel()
        elif not self.pending:
            raise AlreadyCalled if self.f is None else AlreadyCancelled
        self.pending = False

    def reset(self, delay: float) -> None:
        if self._later is not None:
            self._later.reset(delay)
        elif not self.pending:
            raise AlreadyCalled if self.f is None else AlreadyCancelled
        elif delay > 0:  # due this turn already, unless moved to later
            self.pending = False
            self._later = self._clock.callLater(delay, self.f, *self.args, **self.kw)


class TurnClock:
    """A clock whose calls without delay wait for the end of this reactor
    turn *together*: one reactor call runs them all, in the order they were
    made.  A broadcast schedules a proof ping on every recipient's outbox
    (Outbox._schedule_proof); a reactor ``callLater`` each costs a
    ``DelayedCall`` and two heap operations of Python comparisons per
    recipient.  Calls with a delay, and everything else, are the clock's."""

    log = Logger()

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._due: list[_SoonCall] = []
        self.seconds = clock.seconds

    def getDelayedCalls(self) -> list:
        return self._clock.getDelayedCalls()

    def callLater(self, delay: float, f, *args, **kw) -> Any:
        if delay > 0:
            return self._clock.callLater(delay, f, *args, **kw)
        if not self._due:
            self._clock.callLater(0, self._run)
        call = _SoonCall(self._clock, self._clock.seconds(), f, args, kw)
        self._due.append(call)
        return call

    def _run(self) -> None:
        # Calls made while these run wait for the next turn, as the
        # reactor's own would.
        due, self._due = self._due, []
        for call in due:
            if not call.pending:
                continue
            call.pending = False
            f, call.f = call.f, None  # None: called (for cancel's error)
            try:
                f(*call.args, **call.kw)
            except Exception:
                self.log.failure("end-of-turn call {f!r} failed", f=f)


class Hub:
    log = Logger()

    def __init__(
        self,
        store: Store,
        writer: GroupWriter,
        bus: LiveBus,
        limits: BucketRegistry,
        forward: ForwardBroker,
        metrics: Metrics,
        clock: Any,
        time_ns=time.time_ns,
        caps: Any = None,
        *,
        first_reads: FirstPageReads | None,
    ) -> None:
        self.store = store
        #: Every connect's first backlog read, gathered (None: no backlogs,
        #: for unit tests of the rest).
        self.first_reads = first_reads
        self.writer = writer
        self.bus = bus
        #: ``try_take(user_id)``: True/False, or a Deferred of either when
        #: the bucket is shared between nodes (see DkServerProtocol.onMessage).
        self.limits = limits
        #: Connection caps: ConnectionCounts, or SharedConnections in a cluster.
        self.caps = caps if caps is not None else ConnectionCounts()
        self.forward = forward
        self.metrics = metrics
        self.clock = clock
        #: The outboxes' clock: their end-of-turn proof pings share one
        #: reactor call per turn (see TurnClock).
        self.proof_clock = TurnClock(clock)
        self.time_ns = time_ns
        self.factory: WebSocketServerFactory | None = None
        #: Frames read from sockets but not yet stored or refused; shutdown
        #: waits for them so nothing read is lost.
        self.unhandled_frames = 0
        #: Set when shutdown starts: no new WebSocket sessions.
        self.closing = False
        metrics.track_live(bus.connection_count, lambda: len(bus.online_users()))
        # Resolved once: prometheus_client's labels() takes a lock per call.
        self._count = {
            kind: metrics.messages.labels(kind=kind)
            for kind in ("direct", "broadcast", "forward")
        }
        self._latency = {
            "d": metrics.delivery_seconds.labels("direct").observe,
            "b": metrics.delivery_seconds.labels("broadcast").observe,
        }

    async def reserve(
        self, ip: str, user_id: str, max_ip: int, max_user: int
    ) -> Any | None:
        """Count a new connection against its IP's and user's limits; the
        reservation to release when it ends, or None if a cap is full."""
        return await settled(self.caps.reserve(ip, user_id, max_ip, max_user))

    def release(self, reservation: Any) -> None:
        """Give back what :meth:`reserve` returned (once)."""
        self.caps.release(reservation)

    def prepare(self, payload: bytes) -> Any:
        """Frame a payload once for every recipient (Autobahn PreparedMessage)."""
        return self.factory.prepareMessage(payload, isBinary=False)

    def confirm(self, acks: list[tuple[str, int, str, int | None]]) -> None:
        """Frames the peer proved it read: record them as delivered, and how
        long after they were stored."""
        now_ns = self.time_ns()
        latency = self._latency
        for kind, message_id, user_id, stored_ns in acks:
            if kind == "d":
                self.writer.mark_delivered(message_id, user_id)
            else:
                self.writer.record_broadcast_delivery(message_id, user_id)
            if stored_ns is not None:
                # Not below zero: a store time from another node's clock, or
                # this clock stepped back.
                latency[kind](max(0, now_ns - stored_ns) / 1e9)

    def accept(self, conn: Any, message: frames.ClientMessage) -> None:
        """Store, then deliver, a client's message; then tell the sender's
        connection: ``conn.accepted(error_text_or_None)`` or
        ``conn.accept_failed(failure)``.  Synchronous up to the writer, so
        callers keep their order."""
        new = NewMessage(
            from_user=conn.user_id,
            to_user=message.to,
            timestamp=message.timestamp.text,
            content=message.content,
            is_broadcast=message.is_broadcast,
            signature=message.signature or None,
            is_forward_message=message.is_forward_message,
            received_ns=self.time_ns(),
        )

        def done(message_id: int | None, failure: Failure | None) -> None:
            if failure is not None:
                conn.accept_failed(failure)
                return
            conn.accepted(
                self._stored(message_id, conn.user_id, message, new.received_ns)
            )

        self.writer.submit(new, conn.session_id, done)

    def _stored(
        self,
        message_id: int | None,
        sender: str,
        message: frames.ClientMessage,
        stored_ns: int | None = None,
    ) -> str | None:
        if message_id is None:
            return f"Recipient {message.to!r} does not exist"
        payload = frames.encode_message(
            message_id,
            sender,
            message.to,
            message.timestamp.text,
            message.content,
            "pending",
            is_broadcast=message.is_broadcast,
            signature=message.signature,
            is_forward_message=message.is_forward_message,
        )
        prepared = self.prepare(payload)
        if message.is_broadcast:
            self._count["broadcast"].inc()
            self.bus.send_broadcast(sender, prepared, message_id, stored_ns)
        else:
            self._count["direct"].inc()
            self.bus.send_direct(message.to, prepared, message_id, stored_ns)
        return None

    async def ask_forward(self, user_id: str, query: str) -> str:
        """Ask the user's own client a question; its answer text."""
        return await self.forward_request(
            user_id, frames.forward_request_content(query), frames.forward_answer_text
        )

    async def forward_request(self, user_id: str, content: str, parse) -> Any:
        """Send a forward frame with ``content`` to the user's connections
        that answer; ``parse(answer content)`` of the first answer (see
        ForwardBroker).  A user connected only to other nodes is asked
        there (``bus.ask_elsewhere``; one process has no elsewhere)."""
        self._count["forward"].inc()
        if not self.bus.connections(user_id):
            remote = self.bus.ask_elsewhere(user_id, content)
            if remote is not None:
                result = parse(await remote)
                if result is None:  # not an answer: as if none came in time
                    raise ForwardTimeout()
                return result
        return await self.forward.ask(
            user_id, self.bus.connections, self._forward_sender(user_id, content), parse
        )

    async def answer_for_node(self, user_id: str, content: str) -> str:
        """Another node's forward request for a user connected here: the
        answer's content, for that node to parse (never asked onwards)."""
        return await self.forward.ask(
            user_id,
            self.bus.connections,
            self._forward_sender(user_id, content),
            lambda answer: answer,
        )

    def _forward_sender(self, user_id: str, content: str):
        def send(conn: Any) -> None:
            payload = frames.encode_message(
                0,
                user_id,
                user_id,
                timestamps.now(self.time_ns()).text,
                content,
                "pending",
                is_forward_message=True,
            )
            conn.deliver(self.prepare(payload), None)

        return send

    async def backlog_pages(self, user_id: str):
        """Pending direct messages, then undelivered broadcasts, oldest first,
        with the acknowledgement each one needs once the client read it
        (its fourth part, the store time, as live deliveries carry it)."""
        # What earlier connections read is marked through the writer; their
        # marks must commit before this query, or a client that reads, closes
        # and reconnects at once gets the message again.  With one SQLite
        # connection the pool's FIFO ordered the two; on a pool of several
        # (PostgreSQL) the query could overtake the commit.
        await self.writer.flush()
        messages = self.store.messages
        # The first page of each kind in one transaction (most backlogs are
        # shorter than a page), gathered with other connects' into one trip
        # to the database thread.
        first = await self.first_reads.read(user_id, BACKLOG_PAGE)
        for kind, fetch, page in (
            ("d", messages.pending_direct, first[0]),
            ("b", messages.undelivered_broadcasts, first[1]),
        ):
            after = 0
            while True:
                if page is None:
                    page = await fetch(user_id, BACKLOG_PAGE, after_id=after)
                for m in page:
                    yield m, (kind, m.id, user_id, m.received_ns)
                if len(page) < BACKLOG_PAGE:
                    break
                after = page[-1].id
                page = None


def stored_payload(m: StoredMessage) -> bytes:
    return frames.encode_message(
        m.id,
        m.from_user,
        m.to_user,
        m.timestamp,
        m.content,
        m.status,
        is_broadcast=m.is_broadcast,
        signature=m.signature or "",
        is_forward_message=m.is_forward_message,
    )
