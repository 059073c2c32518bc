"""tls_bio.release_buffers: a TLS connection given fresh memory BIOs keeps
working both ways, and nothing is swapped while a BIO still holds bytes."""

from __future__ import annotations

from twisted.internet import ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from dkserver.tls import ServerTLS
from dkserver.tls_bio import release_buffers
from tests.support.tlsclient import write_pair


class _Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def _pump(a, b) -> None:
    """Move the bytes each side wrote to the other until both are quiet."""
    while True:
        ab, ba = a.transport.value(), b.transport.value()
        if not ab and not ba:
            return
        a.transport.clear()
        b.transport.clear()
        if ab:
            b.dataReceived(ab)
        if ba:
            a.dataReceived(ba)


def _pair(tmp_path):
    """A server and a client TLS transport, connected in memory, handshake done."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.key"
    write_pair(cert, key, kind="ec", days=30)
    server_app, client_app = _Collect(), _Collect()
    server = TLSMemoryBIOFactory(
        ServerTLS(str(cert), str(key)), False, Factory.forProtocol(lambda: server_app)
    ).buildProtocol(None)
    client = TLSMemoryBIOFactory(
        ssl.CertificateOptions(), True, Factory.forProtocol(lambda: client_app)
    ).buildProtocol(None)
    server.makeConnection(StringTransport())
    client.makeConnection(StringTransport())
    _pump(client, server)
    assert server._handshakeDone and client._handshakeDone
    return server, client, server_app, client_app


def _exchange(server, client, server_app, client_app, size: int) -> None:
    server_app.received = client_app.received = b""
    client.write(b"c" * size)
    client._aggregator.flush()
    _pump(client, server)
    server.write(b"s" * size)
    server._aggregator.flush()
    _pump(client, server)
    assert server_app.received == b"c" * size
    assert client_app.received == b"s" * size


def test_fresh_bios_carry_the_connection_on_both_ways(tmp_path):
    server, client, server_app, client_app = _pair(tmp_path)
    _exchange(server, client, server_app, client_app, 40_000)
    tls = server._tlsConnection
    old = tls._into_ssl, tls._from_ssl
    assert release_buffers(server)
    assert (tls._into_ssl, tls._from_ssl) != old
    for size in (10, 40_000):
        _exchange(server, client, server_app, client_app, size)
    # Twice in a row: the new pair is freed by the next swap, as by SSL_free.
    assert release_buffers(server)
    _exchange(server, client, server_app, client_app, 100)


def test_nothing_is_swapped_while_bytes_wait_in_a_bio(tmp_path):
    server, client, server_app, _ = _pair(tmp_path)
    client.write(b"x" * 100)
    client._aggregator.flush()
    record = client.transport.value()
    client.transport.clear()
    tls = server._tlsConnection
    old = tls._into_ssl, tls._from_ssl
    tls.bio_write(record[:10])  # received, not yet a whole record
    assert not release_buffers(server)
    assert (tls._into_ssl, tls._from_ssl) == old
    server.dataReceived(record[10:])
    assert server_app.received == b"x" * 100


def test_a_closed_connection_keeps_its_bios(tmp_path):
    server, _, _, _ = _pair(tmp_path)
    server.loseConnection()
    assert not release_buffers(server)
