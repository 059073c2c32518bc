"""TLS an auditor accepts (docs/security.md, TLS): forward-secret AEAD
suites only, TLS 1.2 at least, and certificate reloads that keep open
WebSockets.

The client is Python's ssl module, allowed to offer what the server must
refuse (security level 0); each refusal is checked to be the server's alert,
so a client that could not even offer the weak suite proves nothing.

Both certificate kinds: the generated development certificate (ECDSA P-256)
and an operator's RSA certificate, with which a static-RSA key exchange
would be possible if the server allowed it.
"""

from __future__ import annotations

import ssl

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from dkserver.tls import fingerprint
from tests.support.client import Identity, register_and_login
from tests.support.server import make_config, start_server, stop_server
from tests.support.tlsclient import (
    handshake_in_thread,
    pyopenssl_attempt,
    refusal_in_thread,
    replace_file,
    write_pair,
)
from tests.support.waiting import sleep
from tests.support.ws import broadcast_frame, connect, now_timestamp

TLS12 = ssl.TLSVersion.TLSv1_2

STATIC_RSA = "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:AES256-SHA"
CBC_ONLY = (
    "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:"
    "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256"
)


def _served_by_server(error: ssl.SSLError) -> None:
    """The handshake failed on the server's alert, not on the client's side."""
    assert "ALERT" in str(error).upper(), error


@pytest.fixture(params=["generated-ec", "operator-rsa"])
def cert_kind(request) -> str:
    return request.param


@pytest_twisted.async_yield_fixture
async def tls_server(tmp_path, cert_kind):
    config = make_config(tmp_path, tls_reload_interval=0.1)
    if cert_kind == "operator-rsa":
        write_pair(tmp_path / "certs" / "server.pem", tmp_path / "certs" / "server.key")
    server = await start_server(config)
    try:
        yield server
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_static_rsa_key_exchange_is_refused(tls_server):
    error = await refusal_in_thread(
        tls_server.https_port, ciphers=STATIC_RSA, maximum=TLS12
    )
    _served_by_server(error)


@pytest_twisted.ensureDeferred
async def test_cbc_only_client_is_refused(tls_server):
    error = await refusal_in_thread(
        tls_server.https_port, ciphers=CBC_ONLY, maximum=TLS12
    )
    _served_by_server(error)


@pytest_twisted.ensureDeferred
async def test_tls_1_1_is_refused(tls_server):
    error = await refusal_in_thread(
        tls_server.https_port,
        ciphers="DEFAULT",
        minimum=ssl.TLSVersion.TLSv1_1,
        maximum=ssl.TLSVersion.TLSv1_1,
    )
    _served_by_server(error)


@pytest_twisted.ensureDeferred
async def test_modern_clients_get_ecdhe_with_aead(tls_server, cert_kind):
    default = await handshake_in_thread(tls_server.https_port)
    assert default.version == "TLSv1.3"
    assert default.fingerprint == fingerprint(tls_server.cert_pem)

    tls12 = await handshake_in_thread(tls_server.https_port, maximum=TLS12)
    assert tls12.version == "TLSv1.2"
    assert tls12.cipher.startswith("ECDHE-"), tls12.cipher
    assert "GCM" in tls12.cipher or "CHACHA20" in tls12.cipher, tls12.cipher
    signer = "RSA" if cert_kind == "operator-rsa" else "ECDSA"
    assert tls12.cipher.startswith(f"ECDHE-{signer}-")


@pytest_twisted.ensureDeferred
async def test_finite_field_dhe_groups_are_refused_in_tls_1_3(tls_server):
    port = tls_server.https_port
    assert await deferToThread(pyopenssl_attempt, port, groups=b"X25519") is None
    error = await deferToThread(pyopenssl_attempt, port, groups=b"ffdhe2048")
    assert error is not None and "alert" in error.lower(), error


@pytest_twisted.ensureDeferred
async def test_renegotiation_is_refused(tls_server):
    """OP_NO_RENEGOTIATION; OpenSSL 3 also refuses client-initiated
    renegotiation by default, so this guards against a context that allows
    it (OP_ALLOW_CLIENT_RENEGOTIATION) or an older OpenSSL."""
    error = await deferToThread(
        pyopenssl_attempt, tls_server.https_port, renegotiate=True
    )
    assert error is not None and "no renegotiation" in error, error


# -- reloading -------------------------------------------------------------------


