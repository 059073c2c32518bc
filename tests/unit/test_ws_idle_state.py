"""An idle connection's instance dict holds only what differs from the
class-level defaults (DkServerProtocol._compact)."""

from __future__ import annotations

import sys

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.testing import StringTransport

from dkserver.config import Config
from dkserver.ws.factory import websocket_options
from dkserver.ws.protocol import DkServerProtocol
from tests.unit.conftest import opened
from tests.unit.test_library_internals import AUTOBAHN, _handshake

_MISSING = object()


class _Compacting(DkServerProtocol):
    before: dict

    def onOpen(self) -> None:
        # Only the compaction of DkServerProtocol.onOpen: no hub here.
        self.http_request_data = self.http_response_data = None
        self._wskey = self.http_status_line = None
        self.before = dict(self.__dict__)
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
    ours = {"_backlog_done", "_gone"}
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
        assert getattr(proto, name) is value, name
    dropped = set(before) - set(proto.__dict__)
    assert dropped == set(DkServerProtocol._IDLE_DEFAULTS) & set(before)
    assert sys.getsizeof(proto.__dict__) < sys.getsizeof(before)


def test_a_dropped_attribute_can_still_be_set_per_connection():
    proto = _open()
    other = _open()
    proto.closedByMe = True
    assert proto.closedByMe is True
    assert other.closedByMe is False
