"""The hub's TurnClock: the outboxes' end-of-turn calls share one reactor call."""

from __future__ import annotations

import pytest
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from dkserver.ws.hub import TurnClock
from dkserver.ws.outbox import Outbox


def test_calls_without_delay_share_one_reactor_call_and_keep_their_order():
    clock = Clock()
    turn = TurnClock(clock)
    ran = []
    calls = [turn.callLater(0, ran.append, i) for i in range(100)]
    assert len(clock.getDelayedCalls()) == 1
    assert all(c.active() and c.getTime() == 0 for c in calls)
    clock.advance(0)
    assert ran == list(range(100))
    assert not any(c.active() for c in calls)
    with pytest.raises(AlreadyCalled):
        calls[0].cancel()


def test_a_call_made_while_they_run_gets_a_reactor_call_of_its_own():
    clock = Clock()
    turn = TurnClock(clock)
    ran = []

    def first():
        turn.callLater(0, ran.append, "next")
        ran.append(len(clock.getDelayedCalls()))  # not run in this batch

    turn.callLater(0, first)
    clock.advance(0)
    assert ran == [1, "next"]


def test_cancelled_calls_do_not_run_and_a_failing_one_does_not_stop_the_rest():
    clock = Clock()
    turn = TurnClock(clock)
    ran = []

    def boom():
        raise RuntimeError("boom")

    cancelled = turn.callLater(0, ran.append, "cancelled")
    turn.callLater(0, boom)
    turn.callLater(0, ran.append, "after")
    cancelled.cancel()
    assert not cancelled.active()
    with pytest.raises(AlreadyCancelled):
        cancelled.cancel()
    with capturedLogs() as events:
        clock.advance(0)
    assert ran == ["after"]
    [failed] = [e for e in events if e["log_level"] == LogLevel.critical]
    assert failed["log_failure"].check(RuntimeError)


def test_delays_are_the_clocks_and_reset_moves_a_call_to_later():
    clock = Clock()
    turn = TurnClock(clock)
    ran = []
    later = turn.callLater(2.0, ran.append, "later")
    assert clock.getDelayedCalls() == [later]
    moved = turn.callLater(0, ran.append, "moved")
    moved.reset(1.0)
    clock.advance(0)
    assert ran == []
    assert moved.active() and moved.getTime() == 1.0
    clock.advance(1.0)
    assert ran == ["moved"]
    assert not moved.active()
    clock.advance(1.0)
    assert ran == ["moved", "later"]
    assert turn.seconds() == clock.seconds() == 2.0


def test_outboxes_on_a_turn_clock_send_their_proofs_in_one_reactor_call():
    clock = Clock()
    turn = TurnClock(clock)
    pings: list[tuple[int, bytes]] = []
    outboxes = []
    for i in range(20):
        outboxes.append(
            Outbox(
                write=lambda frame: True,
                ping=lambda payload, i=i: pings.append((i, payload)),
                clock=turn,
                on_confirmed=lambda acks: None,
                on_overflow=lambda: None,
            )
        )
    for i, box in enumerate(outboxes):
        box.send(b"frame", ("b", 1, f"u{i}", None))
    # One end-of-turn call for the twenty proofs (plus each proof's own
    # timeout once sent).
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert [i for i, _ in pings] == list(range(20))
    assert all(len(box.in_flight()) == 1 for box in outboxes)
