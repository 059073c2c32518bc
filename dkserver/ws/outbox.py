"""A connection's bounded outgoing queue, and when a frame counts as delivered.

A message is marked ``delivered`` only once its bytes have left Twisted's
buffers for the kernel; a frame still sitting in memory when the process dies
or the connection is dropped stays ``pending`` and is sent again on the next
connect (at least once; a repeat carries the same ``id``).

The outbox is the transport's streaming producer: when the transport's buffer
is full it is paused and frames queue here, up to ``limit`` of them.  A reader
that falls further behind is disconnected (``on_overflow``) rather than let
memory grow; everything it did not get is still pending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

#: The original server's per-client send buffer.
DEFAULT_LIMIT = 256

# How often to look again for buffered bytes that have not reached the kernel.
_CHECK_DELAYS = (0.0, 0.002, 0.01, 0.05, 0.25)


def unflushed_bytes(transport: Any) -> int:
    """Bytes written to ``transport`` that Twisted has not yet handed to the
    kernel, through any stack of wrapping transports (TLS over TCP)."""
    total = 0
    seen = 0
    while transport is not None and seen < 8:
        seen += 1
        buffered = getattr(transport, "dataBuffer", None)
        if isinstance(buffered, bytes | bytearray | memoryview):
            total += len(buffered) - getattr(transport, "offset", 0)
            total += getattr(transport, "_tempDataLen", 0)
        app_buffer = getattr(transport, "_appSendBuffer", None)
        if app_buffer:
            total += sum(len(chunk) for chunk in app_buffer)
        transport = getattr(transport, "transport", None)
    return total


@implementer(IPushProducer)
class Outbox:
    """Queues frames (with an acknowledgement token each) for one connection."""

    def __init__(
        self,
        write: Callable[[Any], None],
        unflushed: Callable[[], int],
        clock: IReactorTime,
        on_flushed: Callable[[list[Any]], None],
        on_overflow: Callable[[], None],
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self._write_frame = write
        self._unflushed = unflushed
        self._clock = clock
        self._on_flushed = on_flushed
        self._on_overflow = on_overflow
        self.limit = limit
        self._queue: deque[tuple[Any, Any]] = deque()
        self._unconfirmed: list[Any] = []
        self._paused = False
        self._closed = False
        self._check_call: IDelayedCall | None = None
        self._check_step = 0
        self._writable_waiters: list[Deferred] = []

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def paused(self) -> bool:
        return self._paused

    def send(self, frame: Any, ack: Any = None) -> bool:
        """Write now, or queue while the transport is busy; False if dropped."""
        if self._closed:
            return False
        if self._paused or self._queue:
            if len(self._queue) >= self.limit:
                self._overflow()
                return False
            self._queue.append((frame, ack))
            return True
        self._write(frame, ack)
        return True

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
        self._write_frame(frame)
        if ack is not None:
            self._unconfirmed.append(ack)
            self._schedule_check(restart=True)

    def _overflow(self) -> None:
        self.close()
        self._on_overflow()

    def close(self) -> None:
        """Stop sending; queued and unconfirmed frames are never acknowledged."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._unconfirmed.clear()
        if self._check_call is not None and self._check_call.active():
            self._check_call.cancel()
        self._check_call = None
        self._wake_writers(False)

    # -- flush tracking --------------------------------------------------------

    def _schedule_check(self, restart: bool = False) -> None:
        if restart:
            self._check_step = 0
        if self._check_call is not None and self._check_call.active():
            return
        delay = _CHECK_DELAYS[min(self._check_step, len(_CHECK_DELAYS) - 1)]
        self._check_step += 1
        self._check_call = self._clock.callLater(delay, self._check)

    def _check(self) -> None:
        self._check_call = None
        if self._closed or not self._unconfirmed:
            return
        if self._unflushed() == 0:
            acks, self._unconfirmed = self._unconfirmed, []
            self._on_flushed(acks)
        elif not self._paused:
            self._schedule_check()
        # While paused, resumeProducing (sent once the buffer drains) checks.

    # -- IPushProducer ---------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._closed:
            return
        self._paused = False
        if self._unconfirmed:
            self._schedule_check(restart=True)
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
