"""The masker dkserver gives Autobahn unmasks as RFC 6455 §5.3 says, also
when a frame's payload arrives in several pieces; its UTF-8 validator
answers as Autobahn's own."""

from __future__ import annotations

import os
import random

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket import protocol as ab_protocol
from autobahn.websocket.utf8validator import UTF8VALIDATOR_DFA
from twisted.internet.testing import StringTransport

from dkserver.ws import masking
from dkserver.ws.protocol import DkServerProtocol
from tests.support.opened import opened


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


def _open_recorder() -> _Recorder:
    factory = WebSocketServerFactory()
    proto = opened(_Recorder())
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
    return proto


def test_autobahn_uses_it_for_text_frames_and_pongs_read_byte_by_byte():
    assert ab_protocol.create_xor_masker is masking.create_masker
    proto = _open_recorder()
    text = '{"to": "bob", "content": "héllo"}'.encode()
    wire = _masked_frame(0x1, text, os.urandom(4)) + _masked_frame(
        0xA, b"proof-1", os.urandom(4)
    )
    for i in range(len(wire)):
        proto._dataReceived(wire[i : i + 1])
    assert proto.got == [text]
    assert proto.pongs == [b"proof-1"]


# -- UTF-8 --------------------------------------------------------------------

_DFA = bytes(UTF8VALIDATOR_DFA)


class _ReferenceUtf8:
    """Autobahn's pure-Python validator (Hoehrmann's DFA), as it answers."""

    def __init__(self):
        self.state = self.index = 0

    def validate(self, data):
        state = self.state
        for i, octet in enumerate(data):
            state = _DFA[256 + (state << 4) + _DFA[octet]]
            if state == 1:
                self.state = state
                self.index += i
                return False, False, i, self.index
        self.state = state
        self.index += len(data)
        return True, state == 0, len(data), self.index


_PIECES = [
    b"a",
    b"\x7f",
    b"\xc2\x80",
    b"\xdf\xbf",
    b"\xe0\xa0\x80",
    b"\xed\x9f\xbf",
    b"\xed\xa0\x80",  # a surrogate
    b"\xef\xbf\xbf",
    b"\xf0\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xc0\xaf",  # overlong
    b"\xe0\x80\xaf",
    b"\x80",
    b"\xff",
    b"\xc1",
    b"\xf5",
    b"\xe2\x28\xa1",
]


def test_utf8_answers_as_autobahns_dfa_for_any_split():
    rng = random.Random(13)
    for _ in range(20_000):
        message = b"".join(
            rng.choice(_PIECES) if rng.random() < 0.6 else bytes([rng.randrange(256)])
            for _ in range(rng.randrange(1, 8))
        )
        cuts = sorted(rng.sample(range(1, len(message)), min(len(message) - 1, 2)))
        chunks = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)])]
        chunks.append(b"x")  # after a rejection, still rejected
        ours, reference = masking.Utf8Validator(), _ReferenceUtf8()
        for chunk in chunks:
            assert ours.validate(chunk) == reference.validate(chunk), (message, chunks)
        ours.reset()
        assert ours.validate("é".encode()) == (True, True, 2, 2)


def test_utf8_an_unfinished_code_point_is_not_an_end():
    v = masking.Utf8Validator()
    assert v.validate(b"ok\xe2\x82") == (True, False, 4, 4)
    assert v.validate(b"\xac") == (True, True, 1, 5)


def test_autobahn_closes_1007_on_invalid_utf8_with_the_octets_index():
    assert ab_protocol.Utf8Validator is masking.Utf8Validator
    proto = _open_recorder()
    failed = []
    proto._invalid_payload = lambda reason: failed.append(reason) or True
    frame = _masked_frame(0x1, b'{"to": "b\xed\xa0\x80"}', os.urandom(4))
    for i in range(len(frame)):
        proto._dataReceived(frame[i : i + 1])
    assert proto.got == []
    # (the stub does not close, so each later octet is refused again)
    assert set(failed) == {
        "encountered invalid UTF-8 while processing text message"
        " at payload octet index 10"
    }
