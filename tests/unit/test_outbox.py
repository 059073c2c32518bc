"""The outbox: bounded queue, backpressure, acks only after the kernel has the
bytes.  Timing with a fake clock; the "transport buffer" is a counter."""

from __future__ import annotations

from twisted.internet.task import Clock

from dkserver.ws.outbox import Outbox, unflushed_bytes


class FakeWire:
    def __init__(self) -> None:
        self.written: list[str] = []
        self.buffered = 0
        self.flushed_acks: list[list] = []
        self.overflows = 0

    def write(self, frame: str) -> None:
        self.written.append(frame)
        self.buffered += len(frame)


def make(limit: int = 3):
    clock = Clock()
    wire = FakeWire()
    box = Outbox(
        write=wire.write,
        unflushed=lambda: wire.buffered,
        clock=clock,
        on_flushed=wire.flushed_acks.append,
        on_overflow=lambda: setattr(wire, "overflows", wire.overflows + 1),
        limit=limit,
    )
    return clock, wire, box


def test_frames_are_acked_only_once_the_buffer_is_flushed():
    clock, wire, box = make()
    box.send("aaa", ack=1)
    box.send("bb", ack=2)
    assert wire.written == ["aaa", "bb"]
    clock.advance(0)
    clock.advance(0.01)
    assert wire.flushed_acks == []  # still in Twisted's buffer
    wire.buffered = 0
    clock.advance(1)
    assert wire.flushed_acks == [[1, 2]]


def test_system_frames_without_ack_are_not_reported():
    clock, wire, box = make()
    box.send("sys")
    wire.buffered = 0
    clock.advance(1)
    assert wire.flushed_acks == []


def test_paused_transport_queues_and_resume_writes_in_order():
    clock, wire, box = make(limit=5)
    box.pauseProducing()
    for i in range(3):
        assert box.send(f"m{i}", ack=i)
    assert wire.written == []
    assert len(box) == 3
    box.resumeProducing()
    assert wire.written == ["m0", "m1", "m2"]
    wire.buffered = 0
    clock.advance(0)
    assert wire.flushed_acks == [[0, 1, 2]]


def test_overflow_closes_and_never_acks_what_was_not_flushed():
    clock, wire, box = make(limit=2)
    box.send("written", ack="w")  # in the buffer, not flushed
    box.pauseProducing()
    assert box.send("q1", ack="q1")
    assert box.send("q2", ack="q2")
    assert not box.send("q3", ack="q3")
    assert wire.overflows == 1
    wire.buffered = 0
    box.resumeProducing()
    clock.advance(1)
    assert wire.flushed_acks == []
    assert wire.written == ["written"]
    assert not box.send("late", ack="late")


def test_wait_writable_fires_when_queue_drains():
    _, _, box = make(limit=5)
    box.pauseProducing()
    box.send("x", ack=None)
    fired = []
    box.wait_writable().addCallback(fired.append)
    assert fired == []
    box.resumeProducing()
    assert fired == [True]
    assert box.has_room()


def test_wait_writable_reports_close():
    _, _, box = make()
    box.pauseProducing()
    fired = []
    box.wait_writable().addCallback(fired.append)
    box.stopProducing()
    assert fired == [False]


def test_unflushed_bytes_walks_wrapped_transports():
    class Tcp:
        dataBuffer = b"12345"
        offset = 2
        _tempDataLen = 4

    class Tls:
        _appSendBuffer = [b"ab"]
        transport = Tcp()

    assert unflushed_bytes(Tls()) == 2 + 3 + 4
    assert unflushed_bytes(None) == 0
