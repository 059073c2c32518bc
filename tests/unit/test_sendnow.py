"""dkserver.ws.sendnow: a TLS record goes to the socket at once when the TCP
transport holds nothing, without registering the socket for writing; with
something queued it is queued behind it, as Twisted would."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from dkserver.tls import ServerTLS, generate_self_signed
from dkserver.ws import sendnow


class _Received(Protocol):
    def connectionMade(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class _Reactor(Clock):
    """Enough of a reactor for a tcp.Connection: records write registrations."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list = []

    def addWriter(self, writer) -> None:
        self.writers.append(writer)

    def removeWriter(self, writer) -> None:
        if writer in self.writers:
            self.writers.remove(writer)

    def addReader(self, reader) -> None:
        pass

    def removeReader(self, reader) -> None:
        pass


def _pump(a: StringTransport, b, a_proto, b_proto) -> None:
    for _ in range(10):
        moved = False
        for src, dst in ((a, b_proto), (b, a_proto)):
            data = src.value()
            if data:
                src.clear()
                dst.dataReceived(data)
                moved = True
        if not moved:
            return


@pytest.fixture
def tls_pair(tmp_path):
    """A server TLS transport after its handshake, now on a TCP connection
    over a socketpair (the other end: ``peer``), and the client's TLS
    protocol to decrypt what arrives there."""
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "c.key")
    generate_self_signed(cert, key)
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        ServerTLS(cert, key), False, Factory.forProtocol(Protocol), clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        CertificateOptions(verify=False),
        True,
        Factory.forProtocol(_Received),
        clock=clock,
    )
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    st, ct = StringTransport(), StringTransport()
    server.makeConnection(st)
    client.makeConnection(ct)
    _pump(st, ct, server, client)
    server.write(b"hello")
    clock.advance(0)
    _pump(st, ct, server, client)
    assert client.wrappedProtocol.data == b"hello"  # handshake done

    ours, peer = socket.socketpair()
    ours.setblocking(False)
    reactor = _Reactor()
    conn = tcp.Connection(ours, server, reactor)
    conn.connected = True
    server.transport = conn
    yield server, conn, reactor, peer, client
    ours.close()
    peer.close()


def _read(peer: socket.socket, client) -> bytes:
    peer.setblocking(False)
    try:
        client.dataReceived(peer.recv(65536))
    except BlockingIOError:
        pass
    return client.wrappedProtocol.data


def test_a_record_goes_to_the_socket_without_registering_for_writing(tls_pair):
    server, conn, reactor, peer, client = tls_pair
    assert sendnow.write_now(server, b"fan-out frame") is True
    assert reactor.writers == []  # no epoll_ctl, no write event needed
    assert conn._tempDataLen == 0
    assert "write" not in conn.__dict__  # the class's method again
    assert _read(peer, client) == b"hello" + b"fan-out frame"


def test_with_data_queued_the_record_is_queued_behind_it(tls_pair):
    server, conn, reactor, peer, client = tls_pair
    server.write(b"first")  # through the small-write buffer
    server._aggregator.flush()  # now queued on the TCP transport
    assert conn._tempDataLen > 0
    assert sendnow.write_now(server, b"second") is False
    assert reactor.writers  # the reactor writes both, in order
    assert _read(peer, client) == b"hello"
    conn.doWrite()
    assert _read(peer, client) == b"hellofirstsecond"


def test_a_full_socket_buffer_queues_the_rest(tls_pair):
    server, conn, reactor, peer, client = tls_pair
    conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = b"x" * 16000
    queued = False
    for _ in range(64):
        sendnow.write_now(server, chunk)
        if conn._tempDataLen:
            queued = True
            break
    assert queued and reactor.writers == [conn]
    expected = len(b"hello") + len(chunk) * (_ + 1)
    while len(client.wrappedProtocol.data) < expected:
        conn.doWrite()
        _read(peer, client)
    assert client.wrappedProtocol.data == b"hello" + chunk * (_ + 1)
