"""ArrivalDeadlines: every arriving request's deadline on one reactor call."""

from __future__ import annotations

from twisted.internet.task import Clock

from dkserver.web.deadlines import ArrivalDeadlines


class Arriving:
    def __init__(self, name: str, late: list[str]) -> None:
        self.name = name
        self._late = late

    def too_slow(self) -> None:
        self._late.append(self.name)


def test_a_request_not_arrived_is_too_slow_at_exactly_its_deadline():
    clock = Clock()
    deadlines = ArrivalDeadlines(clock, 10.0)
    late: list[str] = []
    deadlines.start(Arriving("a", late))
    clock.advance(9.999)
    assert late == []
    clock.advance(0.001)
    assert late == ["a"]
    assert len(deadlines) == 0
    assert clock.getDelayedCalls() == []


def test_many_requests_share_one_reactor_call_and_each_keeps_its_deadline():
    clock = Clock()
    deadlines = ArrivalDeadlines(clock, 10.0)
    late: list[str] = []
    a, b, c = (Arriving(n, late) for n in "abc")
    deadlines.start(a)
    clock.advance(3)
    deadlines.start(b)
    clock.advance(3)
    deadlines.start(c)
    assert len(clock.getDelayedCalls()) == 1
    deadlines.arrived(a)  # the oldest arrives; its timer is left to lapse
    clock.advance(4)  # a's deadline: nothing is due, the timer moves to b's
    assert late == []
    assert [d.getTime() for d in clock.getDelayedCalls()] == [13.0]
    clock.advance(3)
    assert late == ["b"]
    clock.advance(3)
    assert late == ["b", "c"]
    assert clock.getDelayedCalls() == []


def test_arrived_requests_are_never_too_slow_and_a_new_one_gets_a_timer():
    clock = Clock()
    deadlines = ArrivalDeadlines(clock, 5.0)
    late: list[str] = []
    for i in range(100):
        r = Arriving(str(i), late)
        deadlines.start(r)
        deadlines.arrived(r)
    assert len(clock.getDelayedCalls()) == 1  # not one per request
    clock.advance(5)
    assert late == [] and clock.getDelayedCalls() == []
    deadlines.start(Arriving("next", late))
    clock.advance(5)
    assert late == ["next"]


def test_idle_drops_the_timer_only_when_nothing_waits_for_it():
    clock = Clock()
    deadlines = ArrivalDeadlines(clock, 5.0)
    late: list[str] = []
    r = Arriving("r", late)
    deadlines.start(r)
    deadlines.idle()
    assert len(clock.getDelayedCalls()) == 1
    deadlines.arrived(r)
    deadlines.idle()
    assert clock.getDelayedCalls() == []
