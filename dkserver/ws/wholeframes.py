"""Whole client frames read without Autobahn's per-frame machinery.

Autobahn reads every frame as a state machine: a `FrameHeader`, a masker,
a UTF-8 validator reset, and about fifteen hook calls (frame begin, data
and end, message begin, frame and end), built for frames that arrive in
pieces, fragmented messages and streaming.  Almost every frame a dkserver
client sends is none of those: one small masked text frame, whole in the
buffer, or the pong to a proof ping.  On the relay that machinery was about
a fifth of the reactor's time (py-spy ``--gil``, 50 pairs).

:class:`WholeFrameReader` reads exactly those frames itself and hands every
other frame, unchanged, to Autobahn's own ``processData``: anything
fragmented, partial, compressed, over the size limits, unmasked, with RSV
bits, a 64-bit length, non-minimal length encoding, invalid UTF-8 (so the
close reason names the octet, as Autobahn's does), a close or ping frame,
a pong while Autobahn's own keepalive ping is pending, a frame while the
connection is not open, or a protocol with frame logging or timings on.
What it hands on is what Autobahn does at the end of such a frame:
``onMessageEnd`` with the message in ``message_data`` (so a subclass's
override, or Autobahn's observers, see the same calls), the traffic
counters, and the keepalive timeout cancelled on data as Autobahn's
``autoPingRestartOnAnyTraffic`` does.  The frame-level hooks
(``onMessageFrameBegin`` and the like) are not called for such frames, so
a protocol that overrides one of them cannot use this reader, nor can a
client (which must refuse masked frames); both are checked when the class
is created.

Autobahn's conformance suite runs against a protocol with this reader
(tests/conformance), and tests/unit/test_wholeframes.py feeds the same
byte streams, split at every offset, through this reader and through
Autobahn's alone.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol, WebSocketServerProtocol

#: The hooks this reader does not call for the frames it reads (Autobahn's
#: and its Twisted adapter's).
_FRAME_HOOKS = (
    "onFrameBegin",
    "onFrameData",
    "onFrameEnd",
    "onMessageBegin",
    "onMessageFrameBegin",
    "onMessageFrameData",
    "onMessageFrameEnd",
    "onMessageFrame",
    "processControlFrame",
    "_onMessageBegin",
    "_onMessageFrameBegin",
    "_onMessageFrameData",
    "_onMessageFrameEnd",
    "_onMessageFrame",
)


def _defined_by_autobahn(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__module__.startswith("autobahn.")
    return True


_OPEN = WebSocketProtocol.STATE_OPEN
#: First octets: FIN, no RSV, and the opcode.
_TEXT = 0x81
_BINARY = 0x82
_PONG = 0x8A


def unmask(mask: bytes, data: bytes) -> bytes:
    """XOR ``data`` with its 4-byte ``mask`` repeated (RFC 6455 §5.3)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class WholeFrameReader:
    """Mixin for an Autobahn server protocol: read whole small frames itself.

    Put it before the Autobahn class in the bases.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, WebSocketServerProtocol):
            # A client must refuse masked server frames, which this accepts.
            raise TypeError(f"{cls.__name__}: WholeFrameReader is for servers")
        for name in _FRAME_HOOKS:
            if not _defined_by_autobahn(cls, name):
                raise TypeError(
                    f"{cls.__name__} overrides {name}, which WholeFrameReader"
                    " does not call for the frames it reads"
                )

    def processData(self) -> bool:
        """One frame: a whole small one here, any other through Autobahn."""
        data = self.data
        if (
            len(data) < 6
            or self.current_frame is not None
            or self.state != _OPEN
            or self.logFrames
            or self.trackedTimings
        ):
            return super().processData()
        first = data[0]
        second = data[1]
        length = second & 0x7F
        if not second & 0x80 or length == 127 or not self.applyMask:
            return super().processData()
        if length == 126:
            length = (data[2] << 8) | data[3]
            start = 8
            if length < 126:  # non-minimal: Autobahn fails the connection
                return super().processData()
        else:
            start = 6
        end = start + length
        if len(data) < end:
            return super().processData()
        if first == _TEXT or first == _BINARY:
            return self._whole_message(data, first == _BINARY, start, end)
        if first == _PONG and length <= 125 and not self.autoPingPending:
            self.data = data[end:]
            self._onPong(unmask(data[start - 4 : start], data[start:end]))
            return len(self.data) > 0
        return super().processData()

    def _whole_message(self, data: bytes, binary: bool, start: int, end: int) -> bool:
        length = end - start
        if (
            self.inside_message
            or 0 < self.maxMessagePayloadSize < length
            or 0 < self.maxFramePayloadSize < length
        ):
            return super().processData()
        payload = unmask(data[start - 4 : start], data[start:end])
        if not binary and self.utf8validateIncoming:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                # Autobahn's validator names the octet in its close reason.
                return super().processData()
        self.data = data[end:]
        stats = self.trafficStats
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()
        self.message_is_binary = binary
        self.message_data = [payload]
        self.message_data_total_length = length
        self._onMessageEnd()
        return len(self.data) > 0
