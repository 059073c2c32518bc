"""Python's ssl module as a TLS client with chosen versions and ciphers, and
certificate pairs for the server to serve.

The handshake is blocking, so end-to-end tests against the in-process server
run it in a thread (:func:`handshake_in_thread`).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from twisted.internet.threads import deferToThread

#: Let the client offer what a hardened server must refuse (OpenSSL 3's
#: default security level would stop a TLS 1.1 or SHA-1 client on its own
#: side, and a test would then prove nothing about the server).
WEAK_OK = "@SECLEVEL=0"


@dataclass(frozen=True)
class Handshake:
    version: str
    cipher: str
    #: SHA-256 of the server certificate, as dkserver logs it (AA:BB:...).
    fingerprint: str


def handshake(
    port: int,
    *,
    ciphers: str | None = None,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> Handshake:
    """Connect to 127.0.0.1:port; raises ssl.SSLError when refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if ciphers is not None:
        ctx.set_ciphers(f"{ciphers}:{WEAK_OK}")
    with warnings.catch_warnings():  # TLSVersion.TLSv1_1 is deprecated: on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            return Handshake(
                version=tls.version(),
                cipher=tls.cipher()[0],
                fingerprint=hashlib.sha256(der).digest().hex(":").upper(),
            )


def pyopenssl_attempt(port: int, *, groups: bytes | None = None, renegotiate=False):
    """What Python's ssl module cannot do: offer only ``groups`` (TLS 1.3),
    or ask to renegotiate (TLS 1.2).  Returns None when all went through,
    else the OpenSSL error text."""
    from OpenSSL import SSL
    from OpenSSL._util import lib

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if groups is not None:
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        assert lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1
    if renegotiate:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    # pyOpenSSL wants a blocking socket; a receive timeout still bounds it.
    raw.settimeout(None)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    conn = SSL.Connection(ctx, raw)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    try:
        conn.do_handshake()
        if renegotiate:
            assert conn.renegotiate()
            conn.do_handshake()
            # The server's answer to the request comes with the next record.
            conn.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            conn.recv(4096)
        return None
    except SSL.Error as e:
        return str(e)
    finally:
        raw.close()


async def handshake_in_thread(port: int, **kwargs) -> Handshake:
    return await deferToThread(handshake, port, **kwargs)


async def refusal_in_thread(port: int, **kwargs) -> ssl.SSLError:
    """The server's refusal; fails the test if the handshake succeeds."""

    def attempt():
        try:
            result = handshake(port, **kwargs)
        except ssl.SSLError as e:
            return e
        raise AssertionError(f"handshake with {kwargs} succeeded: {result}")

    return await deferToThread(attempt)


def write_pair(
    cert_path: Path, key_path: Path, *, kind: str = "rsa", key=None, days: float = 30
) -> str:
    """Write a self-signed certificate for localhost (``kind`` ``rsa`` or
    ``ec``, or for the given ``key``) atomically (rename), key first; its
    SHA-256 fingerprint in dkserver's form."""
    if key is None:
        key = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
    cert = make_certificate(key, days)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    replace_file(key_path, key_pem)
    replace_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def make_certificate(key, days: float = 30) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    after = now + datetime.timedelta(days=days)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(
            min(now - datetime.timedelta(minutes=5), after - datetime.timedelta(days=1))
        )
        .not_valid_after(after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def replace_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
