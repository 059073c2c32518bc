"""Hand a TLS connection fresh memory BIOs once its old ones are empty.

Twisted's TLS transport feeds OpenSSL through two memory BIOs, one for the
bytes received and one for the bytes to send.  A memory BIO's buffer only
grows: each keeps 4/3 of the most it ever held at once.  After the handshake
and the WebSocket upgrade that is ~1.6 KiB per connection, kept for as long
as the connection stays open and idle.

OpenSSL lets a connection's BIOs be replaced at any time (``SSL_set_bio``
frees the old pair), and an empty memory BIO carries no state, so replacing
two empty ones changes nothing but the memory held.  pyOpenSSL has no call
for it; this goes through its bindings and its ``Connection``'s BIO
attributes (checked by tests/unit/test_tls_bio.py).
"""

from __future__ import annotations

from typing import Any

from OpenSSL._util import ffi, lib


def release_buffers(transport: Any) -> bool:
    """Give ``transport`` (Twisted's ``TLSMemoryBIOProtocol``) two new,
    empty memory BIOs; False, and nothing changed, unless both old ones are
    empty and the TLS connection is open."""
    tls = getattr(transport, "_tlsConnection", None)
    if tls is None or transport._lostTLSConnection or transport.disconnecting:
        return False
    into, out = getattr(tls, "_into_ssl", None), getattr(tls, "_from_ssl", None)
    if into is None or out is None:  # a socket-backed connection: no BIOs
        return False
    # BIO_get_mem_data returns the bytes still held (NULL: their address
    # is not wanted).
    if lib.BIO_get_mem_data(into, ffi.NULL) or lib.BIO_get_mem_data(out, ffi.NULL):
        return False
    new_into = lib.BIO_new(lib.BIO_s_mem())
    if new_into == ffi.NULL:
        return False
    new_out = lib.BIO_new(lib.BIO_s_mem())
    if new_out == ffi.NULL:
        lib.BIO_free(new_into)
        return False
    # SSL_free frees the BIOs the connection holds, as pyOpenSSL expects.
    lib.SSL_set_bio(tls._ssl, new_into, new_out)
    tls._into_ssl, tls._from_ssl = new_into, new_out
    return True
