"""The Autobahn and Twisted internals dkserver relies on still have the shape
it expects.

dkserver overrides Autobahn's private hot-path methods and reads attributes
that are not part of any documented API (dkserver/ws/protocol.py, ws/factory.py,
ws/hub.py, ws/upgrade.py, web/site.py); setup.cfg pins both libraries to the
releases tested.  When a new release is tried, these tests say which
internal changed, in which library version, before a connection misbehaves.
"""

from __future__ import annotations

import base64
import collections
import importlib.metadata
import inspect
import os

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as ab_protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web import http, server

from dkserver.config import Config
from dkserver.ws.factory import websocket_options
from tests.support.opened import opened

AUTOBAHN = f"autobahn {importlib.metadata.version('autobahn')}"
TWISTED = f"Twisted {importlib.metadata.version('Twisted')}"


def require_parameters(library: str, owner: type, name: str, expected: list[str]):
    """``owner.name`` is callable and takes ``expected`` (after self), in order."""
    where = f"{owner.__module__}.{owner.__qualname__}.{name}"
    function = getattr(owner, name, None)
    assert callable(function), f"{library}: {where} is gone; dkserver calls it"
    params = list(inspect.signature(function).parameters)[1:]
    assert params[: len(expected)] == expected, (
        f"{library}: {where} now takes {params}; dkserver calls it with {expected}"
    )


def require_in_source(library: str, function, names: tuple[str, ...]) -> None:
    """``function``'s body still uses the attributes dkserver reads or resets."""
    where = f"{function.__module__}.{function.__qualname__}"
    source = inspect.getsource(function)
    for name in names:
        assert name in source, (
            f"{library}: {where} no longer uses {name!r}, which dkserver's "
            "override relies on"
        )


# -- Autobahn: methods dkserver overrides or calls ------------------------------


@pytest.mark.parametrize(
    ("owner", "name", "parameters"),
    [
        # protocol.dataReceived skips Autobahn's debug-log call and calls this.
        (ab_protocol.WebSocketProtocol, "_dataReceived", ["data"]),
        # protocol.onMessageEnd replaces Autobahn's (no per-message future).
        (ab_protocol.WebSocketProtocol, "onMessageEnd", []),
        (ab_protocol.WebSocketProtocol, "onMessageBegin", ["isBinary"]),
        # going_away sends the close frame itself (code and raw reason bytes).
        (
            ab_protocol.WebSocketProtocol,
            "sendCloseFrame",
            ["code", "reasonUtf8", "isReply"],
        ),
        (ab_protocol.WebSocketProtocol, "sendPreparedMessage", ["preparedMsg"]),
        (ab_protocol.WebSocketProtocol, "dropConnection", ["abort"]),
        (ab_protocol.WebSocketProtocol, "sendPing", ["payload"]),
        (ab_protocol.WebSocketProtocol, "sendClose", ["code", "reason"]),
        (ab_protocol.WebSocketFactory, "prepareMessage", ["payload", "isBinary"]),
    ],
)
def test_autobahn_methods_dkserver_overrides_keep_their_parameters(
    owner, name, parameters
):
    require_parameters(AUTOBAHN, owner, name, parameters)


def test_autobahn_twisted_datareceived_still_delegates_to_dataReceived_underscore():
    require_in_source(
        AUTOBAHN,
        WebSocketServerProtocol.dataReceived,
        ("_dataReceived",),
    )


def test_autobahn_onmessageend_still_reads_failedbyme_and_message_data():
    require_in_source(
        AUTOBAHN,
        ab_protocol.WebSocketProtocol.onMessageEnd,
        ("failedByMe", "message_data", "message_is_binary"),
    )


def test_autobahn_copies_config_attrs_only_when_the_protocol_lacks_them():
    # ws/factory.py puts every option on a per-factory protocol subclass.
    require_in_source(
        AUTOBAHN,
        ab_protocol.WebSocketProtocol._connectionMade,
        ("CONFIG_ATTRS", "hasattr"),
    )


def test_every_option_dkserver_sets_is_still_an_autobahn_option():
    options = websocket_options(Config())
    accepted = inspect.signature(WebSocketServerFactory.setProtocolOptions).parameters
    config_attrs = set(WebSocketServerProtocol.CONFIG_ATTRS)
    for option in options:
        assert option in accepted, (
            f"{AUTOBAHN}: setProtocolOptions no longer accepts {option!r}"
        )
        assert option in config_attrs or option == "allowedOrigins", (
            f"{AUTOBAHN}: {option!r} is no longer in "
            "WebSocketServerProtocol.CONFIG_ATTRS"
        )


def test_autobahn_class_attributes_dkserver_reads():
    assert WebSocketServerProtocol.STATE_OPEN == 3, (
        f"{AUTOBAHN}: WebSocketProtocol.STATE_OPEN changed"
    )
    assert isinstance(WebSocketServerProtocol.CONFIG_ATTRS, tuple | list), (
        f"{AUTOBAHN}: WebSocketServerProtocol.CONFIG_ATTRS is gone"
    )
    disconnected = getattr(ab_protocol, "Disconnected", None)
    assert isinstance(disconnected, type) and issubclass(disconnected, Exception), (
        f"{AUTOBAHN}: autobahn.websocket.protocol.Disconnected is gone"
    )


