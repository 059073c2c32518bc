"""A connection's bounded outgoing queue, and when a frame counts as delivered.

Bytes written to a socket are not yet read by the peer: they can sit in
Twisted's buffer, the kernel's, or the client's, and a dropped connection
loses them.  So a message is marked ``delivered`` only when the peer has
*proved* it read it: after writing, the outbox sends a WebSocket ping (every
client must answer pings, RFC 6455 §5.5.2) and the pong, which the peer can
only send after reading everything before the ping on the ordered stream,
confirms all frames written before it.  A clean close that the server started
confirms everything before its close frame the same way.  A frame that is not
confirmed stays ``pending`` and is sent again on the next connect (at least
once; a repeat carries the same ``id``).

The outbox is also the transport's streaming producer: when the transport's
buffer is full it is paused and frames queue here, up to ``limit`` of them.  A
reader that falls further behind is disconnected (``on_overflow``) rather than
let memory grow.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

#: The original server's per-client send buffer.
DEFAULT_LIMIT = 256

#: A proof ping is written at the end of the reactor turn that wrote the
#: frames it covers, inside the turn's last message (see _send_proof), so a
#: client that reads a message and closes at once has answered it first.  One
#: ping covers every frame written in that turn (a backlog page included).
#: The rate is a token bucket per connection: PROOF_BURST pings at once, then
#: one per PROOF_INTERVAL.  Each ping and pong costs a TLS record each way: at
#: one per 50 ms, 200 busy receivers spent ~0.2 of a core on pings.  The price:
#: under steady traffic a message may be marked delivered up to
#: PROOF_INTERVAL later, and a crash (or a close right after reading) in that
#: window sends it again (same id): at ~850 messages/s ~260 of them (the
#: original Go client shows every repeat).  So a server with CPU to spare
#: also proves by count (ProofBudget): see PROOF_EVERY.
PROOF_BURST = 4
PROOF_INTERVAL = 0.5
#: While the process has CPU to spare, a connection with PROOF_EVERY written
#: frames not yet covered by a ping gets one at the end of that turn, whatever
#: its bucket holds.  A ping and its pong cost about as much as relaying a
#: message (two TLS records, one Autobahn frame), so these extra pings come
#: from a budget shared by the whole server: up to SPARE_PROOF_RATE a second
#: while idle, less as the process gets busier, none once it uses SPARE_BUSY
#: of a core (measured over SPARE_SAMPLE seconds).  A saturated server (the
#: relay bench) proves exactly as the buckets alone would, so the extra CPU
#: is bounded by CPU that was idle; a server with room repeats at most about
#: PROOF_EVERY frames (plus what is in flight) per connection after a crash.
PROOF_EVERY = 8
SPARE_PROOF_RATE = 1000.0
SPARE_BUSY = 0.9
SPARE_SAMPLE = 0.25
#: A peer that leaves a proof ping unanswered this long, or lets more than
#: UNCONFIRMED_FACTOR x limit written frames go unconfirmed, is treated like a
#: reader too slow to keep up: without proofs nothing it got counts, and the
#: list of what to confirm must not grow without bound.
PROOF_TIMEOUT = 60.0
UNCONFIRMED_FACTOR = 64

_PING_PREFIX = b"dk-ack:"


class ProofBudget:
    """The server's proof pings beyond the connections' buckets (PROOF_EVERY):
    a token bucket that refills at SPARE_PROOF_RATE times the share of
    SPARE_BUSY the process did not use in the last SPARE_SAMPLE seconds.
    ``cpu`` is the process's CPU seconds (all threads)."""

    def __init__(
        self,
        clock: IReactorTime,
        every: int = PROOF_EVERY,
        rate: float = SPARE_PROOF_RATE,
        busy: float = SPARE_BUSY,
        sample: float = SPARE_SAMPLE,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.every = every
        self._clock = clock
        self._rate = rate
        self._busy = busy
        self._sample = sample
        self._cpu = cpu
        self._burst = max(1.0, rate * sample)
        self._tokens = 0.0
        #: Pings a second the bucket refills with (0 until the first sample).
        self._refill = 0.0
        self._at = self._sampled_at = clock.seconds()
        self._cpu_at = cpu()

    def take(self) -> bool:
        """Whether one more proof ping may go out now (spending it)."""
        if self._tokens < 1.0:
            now = self._clock.seconds()
            self._tokens = min(
                self._burst, self._tokens + (now - self._at) * self._refill
            )
            self._at = now
            if now - self._sampled_at >= self._sample:
                cpu = self._cpu()
                used = (cpu - self._cpu_at) / (now - self._sampled_at)
                self._refill = self._rate * max(0.0, 1.0 - used / self._busy)
                self._sampled_at, self._cpu_at = now, cpu
            if self._tokens < 1.0:
                return False
        self._tokens -= 1.0
        return True


@implementer(IPushProducer)
class Outbox:
    """Queues frames (with an acknowledgement token each) for one connection."""

    #: The server's ProofBudget (None: the bucket and the window only);
    #: class-level defaults keep the instance dicts of idle connections small.
    _budget: ProofBudget | None = None
    _proof_timeout = PROOF_TIMEOUT
    #: The one reactor call that checks the oldest proof's deadline (see
    #: _check_deadline); None while none is set.
    _deadline_call: IDelayedCall | None = None

    def __init__(
        self,
        write: Callable[[Any], bool | None],
        ping: Callable[[bytes], None],
        clock: IReactorTime,
        on_confirmed: Callable[[list[Any]], None],
        on_overflow: Callable[[], None],
        limit: int = DEFAULT_LIMIT,
        proof_burst: int = PROOF_BURST,
        proof_interval: float = PROOF_INTERVAL,
        proof_timeout: float = PROOF_TIMEOUT,
        write_with_proof: Callable[[Any, bytes], bool] | None = None,
        proof_budget: ProofBudget | None = None,
    ) -> None:
        self._write_frame = write
        #: Writes a frame with the proof ping inside it (see _send_proof);
        #: None: the ping always follows as a frame of its own.
        self._write_with_proof = write_with_proof
        #: The last acknowledged frame of this reactor turn, held back so the
        #: turn's proof ping can go inside it.
        self._tail: tuple[Any, Any] | None = None
        self._ping = ping
        self._clock = clock
        self._on_confirmed = on_confirmed
        self._on_overflow = on_overflow
        self.limit = limit
        self._proof_burst = proof_burst
        self._proof_interval = proof_interval
        if proof_timeout != PROOF_TIMEOUT:
            self._proof_timeout = proof_timeout
        if proof_budget is not None:
            self._budget = proof_budget
        #: Proof pings the bucket holds, as of ``_tokens_at``.
        self._tokens = float(proof_burst)
        self._tokens_at = 0.0
        # Both start empty and small: most connections are idle, and an empty
        # deque costs ~600 bytes each (memory per connection matters at 10k).
        self._queue: deque[tuple[Any, Any]] | tuple = ()
        #: Acks of frames written but not yet proven read, oldest first.
        self._unconfirmed: list[Any] = []
        self._paused = False
        self._closed = False
        self._proof_call: IDelayedCall | None = None
        #: Proof pings awaiting their pong, oldest first: (payload, number of
        #: acks it covers beyond the earlier ones, its deadline in clock
        #: seconds or None once stopped).
        self._proofs: deque[tuple[bytes, int, float | None]] | tuple = ()
        #: Acks (from the oldest) covered by the pings in ``_proofs``.
        self._covered = 0
        self._proof_seq = 0
        self._writable_waiters: list[Deferred] = []

    def __len__(self) -> int:
        return len(self._queue)

    def send(self, frame: Any, ack: Any = None) -> bool:
        """Write now, or queue while the transport is busy; False if dropped."""
        if self._closed:
            return False
        if self._paused or self._queue:
            if len(self._queue) >= self.limit:
                self._overflow()
                return False
            if not self._queue:
                self._queue = deque()
            self._queue.append((frame, ack))
            return True
        self._write(frame, ack)
        return True

    def in_flight(self) -> set[Any]:
        """Acks of frames queued or written but not yet confirmed."""
        acks = {ack for _, ack in self._queue if ack is not None}
        acks.update(self._unconfirmed)
        if self._tail is not None:
            acks.add(self._tail[1])
        return acks

    def has_room(self, reserve: int = 0) -> bool:
        return (
            not self._closed
            and not self._paused
            and len(self._queue) + reserve < self.limit
        )

    def wait_writable(self) -> Deferred:
        """Fires once the queue is empty and the transport is not paused."""
        if self._closed or (not self._paused and not self._queue):
            d: Deferred = Deferred()
            d.callback(not self._closed)
            return d
        d = Deferred()
        self._writable_waiters.append(d)
        return d

    def _write(self, frame: Any, ack: Any) -> None:
        if self._tail is not None:
            self._write_tail()  # another frame follows it: it goes out whole
            if self._closed:
                return
        if ack is not None and self._proof_due_now():
            self._tail = (frame, ack)
            return
        if self._write_frame(frame) is False:
            return  # not written (connection closing): the message stays pending
        if ack is not None:
            self._written(ack)

    def _write_tail(self) -> None:
        frame, ack = self._tail
        self._tail = None
        if self._write_frame(frame) is not False:
            self._written(ack)

    def _written(self, ack: Any) -> None:
        self._unconfirmed.append(ack)
        if len(self._unconfirmed) > UNCONFIRMED_FACTOR * self.limit:
            self._overflow()
            return
        self._schedule_proof()

    def _proof_due_now(self) -> bool:
        """Will a proof ping go out at the end of this turn?  (Scheduling
        it if needed.)"""
        if self._write_with_proof is None or self._closed:
            return False
        self._schedule_proof()
        call = self._proof_call
        return (
            call is not None
            and call.active()
            and call.getTime() <= self._clock.seconds()
        )

    def _overflow(self) -> None:
        self.stop()
        self._on_overflow()

    def stop(self) -> None:
        """Send nothing more; queued frames are dropped (they stay pending),
        written ones can still be confirmed by a pong or a clean close."""
        if self._closed:
            return
        self._closed = True
        self._queue = ()
        self._tail = None  # not written: stays pending
        self._cancel_proof()
        self._wake_writers(False)

    def close(self) -> None:
        """The connection is gone: whatever was not confirmed stays pending."""
        self.stop()
        self._unconfirmed.clear()
        self._drop_proofs()

    def confirm_all(self) -> None:
        """The peer read everything written (it answered our close frame)."""
        self._drop_proofs()
        self._confirm(len(self._unconfirmed))

    # -- proof of reading --------------------------------------------------------

    def _schedule_proof(self) -> None:
        """Make sure a proof ping follows the frames just written."""
        if self._closed:
            return
        # A busy stream with a full window is confirmed in chunks, not once
        # per interval (the unconfirmed list stays short); with CPU to spare,
        # every PROOF_EVERY frames.
        uncovered = len(self._unconfirmed) - self._covered
        call = self._proof_call
        if call is not None and call.active():
            if call.getTime() > self._clock.seconds() and self._prove_now(uncovered):
                call.reset(0)
            return
        wait = 0.0 if self._prove_now(uncovered) else self._token_wait()
        # Even "now" is a delayed call: it runs after everything this reactor
        # turn writes, so one ping covers all of it.
        self._proof_call = self._clock.callLater(wait, self._send_proof)

    def _prove_now(self, uncovered: int) -> bool:
        if uncovered >= self.limit:
            return True
        budget = self._budget
        return budget is not None and uncovered >= budget.every and budget.take()

    def _token_wait(self) -> float:
        """Seconds until the bucket holds a proof ping (0: it does now)."""
        now = self._clock.seconds()
        self._tokens = min(
            float(self._proof_burst),
            self._tokens + (now - self._tokens_at) / self._proof_interval,
        )
        self._tokens_at = now
        return max(0.0, (1.0 - self._tokens) * self._proof_interval)

    def _cancel_proof(self) -> None:
        call = self._proof_call
        if call is not None and call.active():
            call.cancel()
        self._proof_call = None
        self._cancel_deadline()
        # Written frames can still be confirmed by the pongs, without deadlines.
        if self._proofs:
            self._proofs = deque((p, n, None) for p, n, _ in self._proofs)

    def _drop_proofs(self) -> None:
        self._cancel_deadline()
        self._proofs = ()
        self._covered = 0

    def _send_proof(self) -> None:
        """The proof ping for everything written so far.

        When this turn's last frame was held back (``_tail``), the ping goes
        *inside* that message: its payload as a first fragment, the ping, then
        an empty final fragment (RFC 6455 §5.4 lets control frames interleave
        a fragmented message).  A client therefore answers the ping before
        its application even sees the message, so a client that closes right
        after reading has already proved it read; the final fragment travels
        in the same TLS record as the ping.
        """
        self._proof_call = None
        tail, self._tail = self._tail, None
        uncovered = len(self._unconfirmed) - self._covered
        if self._closed or (uncovered <= 0 and tail is None):
            return
        self._token_wait()
        self._tokens = max(0.0, self._tokens - 1.0)
        self._proof_seq += 1
        payload = _PING_PREFIX + b"%d" % self._proof_seq
        if tail is None:
            self._ping(payload)
        elif self._write_with_proof(tail[0], payload):
            self._unconfirmed.append(tail[1])
            uncovered += 1
            if len(self._unconfirmed) > UNCONFIRMED_FACTOR * self.limit:
                self._overflow()
                return
        elif self._closed or uncovered <= 0:
            return  # not written (connection closing): it stays pending
        else:
            self._ping(payload)
        if not self._proofs:
            self._proofs = deque()
        self._proofs.append(
            (payload, uncovered, self._clock.seconds() + self._proof_timeout)
        )
        self._covered += uncovered
        if self._deadline_call is None:
            self._deadline_call = self._clock.callLater(
                self._proof_timeout, self._check_deadline
            )

    # One reactor call per connection watches the deadlines, not one per
    # proof: a broadcast sends a proof to every recipient, and a call each
    # (created, pushed on the reactor's heap, cancelled by the pong) was ~5 %
    # of the fan-out.  A pong leaves the call alone; when it comes due it
    # looks at the oldest proof still unanswered (deadlines only grow) and
    # waits on for that one, or ends.

    def _check_deadline(self) -> None:
        self._deadline_call = None
        if not self._proofs:
            return
        due = self._proofs[0][2]
        if due is None:
            return  # stopped: no deadlines
        wait = due - self._clock.seconds()
        if wait <= 1e-6:
            self._overflow()
            return
        self._deadline_call = self._clock.callLater(wait, self._check_deadline)

    def _cancel_deadline(self) -> None:
        call = self._deadline_call
        if call is not None:
            if call.active():
                call.cancel()
            self._deadline_call = None

    def on_pong(self, payload: bytes) -> None:
        """A pong to one of our proof pings: the frames before it were read.

        A peer may answer only the latest of several pings (RFC 6455
        §5.5.3), so a pong also confirms what earlier pings covered.
        """
        if not payload.startswith(_PING_PREFIX):
            return
        proofs = self._proofs
        if proofs and proofs[0][0] == payload:
            index = 0  # the usual case: the oldest (and only) one
        else:
            index = next(
                (i for i, (p, _, _) in enumerate(proofs) if p == payload), None
            )
            if index is None:
                return
        count = 0
        for _ in range(index + 1):
            count += proofs.popleft()[1]
        self._covered -= count
        self._confirm(count)

    def _confirm(self, count: int) -> None:
        if count <= 0:
            return
        acks = self._unconfirmed[:count]
        del self._unconfirmed[:count]
        self._on_confirmed(acks)

    # -- IPushProducer ---------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._closed:
            return
        self._paused = False
        while self._queue and not self._paused and not self._closed:
            frame, ack = self._queue.popleft()
            self._write(frame, ack)
        if not self._queue and not self._paused:
            self._wake_writers(True)

    def stopProducing(self) -> None:
        self.close()

    def _wake_writers(self, value: bool) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for d in waiters:
            d.callback(value)
