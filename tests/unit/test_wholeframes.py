"""WholeFrameReader reads the frames it takes exactly as Autobahn does, and
hands every other frame to Autobahn unchanged.

Each test feeds the same bytes to two protocols that differ only in the
reader, and compares what the application saw (messages, pongs), what
went back on the wire (pongs to pings, close frames), Autobahn's traffic
counters and the connection's state.  Autobahn runs with its own masker
and UTF-8 validator here (dkserver.ws.masking replaces both when
dkserver.ws.protocol is imported), and frames are masked byte by byte, so
the comparison does not rest on this project's XOR.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from autobahn.twisted.websocket import (
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket import protocol as ab_protocol
from autobahn.websocket.utf8validator import Utf8Validator as AutobahnUtf8Validator
from autobahn.websocket.xormasker import create_xor_masker as autobahn_masker
from twisted.internet.testing import StringTransport

from dkserver.config import Config
from dkserver.ws.factory import websocket_options
from dkserver.ws.protocol import DkServerProtocol
from dkserver.ws.wholeframes import WholeFrameReader, unmask
from tests.support.opened import as_after_handshake, opened


@pytest.fixture(autouse=True)
def pure_autobahn(monkeypatch):
    """Autobahn's own masker and validator for the frames it reads."""
    monkeypatch.setattr(ab_protocol, "create_xor_masker", autobahn_masker)
    monkeypatch.setattr(ab_protocol, "Utf8Validator", AutobahnUtf8Validator)


