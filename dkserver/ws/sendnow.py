"""A TLS record handed to the kernel at once, past the reactor's write event.

Twisted's TCP transport queues every write, registers the socket for writing
(an ``epoll_ctl``), sends on the next write event and unregisters it (another
``epoll_ctl``).  A broadcast writes one record to each of its recipients,
whose sockets have nothing queued: the two ``epoll_ctl`` calls and the
``doWrite`` bookkeeping were ~17 % of the fan-out's samples, for a ``send()``
that takes the record whole.  So when the socket has nothing queued, the
record's ciphertext goes straight to ``send()``; what the kernel does not take
(a full socket buffer) or an error is queued as before, for the reactor to
write or to report.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOProtocol


def write_now(tls: Any, data: bytes) -> bool:
    """Write ``data`` through the TLS transport ``tls``, past its small-write
    buffer; True if its ciphertext went to the socket directly, False if it
    was queued on the TCP transport (which then already held data, is
    closing, or is not one)."""
    tcp = getattr(tls, "transport", None)
    if not _idle(tcp):
        TLSMemoryBIOProtocol.write(tls, data)
        return False
    # The TLS layer hands its ciphertext to ``transport.write`` (one call for
    # a record up to 2**14 bytes); an instance attribute shadows the class's
    # method for this call only.
    tcp.write = partial(_send, tcp)
    try:
        TLSMemoryBIOProtocol.write(tls, data)
    finally:
        del tcp.write
    return True


def _idle(tcp: Any) -> bool:
    """A TCP transport that is open, writing, and holds nothing to send."""
    return (
        getattr(tcp, "_tempDataLen", None) == 0
        and tcp.offset == len(tcp.dataBuffer)
        and tcp.connected
        and not tcp.disconnecting
        and not tcp._writeDisconnecting
        and not tcp._writeDisconnected
    )


def _send(tcp: Any, data: bytes) -> None:
    if not data:
        return
    if not _idle(tcp):  # something was queued meanwhile: keep the order
        FileDescriptor.write(tcp, data)
        return
    sent = tcp.writeSomeData(data)
    if isinstance(sent, Exception):
        # The reactor's write event meets the error again and closes.
        FileDescriptor.write(tcp, data)
    elif sent < len(data):
        FileDescriptor.write(tcp, data[sent:])
