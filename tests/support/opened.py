"""Autobahn protocols a unit test drives over a StringTransport, to be
closed when the test ends (tests/unit/conftest.py closes them).

An open one leaves Autobahn's timers (the open-handshake timeout, the
auto-ping) on the global reactor.  They fire in whichever later test runs the
reactor and drop the connection, which a StringTransport without a producer
refuses: a logged error in an unrelated test (tests/hostile fails on any)."""

from __future__ import annotations

from autobahn.websocket import protocol as ab_protocol
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


def as_after_handshake(proto):
    """``proto`` (connected) in the state Autobahn's opening handshake leaves
    it: open, no frame begun, a fresh UTF-8 validator of the kind Autobahn
    would make (its module-level ``Utf8Validator``, which dkserver.ws.masking
    replaces)."""
    proto.state = proto.STATE_OPEN
    proto.websocket_version = 13
    proto.data = b""
    proto.current_frame = None
    proto.inside_message = False
    proto.utf8validator = ab_protocol.Utf8Validator()
    proto.utf8validateIncomingCurrentMessage = False
    proto.send_state = proto.SEND_STATE_GROUND
    return proto