async def _users(server, *names):
    out = []
    for name in names:
        ident = Identity(name)
        out.append((ident, await register_and_login(server, ident)))
    return out


async def _served_fingerprint_becomes(server, expected: str, limit: float = 10.0):
    """Poll new handshakes until ``expected`` is served (or ``limit`` passes);
    the fingerprint last seen."""
    waited = 0.0
    while True:
        seen = (await handshake_in_thread(server.https_port)).fingerprint
        if seen == expected or waited >= limit:
            return seen
        await sleep(0.1)
        waited += 0.1


@pytest_twisted.ensureDeferred
async def test_renewed_certificate_is_served_and_open_websockets_survive(tmp_path):
    cert, key = tmp_path / "certs" / "server.pem", tmp_path / "certs" / "server.key"
    old = write_pair(cert, key)
    server = await start_server(make_config(tmp_path, tls_reload_interval=0.1))
    try:
        (alice, alice_token), (_, bob_token) = await _users(server, "alice", "bob")
        alice_ws = await connect(server, alice_token)
        bob_ws = await connect(server, bob_token)
        assert (await handshake_in_thread(server.https_port)).fingerprint == old

        new = write_pair(cert, key)  # a renewal: new key, new certificate
        assert new != old
        # Seen by the file poll, no signal, no restart.
        assert await _served_fingerprint_becomes(server, new) == new
        expiry = server.service.metrics.tls_expiry._value.get()
        assert expiry > 0

        # The WebSockets opened before the reload still carry messages.
        alice_ws.send_json(broadcast_frame(alice, "after the renewal", now_timestamp()))
        got = await bob_ws.recv()
        assert (got["from"], got["content"]) == ("alice", "after the renewal")
        assert alice_ws.protocol.transport.connected
        alice_ws.close()
        bob_ws.close()
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_broken_replacement_keeps_the_old_certificate(tmp_path):
    cert, key = tmp_path / "certs" / "server.pem", tmp_path / "certs" / "server.key"
    good = write_pair(cert, key)
    # Polling off in effect: the test reloads by hand (what SIGHUP does).
    server = await start_server(make_config(tmp_path, tls_reload_interval=3600))
    tls = server.service.tls
    refused = server.service.metrics.tls_reloads.labels(result="refused")
    try:
        ((_, token),) = await _users(server, "alice")
        ws = await connect(server, token)

        # A new certificate whose key never arrived: the old key does not match.
        other = tmp_path / "other"
        write_pair(other / "c.pem", other / "k.key")
        replace_file(cert, (other / "c.pem").read_bytes())
        assert tls.reload() is False
        # Garbage instead of a certificate.
        replace_file(cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n")
        assert tls.reload() is False
        # An empty key file (a half-written copy).
        replace_file(key, b"")
        assert tls.reload() is False
        assert refused._value.get() == 3

        assert (await handshake_in_thread(server.https_port)).fingerprint == good
        assert tls.current.fingerprint == good
        ws.send_json({"not": "a frame"})  # the old connection still talks
        reply = await ws.recv()
        assert reply["from"] == "system"

        # Once a matching pair is complete, the next reload serves it.
        fixed = write_pair(cert, key)
        assert tls.reload() is True
        assert (await handshake_in_thread(server.https_port)).fingerprint == fixed
        ws.close()
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_poll_waits_for_the_key_of_a_half_written_pair(tmp_path):
    """A renewal that writes the certificate first and the key later: the
    poll never serves the certificate with the old key, and serves the new
    pair once both are there."""
    cert, key = tmp_path / "certs" / "server.pem", tmp_path / "certs" / "server.key"
    old = write_pair(cert, key)
    server = await start_server(make_config(tmp_path, tls_reload_interval=3600))
    tls = server.service.tls
    try:
        staging = tmp_path / "staging"
        new = write_pair(staging / "c.pem", staging / "k.key")
        replace_file(cert, (staging / "c.pem").read_bytes())
        tls.poll()
        tls.poll()  # settled: tried, refused (the key does not match yet)
        assert tls.current.fingerprint == old
        assert (await handshake_in_thread(server.https_port)).fingerprint == old

        replace_file(key, (staging / "k.key").read_bytes())
        tls.poll()  # changed: waits one poll for the files to settle
        assert tls.current.fingerprint == old
        tls.poll()
        assert tls.current.fingerprint == new
        assert (await handshake_in_thread(server.https_port)).fingerprint == new
    finally:
        await stop_server(server)
