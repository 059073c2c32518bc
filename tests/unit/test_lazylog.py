"""Autobahn's per-connection debug line is not formatted with debug off
(dkserver.ws.lazylog)."""

from __future__ import annotations

import pprint

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport

import dkserver.ws.protocol  # noqa: F401  (installs the lazy pformat)
from dkserver.config import Config
from dkserver.ws.factory import websocket_options
from dkserver.ws.lazylog import LazyPformat
from tests.unit.test_library_internals import AUTOBAHN


def test_a_new_connection_pretty_prints_nothing(monkeypatch):
    calls = []
    real = pprint.PrettyPrinter.pformat
    monkeypatch.setattr(
        pprint.PrettyPrinter,
        "pformat",
        lambda self, obj: calls.append(obj) or real(self, obj),
    )
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    factory.setProtocolOptions(**websocket_options(Config()))
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    assert not calls, (
        f"{AUTOBAHN}: _connectionMade pretty-prints its options again "
        "(is pformat still a module-level name of autobahn.websocket.protocol?)"
    )


def test_the_line_still_reads_as_pformat_would_write_it():
    attrs = [("openHandshakeTimeout", 5, "WebSocketServerFactory")] * 3
    assert str(LazyPformat(attrs)) == pprint.pformat(attrs)
    assert f"{LazyPformat(attrs)}" == pprint.pformat(attrs)
