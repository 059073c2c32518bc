"""Autobahn's per-connection debug line is not formatted with debug off
(dkserver.ws.lazylog)."""

from __future__ import annotations

import pprint

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport

import dkserver.ws.protocol  # noqa: F401  (installs the lazy pformat)
from dkserver.config import Config
from dkserver.ws.factory import websocket_options
from dkserver.ws.lazylog import lazy_pformat
from tests.support.opened import opened
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
    proto = opened(factory.buildProtocol(None))
    proto.makeConnection(StringTransport())
    assert not calls, (
        f"{AUTOBAHN}: _connectionMade pretty-prints its options again "
        "(is pformat still a module-level name of autobahn.websocket.protocol?)"
    )


def test_the_line_still_reads_as_pformat_would_write_it():
    attrs = [("openHandshakeTimeout", 5, "WebSocketServerFactory")] * 3
    assert str(lazy_pformat(attrs)) == pprint.pformat(attrs)
    assert f"{lazy_pformat(attrs)}" == pprint.pformat(attrs)


def test_a_connection_styles_no_debug_argument(monkeypatch):
    """hltype/hlval colour through click.style: not for lines not written."""
    import click

    calls = []
    real = click.style
    monkeypatch.setattr(
        click, "style", lambda *a, **kw: calls.append(a) or real(*a, **kw)
    )
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    factory.setProtocolOptions(**websocket_options(Config()))
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    proto.connectionLost(Failure(ConnectionDone()))
    assert not calls, f"{AUTOBAHN}: debug arguments are styled again"


def test_lazy_helpers_read_as_the_helpers_would():
    from autobahn.util import hltype, hlval

    from dkserver.ws import lazylog

    lazy_type, lazy_val = lazylog._lazy(hltype), lazylog._lazy(hlval)
    assert str(lazy_type(WebSocketServerProtocol)) == hltype(WebSocketServerProtocol)
    assert f"{lazy_val(42)}" == hlval(42)