def _xor(mask: bytes, data: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class _Recorder(WebSocketServerProtocol):
    """Records what reaches the application; Autobahn answers pings."""

    def onMessage(self, payload, isBinary):
        self.events.append(("message", payload, isBinary))

    def onPong(self, payload):
        self.events.append(("pong", payload))


class _Plain(_Recorder):
    pass


class _Whole(WholeFrameReader, _Recorder):
    pass


def _frame(opcode: int, payload: bytes, *, fin=True, rsv=0, masked=True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    flag = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, flag | n))
    elif n < 65536:
        head = bytes((first, flag | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, flag | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + _xor(mask, payload)


def _open(cls, **options):
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(**{**websocket_options(Config()), **options})
    proto = opened(cls())
    proto.factory = factory
    proto.events = []
    proto.makeConnection(StringTransport())
    proto.transport.registerProducer(proto, True)  # as twisted.web's channel
    return as_after_handshake(proto)  # Autobahn's validator: pure_autobahn


def _feed(proto, wire: bytes, cuts) -> None:
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        if proto.state == proto.STATE_CLOSED:
            return
        proto.dataReceived(wire[a:b])


def _header(frame):
    if frame is None:
        return None
    return (frame.opcode, frame.fin, frame.rsv, frame.length, frame.mask)


def _call(call):
    return None if call is None else ("call", bool(call.cancelled))


def _seen(proto):
    stats = proto.trafficStats
    return (
        proto.events,
        proto.transport.value(),
        proto.state,
        proto.data,
        stats.incomingWebSocketFrames,
        stats.incomingWebSocketMessages,
        stats.incomingOctetsWebSocketLevel,
        stats.incomingOctetsAppLevel,
        proto.localCloseCode,
        proto.localCloseReason,
        _header(proto.current_frame),
        proto.inside_message,
        getattr(proto, "message_data", None),
        getattr(proto, "message_data_total_length", None),
        proto.failedByMe,
        proto.wasMaxMessagePayloadSizeExceeded,
        proto.wasMaxFramePayloadSizeExceeded,
        proto.autoPingPending,
        _call(proto.autoPingTimeoutCall),
    )


def _both(wire: bytes, cuts=(), **options):
    """What each reader made of ``wire`` cut at ``cuts``: (plain, whole)."""
    plain, whole = _open(_Plain, **options), _open(_Whole, **options)
    _feed(plain, wire, list(cuts))
    _feed(whole, wire, list(cuts))
    return _seen(plain), _seen(whole)


def _mixed_stream(rng: random.Random) -> bytes:
    """Text and binary messages of every length class, pongs, pings, an
    empty message, and a fragmented message with a pong inside it."""
    parts = []
    for _ in range(40):
        kind = rng.randrange(7)
        if kind == 0:
            parts.append(_frame(0x1, "héllo ✓".encode() * rng.randrange(0, 20)))
        elif kind == 1:
            parts.append(_frame(0x1, b"x" * rng.choice([125, 126, 127, 4000, 65535])))
        elif kind == 2:
            parts.append(_frame(0x2, os.urandom(rng.randrange(0, 300))))
        elif kind == 3:
            parts.append(_frame(0xA, os.urandom(rng.randrange(0, 126))))
        elif kind == 4:
            parts.append(_frame(0x9, b"ping-%d" % rng.randrange(1000)))
        elif kind == 5:
            parts.append(_frame(0x1, b"a" * 70_000))  # a 64-bit length
        else:
            text = "fragmënted".encode()
            parts += [
                _frame(0x1, text[:3], fin=False),
                _frame(0xA, b"between"),
                _frame(0x0, text[3:7], fin=False),
                _frame(0x0, text[7:]),
            ]
    return b"".join(parts)


def test_a_mixed_stream_reads_the_same_however_it_is_cut():
    rng = random.Random(6455)
    for _ in range(6):
        wire = _mixed_stream(rng)
        cuttings = [
            [],
            sorted(rng.sample(range(1, len(wire)), 200)),
            list(range(1, len(wire), rng.choice([97, 1021, 4099]))),
        ]
        for cuts in cuttings:
            plain, whole = _both(wire, cuts)
            assert whole == plain
            assert plain[0], "the stream reached the application"
            assert plain[2] == ab_protocol.WebSocketProtocol.STATE_OPEN


def test_a_short_stream_reads_the_same_cut_at_every_offset():
    wire = (
        _frame(0x1, b'{"to":"bob"}')
        + _frame(0xA, b"proof")
        + _frame(0x1, b"y" * 200)
        + _frame(0x2, b"\x00\x01")
    )
    for i in range(1, len(wire)):
        for j in (i + 1, i + 7, len(wire)):
            cuts = [c for c in (i, j) if c < len(wire)]
            plain, whole = _both(wire, sorted(set(cuts)))
            assert whole == plain
            assert len(plain[0]) == 4


class _Counting:
    """Counts the calls into Autobahn's own frame reader."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = ab_protocol.WebSocketProtocol.processData

        def counted(proto):
            self.calls += 1
            return original(proto)

        monkeypatch.setattr(ab_protocol.WebSocketProtocol, "processData", counted)


def test_whole_small_frames_never_reach_autobahns_reader(monkeypatch):
    counting = _Counting(monkeypatch)
    whole = _open(_Whole)
    wire = b"".join(
        _frame(0x1, b"m%d" % i) + _frame(0xA, b"p%d" % i) + _frame(0x1, b"z" * 1000)
        for i in range(50)
    )
    whole.dataReceived(wire)
    assert counting.calls == 0
    assert len(whole.events) == 150
    assert whole.events[0] == ("message", b"m0", False)
    assert whole.events[1] == ("pong", b"p0")
    stats = whole.trafficStats
    assert stats.incomingWebSocketMessages == stats.incomingWebSocketFrames == 100


def test_what_it_does_not_take_goes_to_autobahn(monkeypatch):
    counting = _Counting(monkeypatch)
    whole = _open(_Whole)
    whole.dataReceived(_frame(0x9, b"ping"))  # a ping: Autobahn answers it
    assert counting.calls >= 1
    assert whole.transport.value()[:2] == b"\x8a\x04"
    calls = counting.calls
    whole.dataReceived(_frame(0x1, b"q" * 70_000))  # a 64-bit length
    assert counting.calls > calls
    assert whole.events == [("message", b"q" * 70_000, False)]


_REFUSED = {
    "invalid UTF-8": (_frame(0x1, b'{"a":"\xed\xa0\x80"}'), 1007),
    "truncated UTF-8": (_frame(0x1, b"ok \xe2\x82"), 1007),
    "overlong UTF-8": (_frame(0x1, b"\xc0\xaf"), 1007),
    "UTF-8 past U+10FFFF": (_frame(0x1, b"\xf4\x90\x80\x80"), 1007),
    "over the frame limit only": (_frame(0x1, b"x" * 600), 1009),
    "over the message limit": (_frame(0x1, b"x" * 1001), 1009),
    "unmasked": (_frame(0x1, b"hi", masked=False), 1002),
    "an RSV bit": (_frame(0x1, b"hi", rsv=2), 1002),
    "non-minimal length": (
        bytes((0x81, 0x80 | 126, 0, 5)) + b"\x00\x00\x00\x00hello",
        1002,
    ),
    "a reserved opcode": (_frame(0x3, b"hi"), 1002),
    "a continuation outside a message": (_frame(0x0, b"hi"), 1002),
    "a new message inside a fragmented one": (
        _frame(0x1, b"a", fin=False) + _frame(0x1, b"b"),
        1002,
    ),
    "a pong over 125 octets": (bytes((0x8A, 0x80 | 126, 0, 126)) + bytes(130), 1002),
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_refused_frames_close_as_autobahn_closes(case):
    bad, code = _REFUSED[case]
    wire = _frame(0x1, b"before") + bad + _frame(0x1, b"after")
    for cuts in ([], [len(wire) - 3], list(range(1, len(wire), 3))):
        plain, whole = _both(
            wire, cuts, maxMessagePayloadSize=1000, maxFramePayloadSize=500
        )
        assert whole == plain
        events, close_code = whole[0], whole[8]
        assert events[0] == ("message", b"before", False)
        assert ("message", b"after", False) not in events
        assert close_code == code


def test_a_close_frame_is_answered_as_autobahn_answers():
    wire = _frame(0x1, b"last") + _frame(0x8, struct.pack("!H", 1000) + b"bye")
    plain, whole = _both(wire)
    assert whole == plain
    assert whole[2] != ab_protocol.WebSocketProtocol.STATE_OPEN


class _Call:
    cancelled = False

    def cancel(self):
        self.cancelled = True


def test_data_restarts_the_keepalive_timeout_as_autobahn_does():
    for cls in (_Plain, _Whole):
        proto = _open(cls)
        call = proto.autoPingTimeoutCall = _Call()
        proto.dataReceived(_frame(0x1, b"alive"))
        assert call.cancelled, cls
        assert proto.autoPingTimeoutCall is None
        assert proto.events == [("message", b"alive", False)]


@pytest.mark.parametrize("pong", [b"\x00" * 12, b"someone else's"])
def test_a_pong_while_autobahns_own_ping_is_pending_is_left_to_autobahn(pong):
    seen = []
    for cls in (_Plain, _Whole):
        proto = _open(cls, autoPingInterval=0)
        proto.autoPingPending = b"\x00" * 12
        proto.autoPingTimeoutCall = _Call()
        proto.dataReceived(_frame(0xA, pong))
        seen.append(_seen(proto))
        assert proto.events == [("pong", pong)]
        matched = pong == b"\x00" * 12
        assert (proto.autoPingPending is None) == matched
    assert seen[0] == seen[1]


@pytest.mark.parametrize("hook", ["onMessageFrameData", "_onMessageFrameBegin"])
def test_a_protocol_overriding_a_frame_hook_is_refused(hook):
    with pytest.raises(TypeError, match=hook):
        type("Streaming", (WholeFrameReader, WebSocketServerProtocol), {hook: print})


def test_a_client_protocol_is_refused():
    with pytest.raises(TypeError, match="for servers"):

        class Client(WholeFrameReader, WebSocketClientProtocol):
            pass


class _DkRecorder(DkServerProtocol):
    """dkserver's protocol, its messages and pongs recorded, not handled."""

    def onMessage(self, payload, isBinary, checked=False):
        self.events.append(("message", payload, isBinary))

    def onPong(self, payload):
        self.events.append(("pong", payload))


def test_dkserver_and_the_conformance_server_read_with_it(monkeypatch):
    from tests.conformance.echo_server import EchoProtocol

    assert issubclass(EchoProtocol, WholeFrameReader)
    counting = _Counting(monkeypatch)
    proto = _open(_DkRecorder)
    proto.dataReceived(_frame(0x1, b'{"to":"bob"}') + _frame(0xA, b"proof"))
    assert proto.events == [("message", b'{"to":"bob"}', False), ("pong", b"proof")]
    assert counting.calls == 0


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 1000, 70_000])
def test_unmask_is_rfc_6455_xor(size):
    mask, data = os.urandom(4), os.urandom(size)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert unmask(mask, data) == expected
