"""What reading one client frame costs: Autobahn's reader against dkserver's.

    .venv/bin/python -m bench.frames
    .venv/bin/python -m bench.frames --frames 20000 --rounds 5 --size 350

Feeds the same masked frames, one ``dataReceived`` each as a read of one
TLS record delivers them, to two protocols over a ``StringTransport`` that
differ only in the reader: Autobahn's ``processData`` alone, and with
``dkserver.ws.wholeframes.WholeFrameReader`` in front. Both run dkserver's
masker and UTF-8 validator (dkserver.ws.masking), its ``dataReceived``
and its ``onMessageEnd``, so the difference is the frame reader alone.
Prints µs per text frame (``--size`` bytes of JSON-like text) and per pong
(8 bytes), alternating the two readers over ``--rounds`` rounds in one
process, and the ratio of the medians. No network, no TLS: this isolates
the part of the read path that changed; ``bench relay`` measures the whole.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport

from dkserver.config import Config
from dkserver.ws import protocol as _dk_protocol  # installs dkserver's masker
from dkserver.ws.factory import websocket_options
from dkserver.ws.wholeframes import WholeFrameReader, unmask
from tests.support.opened import as_after_handshake


class _Counting(WebSocketServerProtocol):
    """Counts messages and pongs; reads as DkServerProtocol does."""

    messages = pongs = 0
    dataReceived = _dk_protocol.DkServerProtocol.dataReceived
    onMessageEnd = _dk_protocol.DkServerProtocol.onMessageEnd

    def onMessage(self, payload, isBinary, checked=False):
        self.messages += 1

    def onPong(self, payload):
        self.pongs += 1


class _Autobahn(_Counting):
    pass


class _Whole(WholeFrameReader, _Counting):
    pass


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = (
        bytes((0x80 | opcode, 0x80 | n))
        if n < 126
        else bytes((0x80 | opcode, 0x80 | 126, n >> 8, n & 0xFF))
    )
    mask = os.urandom(4)
    return head + mask + unmask(mask, payload)


def _open(cls):
    factory = WebSocketServerFactory()
    options = websocket_options(Config())
    options["autoPingInterval"] = 0  # no timer left on the reactor
    factory.setProtocolOptions(**options)
    proto = cls()
    proto.factory = factory
    proto.makeConnection(StringTransport())
    return as_after_handshake(proto)  # with dkserver's UTF-8 validator


def _per_frame(cls, frames: list[bytes]) -> float:
    proto = _open(cls)
    started = time.perf_counter()
    for frame in frames:
        proto.dataReceived(frame)
    seconds = time.perf_counter() - started
    if proto.messages + proto.pongs != len(frames):
        raise SystemExit(f"{cls.__name__} read {proto.messages + proto.pongs} frames")
    return seconds / len(frames) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.frames")
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=350, help="text frame bytes")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.rounds < 1 or not 0 <= args.size < 65536:
        parser.error("--frames and --rounds must be >= 1, --size in 0..65535")
    text = (b'{"to":"bob","content":"' + b"a" * args.size)[: args.size]
    kinds = {
        f"text frame, {args.size} B": [_frame(0x1, text) for _ in range(args.frames)],
        "pong, 8 B": [_frame(0xA, os.urandom(8)) for _ in range(args.frames)],
    }
    print(f"{'frame':<22}{'autobahn µs':>14}{'whole µs':>12}{'ratio':>8}")
    for name, frames in kinds.items():
        ours, theirs = [], []
        for _ in range(args.rounds):
            theirs.append(_per_frame(_Autobahn, frames))
            ours.append(_per_frame(_Whole, frames))
        a, w = statistics.median(theirs), statistics.median(ours)
        print(f"{name:<22}{a:>14.2f}{w:>12.2f}{w / a:>8.2f}")


if __name__ == "__main__":
    main()
