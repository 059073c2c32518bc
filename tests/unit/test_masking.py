"""The masker dkserver gives Autobahn unmasks as RFC 6455 §5.3 says, also
when a frame's payload arrives in several pieces."""

from __future__ import annotations

import os

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket import protocol as ab_protocol
from twisted.internet.testing import StringTransport

from dkserver.ws import masking
from dkserver.ws.protocol import DkServerProtocol


def reference_unmask(mask: bytes, data: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("size", [1, 3, 4, 5, 127, 128, 330, 70_000])
@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_unmasks_whole_and_in_pieces(size, pieces):
    mask = os.urandom(4)
    data = os.urandom(size)
    masker = masking.create_masker(mask, size)
    step = max(1, size // pieces)
    out = b"".join(masker.process(data[i : i + step]) for i in range(0, size, step))
    assert out == reference_unmask(mask, data)
    assert masker.pointer() == size
    masker.reset()
    assert masker.pointer() == 0
    assert masker.process(data) == reference_unmask(mask, data)


def test_an_empty_piece_changes_nothing():
    masker = masking.IntXorMasker(b"\x01\x02\x03\x04")
    assert masker.process(b"") == b""
    assert masker.pointer() == 0
    assert masker.process(b"\x00\x00") == b"\x01\x02"


def test_a_mask_is_four_bytes():
    with pytest.raises(ValueError):
        masking.IntXorMasker(b"\x01\x02\x03")


class _Recorder(DkServerProtocol):
    """Autobahn's frame parsing with this module's masker; messages and
    pongs recorded instead of handled."""

    def onMessage(self, payload, isBinary, checked=False):
        self.got.append(payload)

    def onPong(self, payload):
        self.pongs.append(payload)


def _masked_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    assert len(payload) < 126
    return (
        bytes((0x80 | opcode, 0x80 | len(payload)))
        + mask
        + reference_unmask(mask, payload)
    )


def test_autobahn_uses_it_for_text_frames_and_pongs_read_byte_by_byte():
    assert ab_protocol.create_xor_masker is masking.create_masker
    factory = WebSocketServerFactory()
    proto = _Recorder()
    proto.factory = factory
    proto.got, proto.pongs = [], []
    proto.makeConnection(StringTransport())
    proto.state = proto.STATE_OPEN
    proto.websocket_version = 13
    proto._connectionMade = None
    proto.data = b""
    proto.current_frame = None
    proto.utf8validateIncomingCurrentMessage = False
    proto.send_state = proto.SEND_STATE_GROUND
    proto.message_data = None
    proto.inside_message = False
    proto.failedByMe = False
    text = '{"to": "bob", "content": "héllo"}'.encode()
    wire = _masked_frame(0x1, text, os.urandom(4)) + _masked_frame(
        0xA, b"proof-1", os.urandom(4)
    )
    for i in range(len(wire)):
        proto._dataReceived(wire[i : i + 1])
    assert proto.got == [text]
    assert proto.pongs == [b"proof-1"]