def test_a_prepared_message_has_the_final_frame_in_payloadhybi():
    factory = WebSocketServerFactory()
    prepared = factory.prepareMessage(b'{"x":1}', isBinary=False)
    frame = getattr(prepared, "payloadHybi", None)
    assert isinstance(frame, bytes), (
        f"{AUTOBAHN}: PreparedMessage.payloadHybi is gone; protocol._write_prepared "
        "writes it directly"
    )
    # FIN + text opcode, unmasked, 7-byte payload, then the payload itself.
    assert frame == b"\x81\x07" + b'{"x":1}', f"{AUTOBAHN}: frame is {frame!r}"


# -- Autobahn: instance attributes, on a real handshake and frame ----------------


class _Recording(WebSocketServerProtocol):
    seen: dict

    def onMessageEnd(self) -> None:
        self.seen = {
            "message_data": self.message_data,
            "message_is_binary": self.message_is_binary,
            "failedByMe": self.failedByMe,
        }
        super().onMessageEnd()


def _handshake() -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /ws?token=t HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )


def _masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b"\x81" + bytes([0x80 | len(payload)]) + mask + masked


def _open_connection() -> tuple[_Recording, StringTransport]:
    factory = WebSocketServerFactory()
    factory.protocol = _Recording
    factory.setProtocolOptions(**websocket_options(Config()))
    proto = opened(factory.buildProtocol(None))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto._dataReceived(_handshake())
    assert proto.state == proto.STATE_OPEN, f"{AUTOBAHN}: handshake did not open"
    return proto, transport


def test_autobahn_keeps_the_handshake_attributes_dkserver_drops_on_open():
    proto, _ = _open_connection()
    for name, kind in (
        ("http_request_data", bytes),
        ("http_response_data", str),
        ("http_headers", dict),
        ("http_request_params", dict),
        ("_wskey", str),
        ("http_status_line", str),
    ):
        value = getattr(proto, name, None)
        assert isinstance(value, kind), (
            f"{AUTOBAHN}: after the handshake {name} is {type(value).__name__}, "
            f"expected {kind.__name__} (protocol.onOpen frees it)"
        )


def test_autobahn_send_queue_failedbyme_and_message_data_on_a_real_frame():
    proto, _ = _open_connection()
    assert isinstance(getattr(proto, "send_queue", None), collections.deque), (
        f"{AUTOBAHN}: WebSocketProtocol.send_queue is not a deque any more "
        "(protocol._write_prepared checks it before writing directly)"
    )
    assert proto.failedByMe is False, f"{AUTOBAHN}: failedByMe missing"
    proto._dataReceived(_masked_text_frame(b"hello"))
    seen = getattr(proto, "seen", None)
    assert seen is not None, f"{AUTOBAHN}: onMessageEnd was not called for a frame"
    assert b"".join(seen["message_data"]) == b"hello", (
        f"{AUTOBAHN}: message_data is {seen['message_data']!r}, expected a list "
        "of byte chunks"
    )
    assert seen["message_is_binary"] is False and seen["failedByMe"] is False
    assert proto.message_data is None


def test_autobahn_sendcloseframe_writes_the_close_and_sets_closedbyme():
    proto, transport = _open_connection()
    transport.clear()
    proto.sendCloseFrame(code=1001, reasonUtf8=b"server shutting down")
    sent = transport.value()
    assert sent[:1] == b"\x88", f"{AUTOBAHN}: sendCloseFrame wrote {sent!r}"
    assert sent[2:4] == (1001).to_bytes(2, "big") and b"server shutting down" in sent
    assert proto.closedByMe is True, f"{AUTOBAHN}: closedByMe not set by our close"


# -- Twisted: what web/site.py and ws/upgrade.py reach into ----------------------


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("gotLength", ["length"]),
        ("handleContentChunk", ["data"]),
        ("requestReceived", ["command", "path", "version"]),
        ("processingFailed", ["reason"]),
    ],
)
def test_twisted_request_hooks_dksite_overrides_keep_their_parameters(name, parameters):
    require_parameters(TWISTED, server.Request, name, parameters)


def test_twisted_request_still_has_disconnected_flag():
    assert http.Request._disconnected is False, (
        f"{TWISTED}: twisted.web.http.Request._disconnected is gone "
        "(DkRequest.processingFailed reads it)"
    )


def test_twisted_http_channel_has_network_producer_and_calllater():
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    producer = getattr(channel, "_networkProducer", None)
    assert producer is not None and callable(
        getattr(producer, "resumeProducing", None)
    ), (
        f"{TWISTED}: HTTPChannel._networkProducer is gone "
        "(ws/upgrade.py resumes it after the upgrade)"
    )
    assert callable(channel.callLater), f"{TWISTED}: HTTPChannel.callLater is gone"
    channel.connectionLost(None)


