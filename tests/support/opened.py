"""Autobahn protocols a unit test drives over a StringTransport, to be
closed when the test ends (tests/unit/conftest.py closes them).

An open one leaves Autobahn's timers (the open-handshake timeout, the
auto-ping) on the global reactor.  They fire in whichever later test runs the
reactor and drop the connection, which a StringTransport without a producer
refuses: a logged error in an unrelated test (tests/hostile fails on any)."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

_opened: list = []


def opened(proto):
    """``proto``, to be closed (``connectionLost``) when the test ends."""
    _opened.append(proto)
    return proto


def close_opened() -> None:
    while _opened:
        proto = _opened.pop()
        if proto.state != proto.STATE_CLOSED:
            proto.connectionLost(Failure(ConnectionDone()))
