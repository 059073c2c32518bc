"""ForwardBroker: which connections are asked, and which request an answer
belongs to (the wire has no correlation id).  Fake clock, fake connections."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dkserver.ws.forward import ForwardBroker, ForwardTimeout, NotConnected


class Conn:
    def __init__(self, name: str, user_id: str = "alice") -> None:
        self.name = name
        self.user_id = user_id

    def __repr__(self) -> str:
        return f"Conn({self.name})"


class Harness:
    def __init__(self, timeout: float = 30.0, max_unanswered: int = 16) -> None:
        self.clock = Clock()
        self.broker = ForwardBroker(self.clock, timeout, max_unanswered)
        self.conns: dict[str, list[Conn]] = {}
        self.sent: list[tuple[Conn, str]] = []

    def ask(self, query: str, user_id: str = "alice") -> Deferred:
        d = Deferred.fromCoroutine(
            self.broker.ask(
                user_id,
                lambda uid: self.conns.get(uid, []),
                lambda conn: self.sent.append((conn, query)),
                lambda content: content or None,
            )
        )
        results: list = []
        d.addBoth(results.append)
        d.results = results  # type: ignore[attr-defined]
        return d

    def asked(self, conn: Conn) -> list[str]:
        return [q for c, q in self.sent if c is conn]


def result(d: Deferred):
    assert d.results, "still waiting"  # type: ignore[attr-defined]
    value = d.results[0]  # type: ignore[attr-defined]
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


def test_no_connection_fails_at_once():
    h = Harness()
    d = h.ask("q")
    with pytest.raises(NotConnected):
        result(d)


def test_all_connections_are_asked_until_one_is_known_to_answer():
    h = Harness()
    silent, agent = Conn("desktop"), Conn("agent")
    h.conns["alice"] = [agent, silent]
    first = h.ask("one")
    assert h.asked(agent) == ["one"] and h.asked(silent) == ["one"]
    assert h.broker.answer(agent, "answer one")
    assert result(first) == "answer one"

    second = h.ask("two")
    assert h.asked(agent) == ["one", "two"]
    assert h.asked(silent) == ["one"]  # the known answerer only
    assert h.broker.answer(agent, "answer two")
    assert result(second) == "answer two"


def test_requests_are_serialized_and_each_gets_its_own_answer():
    h = Harness()
    agent = Conn("agent")
    h.conns["alice"] = [agent]
    a, b = h.ask("a"), h.ask("b")
    assert h.asked(agent) == ["a"]  # b waits its turn
    assert h.broker.answer(agent, "for a")
    assert h.asked(agent) == ["a", "b"]
    assert h.broker.answer(agent, "for b")
    assert (result(a), result(b)) == ("for a", "for b")


def test_late_answer_to_a_timed_out_request_never_answers_the_next():
    h = Harness(timeout=1.0)
    agent = Conn("agent")
    h.conns["alice"] = [agent]
    first = h.ask("first")
    h.clock.advance(1.0)
    with pytest.raises(ForwardTimeout):
        result(first)
    second = h.ask("second")
    assert h.asked(agent) == ["first", "second"]
    # The answer to "first" arrives now: it is that request's, and discarded.
    assert not h.broker.answer(agent, "late answer to first")
    assert not second.results  # type: ignore[attr-defined]
    assert h.broker.answer(agent, "answer to second")
    assert result(second) == "answer to second"


def test_answer_from_the_slower_connection_is_discarded_not_kept():
    h = Harness()
    one, two = Conn("one"), Conn("two")
    h.conns["alice"] = [one, two]
    first = h.ask("first")
    assert h.broker.answer(one, "one's answer")
    assert result(first) == "one's answer"
    # Both answer, so both are asked again.
    assert not h.broker.answer(two, "two's answer to first")
    second = h.ask("second")
    assert h.asked(two) == ["first", "second"]
    assert h.broker.answer(two, "two's answer to second")
    assert result(second) == "two's answer to second"


def test_answer_with_nothing_sent_or_not_an_answer_is_refused():
    h = Harness()
    agent, stranger = Conn("agent"), Conn("bob", user_id="bob")
    h.conns["alice"] = [agent]
    assert not h.broker.answer(agent, "unasked")
    d = h.ask("q")
    assert not h.broker.answer(stranger, "from bob")
    assert not h.broker.answer(agent, "")  # parse() says: not an answer
    assert not d.results  # type: ignore[attr-defined]
    assert h.broker.answer(agent, "real")
    assert result(d) == "real"


def test_silent_connection_stops_being_asked_after_max_unanswered():
    h = Harness(timeout=1.0, max_unanswered=3)
    silent = Conn("desktop")
    h.conns["alice"] = [silent]
    for i in range(3):
        d = h.ask(f"q{i}")
        h.clock.advance(1.0)
        with pytest.raises(ForwardTimeout):
            result(d)
    d = h.ask("q3")
    with pytest.raises(ForwardTimeout):  # at once: nobody left to ask
        result(d)
    assert h.asked(silent) == ["q0", "q1", "q2"]

    # Once it answers (late), it is asked again.
    assert not h.broker.answer(silent, "late answer to q0")
    d = h.ask("q4")
    assert h.asked(silent)[-1] == "q4"


def test_losing_the_only_asked_connection_fails_at_once():
    h = Harness()
    agent, silent = Conn("agent"), Conn("desktop")
    h.conns["alice"] = [agent, silent]
    d = h.ask("q")
    h.broker.connection_lost(agent)
    assert not d.results  # type: ignore[attr-defined]  # desktop was asked too
    h.broker.connection_lost(silent)
    with pytest.raises(NotConnected):
        result(d)
    # Nothing about them is kept.
    assert h.broker._peers == {}


def test_timeout_covers_the_wait_for_an_earlier_request():
    h = Harness(timeout=1.0)
    agent = Conn("agent")
    h.conns["alice"] = [agent]
    first = h.ask("first")
    h.clock.advance(0.5)
    second = h.ask("second")
    h.clock.advance(0.5)
    with pytest.raises(ForwardTimeout):
        result(first)
    assert h.asked(agent) == ["first", "second"]
    h.clock.advance(0.5)  # 1.0 s after it was made, not after its turn
    with pytest.raises(ForwardTimeout):
        result(second)
