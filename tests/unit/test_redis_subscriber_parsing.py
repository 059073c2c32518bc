"""The subscriber connection hands over every published message of a read
in that read.

txredisapi's pure-Python parser pauses the transport and yields to the
reactor (``callLater(0)``) after each bulk string, copying the rest of the
buffer each time; with the C parser (hiredis, a dependency) a burst of
publishes is parsed in one pass.  This pins that the node runs the latter.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from dkserver.cluster.redis import _Subscriber


class _Owner:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []

    def _message(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))


class _Factory:
    def __init__(self) -> None:
        self._owner = _Owner()


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _published(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n" + _bulk(b"message") + _bulk(channel) + _bulk(data)


def test_a_burst_of_published_messages_is_delivered_in_the_same_read():
    proto = _Subscriber(charset=None, convertNumbers=False)
    proto.factory = _Factory()
    proto.makeConnection(StringTransport())
    sent = [(b"dk:u:bob", b'n0\n%d\n{"id":%d}' % (i, i)) for i in range(200)]
    burst = b"".join(_published(c, d) for c, d in sent)
    # Split mid-element too: the rest must wait for the next read, no more.
    proto.dataReceived(burst[:-7])
    assert proto.factory._owner.messages == sent[:-1]
    proto.dataReceived(burst[-7:])
    assert proto.factory._owner.messages == sent