def test_twisted_tls_protocol_is_a_protocol_wrapper_with_wrappedprotocol():
    assert issubclass(TLSMemoryBIOProtocol, ProtocolWrapper), (
        f"{TWISTED}: TLSMemoryBIOProtocol is no longer a ProtocolWrapper "
        "(ws/upgrade.py swaps its wrappedProtocol)"
    )
    wrapper = WrappingFactory(None).protocol(WrappingFactory(None), object())
    assert hasattr(wrapper, "wrappedProtocol"), (
        f"{TWISTED}: ProtocolWrapper.wrappedProtocol is gone"
    )


def test_twisted_tls_transport_still_aggregates_small_writes_in_a_flushable_buffer():
    """ws/protocol.py flushes ``_aggregator`` so that the proof ping inside a
    message leaves in the same TCP write as the frame before it."""
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.task import Clock
    from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory

    factory = TLSMemoryBIOFactory(
        CertificateOptions(), False, Factory.forProtocol(Protocol), clock=Clock()
    )
    transport = BufferingTLSTransport(factory, Protocol())
    aggregator = getattr(transport, "_aggregator", None)
    assert aggregator is not None, (
        f"{TWISTED}: BufferingTLSTransport._aggregator is gone "
        "(ws/protocol.py _flush_transport)"
    )
    assert callable(getattr(aggregator, "flush", None)), (
        f"{TWISTED}: BufferingTLSTransport._aggregator.flush is gone"
    )
    assert inspect.signature(aggregator.flush).parameters == {}, (
        f"{TWISTED}: _aggregator.flush() takes parameters now"
    )


def test_twisted_tcp_transport_still_buffers_writes_for_dowrite():
    """ws/protocol.py ``_send_now`` calls the TCP transport's ``doWrite``
    itself when it holds new data (``_tempDataLen``) and is not closing or
    pausing its producer; ``_write_record`` writes past the TLS transport's
    small-write buffer with ``TLSMemoryBIOProtocol.write``."""
    from twisted.internet import abstract, tcp

    for name in ("connected", "disconnecting", "_writeDisconnecting"):
        assert hasattr(tcp.Connection, name), (
            f"{TWISTED}: tcp.Connection.{name} is gone (ws/protocol.py _send_now)"
        )
    assert hasattr(abstract.FileDescriptor, "producerPaused"), (
        f"{TWISTED}: FileDescriptor.producerPaused is gone (ws/protocol.py _send_now)"
    )
    assert "_tempDataLen" in inspect.getsource(abstract.FileDescriptor.write), (
        f"{TWISTED}: FileDescriptor.write no longer counts _tempDataLen"
    )
    require_parameters(TWISTED, abstract.FileDescriptor, "doWrite", [])
    require_parameters(TWISTED, TLSMemoryBIOProtocol, "write", ["bytes"])


def test_pyopenssl_bindings_still_set_the_key_exchange_groups():
    """dkserver/tls.py restricts the groups through pyOpenSSL's bindings
    (no public call): ``_util.lib.SSL_CTX_set1_curves_list`` and
    ``Context._context``."""
    from OpenSSL import SSL
    from OpenSSL._util import lib

    from dkserver.tls import GROUPS

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    assert hasattr(lib, "SSL_CTX_set1_curves_list"), "pyOpenSSL bindings changed"
    assert lib.SSL_CTX_set1_curves_list(context._context, GROUPS) == 1


def test_autobahn_still_unmasks_client_frames_through_create_xor_masker():
    """dkserver.ws.masking replaces this module-level name; processData must
    still look it up there (and call pointer/process on what it returns)."""
    source = inspect.getsource(ab_protocol.WebSocketProtocol.processData)
    assert "create_xor_masker(" in source, f"{AUTOBAHN}: processData changed"
    assert "current_frame_masker.pointer()" in source, AUTOBAHN
    assert "current_frame_masker.process(" in source, AUTOBAHN
    assert hasattr(ab_protocol, "create_xor_masker"), AUTOBAHN


def test_autobahn_appends_to_send_queue_only_in_senddata():
    """DkServerProtocol.sendData creates the deque for those appends; an
    append anywhere else would hit the class-level empty tuple."""
    module = inspect.getsource(ab_protocol)
    in_send_data = inspect.getsource(ab_protocol.WebSocketProtocol.sendData)
    uses = ("send_queue.append", "send_queue.extend", "send_queue.appendleft")
    for use in uses:
        assert module.count(use) == in_send_data.count(use), (
            f"{AUTOBAHN}: {use} outside WebSocketProtocol.sendData "
            "(DkServerProtocol.send_queue is an empty tuple until sendData)"
        )
    assert "send_queue = " not in module.replace("self.send_queue = deque()", ""), (
        f"{AUTOBAHN}: send_queue is assigned somewhere new"
    )
