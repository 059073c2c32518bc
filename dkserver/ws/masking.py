"""Unmasking client frames for Autobahn, cheaper than its own masker.

Every frame a client sends is masked (RFC 6455 §5.3).  Autobahn unmasks
each one with a masker it builds per frame; its NVX (cffi) masker costs
~7 µs a frame to build and run on a message-sized payload, mostly cffi
object set-up, about a tenth of the reactor's time on the relay.  XOR over
Python integers does the same in ~2 µs at that size and stays linear for
large ones.  Autobahn picks the masker through the module-level name
``create_xor_masker`` in ``autobahn.websocket.protocol``, so
:func:`install` replaces that name; the masker keeps Autobahn's interface
(``process``, ``pointer``, ``reset``), including frames whose payload
arrives in several reads.

The same goes for the UTF-8 check of text messages (RFC 6455 §8.1): the
NVX validator costs ~4 µs a message, CPython's UTF-8 decoder ~1 µs.
:class:`Utf8Validator` keeps Autobahn's answers to the octet (the index in
its close reason), checked against Autobahn's own DFA: the decoder decides
"valid so far", and the DFA finds where a sequence broke, or rejects the
few incomplete tails the decoder still holds for more (a surrogate's first
two octets).
"""

from __future__ import annotations

import codecs

import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.websocket.utf8validator import UTF8VALIDATOR_DFA

from dkserver.ws.wholeframes import unmask

_DFA = bytes(UTF8VALIDATOR_DFA)
_UTF8_REJECT = 1
_Decoder = codecs.getincrementaldecoder("utf-8")


class IntXorMasker:
    """Unmask a frame's payload, chunk by chunk, with its 4-byte key."""

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        if len(mask) != 4:
            raise ValueError("a WebSocket mask is 4 bytes")
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        """Payload bytes processed so far."""
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        if not data:
            return b""
        shift = self._ptr & 3
        mask = self._mask[shift:] + self._mask[:shift] if shift else self._mask
        self._ptr += len(data)
        return unmask(mask, data)


def create_masker(mask: bytes, length: int | None = None) -> IntXorMasker:
    """Autobahn's ``create_xor_masker`` signature (the length is not needed)."""
    return IntXorMasker(mask)


def _rejected_at(data: bytes) -> int | None:
    """Where Autobahn's DFA (Hoehrmann's) rejects ``data``, or None."""
    state = 0
    for i, octet in enumerate(data):
        state = _DFA[256 + (state << 4) + _DFA[octet]]
        if state == _UTF8_REJECT:
            return i
    return None


class Utf8Validator:
    """Autobahn's incremental validator interface: ``reset()``, and
    ``validate(chunk)`` giving ``(valid, ends_on_code_point, index in the
    chunk, index in the message)``, the indexes those of the rejected octet
    when not valid."""

    __slots__ = ("_decoder", "_index", "_pending")

    def __init__(self) -> None:
        self._decoder = _Decoder()
        self._index = 0
        #: The undecided tail of what was validated (a code point begun).
        self._pending: bytes | None = b""

    def reset(self) -> None:
        self._decoder.reset()
        self._index = 0
        self._pending = b""

    def validate(self, data: bytes) -> tuple[bool, bool, int, int]:
        if self._pending is None:  # rejected until reset, as the DFA stays
            return not data, False, 0, self._index
        try:
            self._decoder.decode(data, False)
        except UnicodeDecodeError:
            return self._rejected(data)
        pending = self._decoder.getstate()[0]
        if pending and _rejected_at(pending) is not None:
            return self._rejected(data)
        self._pending = pending
        self._index += len(data)
        return True, not pending, len(data), self._index

    def _rejected(self, data: bytes) -> tuple[bool, bool, int, int]:
        # The pending tail is a valid beginning, so the DFA run over it and
        # the chunk rejects inside the chunk.
        pending = self._pending or b""
        at = _rejected_at(pending + data)
        if at is None:  # the decoder and the DFA disagree: trust the DFA
            raise AssertionError("UTF-8 decoder refused what the DFA accepts")
        at -= len(pending)
        self._index += at
        self._decoder.reset()
        self._pending = None
        return False, False, at, self._index


def install() -> None:
    """Make Autobahn unmask incoming frames with :class:`IntXorMasker` and
    check text messages with :class:`Utf8Validator`."""
    _autobahn_protocol.create_xor_masker = create_masker
    _autobahn_protocol.Utf8Validator = Utf8Validator
