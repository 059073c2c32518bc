"""An idle connection's instance dict holds only what differs from the
class-level defaults (DkServerProtocol._compact)."""

from __future__ import annotations

import sys
from collections import deque

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from dkserver.config import Config
from dkserver.ws.factory import websocket_options
from dkserver.ws.protocol import DkServerProtocol
from tests.support.opened import opened
from tests.unit.test_library_internals import AUTOBAHN, _handshake

_MISSING = object()


class _Compacting(DkServerProtocol):
    before: dict

    def onOpen(self) -> None:
        # Only the compaction of DkServerProtocol.onOpen: no hub here.
        self._release_handshake()
        self.before = dict(self.__dict__)
        assert isinstance(self.before.get("send_queue"), deque), (
            f"{AUTOBAHN}: no send_queue deque after the handshake"
        )
        self._compact()


def _open() -> _Compacting:
    factory = WebSocketServerFactory()
    factory.protocol = _Compacting
    factory.setProtocolOptions(**websocket_options(Config()))
    proto = opened(factory.buildProtocol(None))
    proto.makeConnection(StringTransport())
    proto._dataReceived(_handshake())
    assert proto.state == proto.STATE_OPEN
    return proto


def test_autobahn_sets_every_idle_default_on_the_instance():
    proto = _open()
    ours = {"_backlog_done", "_gone", "_backlog_ids"}
    for name, default in DkServerProtocol._IDLE_DEFAULTS.items():
        if name in ours:
            continue
        assert proto.before.get(name, _MISSING) is default, (
            f"{AUTOBAHN}: after the handshake {name} is not {default!r} on the "
            "instance (remove it from DkServerProtocol._IDLE_DEFAULTS)"
        )


def test_compaction_drops_the_defaults_and_keeps_every_value():
    proto = _open()
    before = proto.before
    for name, value in before.items():
        if name != "send_queue":  # an empty deque, replaced by an empty tuple
            assert getattr(proto, name) is value, name
    dropped = set(before) - set(proto.__dict__)
    assert dropped == set(DkServerProtocol._IDLE_DEFAULTS) & set(before) | {
        "send_queue"
    }
    assert sys.getsizeof(proto.__dict__) < sys.getsizeof(before)


def test_a_dropped_attribute_can_still_be_set_per_connection():
    proto = _open()
    other = _open()
    proto.closedByMe = True
    assert proto.closedByMe is True
    assert other.closedByMe is False


# -- send_queue: Autobahn's deque exists only once a queued write needs it ------


def test_an_idle_connection_holds_no_send_queue_of_its_own():
    proto = _open()
    assert "send_queue" not in proto.__dict__
    assert len(proto.send_queue) == 0 and not proto.send_queue
    proto.sendData(b"direct")  # neither chopped nor synced: not queued
    assert "send_queue" not in proto.__dict__
    assert proto.transport.value().endswith(b"direct")


def _with_clock(monkeypatch) -> Clock:
    """Autobahn's queued writes wait on txaio's loop; a Clock drives them."""
    clock = Clock()
    monkeypatch.setattr(txaio.config, "loop", clock)
    return clock


def test_a_chopped_write_after_compaction_keeps_the_order(monkeypatch):
    clock = _with_clock(monkeypatch)
    proto = _open()
    other = _open()
    start = len(proto.transport.value())
    proto.sendData(b"abcdef", chopsize=2)
    assert isinstance(proto.__dict__["send_queue"], deque)
    assert "send_queue" not in other.__dict__  # the class-level one untouched
    assert other.send_queue == ()
    proto.sendData(b"gh")  # behind the queued chunks, not before them
    proto.sendData(b"ij", sync=True)
    for _ in range(10):
        clock.advance(1)
    assert proto.transport.value()[start:] == b"abcdefghij"
    assert not proto.send_queue


def test_a_close_while_writes_are_queued_drops_them(monkeypatch):
    clock = _with_clock(monkeypatch)
    proto = _open()
    start = len(proto.transport.value())
    proto.sendData(b"abcdef", chopsize=2)
    proto.state = proto.STATE_CLOSED  # as after connectionLost
    for _ in range(10):
        clock.advance(1)
    assert proto.transport.value()[start:] == b"ab"
    assert not proto.send_queue


def test_the_released_handshake_fields_read_as_empty():
    proto = _open()
    assert proto.http_headers.get("origin") is None
    assert dict(proto.http_request_params) == {}
    assert proto.http_request_uri is None
    assert list(proto.websocket_extensions_in_use) == []
